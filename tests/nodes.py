"""Nodes for the sync, node and cluster tests: YAML configs, real ``gitmq node`` processes,
and what a remote holds, read with plain git.

A test node lives in its own directory: ``node.yml``, its storage ``storage.git``
(relative to the config, as a user would write it), ``node.log`` (the node's
stderr, across restarts) and one ``CONSUMER.log`` per consumer. Each consumer's
handler is a shell command (no Python in the loop) that appends ``ID PAYLOAD``
to its log, so a test reads exactly what each consumer received, in order.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from unittest import mock

import yaml
from servers import proc_table
from util import (
    GITMQ,
    TESTS_DIR,
    WORKERS,
    Result,
    gitmq,
    kill_all,
    lines_of,
    run,
    start,
    wait_for,
)

from gitmq import Message
from gitmq.storage import packing

# The handler: the first line of the payload and the message id, appended in one write.
_RECORD = 'IFS= read -r payload; printf "%s %s\\n" "$GITMQ_ID" "$payload" >> "$0"'


def recorder(log: Path) -> list[str]:
    """A handler command that appends ``ID PAYLOAD`` to ``log`` for each message."""
    return ["/bin/sh", "-c", _RECORD, str(log)]


def record(message: Message) -> None:
    """A Python handler (``nodes:record``, with tests/ on PYTHONPATH): appends
    ``ID PAYLOAD`` to the file named by $GITMQ_TEST_RECORD, without a process per message."""
    line = f"{message.id} {message.payload.decode().splitlines()[0]}\n".encode()
    fd = os.open(os.environ["GITMQ_TEST_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def write_config(path: Path, data: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(data), sort_keys=False))
    return path


@dataclass
class TestNode:
    """One node's directory, config and (when started) its ``gitmq node`` process."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    name: str
    dir: Path
    consumers: dict[str, str]  # consumer -> queue
    proc: subprocess.Popen[bytes] | None = None
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.dir / "node.yml"

    @property
    def storage(self) -> Path:
        return self.dir / "storage.git"

    @property
    def log(self) -> Path:
        return self.dir / "node.log"

    def consumer_log(self, consumer: str) -> Path:
        return self.dir / f"{consumer}.log"

    def received(self, consumer: str) -> list[str]:
        """The ids ``consumer`` was given, in order (with repeats, if any)."""
        return [line.split(" ", 1)[0] for line in lines_of(self.consumer_log(consumer))]

    def payloads(self, consumer: str) -> list[str]:
        return [line.split(" ", 1)[1] for line in lines_of(self.consumer_log(consumer))]

    # -------------------------------------------------------------- processes

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        """Start ``gitmq node --config node.yml ARGS``, its stderr going to ``node.log``."""
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is running"
        argv = [GITMQ[0], "-X", "faulthandler", *GITMQ[1:], "node", "--config", self.config]
        with self.log.open("ab") as log:
            self.proc = start([*argv, *args], stdout=log, stderr=log)
        self.started.append(self.proc)
        return self.proc

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Signal the node and wait; a node that hangs gets SIGABRT, so that Python's
        faulthandler (``-X faulthandler``) writes every thread's stack into node.log."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGABRT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(5)
                kill_all([self.proc])
                raise AssertionError(
                    f"node {self.name} ignored signal {sig} for {timeout:g}s; its log:\n"
                    + self.log_text()[-6000:]
                ) from None
        return self.proc.returncode

    def kill(self, *, group: bool = True) -> None:
        """SIGKILL the node; with ``group`` its git children die too (a crashed machine),
        without it a running push may still finish (an ambiguous push)."""
        assert self.proc is not None
        if group:
            kill_all([self.proc])
        else:
            self.proc.kill()
            self.proc.wait()

    def once(self, *args: str) -> Result:
        """``gitmq node --config node.yml --once ARGS``."""
        return run([*GITMQ, "node", "--config", self.config, "--once", *args], timeout=120)

    def publish(self, queue: str, *payloads: str) -> None:
        """Publish through ``gitmq publish`` into the node's storage, one process each."""
        for payload in payloads:
            result = gitmq("publish", self.storage, queue, payload)
            assert result.status == 0, str(result)

    def log_text(self) -> str:
        try:
            return self.log.read_text()
        except FileNotFoundError:
            return ""

    def json_log(self) -> list[dict[str, Any]]:
        """The node's log records (started with ``--log-format json``)."""
        return [json.loads(line) for line in lines_of(self.log) if line.startswith("{")]

    def sync_records(self) -> list[dict[str, Any]]:
        """The ``sync`` field of every sync log line (needs ``--log-format json``)."""
        return [r["sync"] for r in self.json_log() if "sync" in r]


class Cluster:
    """Creates test nodes under one directory and kills whatever is left at the end."""

    def __init__(self, root: Path, remote_url: str) -> None:
        self.root = root
        self.remote_url = remote_url
        self.nodes: list[TestNode] = []

    def node(
        self,
        name: str,
        consumers: Mapping[str, str] | Sequence[str] = (),
        *,
        queues: Sequence[str] = ("orders",),
        interval: str = "200ms",
        jitter: str = "50ms",
        max_push_attempts: int = 10,
        remote: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        python_handler: bool = False,
    ) -> TestNode:
        """A node whose queues all sync with the remote ``central``.

        ``consumers`` maps consumer names to queues; a plain list consumes the first queue.
        With ``python_handler`` they run :func:`record` in the node process instead of a
        shell (the test sets $GITMQ_TEST_RECORD and PYTHONPATH).
        """
        wanted = (
            dict(consumers) if isinstance(consumers, Mapping) else {c: queues[0] for c in consumers}
        )
        node = TestNode(name, self.root / name, wanted)
        data: dict[str, Any] = {
            "node": {"name": name, "identity": {"name": f"Node {name}", "email": f"{name}@test"}},
            "storage": {"path": "storage.git"},
            "remotes": {"central": {"url": self.remote_url, "timeout": "20s", **(remote or {})}},
            "sync": {
                "interval": interval,
                "jitter": jitter,
                "max_push_attempts": max_push_attempts,
            },
            "queues": {q: {"remote": "central"} for q in queues},
            "consumers": {
                c: {
                    "queue": q,
                    "handler": {"python": "nodes:record"}
                    if python_handler
                    else {"command": recorder(node.consumer_log(c))},
                    "retry": {"max_attempts": 3, "initial_delay": "10ms", "max_delay": "100ms"},
                }
                for c, q in wanted.items()
            },
            **(extra or {}),
        }
        write_config(node.config, data)
        self.nodes.append(node)
        return node

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        kill_all([p for node in self.nodes for p in node.started])


# ------------------------------------------------------------------ the remote, read with git


@dataclass(frozen=True)
class Landed:
    """A message on a remote branch, as plain git shows it."""

    sha: str
    parents: tuple[str, ...]
    id: str | None
    payload: str


def remote_messages(repo: Path, queue: str) -> list[Landed]:
    """The messages of ``queue`` in ``repo``, oldest first (``git log --pretty=raw``)."""
    result = run(
        ["git", f"--git-dir={repo}", "log", "--pretty=raw", "--reverse", f"refs/heads/{queue}"],
        timeout=120,
    )
    if result.status != 0:
        assert "unknown revision" in result.err or "bad revision" in result.err, str(result)
        return []
    out: list[Landed] = []
    for chunk in result.out.split("\ncommit "):
        lines = chunk.removeprefix("commit ").split("\n")
        headers, body = _split_raw(lines)
        mid = next((v for k, v in headers if k == "gitmq-id"), None)
        parents = tuple(v for k, v in headers if k == "parent")
        out.append(Landed(lines[0].strip(), parents, mid, body))
    return out


def _split_raw(lines: list[str]) -> tuple[list[tuple[str, str]], str]:
    headers: list[tuple[str, str]] = []
    index = 1
    while index < len(lines) and lines[index]:
        key, _, value = lines[index].partition(" ")
        headers.append((key, value))
        index += 1
    body = [ln.removeprefix("    ") for ln in lines[index + 1 :]]
    return headers, "\n".join(body).strip("\n")


def landed_ids(repo: Path, queue: str = "orders") -> list[str]:
    """The gitmq-id of every message on the remote branch, oldest first."""
    ids = []
    for message in remote_messages(repo, queue):
        assert message.id is not None, f"message {message.sha} has no gitmq-id"
        ids.append(message.id)
    return ids


def assert_landed_once(repo: Path, queue: str, payloads: Sequence[str]) -> list[Landed]:
    """The remote branch is one line of messages holding exactly ``payloads``, each once."""
    messages = remote_messages(repo, queue)
    for index, message in enumerate(messages):
        expected = (messages[index - 1].sha,) if index else ()
        assert message.parents == expected, f"{message.sha} is not on one line: {message}"
    ids = [m.id for m in messages]
    assert len(set(ids)) == len(ids), "a message id landed twice"
    got = [m.payload for m in messages]
    assert len(got) == len(payloads), f"{len(got)} messages landed, expected {len(payloads)}"
    assert sorted(got) == sorted(payloads)
    return messages


def in_producer_order(payloads: Sequence[str]) -> bool:
    """Every producer's ``TAG:i`` messages appear with ``i`` increasing."""
    last: dict[str, int] = {}
    for payload in payloads:
        tag, _, number = payload.rpartition(":")
        if int(number) <= last.get(tag, -1):
            return False
        last[tag] = int(number)
    return True


def git_children(pid: int, command: str) -> list[int]:
    """Pids of running ``git ... COMMAND ...`` processes started by process ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        mine = int(fields[1]) == pid and fields[0] != "Z"
        if mine and argv[:1] == [b"git"] and command.encode() in argv:
            found.append(int(entry.name))
    return found


# ------------------------------------------------------------------ load and soak


def start_recording(node: TestNode, *args: str) -> subprocess.Popen[bytes]:
    """Start a node made with ``python_handler``: its one consumer runs :func:`record`
    into its ``CONSUMER.log`` (the node process gets $GITMQ_TEST_RECORD and PYTHONPATH)."""
    (consumer,) = node.consumers
    env = {"GITMQ_TEST_RECORD": str(node.consumer_log(consumer)), "PYTHONPATH": str(TESTS_DIR)}
    with mock.patch.dict(os.environ, env):
        return node.start(*args)


def wait_synced(node: TestNode) -> None:
    """The node's first sync cycle has run (it was started with ``--log-format json``)."""
    assert node.proc is not None
    wait_for(lambda: node.sync_records(), what=f"{node.name}'s first sync", procs=[node.proc])


@dataclass(frozen=True)
class Paced:
    """A producer process publishing ``TAG:i`` into a node's storage at a steady rate
    (``workers.py pace``), recording each acknowledged publish."""

    tag: str
    rate: float
    acks: Path
    proc: subprocess.Popen[bytes]

    def acked(self) -> list[tuple[str, str]]:
        """``(id, payload)`` of every publish that returned, in publish order."""
        return [(mid, payload) for mid, payload in (ln.split(" ", 1) for ln in lines_of(self.acks))]

    def summary(self) -> dict[str, float]:
        """What the producer wrote when it finished: count, start, end, seconds, max_late."""
        done = self.acks.with_name(self.acks.name + ".done")
        data: dict[str, float] = json.loads(done.read_text())
        return data


def start_paced(node: TestNode, tag: str, rate: float, seconds: float, go: Path) -> Paced:
    """Start a producer of ``orders`` on ``node`` that waits for the file ``go``."""
    acks = node.dir / f"{tag}.acks"
    argv = [sys.executable, WORKERS, "pace", node.storage, "orders", tag, str(rate), str(seconds)]
    return Paced(tag, rate, acks, start([*argv, acks, go]))


def disk_usage(path: Path) -> int:
    """Bytes the files under ``path`` take on disk (``du``: st_blocks * 512)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # a repack removed it meanwhile
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def unreachable_commits(repo: Path) -> int:
    """How many commits in ``repo`` no ref reaches (``git fsck --unreachable --no-reflogs``),
    once no repack runs there."""
    wait_packed(repo)
    result = run(
        ["git", f"--git-dir={repo}", "fsck", "--unreachable", "--no-reflogs", "--no-progress"],
        timeout=600,
    )
    assert result.status == 0, str(result)
    return sum(line.startswith("unreachable commit ") for line in result.out.splitlines())


def child_pids(pid: int) -> list[int]:
    """Every process whose parent is ``pid``, zombies included (children never waited for)."""
    return [proc.pid for proc in proc_table() if proc.ppid == pid]


@dataclass(frozen=True)
class ProcessSample:
    """What a running process holds, from /proc."""

    rss: int  # bytes resident (VmRSS)
    fds: int  # open file descriptors
    children: int  # direct child processes, zombies included


def sample_process(pid: int) -> ProcessSample:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return ProcessSample(rss, fds, len(child_pids(pid)))


def table(rows: Sequence[Sequence[object]]) -> str:
    """Rows (the first one the header) as text columns, for a human reading a run's output."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells
    )


def parametrize_duration(metafunc: Any, argname: str, seconds: float, margin: float) -> None:
    """From ``pytest_generate_tests``: pass ``seconds`` (from a command-line option) as
    the test's ``argname``, with a pytest-timeout of ``seconds + margin`` and the
    duration in the test id. pytest is imported here, not above: node processes import
    this module for :func:`record`."""
    import pytest

    if argname in metafunc.fixturenames:
        limit = pytest.mark.timeout(seconds + margin)
        metafunc.parametrize(argname, [pytest.param(seconds, marks=limit, id=f"{seconds:g}s")])


def wait_packed(repo: Path, timeout: float = 300.0) -> None:
    """Wait until no background repack runs in ``repo`` (a producer's ``Storage.close``
    starts one that outlives it); git fsck beside a repack sees packs vanish."""
    lock = repo / packing.LOCK_NAME
    wait_for(lambda: not lock.exists(), timeout, f"the repack in {repo} to finish", interval=0.1)


def delivering_pair(cluster: Cluster, first: str) -> list[TestNode]:
    """Nodes a and b (consumers c-a and c-b) running, once both delivered ``first``,
    published on a."""
    nodes = [cluster.node(name, [f"c-{name}"]) for name in ("a", "b")]
    for node in nodes:
        node.start()
    nodes[0].publish("orders", first)
    for node in nodes:
        wait_for(lambda node=node: node.payloads(f"c-{node.name}") == [first], timeout=60)
    return nodes


# ------------------------------------------------------------------ observability


def exit_or_record(message: Message) -> None:
    """A Python handler (``nodes:exit_or_record``): the payload ``exit`` raises SystemExit,
    which ends the consumer's thread; any other payload is recorded as :func:`record` does."""
    if message.payload.strip() == b"exit":
        raise SystemExit("the handler exits")
    record(message)


def observed(node: TestNode, port: int) -> str:
    """Turn on ``observability.listen`` on 127.0.0.1:``port`` in ``node``'s config; the base URL."""
    data = yaml.safe_load(node.config.read_text())
    data["observability"] = {"listen": f"127.0.0.1:{port}"}
    write_config(node.config, data)
    return f"http://127.0.0.1:{port}"


def http_get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    """The status and body of a GET of ``url`` (an error status is returned, not raised);
    (0, why) while nothing answers."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError) as exc:
        return 0, str(exc)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(base: str) -> Samples:
    """``/metrics`` of the node at ``base``, parsed by prometheus-client's own parser:
    {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    status, text = http_get(base + "/metrics")
    assert status == 200, (status, text)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))
