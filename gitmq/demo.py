"""``gitmq demo``: three nodes exchange messages through a central git daemon.

Everything is real: a bare repository served by ``git daemon`` on 127.0.0.1,
three ``gitmq node`` processes from the configs shipped in the package
(``gitmq/demo_config/``, a copy of the checkout's ``config/demo/``: the demo
runs from any folder, installed from a wheel or not), messages published with
``gitmq publish`` into each node's storage, and each node's consumer printing
what it receives. It ends with a clean SIGTERM shutdown and a check that every
node saw every message in the same order.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from gitmq.errors import ConfigError
from gitmq.message import Message
from gitmq.storage import Storage
from gitmq.storage.daemon import start_git_daemon
from gitmq.sync import tracking_ref

NODES = ("a", "b", "c")
PER_NODE = 3


def show(message: Message) -> None:
    """The demo consumers' handler: print what arrived, from whom."""
    node = os.environ.get("GITMQ_DEMO_NODE", "?")
    # One write of the whole line: three nodes share the terminal, and print() writes
    # the text and its newline apart when the stream is unbuffered (lines interleave).
    sys.stdout.write(f"  [node-{node}] received {message.text!r} from {message.author.name}\n")
    sys.stdout.flush()


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run three nodes against a local git daemon")
    p.add_argument(
        "--config-dir",
        default=None,
        help="where node-a/b/c.yml live (default: the copies shipped with gitmq)",
    )
    p.add_argument("--keep", action="store_true", help="keep the demo directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with _config_dir(args.config_dir) as config_dir:
        return _run(config_dir, keep=args.keep)


@contextlib.contextmanager
def _config_dir(given: str | None) -> Iterator[Path]:
    """The folder of node-a/b/c.yml: ``--config-dir``, else the package's own copies,
    found through the import system rather than a path relative to a checkout."""
    if given is None:
        with resources.as_file(resources.files("gitmq") / "demo_config") as packaged:
            yield packaged
        return
    config_dir = Path(given)
    if not (config_dir / "node-a.yml").is_file():
        raise ConfigError(
            f"demo configs not found in {config_dir} (no node-a.yml); pass --config-dir "
            f"with the checkout's config/demo folder"
        )
    yield config_dir


def _run(config_dir: Path, *, keep: bool) -> int:
    work = Path(tempfile.mkdtemp(prefix="gitmq-demo-"))
    print(f"demo directory: {work}")
    daemon = nodes = None
    try:
        Storage(work / "central.git").close()
        daemon, port = start_git_daemon(work)
        remote = f"git://127.0.0.1:{port}/central.git"
        print(f"central remote: {remote} (git daemon, pid {daemon.pid})")
        env = {**os.environ, "GITMQ_DEMO_DIR": str(work), "GITMQ_DEMO_REMOTE": remote}
        nodes = {n: _start_node(config_dir / f"node-{n}.yml", env, n) for n in NODES}
        print("three nodes started; publishing 3 orders on each node")
        for n in NODES:
            for i in range(1, PER_NODE + 1):
                _publish(work / f"node-{n}.git", f"order {i} from node-{n}", n)
        return _finish(work, nodes)
    finally:
        for proc in (nodes or {}).values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if daemon is not None:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _finish(work: Path, nodes: dict[str, subprocess.Popen[bytes]]) -> int:
    total = len(NODES) * PER_NODE
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(_consumed(work, n) >= total for n in NODES):
        time.sleep(0.2)
    print("stopping the nodes (SIGTERM: finish handlers, push what is pending)")
    for proc in nodes.values():
        proc.send_signal(signal.SIGTERM)
    codes = {n: proc.wait(timeout=60) for n, proc in nodes.items()}
    orders = {n: _order(work, n) for n in NODES}
    same = len({tuple(o) for o in orders.values()}) == 1
    print(f"exit codes: {codes}")
    print(
        f"each node consumed {[len(o) for o in orders.values()]} of {total} messages; "
        f"same order everywhere: {'yes' if same else 'NO'}"
    )
    ok = (
        same
        and all(c == 0 for c in codes.values())
        and all(len(o) == total for o in orders.values())
    )
    print("demo finished: OK" if ok else "demo finished: FAILED")
    return 0 if ok else 1


def _consumed(work: Path, node: str) -> int:
    return len(_order(work, node))


def _order(work: Path, node: str) -> list[str]:
    with Storage(work / f"node-{node}.git") as storage:
        tag = storage.read_ref(f"refs/tags/node-{node}-shipping")
        tip = storage.read_ref(tracking_ref("central", "orders"))
        if tag is None or tip is None:
            return []
        return [m.text for m in storage.messages_between(None, tag)]


def _publish(storage: Path, text: str, node: str) -> None:
    author = f"Demo producer {node} <producer-{node}@demo.gitmq.invalid>"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "gitmq.cli.main",
            "publish",
            "--author",
            author,
            str(storage),
            "orders",
            text,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _start_node(config: Path, env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gitmq.cli.main",
            "node",
            "--config",
            str(config),
            "--log-level",
            "warning",
        ],
        env={**env, "GITMQ_DEMO_NODE": name},
    )
