"""Helpers shared by the queue tests: GitMQ's commands as real processes, plain git, waiting.

Every command runs as a child process of the test's own Python with the
environment the ``hermetic_env`` fixture prepared, so what the tests assert is
what a user sees: exit status, stdout and stderr.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

T = TypeVar("T")

TESTS_DIR = Path(__file__).resolve().parent
WORKERS = TESTS_DIR / "workers.py"

GITMQ = (sys.executable, "-m", "gitmq.cli.main")
GITMQ_PRODUCE = (sys.executable, "-m", "gitmq.cli.gem")
# gitmq.cli.gem runs gitmq-produce when run as a module; the console script
# gitmq-consume calls consume_main, and so do we.
GITMQ_CONSUME = (
    sys.executable,
    "-c",
    "import sys; from gitmq.cli.gem import consume_main; sys.exit(consume_main())",
)

UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class Result:
    """A finished command: what the user saw."""

    argv: tuple[str | bytes, ...]
    status: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    def __str__(self) -> str:
        return (
            f"{' '.join(map(str, self.argv))} exited {self.status}\n"
            f"stdout:\n{self.out}\nstderr:\n{self.err}"
        )


def run(
    argv: Sequence[str | bytes | os.PathLike[str]],
    *,
    input: bytes | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Result:
    """Run ``argv`` to completion; never raises on a non-zero exit."""
    full_env = None if env is None else {**os.environ, **env}
    args = tuple(a if isinstance(a, str | bytes) else os.fspath(a) for a in argv)
    proc = subprocess.run(
        args,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
        check=False,
    )
    return Result(args, proc.returncode, proc.stdout, proc.stderr)


def gitmq(
    *args: str | bytes | os.PathLike[str],
    input: bytes | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> Result:
    """``gitmq ARGS`` as a user runs it."""
    return run([*GITMQ, *args], input=input, cwd=cwd, env=env)


def gitmq_produce(*args: str | os.PathLike[str], input: bytes | None = None) -> Result:
    """``gitmq-produce ARGS`` (the gem's command line)."""
    return run([*GITMQ_PRODUCE, *args], input=input)


def ok(result: Result) -> Result:
    """Assert that a command succeeded and return it."""
    assert result.status == 0, str(result)
    return result


def fails(result: Result, status: int, error: str) -> Result:
    """Assert the documented failure: exit ``status``, stderr exactly one line ``error: ...``.

    ``error`` is the text after ``error: ``; it must match the whole line.
    """
    assert result.status == status, str(result)
    assert result.err.splitlines() == [f"error: {error}"], str(result)
    return result


def start(
    argv: Sequence[str | os.PathLike[str]],
    *,
    stdout: IO[bytes] | int | None = subprocess.PIPE,
    stderr: IO[bytes] | int | None = subprocess.PIPE,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a long-running process in its own session (so it can be signalled alone)."""
    return subprocess.Popen(
        [os.fspath(a) for a in argv],
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
    """Send ``sig`` to ``proc`` and wait for it; SIGKILL its group if it hangs."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"{proc.args} ignored signal {sig} for {timeout}s") from None
    return proc.returncode


def kill_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """Last-resort cleanup of the processes a test started (by pid, never by name)."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def wait_for(
    predicate: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "a condition",
    *,
    interval: float = 0.01,
    procs: Sequence[subprocess.Popen[bytes]] = (),
) -> T:
    """Poll ``predicate`` until it returns something truthy and return that.

    Fails with ``what`` after ``timeout`` seconds, or at once when one of
    ``procs`` (processes the condition depends on) has exited.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(
                    f"while waiting for {what}: {proc.args} exited {proc.returncode}"
                    + _stderr_of(proc)
                )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def _stderr_of(proc: subprocess.Popen[bytes]) -> str:
    if proc.stderr is None or proc.stderr.closed:
        return ""
    return "\nstderr:\n" + proc.stderr.read().decode("utf-8", "replace")


# ----------------------------------------------------------------- plain git


def git(repo: Path, *args: str, input: bytes | None = None) -> bytes:
    """``git --git-dir=REPO ARGS``; raises with the command's output if it fails."""
    result = run(["git", f"--git-dir={repo}", *args], input=input)
    assert result.status == 0, str(result)
    return result.stdout


def git_text(repo: Path, *args: str) -> str:
    return git(repo, *args).decode().strip()


def rev_parse(repo: Path, ref: str) -> str | None:
    """What ``ref`` points at, or None when it does not exist."""
    result = run(["git", f"--git-dir={repo}", "rev-parse", "--verify", "-q", ref])
    return result.out.strip() or None


def branch_shas(repo: Path, branch: str) -> list[str]:
    """The commits of ``branch``, oldest first, as git sees them."""
    return git_text(repo, "rev-list", "--reverse", f"refs/heads/{branch}").split()


def commit_body(repo: Path, sha: str) -> bytes:
    """The raw commit object, as ``git cat-file commit`` prints it."""
    return git(repo, "cat-file", "commit", sha)


def commit_message(repo: Path, sha: str) -> bytes:
    """A commit's message, byte for byte: everything after the first blank line."""
    return commit_body(repo, sha).partition(b"\n\n")[2]


def commit_headers(repo: Path, sha: str) -> list[str]:
    """The header lines of a commit, in order."""
    return commit_body(repo, sha).partition(b"\n\n")[0].decode().split("\n")


def fsck(repo: Path) -> None:
    """``git fsck --strict`` must be silent about errors and warnings."""
    result = run(["git", f"--git-dir={repo}", "fsck", "--strict", "--no-dangling"])
    assert result.status == 0, str(result)
    problems = [ln for ln in result.err.splitlines() if not ln.startswith(("notice:", "Checking"))]
    assert problems == [], str(result)


def snapshot(path: Path) -> dict[str, bytes | None]:
    """Every file and directory under ``path`` with its content (None for directories).

    Compared before and after a failing command to prove it changed nothing.
    """
    if path.is_file():
        return {".": path.read_bytes()}
    tree: dict[str, bytes | None] = {}
    for item in sorted(path.rglob("*")):
        rel = item.relative_to(path).as_posix()
        tree[rel] = item.read_bytes() if item.is_file() else None
    return tree


def lines_of(path: Path) -> list[str]:
    """The complete lines of a text file that another process appends to."""
    try:
        data = path.read_text()
    except FileNotFoundError:
        return []
    return data.splitlines() if data.endswith("\n") else data.splitlines()[:-1]


def deleted_packs_held(pid: int) -> list[str]:
    """Deleted pack files that process ``pid`` or one of its children still holds open or
    mapped (``/proc/PID/fd`` and ``/proc/PID/maps``): disk that is not freed yet."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                pids.append(int(entry.name))
    held: set[str] = set()
    for p in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{p}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{p}/fd/{fd}")
                    if "/pack/" in target and target.endswith("(deleted)"):
                        held.add(target)
            for line in Path(f"/proc/{p}/maps").read_text().splitlines():
                if "/pack/" in line and line.endswith("(deleted)"):
                    held.add(line.split(None, 5)[-1])
    return sorted(held)


def disk_use(path: Path) -> int:
    """Bytes the files under ``path`` take on disk (what ``du`` counts)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total


def write_commit(repo: Path, body: bytes) -> str:
    """Write ``body`` as a commit object, unchecked (as a hostile client can)."""
    out = git(repo, "hash-object", "-t", "commit", "--literally", "-w", "--stdin", input=body)
    return out.decode().strip()


def plant(repo: Path, body: bytes, ref: str = "refs/heads/orders") -> str:
    """Write ``body`` as a commit and point ``ref`` at it."""
    sha = write_commit(repo, body)
    git(repo, "update-ref", ref, sha)
    return sha


def clone_bare(url: str, path: Path) -> Path:
    """A bare clone of ``url`` at ``path`` (an attacker's copy of the remote)."""
    ok(run(["git", "clone", "-q", "--bare", url, str(path)]))
    return path
