"""``gitmq status``: the node, queues, consumers and remotes, as real processes show them."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nodes import write_config
from servers import GitDaemon
from util import GITMQ, gitmq, kill_all, ok, start, stop, wait_for

from gitmq import Consumer, Producer, Storage

ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BOX = set("─│┃━┏┓┗┛┌┐└┘├┤┬┴┼╭╮╰╯")


def table(out: str, title: str) -> list[dict[str, str]]:
    """The rows of the plain table ``title``, cut at the header's column starts (so the
    test fails if a row's cells do not line up under their headers)."""
    lines = out.splitlines()
    start_at = lines.index(f"{title}:") + 1
    header = lines[start_at]
    if header.strip() == "(none)":
        return []
    starts = [m.start() for m in re.finditer(r"(?:(?<=^)|(?<=  ))(?=\S)", header)]
    names = [header[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    rows = []
    for line in lines[start_at + 1 :]:
        if not line.startswith("  "):
            break
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        rows.append(dict(zip(names, cells, strict=True)))
    return rows


def config(tmp_path: Path, consumers: dict[str, str], remote: str | None = None) -> Path:
    data: dict[str, Any] = {
        "node": {"name": "n1"},
        "storage": {"path": "storage.git"},
        "queues": {"orders": {"remote": "central"} if remote else {}},
        "consumers": {
            name: {"queue": queue, "handler": {"command": ["/bin/true"]}}
            for name, queue in consumers.items()
        },
    }
    if remote:
        data["remotes"] = {"central": {"url": remote, "timeout": "20s"}}
    return write_config(tmp_path / "node.yml", data)


def publish_at(storage: Path, queue: str, *ages: float) -> list[str]:
    """Publish one message per age (seconds before now), oldest first; their shas."""
    now = datetime.now(UTC)
    shas = []
    with Storage(storage) as opened:
        for i, age in enumerate(ages):
            at = now - timedelta(seconds=age)
            shas.append(
                Producer(opened, queue, clock=lambda at=at: at).publish(f"m{i}".encode()).sha
            )
    return shas


def test_every_consumer_is_listed_with_its_lag_in_messages_and_seconds(tmp_path: Path) -> None:
    node = config(tmp_path, {"billing": "orders", "fresh": "orders"})
    storage = tmp_path / "storage.git"
    shas = publish_at(storage, "orders", 7200, 3600, 60)
    with Storage(storage) as opened:
        Consumer(opened, "billing", "orders").ack_through(opened.read(shas[0]))
        Consumer(opened, "audit-tool", "orders").ack_through(opened.read(shas[2]))
    result = ok(gitmq("status", "--config", node))
    rows = {row["CONSUMER"]: row for row in table(result.out, "consumers")}
    assert sorted(rows) == ["audit-tool", "billing", "fresh"]
    assert rows["fresh"] == {  # in the config only: no tag yet
        "CONSUMER": "fresh", "QUEUE": "orders", "POSITION": "beginning", "LAG": "3",
        "WAITING": "2h00m", "RUNNING": "-", "DELIVERED": "-", "DEAD": "-", "LAST ERROR": "-",
    }  # fmt: skip
    assert (rows["billing"]["POSITION"], rows["billing"]["LAG"]) == (shas[0][:12], "2")
    assert rows["billing"]["WAITING"] == "1h00m"
    assert (rows["audit-tool"]["QUEUE"], rows["audit-tool"]["LAG"]) == ("orders", "0")
    assert rows["audit-tool"]["WAITING"] == "0s"
    [queue] = table(result.out, "queues")
    assert queue == {
        "QUEUE": "orders", "MESSAGES": "3", "CONFIRMED": "-", "UNPUSHED": "-",
        "NEWEST": queue["NEWEST"], "DEAD": "0",
    }  # fmt: skip
    assert re.fullmatch(r"1m0[0-9]s", queue["NEWEST"]), queue  # published 60 s ago
    assert result.out.splitlines()[0] == (
        "node: none running (start one with 'gitmq node --config FILE')"
    )

    status = json.loads(ok(gitmq("status", "--json", storage)).out)
    consumers = {c["name"]: c for c in status["consumers"]}
    assert sorted(consumers) == ["audit-tool", "billing"]  # without --config: the tags
    assert consumers["billing"]["lag"] == 2
    assert 3600 <= consumers["billing"]["lag_seconds"] < 3600 + 60
    assert consumers["billing"]["position"] == shas[0]


def test_dead_letters_are_counted_on_the_queue(tmp_path: Path) -> None:
    storage = tmp_path / "s.git"
    publish_at(storage, "orders", 10, 5)
    gives_up = ["--drain", "--max-attempts", "1", "--exec", "false"]
    ok(gitmq("consume", *gives_up, storage, "orders", "c"))  # two dead letters
    ok(gitmq("dlq", "replay", "--id", dead_letter_ids(storage)[0], storage, "orders"))
    rows = {r["QUEUE"]: r for r in table(ok(gitmq("status", storage)).out, "queues")}
    # The DLQ holds two dead letters and one replay record; one dead letter is pending.
    assert (rows["orders"]["DEAD"], rows["orders.dlq"]["MESSAGES"]) == ("1", "3")


def dead_letter_ids(storage: Path) -> list[str]:
    out = ok(gitmq("dlq", "list", "--json", storage, "orders")).out
    return [json.loads(line)["id"] for line in out.splitlines()]


def test_a_synced_queue_shows_confirmed_and_unpushed(
    tmp_path: Path, git_daemon: GitDaemon, central: Path
) -> None:
    node = config(tmp_path, {"c": "orders"}, remote=git_daemon.url("central.git"))
    storage = tmp_path / "storage.git"
    for payload in ("a", "b"):
        ok(gitmq("publish", storage, "orders", payload))
    ok(gitmq("sync", "--config", node))
    ok(gitmq("publish", storage, "orders", "c"))
    result = ok(gitmq("status", "--config", node))
    [queue] = table(result.out, "queues")
    assert (queue["MESSAGES"], queue["CONFIRMED"], queue["UNPUSHED"]) == ("3", "2", "1")
    [remote] = table(result.out, "remotes")
    assert remote["REMOTE"] == "central" and remote["SYNCED"] == "-"  # no node: not known
    [entry] = json.loads(ok(gitmq("status", "--json", "--config", node)).out)["queues"]
    assert {k: entry[k] for k in ("name", "remote", "messages", "confirmed", "unpushed")} == {
        "name": "orders", "remote": "central", "messages": 3, "confirmed": 2, "unpushed": 1,
    }  # fmt: skip
    [c] = json.loads(ok(gitmq("status", "--json", "--config", node)).out)["consumers"]
    assert (c["name"], c["position"], c["lag"]) == ("c", None, 2)  # confirmed ones only


def write_node_file(storage: Path, **extra: Any) -> dict[str, Any]:
    """The node file as a running node writes it, for this (live) test process."""
    info = {
        "node": "n1",
        "pid": os.getpid(),
        "started": time.time() - 100,
        "remotes": {"central": "no budget"},
        **extra,
    }
    (storage / "gitmq-node.json").write_text(json.dumps(info) + "\n")
    return info


def test_the_node_file_shows_last_sync_result_and_last_errors(tmp_path: Path) -> None:
    storage = tmp_path / "s.git"
    publish_at(storage, "orders", 30)
    now = time.time()
    info = write_node_file(
        storage,
        observability="127.0.0.1:9464",
        syncs={
            "central": {
                "at": now - 5,
                "ok": False,
                "line": "pushed 0 messages",
                "error": "remote git://127.0.0.1:1/c.git: fetch failed: fatal: unable to connect",
                "down_since": now - 65,
            },
            "backup": {
                "at": now - 2,
                "ok": True,
                "line": "pushed 1 message",
                "error": None,
                "down_since": None,
            },
        },
        consumers={
            "billing": {
                "queue": "orders",
                "running": True,
                "last_error": "handler exited 3: boom",
                "delivered": 7,
                "dead_lettered": 1,
            },
        },
    )
    out = ok(gitmq("status", storage)).out
    since = datetime.fromtimestamp(info["started"], UTC).isoformat(timespec="seconds")
    assert out.splitlines()[0] == (
        f"node: n1 (process {os.getpid()}, running since {since}); observability on 127.0.0.1:9464"
    )
    remotes = {r["REMOTE"]: r for r in table(out, "remotes")}
    assert remotes["central"]["SYNCED"] in ("5s ago", "6s ago")
    assert remotes["central"]["RESULT"] == "failed"
    assert remotes["central"]["DOWN FOR"] in ("1m05s", "1m06s")
    assert remotes["central"]["LAST SYNC"] == (
        "remote git://127.0.0.1:1/c.git: fetch failed: fatal: unable to connect"
    )
    assert (remotes["backup"]["RESULT"], remotes["backup"]["LAST SYNC"]) == (
        "ok", "pushed 1 message",
    )  # fmt: skip
    assert table(out, "pace") == [{"REMOTE": "central", "BUDGET AND PACE": "no budget"}]
    [billing] = table(out, "consumers")
    assert billing == {
        "CONSUMER": "billing", "QUEUE": "orders", "POSITION": "beginning", "LAG": "1",
        "WAITING": billing["WAITING"], "RUNNING": "yes", "DELIVERED": "7", "DEAD": "1",
        "LAST ERROR": "handler exited 3: boom",
    }  # fmt: skip
    status = json.loads(ok(gitmq("status", "--json", storage)).out)
    assert status["node"] == info
    assert [r["name"] for r in status["remotes"]] == ["backup", "central"]
    assert status["consumers"][0]["last_error"] == "handler exited 3: boom"


def test_an_older_node_file_without_syncs_or_consumers(tmp_path: Path) -> None:
    storage = tmp_path / "s.git"
    publish_at(storage, "orders", 30)
    write_node_file(storage)
    out = ok(gitmq("status", storage)).out
    assert out.startswith(f"node: n1 (process {os.getpid()}, running since ")
    assert table(out, "remotes") == [
        {"REMOTE": "central", "SYNCED": "-", "RESULT": "-", "DOWN FOR": "-", "LAST SYNC": "-"}
    ]


def test_a_node_that_stopped_is_not_shown(tmp_path: Path) -> None:
    storage = tmp_path / "s.git"
    publish_at(storage, "orders", 30)
    info = write_node_file(storage)
    info["pid"] = _dead_pid()
    (storage / "gitmq-node.json").write_text(json.dumps(info))
    assert ok(gitmq("status", storage)).out.startswith("node: none running")


def _dead_pid() -> int:
    """The pid of a process that has exited (and was reaped)."""
    proc = subprocess.Popen(["/bin/true"])
    proc.wait()
    return proc.pid


def test_plain_output_has_no_escape_codes_or_box_drawing_and_json_parses(tmp_path: Path) -> None:
    storage = tmp_path / "s.git"
    publish_at(storage, "orders", 30)
    out = ok(gitmq("status", storage)).out
    assert "\x1b" not in out and not BOX & set(out), out
    status = json.loads(ok(gitmq("status", "--json", storage)).out)
    assert {"path", "node", "queues", "consumers", "remotes"} <= set(status)
    assert status["path"] == str(storage)


# ------------------------------------------------------------------ --watch


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    kill_all(started)


def read_until(fd: int, seen: bytearray, done: Callable[[str], bool], what: str) -> str:
    """Read ``fd`` into ``seen`` until ``done(text without escape codes)``."""
    deadline = time.monotonic() + 20
    while not done(ESCAPE.sub("", seen.decode("utf-8", "replace"))):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; saw:\n{seen.decode()}")
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:  # the terminal closed: the process is gone
                break
    return ESCAPE.sub("", seen.decode("utf-8", "replace"))


def test_watch_on_a_terminal_redraws_and_exits_0_on_sigint(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    storage = tmp_path / "s.git"
    publish_at(storage, "orders", 30)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "50"}
    proc = subprocess.Popen(
        [*GITMQ, "status", "--watch", str(storage)],
        stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
    )  # fmt: skip
    procs.append(proc)
    os.close(slave)
    seen = bytearray()
    read_until(master, seen, lambda t: re.search(r"orders\s+1\s", t) is not None, "a draw")
    ok(gitmq("publish", storage, "orders", "next"))
    read_until(master, seen, lambda t: re.search(r"orders\s+2\s", t) is not None, "a redraw")
    assert b"\x1b[" in seen  # drawn in place, by rich
    assert stop(proc, signal.SIGINT) == 0
    os.close(master)


def test_watch_in_a_pipe_prints_plain_blocks_and_exits_0_on_sigterm(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    storage = tmp_path / "s.git"
    publish_at(storage, "orders", 30)
    proc = start([*GITMQ, "status", "--watch", storage])
    procs.append(proc)
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    seen = bytearray()

    def blocks() -> int:
        seen.extend(proc.stdout.read() or b"") if proc.stdout else None
        return seen.count(b"\nqueues:\n")

    wait_for(lambda: blocks() >= 2, what="two drawings", procs=[proc])
    assert stop(proc) == 0
    text = seen.decode()
    assert "\x1b" not in text and not BOX & set(text)
    first = text.split("\n\n")[0] + "\n"
    assert table(first, "queues")[0]["MESSAGES"] == "1"
