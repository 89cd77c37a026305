"""Steering a running queue from the command line: which storage a command uses, consumers
(list, reset, delete), ``consume --count/--timeout/--from``, ``log --follow``, prompts and
progress bars at a terminal, and shell completion. Real processes on real storages."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from nodes import Cluster, delivering_pair, write_config
from servers import GitDaemon
from util import (
    GITMQ,
    fails,
    gitmq,
    kill_all,
    ok,
    rev_parse,
    run,
    snapshot,
    start,
    stop,
    wait_for,
)

from gitmq import Consumer, Message, Producer, Storage


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "q.git"


def publish(path: Path, *items: str) -> list[Message]:
    with Storage(path) as storage:
        return Producer(storage, "orders").publish_many(items)


def payloads(path: Path, queue: str = "orders") -> list[bytes]:
    with Storage(path, create=False) as storage:
        return [m.payload for m in Consumer(storage, "test-reader", queue).poll()]


def node_config(tmp_path: Path, storage: Path) -> Path:
    """A real node config for ``storage``: local queue orders, consumer billing (no tag)."""
    return write_config(
        tmp_path / "node.yml",
        {
            "node": {"name": "n1"},
            "storage": {"path": str(storage)},
            "queues": {"orders": {}},
            "consumers": {"billing": {"queue": "orders", "handler": {"command": ["/bin/true"]}}},
        },
    )


# --------------------------------------------------------------- which storage


def test_the_storage_comes_from_path_config_or_environment(path: Path, tmp_path: Path) -> None:
    config = node_config(tmp_path, path)
    env = {"GITMQ_STORAGE": str(path)}
    ok(gitmq("publish", path, "orders", "by path"))
    ok(gitmq("publish", "orders", "by environment", env=env))  # two words: QUEUE PAYLOAD
    ok(gitmq("publish", "--config", config, "orders", "by config"))
    ok(gitmq("publish", "orders", "-", input=b"from stdin", env=env))
    ok(gitmq("publish", path, "orders", "-", input=b"path, stdin", env=env))
    assert payloads(path) == [
        b"by path",
        b"by environment",
        b"by config",
        b"from stdin",
        b"path, stdin",
    ]
    assert ok(gitmq("log", "-n", "1", "orders", env=env)).out.endswith("  path, stdin\n")
    out = ok(gitmq("consume", "--drain", "--config", config, "orders", "reader")).out
    assert out.splitlines()[0] == "by path"
    assert ok(gitmq("seek", "orders", "reader", "beginning", env=env)).out == (
        "consumer reader now at the beginning\n"
    )


def test_a_path_given_twice_or_not_at_all_is_one_line(path: Path, tmp_path: Path) -> None:
    config = node_config(tmp_path, path)
    publish(path, "one")
    before = snapshot(path)
    fails(
        gitmq("log", path, "orders", "--config", config),
        2,
        f"both a storage path ({path}) and --config {config} are given; give one",
    )
    fails(
        gitmq("consume", "--drain", "orders", "c", env={"GITMQ_STORAGE": ""}),
        2,
        "which storage? give its path as the first argument, --config FILE, or set GITMQ_STORAGE",
    )
    fails(
        gitmq("dlq", "list", "orders", env={"GITMQ_STORAGE": ""}),
        2,
        "which storage? give its path as the first argument, --config FILE, or set GITMQ_STORAGE",
    )
    assert snapshot(path) == before


def test_a_path_read_as_a_queue_because_gitmq_storage_is_set_says_so(
    path: Path, tmp_path: Path
) -> None:
    publish(path, "one")
    other = tmp_path / "other.git"
    before = snapshot(path)
    fails(
        gitmq("publish", other, "orders", input=b"x", env={"GITMQ_STORAGE": str(path)}),
        2,
        f"invalid queue name '{other}': it starts or ends with '/' or contains '//' "
        f"(GITMQ_STORAGE is set, so '{other}' was read as the queue, not as a storage path: "
        f"give the storage one way only)",
    )
    assert snapshot(path) == before
    assert not other.exists()
    # With '-' the three words are PATH QUEUE PAYLOAD whatever the environment says.
    ok(gitmq("publish", other, "orders", "-", input=b"x", env={"GITMQ_STORAGE": str(path)}))
    assert payloads(other) == [b"x"]


# --------------------------------------------------------------- consumers


def test_consumer_list_shows_tags_and_configured_consumers(path: Path, tmp_path: Path) -> None:
    sent = publish(path, "one", "two", "three")
    with Storage(path) as storage:
        Producer(storage, "invoices").publish("i")
        reader = Consumer(storage, "shipping", "orders")
        reader.ack(next(iter(reader.poll())))
    config = node_config(tmp_path, path)
    out = ok(gitmq("consumer", "list", "--config", config)).out.splitlines()
    assert out[0] == "billing  orders  beginning  lag 3 " + out[0].rsplit(" ", 1)[1]
    assert out[1].startswith(f"shipping  orders  {sent[0].sha[:12]}  lag 2 (")
    assert len(out) == 2
    rows = [
        json.loads(line) for line in ok(gitmq("consumer", "list", path, "--json")).out.splitlines()
    ]
    assert [(r["name"], r["queue"], r["position"], r["lag"]) for r in rows] == [
        ("shipping", "orders", sent[0].sha, 2)
    ]
    env = {"GITMQ_STORAGE": str(path)}
    assert ok(gitmq("consumer", "list", "invoices", env=env)).out == "no consumers of invoices\n"
    assert ok(gitmq("consumer", "list", path, "orders")).out.startswith("shipping  orders  ")


def test_consumer_reset_asks_unless_yes_and_refuses_without_a_terminal(path: Path) -> None:
    sent = publish(path, "one", "two", "three")
    ok(gitmq("consume", "--drain", path, "orders", "c"))
    before = snapshot(path)
    fails(
        gitmq("consumer", "reset", path, "orders", "c", "beginning"),
        2,
        "reset of consumer c not done: pass --yes to confirm (stdin is not a terminal to ask on)",
    )
    assert snapshot(path) == before
    result = ok(gitmq("consumer", "reset", "--yes", path, "orders", "c", sent[1].id))
    assert result.out == f"consumer c now at {sent[0].sha[:12]} (was at {sent[2].sha[:12]})\n"
    assert ok(gitmq("consume", "--drain", path, "orders", "c")).out == "two\nthree\n"
    argv = [*GITMQ, "consumer", "reset", path, "orders", "c", "beginning"]
    status, out, screen = on_terminal(argv, answer=b"n\n")
    assert (status, out) == (1, b""), screen
    assert b"move consumer c of orders from " + sent[2].sha[:12].encode() in screen
    assert rev_parse(path, "refs/tags/c") == sent[2].sha
    status, out, screen = on_terminal(argv, answer=b"y\n")
    assert (status, out) == (
        0,
        f"consumer c now at the beginning (was at {sent[2].sha[:12]})\n".encode(),
    ), screen
    assert rev_parse(path, "refs/tags/c") is None


def test_consumer_delete_on_a_synced_queue_deletes_the_tag_on_the_remote(
    cluster: Cluster, central: Path
) -> None:
    a, b = delivering_pair(cluster, "first")
    wait_for(lambda: rev_parse(central, "refs/tags/c-a"), what="c-a's tag on the remote")
    assert a.stop() == 0
    result = ok(gitmq("consumer", "delete", a.storage, "orders", "c-a"))
    assert result.out.startswith("consumer c-a deleted (it was at ")
    assert result.out.endswith("; its tag on central goes at the next sync\n")
    assert rev_parse(central, "refs/tags/c-a") is not None  # not before the sync
    ok(gitmq("sync", "--config", a.config))
    assert rev_parse(central, "refs/tags/c-a") is None
    assert rev_parse(a.storage, "refs/tags/c-a") is None
    assert rev_parse(central, "refs/tags/c-b") is not None  # the other node's consumer stays
    assert b.proc is not None and b.proc.poll() is None


# --------------------------------------------------------------- consume


def test_consume_count_exits_after_n_messages_and_acks_exactly_those(path: Path) -> None:
    sent = publish(path, "one", "two", "three")
    result = ok(gitmq("consume", "--count", "2", path, "orders", "c"))
    assert result.out == "one\ntwo\n"
    assert rev_parse(path, "refs/tags/c") == sent[1].sha
    assert ok(gitmq("consume", "--drain", "--count", "5", path, "orders", "c")).out == "three\n"


def test_consume_count_counts_a_message_that_failed_into_the_dead_letters(path: Path) -> None:
    sent = publish(path, "one", "two")
    ok(
        gitmq(
            "consume", "--count", "1", "--max-attempts", "2", "--exec", "false", path, "orders", "c"
        )
    )
    assert rev_parse(path, "refs/tags/c") == sent[0].sha
    assert len(payloads(path, "orders.dlq")) == 1


def test_consume_timeout_exits_0_once_nothing_arrived_for_that_long(path: Path) -> None:
    publish(path, "one")
    began = time.monotonic()
    proc = start([*GITMQ, "consume", "--timeout", "1500ms", path, "orders", "c"])
    try:
        wait_for(lambda: rev_parse(path, "refs/tags/c"), what="the first message", procs=[proc])
        publish(path, "two")
        wait_for(
            lambda: (
                len(payloads(path)) == 2
                and rev_parse(path, "refs/tags/c") == rev_parse(path, "refs/heads/orders")
            ),
            what="the second",
            procs=[proc],
        )
        out, err = proc.communicate(timeout=30)
    finally:
        kill_all([proc])
    assert (proc.returncode, out, err) == (0, b"one\ntwo\n", b"")
    assert time.monotonic() - began >= 1.5


def test_consume_from_places_a_new_consumer_and_refuses_an_existing_one(path: Path) -> None:
    sent = publish(path, "one", "two", "three")
    assert ok(gitmq("consume", "--drain", "--from", sent[1].id, path, "orders", "c")).out == (
        "two\nthree\n"
    )
    assert ok(gitmq("consume", "--drain", "--from", "end", path, "orders", "d")).out == ""
    assert rev_parse(path, "refs/tags/d") == sent[2].sha
    before = snapshot(path)
    fails(
        gitmq("consume", "--drain", "--from", "beginning", path, "orders", "c"),
        2,
        f"consumer 'c' already has an offset (at {sent[2].sha[:12]}); --from only places a new "
        f"consumer: move this one with 'gitmq consumer reset orders c beginning' (nothing was "
        f"consumed)",
    )
    assert snapshot(path) == before


# --------------------------------------------------------------- log --follow


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_log_follow_prints_new_messages_until_a_signal(path: Path, sig: int) -> None:
    old = publish(path, "old")[0]
    proc = start([*GITMQ, "log", "--follow", path, "orders"])
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().decode().startswith(f"{old.id}  ")
        new = publish(path, "new one", "new two")
        for message in new:
            line = proc.stdout.readline().decode()
            assert line.startswith(f"{message.id}  ") and line.endswith(
                f"  {message.payload.decode()}\n"
            )
        assert stop(proc, sig) == 0
        assert proc.stdout.read() == b""
    finally:
        kill_all([proc])


# --------------------------------------------------------------- at a terminal


def on_terminal(
    argv: Sequence[str | os.PathLike[str]],
    *,
    answer: bytes = b"",
    stdin_tty: bool = True,
    input: bytes = b"",
    timeout: float = 60.0,
) -> tuple[int, bytes, bytes]:
    """Run ``argv`` with stderr (and stdin, unless ``stdin_tty`` is False: then ``input``)
    on a pseudo-terminal; returns the exit status, stdout and what the terminal showed."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [os.fspath(a) for a in argv],
        stdin=follower if stdin_tty else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=follower,
        start_new_session=True,
        env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "100"},
    )
    os.close(follower)
    try:
        if answer:
            os.write(leader, answer)
        if not stdin_tty:
            assert proc.stdin is not None
            proc.stdin.write(input)
            proc.stdin.close()
        shown = _read_all(leader, time.monotonic() + timeout)
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.wait(timeout)
    finally:
        os.close(leader)
        kill_all([proc])
    return proc.returncode, out, shown


def _read_all(fd: int, deadline: float) -> bytes:
    chunks = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def test_publish_lines_draws_a_progress_bar_on_a_terminal_unless_quiet(path: Path) -> None:
    lines = b"".join(b"line %d\n" % i for i in range(300))
    status, out, shown = on_terminal(
        [*GITMQ, "publish", "--lines", path, "orders"], stdin_tty=False, input=lines
    )
    assert (status, out) == (0, b"published 300 messages to orders\n"), shown
    assert b"publishing to orders" in shown
    status, out, shown = on_terminal(
        [*GITMQ, "publish", "--lines", "--quiet", path, "orders"], stdin_tty=False, input=lines
    )
    assert (status, out, shown) == (0, b"published 300 messages to orders\n", b"")
    # Not a terminal: no bar either, stderr stays empty.
    assert ok(gitmq("publish", "--lines", path, "orders", input=lines)).stderr == b""
    assert len(payloads(path)) == 900


def test_consume_shows_its_backlog_while_catching_up_unless_quiet(
    path: Path, tmp_path: Path
) -> None:
    publish(path, *[f"m{i}" for i in range(150)])
    seen = tmp_path / "seen"
    script = f"cat >> {seen}; echo >> {seen}"
    consume = [*GITMQ, "consume", path, "orders", "billing", "--count", "150"]
    status, out, shown = on_terminal([*consume, "--exec", f"sh -c '{script}'"], stdin_tty=False)
    assert (status, out) == (0, b""), shown
    assert b"catching up on orders" in shown and b"150/150" in shown
    assert seen.read_text().split() == [f"m{i}" for i in range(150)]
    # A backlog too small to be worth a bar, --quiet, or messages printed on the
    # terminal itself: no bar.
    publish(path, *[f"n{i}" for i in range(150)])
    consume = [*GITMQ, "consume", path, "orders", "billing", "--count", "150", "--quiet"]
    assert on_terminal([*consume, "--exec", "true"], stdin_tty=False) == (0, b"", b"")
    publish(path, "last")
    consume = [*GITMQ, "consume", path, "orders", "billing", "--count", "1", "--exec", "true"]
    assert on_terminal(consume, stdin_tty=False) == (0, b"", b"")


def test_prune_and_sync_say_what_runs_on_a_terminal_unless_quiet(
    path: Path, tmp_path: Path, git_daemon: GitDaemon, central: Path
) -> None:
    config = write_config(
        tmp_path / "node.yml",
        {
            "node": {"name": "n1"},
            "storage": {"path": str(path)},
            "remotes": {"origin": {"url": git_daemon.url("central.git")}},
            "queues": {"orders": {"remote": "origin", "prune": {"max_messages": 10}}},
        },
    )
    publish(path, *[f"m{i}" for i in range(50)])
    status, out, shown = on_terminal([*GITMQ, "sync", "--config", config], stdin_tty=False)
    assert status == 0 and out.startswith(b"sync origin: ok"), shown
    assert b"sync n1: with origin" in shown
    status, out, shown = on_terminal([*GITMQ, "prune", "--config", config], stdin_tty=False)
    assert status == 0 and out.startswith(b"orders: dropped 40 of 50 messages"), (out, shown)
    assert b"prune orders: " in shown
    quiet = [*GITMQ, "sync", "--config", config, "--quiet"]
    assert on_terminal(quiet, stdin_tty=False)[::2] == (0, b"")
    assert len(Storage(central, create=False).recent_commits("refs/heads/orders", 0)) == 50


# --------------------------------------------------------------- completion


def completion_words(line: str) -> list[str]:
    """What bash completes for the last word of ``line`` with gitmq's script loaded."""
    script = ok(gitmq("completion", "bash")).out
    words = line.split(" ")
    shell = (
        f"{script}\n"
        "complete -p gitmq || exit 9\n"
        'f=$(complete -p gitmq | sed -E "s/.*-F ([^ ]+).*/\\1/")\n'
        f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
        f"COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}\n"
        f'"$f" gitmq {words[-1]!r} {words[-2]!r}\n'
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = ok(run(["bash", "--norc", "--noprofile", "-c", shell]))
    registered, *found = result.out.splitlines()
    assert registered.startswith("complete ") and registered.endswith(" gitmq")
    return found


def test_bash_completion_is_registered_and_completes_commands_and_options() -> None:
    assert completion_words("gitmq dl") == ["dlq"]
    assert completion_words("gitmq dlq ") == ["list", "show", "replay", "purge"]
    assert completion_words("gitmq consume --c") == ["--config", "--count"]
    assert "completion" in completion_words("gitmq comp")


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_completion_scripts_load(shell: str, tmp_path: Path) -> None:
    script = ok(gitmq("completion", shell)).out
    assert "dlq" in script
    program = shutil.which(shell)
    if program is None:
        pytest.skip(f"{shell} is not installed on this machine: the script is only generated")
    file = tmp_path / f"gitmq.{shell}"
    file.write_text(script)
    check = ["-n", str(file)] if shell == "zsh" else ["--no-execute", str(file)]
    ok(run([program, *check]))
    if shell == "fish":  # fish completes from a plain command line: ask it
        asked = ok(run([program, "-c", f"source {file}; complete -C 'gitmq dlq '"])).out
        assert sorted(line.split("\t")[0] for line in asked.splitlines()) == [
            "list",
            "purge",
            "replay",
            "show",
        ]


def test_completion_of_an_unknown_shell_is_one_line() -> None:
    fails(
        gitmq("completion", "csh"),
        2,
        "argument SHELL: invalid choice: 'csh' (choose from 'bash', 'zsh', 'fish', 'tcsh') "
        "(see 'gitmq completion --help')",
    )
