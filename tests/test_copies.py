"""Copies (issue 9): a message whose ``gitmq-id`` an earlier message of its queue has.

GitMQ never puts one id twice on a queue's history, so a copy was pushed by
someone else (a forged or replayed message). Each test forges one with plain
git: the commit of an earlier message, re-parented onto the tip (optionally
with another payload). Consumers dead-letter it unhandled and count it;
``gitmq log`` marks it; a seek back still redelivers the originals.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from nodes import Cluster, delivering_pair
from servers import GitDaemon
from util import (
    clone_bare,
    commit_body,
    git,
    gitmq,
    ok,
    plant,
    rev_parse,
    run,
    wait_for,
    write_commit,
)

from gitmq import Consumer, Producer, Storage
from gitmq.message import decode
from gitmq.screen import Screen
from gitmq.segments import QueueSource, open_body

REF = "refs/heads/orders"


def forge(repo: Path, original: str, payload: bytes | None = None, ref: str = REF) -> str:
    """Append to ``ref`` a copy of commit ``original`` (same headers and id)."""
    head, _, message = commit_body(repo, original).partition(b"\n\n")
    lines = [ln for ln in head.split(b"\n") if not ln.startswith(b"parent ")]
    tip = rev_parse(repo, ref)
    if tip is not None:
        lines.insert(1, b"parent " + tip.encode())
    return plant(repo, b"\n".join(lines) + b"\n\n" + (message if payload is None else payload), ref)


def publish(repo: Path, *payloads: str) -> list[str]:
    """Publish ``payloads`` to orders; their commit ids."""
    shas = []
    for payload in payloads:
        ok(gitmq("publish", repo, "orders", payload))
        shas.append(rev_parse(repo, REF) or "")
    return shas


def dead_letters(repo: Path) -> list[dict[str, str]]:
    with Storage(repo, create=False) as storage:
        return [dict(m.headers) for m in Consumer(storage, "inspector", "orders.dlq").poll()]


def reason(repo: Path, original: str) -> str:
    message_id = decode(original, commit_body(repo, original)).id
    return (
        f"duplicate: message {message_id} is already on the queue as commit {original}; "
        f"a copy is not delivered again"
    )


def test_a_forged_copy_goes_to_the_dead_letter_queue_unhandled(tmp_path: Path) -> None:
    repo = tmp_path / "q.git"
    first, _ = publish(repo, "pay 10 to ann", "pay 20 to bob")
    copy = forge(repo, first, b"pay 1000 to mallory")
    publish(repo, "pay 30 to cid")

    consumed = ok(gitmq("consume", repo, "orders", "bank", "--drain"))
    assert consumed.out.splitlines() == ["pay 10 to ann", "pay 20 to bob", "pay 30 to cid"]
    assert f"commit {copy} on queue orders moved to dead-letter queue orders.dlq unhandled: " in (
        consumed.err
    )
    assert rev_parse(repo, "refs/tags/bank") == rev_parse(repo, REF)
    [dead] = dead_letters(repo)
    assert dead["dead-letter-original-sha"] == copy
    assert dead["dead-letter-attempts"] == "0"
    assert dead["dead-letter-error"] == reason(repo, first)

    shown = ok(gitmq("log", repo, "orders")).out.splitlines()
    assert [f"[copy of {first[:12]}]" in line for line in shown] == [False, True, False, False]
    as_json = ok(gitmq("log", repo, "orders", "--json")).out.splitlines()
    assert [f'"duplicate_of": "{first}"' in line for line in as_json] == [0, 1, 0, 0]


def test_a_copy_is_found_after_a_restart_and_a_seek_back_redelivers_the_originals(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "q.git"
    _, second = publish(repo, "one", "two")
    assert ok(gitmq("consume", repo, "orders", "c", "--drain")).out.splitlines() == ["one", "two"]
    forge(repo, second)  # after the consumer's process ended: a new one must know "two"
    publish(repo, "three")
    assert ok(gitmq("consume", repo, "orders", "c", "--drain")).out.splitlines() == ["three"]

    ok(gitmq("seek", repo, "orders", "c", "beginning"))
    again = ok(gitmq("consume", repo, "orders", "c", "--drain")).out.splitlines()
    assert again == ["one", "two", "three"]  # a replay is no copy; the copy is one again
    errors = [h["dead-letter-error"] for h in dead_letters(repo)]
    assert errors == [reason(repo, second)] * 2


def test_counted_and_marked_for_pull_style_consumers(tmp_path: Path) -> None:
    repo = tmp_path / "q.git"
    with Storage(repo) as storage:
        producer = Producer(storage, "orders")
        original = producer.publish(b"x")
        producer.publish(b"y")
        copy = forge(repo, original.sha)
        pulled = Consumer(storage, "puller", "orders")
        assert [m.duplicate_of for m in pulled.poll()] == [None, None, original.sha]
        assert [m.duplicate_of for m in pulled.poll()] == [None, None, original.sha]  # again

        pushed = Consumer(storage, "pusher", "orders")
        handled: list[bytes] = []
        assert pushed.deliver_pending(lambda m: handled.append(m.payload)) == 3  # all finished
        assert handled == [b"x", b"y"]
        assert (pushed.dead_lettered, pushed.dead_letters.duplicates) == (1, 1)
        assert pushed.position == copy


def test_messages_without_gitmq_id_may_repeat(tmp_path: Path) -> None:
    """The gem writes no gitmq-id; two equal messages in one second are two messages."""
    repo = tmp_path / "q.git"
    ok(run(["git", "init", "-q", "--bare", str(repo)]))
    body = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n"
    body += b"author gem <gem@example.com> 1700000000 +0000\n"
    body += b"committer gem <gem@example.com> 1700000000 +0000\n\nhello\n"
    first = plant(repo, body)
    plant(repo, body.replace(b"\n", f"\nparent {first}\n".encode(), 1))
    consumed = ok(gitmq("consume", repo, "orders", "c", "--drain")).out
    assert consumed == "hello\n\n" * 2
    assert dead_letters(repo) == []


def test_a_copy_of_a_message_in_an_earlier_segment(tmp_path: Path) -> None:
    repo = tmp_path / "q.git"
    first, _ = publish(repo, "one", "two")
    close = plant(repo, _close_marker(repo))
    opened = write_commit(repo, open_body(decode(close, commit_body(repo, close))))
    segment = "refs/heads/orders.seg.000001"
    git(repo, "update-ref", segment, opened)
    copy = forge(repo, first, ref=segment)
    with Storage(repo, create=False) as storage:
        consumer = Consumer(storage, "c", "orders")
        assert [m.duplicate_of for m in consumer.poll()] == [None, None, first]
        consumer.ack_through(next(m for m in consumer.poll() if m.payload == b"two"))
        # A new consumer object (a restart) builds its window across the segments.
        assert [(m.sha, m.duplicate_of) for m in Consumer(storage, "c", "orders").poll()] == [
            (copy, first)
        ]


def _close_marker(repo: Path) -> bytes:
    tip = rev_parse(repo, REF) or ""
    stamp = "gitmq <gitmq@example.com> 1700000000 +0000"
    lines = [
        "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904",
        f"parent {tip}",
        f"author {stamp}",
        f"committer {stamp}",
        "gitmq-id 01a00000-0000-7000-8000-0000000000c1",
        "gitmq-control close",
    ]
    return ("\n".join(lines) + "\n\n").encode()


def test_the_window_is_bounded(tmp_path: Path) -> None:
    repo = tmp_path / "q.git"
    with Storage(repo) as storage:
        producer = Producer(storage, "orders")
        sent = [producer.publish(b"%d" % i) for i in range(5)]
        near, far = forge(repo, sent[3].sha), forge(repo, sent[0].sha)
        # Four messages back is in the window, five (with the near copy between) is not.
        screen = Screen(QueueSource(storage, "orders"), window=4)
        in_order = [screen.mark(storage.read(sha)) for sha in storage.commits_between(None, far)]
        assert [(m.sha, m.duplicate_of) for m in in_order[-2:]] == [
            (near, sent[3].sha),
            (far, None),
        ]


# ------------------------------------------------------------ the window moves

# Passes over the queue: (first message, how many), as restarts and seeks make them.
passes = st.lists(
    st.tuples(st.integers(min_value=0, max_value=40), st.integers(min_value=1, max_value=40)),
    min_size=1,
    max_size=6,
)


@settings(max_examples=40, deadline=None)
@given(ids=st.lists(st.integers(min_value=0, max_value=12), min_size=1, max_size=40), reads=passes)
def test_marks_follow_the_history_whatever_the_moves(
    ids: list[int], reads: list[tuple[int, int]]
) -> None:
    """A message is marked exactly when an earlier one on the queue has its id, however
    the reader jumps (restart, seek forward or back) between passes."""
    with tempfile.TemporaryDirectory() as tmp, Storage(Path(tmp) / "q.git") as storage:
        shas = _queue_with_ids(storage, ids)
        # The nearest earlier message with the same id, if any.
        last: dict[int, str] = {}
        truth: list[str | None] = []
        for n, sha in zip(ids, shas, strict=True):
            truth.append(last.get(n))
            last[n] = sha
        screen = Screen(QueueSource(storage, "orders"))
        for start, length in reads:
            for i in range(min(start, len(shas) - 1), min(start + length, len(shas))):
                assert screen.mark(storage.read(shas[i])).duplicate_of == truth[i], (start, i)


def _queue_with_ids(storage: Storage, ids: list[int]) -> list[str]:
    """A queue whose messages carry the ids ``ids`` (repeats are copies)."""
    shas: list[str] = []
    for n in ids:
        stamp = "ann <ann@example.com> 1700000000 +0000"
        lines = ["tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904"]
        lines += [f"parent {shas[-1]}"] if shas else []
        lines += [f"author {stamp}", f"committer {stamp}", f"gitmq-id id-{n}"]
        body = ("\n".join(lines) + f"\n\nmessage {len(shas)}\n").encode()
        shas.append(write_commit(storage.path, body))
    git(storage.path, "update-ref", REF, shas[-1])
    return shas


# ------------------------------------------------------ through a git daemon


def test_a_copy_pushed_to_the_remote_is_dead_lettered_on_every_node(
    cluster: Cluster, central: Path, git_daemon: GitDaemon, tmp_path: Path
) -> None:
    nodes = delivering_pair(cluster, "pay 10 to ann")
    attacker = clone_bare(git_daemon.url("central.git"), tmp_path / "attacker.git")
    original = rev_parse(attacker, REF) or ""
    copy = forge(attacker, original, b"pay 1000 to mallory")
    git(attacker, "push", "-q", git_daemon.url("central.git"), REF)

    nodes[1].publish("orders", "pay 20 to bob")
    for node in nodes:
        wait_for(
            lambda node=node: node.payloads(f"c-{node.name}") == ["pay 10 to ann", "pay 20 to bob"],
            timeout=60,
        )

    def copies() -> list[tuple[str, str]]:
        return sorted(
            (h["dead-letter-consumer"], h["dead-letter-original-sha"])
            for h in dead_letters(central)
            if re.match("duplicate: ", h["dead-letter-error"])
        )

    wait_for(lambda: copies() == [("c-a", copy), ("c-b", copy)], timeout=60)
    for node in nodes:
        assert node.proc is not None and node.proc.poll() is None, node.log_text()[-3000:]
