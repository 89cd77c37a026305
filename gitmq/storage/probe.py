"""Probing a remote for ``gitmq doctor``: what it advertises, and whether it takes a push.

Each probe is one real request with the remote's own credentials and timeout
(``remote.py`` builds the environment), traced with ``GIT_TRACE_PACKET`` so
that what the server *said* can be read back: the protocol version it answered
in (``version 2`` opens a v2 advertisement; a v0 server answers with refs
straight away) and the capabilities of its receive-pack (``atomic``). Nothing
here touches the storage: the scratch push goes from a throw-away repository
holding one fixed commit of the empty tree.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gitmq.errors import RemoteError
from gitmq.storage import gitcli
from gitmq.storage.remote import Credentials, failure

#: A trace line: ``12:00:00.000000 pkt-line.c:80   packet:   push< ...``.
_TRACE = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \S+:\d+\s+packet:\s+(\S+)([<>]) (.*)$")
#: The first line of a receive-pack advertisement: ``SHA REF\0CAPABILITIES``.
_FIRST_REF = re.compile(r"^[0-9a-f]{40,64} \S+\\0(.*)$")
#: What the scratch ref names: one root commit of the empty tree, the same bytes always.
SCRATCH_BODY = (
    b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n"
    b"author gitmq <doctor@gitmq.invalid> 0 +0000\n"
    b"committer gitmq <doctor@gitmq.invalid> 0 +0000\n"
    b"\n"
    b"gitmq doctor: a scratch ref, deleted at once\n"
)


@dataclass(frozen=True)
class Advertised:
    refs: dict[str, str]  # every ref the remote lists, with the commit it names
    protocol: int  # the protocol version the server answered in: 2, else 0


@dataclass(frozen=True)
class PushProbe:
    capabilities: frozenset[str]  # what receive-pack advertised (empty: it never answered)
    error: str | None  # why the scratch push failed, None when it landed
    cleanup_error: str | None = None  # why the scratch ref could not be deleted


def advertised(url: str, creds: Credentials) -> Advertised:
    """List the remote's refs over protocol v2 (asked for, the server may answer v0);
    RemoteError saying why the listing failed (unreachable, authentication)."""
    status, out, said = _traced(
        None, ["-c", "protocol.version=2", "ls-remote", "--refs"], url, creds
    )
    if status != 0:
        raise failure(url, "listing refs", _untraced(said))
    refs = {}
    for line in out.splitlines():
        sha, _, ref = line.partition("\t")
        if ref:
            refs[ref] = sha
    version = 2 if any(text == "version 2" for _, way, text in said if way == "<") else 0
    return Advertised(refs, version)


def scratch_push(url: str, creds: Credentials, ref: str) -> PushProbe:
    """Push a scratch commit to ``ref`` and delete it again (with a lease on the scratch
    commit, so that nothing else is ever deleted)."""
    with tempfile.TemporaryDirectory(prefix="gitmq-doctor-") as tmp:
        git_dir = Path(tmp) / "scratch.git"
        gitcli.run(None, ["init", "--quiet", "--bare", str(git_dir)])
        sha = (
            gitcli.run(
                git_dir, ["hash-object", "-t", "commit", "-w", "--stdin"], input=SCRATCH_BODY
            )
            .stdout.decode()
            .strip()
        )
        args = ["push", "--porcelain", "--no-verify"]
        try:
            status, out, said = _traced(git_dir, args, url, creds, [f"{sha}:{ref}"])
        except RemoteError as exc:  # a timeout: nothing was pushed, or we cannot know
            return PushProbe(frozenset(), f"{exc.message} (if {ref} was pushed, delete it)")
        capabilities = _capabilities(said)
        error = _push_error(url, status, out, said)
        if error is not None:
            return PushProbe(capabilities, error)
        lease = f"--force-with-lease={ref}:{sha}"
        try:
            status, out, said = _traced(git_dir, [*args, lease], url, creds, [f":{ref}"])
        except RemoteError as exc:
            return PushProbe(capabilities, None, exc.message)
        return PushProbe(capabilities, None, _push_error(url, status, out, said))


def _push_error(url: str, status: int, out: str, said: list[tuple[str, str, str]]) -> str | None:
    if status == 0:
        return None
    for line in out.splitlines():  # porcelain: "!\tSRC:DST\t[remote rejected] (reason)"
        parts = line.split("\t")
        if len(parts) >= 3 and parts[0] == "!":
            return f"remote {url}: the server refused {parts[1].rpartition(':')[2]}: {parts[2]}"
    return failure(url, "push", _untraced(said)).message


def _capabilities(said: list[tuple[str, str, str]]) -> frozenset[str]:
    for _, way, text in said:
        match = _FIRST_REF.match(text) if way == "<" else None
        if match:
            return frozenset(match.group(1).split())
    return frozenset()


def _traced(
    git_dir: Path | None,
    args: Sequence[str],
    url: str,
    creds: Credentials,
    specs: Sequence[str] = (),
) -> tuple[int, str, list[tuple[str, str, str]]]:
    """Run a network git command with its packets traced: (status, stdout, stderr as
    (program, direction, text) lines; untraced lines have an empty direction)."""
    limits = ["-c", "http.lowSpeedLimit=1000", "-c", f"http.lowSpeedTime={int(creds.timeout)}"]
    try:
        proc = gitcli.run(
            git_dir,
            [*limits, *args, "--end-of-options", url, *specs],
            env={**creds.env(url), "GIT_TRACE_PACKET": "1"},
            timeout=creds.timeout,
            check=False,
            network=True,
        )
    except RemoteError as exc:
        raise RemoteError(f"remote {url}: {exc.message}") from None
    said: list[tuple[str, str, str]] = []
    for line in proc.stderr.decode("utf-8", "replace").splitlines():
        match = _TRACE.match(line)
        said.append((match[1], match[2], match[3]) if match else ("", "", line))
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), said


def _untraced(said: list[tuple[str, str, str]]) -> str:
    return "\n".join(text for _, way, text in said if not way)
