"""systemd's notify protocol (gitmq/notify.py): a real ``gitmq node`` process tells the
socket in $NOTIFY_SOCKET that it is ready after its first sync, pets the watchdog
while it runs and says it is stopping at SIGTERM.

The test plays systemd: it binds an abstract unix datagram socket (the ``@`` form
systemd itself uses) and reads what the node sends.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Iterator
from unittest import mock

import pytest
from nodes import Cluster, TestNode

from gitmq.notify import Notifier, watchdog_seconds


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, socket.socket]]:
    """An abstract datagram socket: its $NOTIFY_SOCKET name (``@...``) and the socket."""
    name = f"@gitmq-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name[1:])
        yield name, sock


def receive(sock: socket.socket, node: TestNode, until: str, timeout: float) -> list[str]:
    """Datagrams (as text) until one holds the line ``until``; fails after ``timeout``."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while not any(until in message.splitlines() for message in got):
        left = deadline - time.monotonic()
        assert left > 0, f"no {until} within {timeout:g}s; got {got}\n{node.log_text()[-3000:]}"
        sock.settimeout(min(left, 0.5))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            assert node.proc is not None and node.proc.poll() is None, node.log_text()[-3000:]
    return got


def test_ready_after_the_first_sync_then_watchdog_pets_then_stopping(
    cluster: Cluster, notify_socket: tuple[str, socket.socket]
) -> None:
    name, sock = notify_socket
    node = cluster.node("a", ["billing"], interval="300ms")
    env = {"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "400000"}  # a pet every 0.2 s
    with mock.patch.dict(os.environ, env):
        node.start("--log-format", "json")
    try:
        before = receive(sock, node, "READY=1", timeout=60)
        assert node.sync_records(), "READY=1 came before the first sync was logged"
        ready = before[-1].splitlines()
        assert ready[0] == "READY=1"
        assert ready[1] == "STATUS=1/1 remotes up, 1/1 consumers running"
        assert all(m == "WATCHDOG=1" for m in before[:-1]), before  # only pets came before
        pets = receive_pets(sock, node, 5)
        assert len(pets) >= 5
    finally:
        stopped = node.stop()
    messages = drain(sock)
    stopping = [m for m in messages if "STOPPING=1" in m.splitlines()]
    assert stopping and stopping[0].startswith("STOPPING=1\nSTATUS=node a stopping"), messages
    assert stopped == 0


def receive_pets(sock: socket.socket, node: TestNode, count: int) -> list[float]:
    """When each of the next ``count`` WATCHDOG=1 pets came (monotonic seconds)."""
    pets: list[float] = []
    while len(pets) < count:
        receive(sock, node, "WATCHDOG=1", timeout=10)
        pets.append(time.monotonic())
    return pets


def drain(sock: socket.socket) -> list[str]:
    """What is still queued on ``sock``."""
    sock.settimeout(0)
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def test_no_socket_no_notices_and_a_watchdog_for_another_process_is_not_ours() -> None:
    assert Notifier({}).send("READY=1") is False
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 30
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "soon"}) is None
    assert Notifier({"NOTIFY_SOCKET": "@x"}).pet() is False  # no WATCHDOG_USEC: no pets


def test_a_notice_to_a_socket_that_is_gone_is_a_warning_not_a_crash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": f"@gitmq-test-gone-{secrets.token_hex(8)}"})
    assert notifier.ready("up") is False
    assert "cannot notify systemd at gitmq-test-gone-" in caplog.text
