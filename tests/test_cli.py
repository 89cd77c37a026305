"""The command line as a user runs it: real processes, exact output, exit codes."""

from __future__ import annotations

import base64
import json
import os
import shlex
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from util import (
    GITMQ,
    GITMQ_CONSUME,
    UUID7,
    fails,
    gitmq,
    gitmq_produce,
    kill_all,
    ok,
    rev_parse,
    snapshot,
    start,
    stop,
    wait_for,
)

from gitmq import Consumer, Identity, Message, Producer, Storage

MIB = 1024 * 1024
NOON = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def messages(path: Path, queue: str = "orders") -> list[Message]:
    with Storage(path, create=False) as storage:
        return list(Consumer(storage, "test-reader", queue).poll())


def payloads(path: Path, queue: str = "orders") -> list[bytes]:
    return [m.payload for m in messages(path, queue)]


def publish(path: Path, *items: str | bytes, queue: str = "orders") -> list[Message]:
    """Set-up through the API: the CLI's own publishing is tested on its own."""
    with Storage(path) as storage:
        return Producer(storage, queue).publish_many(items)


def ack_all(path: Path, queue: str, consumer: str) -> None:
    with Storage(path) as storage:
        reader = Consumer(storage, consumer, queue)
        for message in reader.poll():
            reader.ack(message)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "q"


# ------------------------------------------------------------------- publish


def test_publish_an_argument_prints_the_message_id(path: Path) -> None:
    result = ok(gitmq("publish", path, "orders", "hello world"))
    assert result.stderr == b""
    [line] = result.out.splitlines()
    assert UUID7.match(line)
    [message] = messages(path)
    assert (message.id, message.payload) == (line, b"hello world")


def test_publish_from_stdin_keeps_every_byte(path: Path) -> None:
    payload = b"line 1\nline 2  \n\n\x00\xff\xfe tail\n"
    ok(gitmq("publish", path, "orders", input=payload))
    ok(gitmq("publish", path, "orders", input=b""))
    assert payloads(path) == [payload, b""]


def test_publish_an_argument_that_is_not_utf8(path: Path) -> None:
    ok(gitmq("publish", path, "orders", b"caf\xe9 \xff"))
    assert payloads(path) == [b"caf\xe9 \xff"]


def test_publish_with_headers_and_author(path: Path) -> None:
    ok(
        gitmq(
            "publish",
            path,
            "orders",
            '{"id": 1}',
            "--header",
            "content-type=application/json",
            "--header",
            "query=a=b&c=d",
            "--author",
            "Orders API <orders@example.invalid>",
        )
    )
    [message] = messages(path)
    assert message.headers == {"content-type": "application/json", "query": "a=b&c=d"}
    assert message.author == Identity("Orders API", "orders@example.invalid")


def test_publish_lines(path: Path) -> None:
    result = ok(gitmq("publish", "--lines", path, "orders", input=b"one\ntwo\r\n\nlast"))
    assert result.out == "published 4 messages to orders\n"
    assert payloads(path) == [b"one", b"two", b"", b"last"]


def test_publish_exactly_the_limit_and_over_it(path: Path) -> None:
    ok(gitmq("publish", path, "orders", input=b"x" * MIB))
    before = snapshot(path)
    fails(
        gitmq("publish", path, "orders", input=b"x" * (MIB + 1)),
        2,
        "payload of 1048577 bytes is over the limit of 1048576 bytes for queue 'orders'; "
        "nothing was published (raise max_payload or store large data elsewhere and "
        "publish a reference)",
    )
    assert snapshot(path) == before
    fails(
        gitmq("publish", "--max-payload", "3", path, "orders", "four"),
        2,
        "payload of 4 bytes is over the limit of 3 bytes for queue 'orders'; nothing was "
        "published (raise max_payload or store large data elsewhere and publish a reference)",
    )
    assert snapshot(path) == before
    assert [len(p) for p in payloads(path)] == [MIB]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--header", "novalue"], "invalid --header 'novalue': use NAME=VALUE"),
        (["--header", "=v"], "invalid --header '=v': use NAME=VALUE"),
        (
            ["--header", "a b=c"],
            "invalid header name 'a b': use letters, digits, '.', '_' and '-'",
        ),
        (["--author", "nobody"], "invalid --author 'nobody': use 'Name <email>'"),
    ],
)
def test_publish_bad_options_are_usage_errors_and_write_nothing(
    path: Path, args: list[str], error: str
) -> None:
    publish(path, "first")
    before = snapshot(path)
    fails(gitmq("publish", path, "orders", "x", *args), 2, error)
    assert snapshot(path) == before


# ------------------------------------------------------------------- consume


def test_consume_drain_prints_each_payload_then_exits(path: Path) -> None:
    publish(path, "one", "two\nlines", "")
    result = ok(gitmq("consume", "--drain", path, "orders", "billing"))
    assert result.stdout == b"one\ntwo\nlines\n\n"
    assert result.stderr == b""
    assert rev_parse(path, "refs/tags/billing") == rev_parse(path, "refs/heads/orders")
    assert ok(gitmq("consume", "--drain", path, "orders", "billing")).stdout == b""
    assert ok(gitmq("consume", "--drain", path, "orders", "audit")).stdout.count(b"\n") == 4


def test_consume_json(path: Path) -> None:
    with Storage(path) as storage:
        producer = Producer(storage, "orders")
        first, second = producer.publish('{"a": 1}', {"k": "v"}), producer.publish(b"\x00\xff")
    result = ok(gitmq("consume", "--json", "--drain", path, "orders", "billing"))
    assert [json.loads(line) for line in result.out.splitlines()] == [
        {
            "id": first.id,
            "sha": first.sha,
            "time": first.time.isoformat(),
            "author": str(first.author),
            "headers": {"k": "v"},
            "payload": '{"a": 1}',
        },
        {
            "id": second.id,
            "sha": second.sha,
            "time": second.time.isoformat(),
            "author": str(second.author),
            "headers": {},
            "payload_base64": base64.b64encode(b"\x00\xff").decode(),
        },
    ]


HANDLER = """\
import base64, json, os, sys
payload = sys.stdin.buffer.read()
env = {k: v for k, v in os.environ.items() if k.startswith("GITMQ_")}
out = os.path.join(sys.argv[1], env["GITMQ_ID"] + ".json")
with open(out, "w") as fh:
    json.dump({"argv": sys.argv[2:], "payload": base64.b64encode(payload).decode(), "env": env}, fh)
if payload.startswith(b"exit "):
    print("failing on purpose", file=sys.stderr)
    sys.exit(int(payload[5:]))
"""


@pytest.fixture
def handler(tmp_path: Path) -> tuple[str, Path]:
    """An --exec command that records its argv, stdin and GITMQ_* environment."""
    script = tmp_path / "handler.py"
    script.write_text(HANDLER)
    out = tmp_path / "handled"
    out.mkdir()
    return shlex.join([sys.executable, str(script), str(out)]), out


def test_consume_exec_gets_payload_on_stdin_and_metadata_in_env(
    path: Path, tmp_path: Path, handler: tuple[str, Path]
) -> None:
    command, out = handler
    ok(gitmq("publish", path, "orders", "$(touch pwned-payload)", "--header", "x-y=$(touch h)"))
    [message] = messages(path)
    # Shell syntax in the command line is passed through literally: no shell runs.
    exec_cmd = command + " '$(touch pwned-arg)' '; touch pwned-semicolon' \"a b\" `x`"
    result = ok(
        gitmq("consume", "--drain", "--exec", exec_cmd, path, "orders", "billing", cwd=tmp_path)
    )
    assert result.stdout == b""
    record = json.loads((out / f"{message.id}.json").read_text())
    assert record["argv"] == ["$(touch pwned-arg)", "; touch pwned-semicolon", "a b", "`x`"]
    assert base64.b64decode(record["payload"]) == b"$(touch pwned-payload)"
    assert record["env"] == {
        "GITMQ_ID": message.id,
        "GITMQ_SHA": message.sha,
        "GITMQ_QUEUE": "orders",
        "GITMQ_CONSUMER": "billing",
        "GITMQ_AUTHOR": str(message.author),
        "GITMQ_TIME": message.time.isoformat(),
        "GITMQ_HEADER_X_Y": "$(touch h)",
    }
    assert not list(tmp_path.glob("pwned*")) and not (tmp_path / "h").exists()
    assert not list(Path.cwd().glob("pwned*"))
    assert rev_parse(path, "refs/tags/billing") == message.sha


def test_consume_exec_exit_status_acks_or_dead_letters(
    path: Path, handler: tuple[str, Path]
) -> None:
    command, out = handler
    bad = publish(path, "ok 1", "exit 3", "ok 2")[1]
    result = ok(
        gitmq("consume", "--drain", "--max-attempts", "2", "--exec", command, path, "orders", "c")
    )
    assert len(list(out.iterdir())) == 3  # every message reached the command
    assert rev_parse(path, "refs/tags/c") == rev_parse(path, "refs/heads/orders")
    [dead] = messages(path, "orders.dlq")
    assert dead.payload == b"exit 3"
    assert dead.headers["dead-letter-original-id"] == bad.id
    assert dead.headers["dead-letter-attempts"] == "2"
    assert dead.headers["dead-letter-error"] == (
        "HandlerFailed: handler command exited 3: failing on purpose"
    )
    assert "moved to dead-letter queue orders.dlq after 2 attempts" in result.err


def test_consume_exec_of_a_missing_program_is_refused_before_anything_is_consumed(
    path: Path,
) -> None:
    publish(path, "x")
    fails(
        gitmq("consume", "--drain", "--exec", "no-such-program-gitmq", path, "orders", "c"),
        2,
        "handler command 'no-such-program-gitmq' is not an executable file on PATH; install "
        "it or fix the name (nothing was consumed)",
    )
    assert messages(path, "orders.dlq") == [] and rev_parse(path, "refs/tags/c") is None


def test_consume_runs_until_sigterm_and_prints_messages_as_they_arrive(path: Path) -> None:
    publish(path, "before start")
    proc = start([*GITMQ, "consume", path, "orders", "billing"])
    try:
        tag = path / "refs/tags/billing"
        wait_for(tag.exists, what="the first message to be consumed", procs=[proc])
        ok(gitmq("publish", path, "orders", "while running"))
        tip = rev_parse(path, "refs/heads/orders")
        wait_for(lambda: rev_parse(path, "refs/tags/billing") == tip, procs=[proc])
        assert stop(proc, signal.SIGTERM) == 0
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.read() == b"before start\nwhile running\n"
        assert proc.stderr.read() == b""
    finally:
        kill_all([proc])


def test_consume_conflicting_tag_is_exit_7(path: Path) -> None:
    [other] = publish(path, "x", queue="other")
    publish(path, "y")
    ack_all(path, "other", "billing")
    fails(
        gitmq("consume", "--drain", path, "orders", "billing"),
        7,
        f"consumer 'billing' is at {other.sha[:12]}, which is not on queue 'orders'; "
        f"reset it with 'gitmq seek' (see docs/operations.md)",
    )


# ----------------------------------------------------------------------- log


@pytest.fixture
def known(path: Path) -> list[Message]:
    """Messages with known authors and times."""
    author = Identity("Orders API", "orders@example.invalid")
    with Storage(path) as storage:
        producer = Producer(storage, "orders", author=author, clock=lambda: NOON)
        return producer.publish_many(
            ["short", "two\n  lines\n", "", "x" * 100, b"\xff\x00", '{"id": 1}']
        )


def test_log_lists_newest_first_with_a_preview(path: Path, known: list[Message]) -> None:
    result = ok(gitmq("log", path, "orders"))
    prefix = "  2024-05-01T12:00:00+00:00  Orders API <orders@example.invalid>  "
    assert result.out.splitlines() == [
        f"{known[5].id}{prefix}" + '{"id": 1}',
        f"{known[4].id}{prefix}" + "\ufffd\x00",
        f"{known[3].id}{prefix}" + "x" * 57 + "...",
        f"{known[2].id}{prefix}" + "''",
        f"{known[1].id}{prefix}" + "two lines",
        f"{known[0].id}{prefix}" + "short",
    ]
    limited = ok(gitmq("log", "-n", "2", path, "orders")).out.splitlines()
    assert [line.split()[0] for line in limited] == [known[5].id, known[4].id]


def test_log_json(path: Path, known: list[Message]) -> None:
    lines = ok(gitmq("log", "--json", "-n", "0", path, "orders")).out.splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["id"] for r in records] == [m.id for m in reversed(known)]
    assert records[1]["payload_base64"] == base64.b64encode(b"\xff\x00").decode()
    assert records[0] == {
        "id": known[5].id,
        "sha": known[5].sha,
        "time": "2024-05-01T12:00:00+00:00",
        "author": "Orders API <orders@example.invalid>",
        "headers": {},
        "payload": '{"id": 1}',
    }


def test_log_of_a_missing_queue_or_storage(path: Path, tmp_path: Path) -> None:
    publish(path, "x")
    fails(gitmq("log", path, "nope"), 4, f"queue 'nope' does not exist in {path}")
    missing = tmp_path / "missing"
    fails(
        gitmq("log", missing, "orders"),
        3,
        f"no storage at {missing}; create it first (gitmq creates it on publish)",
    )
    assert not missing.exists()


# -------------------------------------------------------------------- status


def test_status_counts_and_lag(path: Path) -> None:
    sent = publish(path, *[f"m{i}" for i in range(5)])
    publish(path, "a", queue="audit/log")
    with Storage(path) as storage:
        Consumer(storage, "billing", "orders").ack_through(sent[1])
        Consumer(storage, "shipping", "orders").ack_through(sent[4])
    text = ok(gitmq("status", path)).out
    lines = text.splitlines()
    assert lines[:5] == [
        "node: none running (start one with 'gitmq node --config FILE')",
        "queues:",
        "  QUEUE      MESSAGES  CONFIRMED  UNPUSHED  NEWEST  DEAD",
        f"  audit/log  1         -          -         {lines[3].split()[4]:<6}  0",
        f"  orders     5         -          -         {lines[4].split()[4]:<6}  0",
    ]
    assert lines[5:] == [
        "consumers:",
        "  CONSUMER  QUEUE   POSITION      LAG  WAITING  RUNNING  DELIVERED  DEAD  LAST ERROR",
        f"  billing   orders  {sent[1].sha[:12]}  3    {lines[7].split()[4]:<7}  -        -"
        "          -     -",
        f"  shipping  orders  {sent[4].sha[:12]}  0    0s       -        -          -     -",
    ]
    status = json.loads(ok(gitmq("status", "--json", path)).out)
    assert status["path"] == str(path)
    assert [{k: q[k] for k in ("name", "tip", "messages")} for q in status["queues"]] == [
        {"name": "audit/log", "tip": rev_parse(path, "refs/heads/audit/log"), "messages": 1},
        {"name": "orders", "tip": sent[4].sha, "messages": 5},
    ]
    assert [
        {k: c[k] for k in ("name", "position", "queue", "lag")} for c in status["consumers"]
    ] == [
        {"name": "billing", "position": sent[1].sha, "queue": "orders", "lag": 3},
        {"name": "shipping", "position": sent[4].sha, "queue": "orders", "lag": 0},
    ]


def test_status_of_something_that_is_not_a_storage(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "file").write_text("x")
    fails(
        gitmq("status", tmp_path / "dir"),
        3,
        f"storage path {tmp_path / 'dir'} is not a git repository and not empty; "
        f"point at a GitMQ storage, an empty directory or a new path",
    )


# ---------------------------------------------------------------------- seek


def test_seek_then_consume(path: Path) -> None:
    ticks = iter(range(100))
    with Storage(path) as storage:
        sent = Producer(
            storage, "orders", clock=lambda: NOON + timedelta(seconds=next(ticks))
        ).publish_many([f"m{i}" for i in range(6)])

    def seek(target: str) -> str:
        return ok(gitmq("seek", path, "orders", "billing", target)).out

    def pending() -> list[bytes]:
        with Storage(path) as storage:
            return [m.payload for m in Consumer(storage, "billing", "orders").poll()]

    ack_all(path, "orders", "billing")
    assert seek("beginning") == "consumer billing now at the beginning\n"
    assert pending() == [b"m0", b"m1", b"m2", b"m3", b"m4", b"m5"]
    assert seek(sent[3].id) == f"consumer billing now at {sent[2].sha[:12]}\n"
    assert pending() == [b"m3", b"m4", b"m5"]
    assert seek(sent[4].sha[:10]) == f"consumer billing now at {sent[3].sha[:12]}\n"
    assert pending() == [b"m4", b"m5"]
    seek("2024-05-01T12:00:05+00:00")
    assert pending() == [b"m5"]
    seek("2024-05-01T14:00:01+02:00")
    assert pending() == [b"m1", b"m2", b"m3", b"m4", b"m5"]
    assert ok(gitmq("consume", "--drain", path, "orders", "billing")).stdout == (
        b"m1\nm2\nm3\nm4\nm5\n"
    )
    seek(sent[2].id)
    assert seek("end") == f"consumer billing now at {sent[5].sha[:12]}\n"
    assert pending() == []


def test_seek_errors_change_nothing(path: Path) -> None:
    publish(path, "x")
    ack_all(path, "orders", "billing")
    before = snapshot(path)
    fails(
        gitmq("seek", path, "orders", "billing", "zzzzzzz"),
        4,
        "no message 'zzzzzzz' on queue 'orders'; give a message id, a commit id, "
        "an ISO time, 'beginning' or 'end'",
    )
    fails(
        gitmq("seek", path, "orders", "billing", "2024-05-01T12:00:00"),
        2,
        "time '2024-05-01T12:00:00' has no time zone; add one, e.g. 2024-05-01T12:00:00+00:00",
    )
    fails(
        gitmq("seek", path, "nope", "billing", "end"),
        4,
        f"queue 'nope' does not exist in {path}; check the name ('gitmq status {path}' "
        f"lists the queues); nothing was changed",
    )
    assert snapshot(path) == before


# -------------------------------------------------------- errors and --help


def test_storage_errors_are_one_line_with_exit_3(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("precious")
    fails(
        gitmq("publish", file, "orders", "x"),
        3,
        f"storage path {file} is a file, not a directory; choose another path",
    )
    assert file.read_text() == "precious"
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("x")
    before = snapshot(plain)
    for argv in (
        ["publish", plain, "orders", "x"],
        ["consume", "--drain", plain, "orders", "c"],
        ["log", plain, "orders"],
        ["seek", plain, "orders", "c", "end"],
    ):
        fails(
            gitmq(*argv),
            3,
            f"storage path {plain} is not a git repository and not empty; "
            f"point at a GitMQ storage, an empty directory or a new path",
        )
    assert snapshot(plain) == before


def test_corrupted_ref_is_exit_3_and_changes_nothing(path: Path) -> None:
    publish(path, "x")
    (path / "refs/heads/orders").write_text("not a commit id\n")
    before = snapshot(path)
    message = (
        f"ref refs/heads/orders in {path} is corrupted (holds 'not a commit id'); "
        f"restore it from the remote or point it at a commit with 'git update-ref'"
    )
    fails(gitmq("publish", path, "orders", "y"), 3, message)
    fails(gitmq("consume", "--drain", path, "orders", "c"), 3, message)
    assert snapshot(path) == before


@pytest.mark.parametrize("command", ["", "publish", "consume", "log", "status", "seek", "doctor"])
def test_help_for_every_command(command: str) -> None:
    argv = [command, "--help"] if command else ["--help"]
    result = ok(gitmq(*argv))
    assert result.out.startswith(f"usage: gitmq {command}".rstrip())
    if not command:
        assert "Exit codes: 0 ok, 1 failure, 2 usage, 3 storage, 4 not found" in result.out


def test_version() -> None:
    assert ok(gitmq("--version")).out == "gitmq 0.1.0\n"


# ------------------------------------------------- the gem's command lines


def test_gitmq_produce_publishes_each_line_and_exits_0_at_end_of_input(path: Path) -> None:
    result = ok(gitmq_produce(path, "orders", input=b'first\nsecond\r\n\n{"id": 3}'))
    assert result.out == "published 4 messages to orders\n"
    assert payloads(path) == [b"first", b"second", b"", b'{"id": 3}']
    assert ok(gitmq_produce(path, "orders", input=b"")).out == ("published 0 messages to orders\n")


def test_gitmq_produce_strips_lines_as_the_gem_does_and_publish_lines_does_not(
    path: Path,
) -> None:
    lines = b"  padded  \n\ttab\t\r\n\x00nul\x00\n \n"
    ok(gitmq_produce(path, "orders", input=lines))
    assert payloads(path) == [b"padded", b"tab", b"nul", b""]  # Ruby's String#strip
    ok(gitmq("publish", "--lines", path, "exact", input=lines))
    assert payloads(path, "exact") == [b"  padded  ", b"\ttab\t", b"\x00nul\x00", b" "]


def test_gitmq_consume_prints_as_ruby_puts_and_consume_prints_exactly(path: Path) -> None:
    for payload in ("no newline", "one newline\n", "two\n\n"):
        ok(gitmq("publish", path, "orders", payload))
    proc = start([*GITMQ_CONSUME, path, "orders", "gem"])
    try:
        tip = rev_parse(path, "refs/heads/orders")
        wait_for(lambda: rev_parse(path, "refs/tags/gem") == tip, procs=[proc])
        assert stop(proc, signal.SIGTERM) == 0
        assert proc.stdout is not None
        assert proc.stdout.read() == b"no newline\none newline\ntwo\n\n"  # puts: add if missing
    finally:
        kill_all([proc])
    exact = ok(gitmq("consume", "--drain", path, "orders", "exact")).stdout
    assert exact == b"no newline\none newline\n\ntwo\n\n\n"


def test_gitmq_consume_prints_messages_and_exits_0_on_sigterm(path: Path) -> None:
    proc = start([*GITMQ_CONSUME, path, "orders", "billing"])  # before the storage exists
    try:
        wait_for(lambda: (path / "HEAD").exists(), what="the storage", procs=[proc])
        ok(gitmq_produce(path, "orders", input=b"one\ntwo\n"))
        tip = rev_parse(path, "refs/heads/orders")
        wait_for(lambda: rev_parse(path, "refs/tags/billing") == tip, procs=[proc])
        assert stop(proc, signal.SIGTERM) == 0
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.read() == b"one\ntwo\n"
        assert proc.stderr.read() == b""
    finally:
        kill_all([proc])


def test_gitmq_consume_exits_0_on_sigint_too(path: Path) -> None:
    publish(path, "x")
    proc = start([*GITMQ_CONSUME, path, "orders", "billing"], stderr=subprocess.PIPE)
    try:
        wait_for(lambda: (path / "refs/tags/billing").exists(), procs=[proc])
        assert stop(proc, signal.SIGINT) == 0
    finally:
        kill_all([proc])


@pytest.mark.parametrize("drain", [True, False], ids=["drain", "follow"])
def test_consume_into_a_closed_pipe_stops_and_dead_letters_nothing(path: Path, drain: bool) -> None:
    """`gitmq consume ... | head -1`: once the reader is gone, nothing can be
    printed. That is not the message's fault: stop, and leave it unacknowledged."""
    if drain:
        publish(path, "m0", "m1")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first message is printed
    try:
        argv = [*GITMQ, "consume", *(["--drain"] if drain else []), path, "orders", "c"]
        proc = start(argv, stdout=write_end)
    finally:
        os.close(write_end)
    try:
        if not drain:
            wait_for(lambda: (path / "HEAD").exists(), procs=[proc])
            publish(path, "m0", "m1")
        assert proc.wait(30) == 0
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
    finally:
        kill_all([proc])
    assert rev_parse(path, "refs/tags/c") is None
    assert rev_parse(path, "refs/heads/orders.dlq") is None
    assert "dead-letter" not in err
    assert "Traceback" not in err and "Exception ignored" not in err, err
