"""``gitmq dlq list|show|replay|purge``: dead letters as an operator handles them, through
real processes on real storages, and a replay through a two-node cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from nodes import Cluster, TestNode, remote_messages
from test_steer import on_terminal
from util import GITMQ, UUID7, fails, gitmq, lines_of, ok, rev_parse, snapshot, wait_for

from gitmq import Consumer, Message, Producer, Storage


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "q.git"


def publish(
    path: Path, *items: str | tuple[str, dict[str, str]], queue: str = "orders"
) -> list[Message]:
    with Storage(path) as storage:
        return Producer(storage, queue).publish_many(items)


def messages(path: Path, queue: str) -> list[Message]:
    """Every message of ``queue``, oldest first, as stored (whoever it is for)."""
    with Storage(path, create=False) as storage:
        tip = storage.read_ref(f"refs/heads/{queue}")
        return list(storage.messages_between(None, tip)) if tip else []


def fail_all(path: Path, *extra: str, consumer: str = "billing", attempts: int = 2) -> None:
    """``consumer`` fails every pending message into the dead letters."""
    gives_up = ["--drain", "--max-attempts", str(attempts), "--exec", "false"]
    ok(gitmq("consume", *gives_up, *extra, path, "orders", consumer))


def listed(path: Path, *extra: str) -> list[dict[str, Any]]:
    out = ok(gitmq("dlq", "list", "--json", path, "orders", *extra)).out
    return [json.loads(line) for line in out.splitlines()]


def test_list_and_show(path: Path) -> None:
    sent = publish(path, ("one", {"content-type": "text/plain"}), "two\nlines")
    fail_all(path)
    dead = messages(path, "orders.dlq")
    out = ok(gitmq("dlq", "list", path, "orders")).out.splitlines()
    reason = "HandlerFailed: handler command exited 1"
    assert out == [
        f"{d.id}  {s.id}  {d.time.isoformat()}  billing  2 attempts  {reason}"
        for d, s in zip(dead, sent, strict=True)
    ]
    assert listed(path)[1] == {
        "id": dead[1].id,
        "original_id": sent[1].id,
        "time": dead[1].time.isoformat(),
        "queue": "orders",
        "consumer": "billing",
        "attempts": 2,
        "reason": reason,
        "state": "pending",
    }
    shown = ok(gitmq("dlq", "show", path, "orders", sent[0].id)).out  # by the original id
    assert shown.splitlines()[:5] == [
        f"dead letter {dead[0].id} (pending)",
        f"commit: {dead[0].sha}",
        f"time: {dead[0].time.isoformat()}",
        f"author: {dead[0].author}",
        "content-type: text/plain",
    ]
    assert f"dead-letter-original-sha: {sent[0].sha}\n" in shown
    assert shown.endswith(f"dead-letter-error: {reason}\n\none\n")
    assert ok(gitmq("dlq", "show", path, "orders", dead[1].sha[:10])).out.endswith(
        "\n\ntwo\nlines\n"
    )
    as_json = json.loads(ok(gitmq("dlq", "show", "--json", path, "orders", dead[1].id)).out)
    assert as_json["message"]["payload"] == "two\nlines"


def test_replay_publishes_new_ids_that_consumers_handle_once(path: Path) -> None:
    sent = publish(path, ("one", {"k": "v"}), "two", "three")
    fail_all(path)
    dead = messages(path, "orders.dlq")
    before = snapshot(path)
    dry = ok(gitmq("dlq", "replay", "--dry-run", "--all", path, "orders")).out
    assert dry.splitlines() == [
        f"would replay {d.id} (original {s.id}) to orders" for d, s in zip(dead, sent, strict=True)
    ]
    assert snapshot(path) == before
    first = ok(gitmq("dlq", "replay", "--id", dead[1].id, path, "orders")).out.splitlines()
    assert first[-1] == "replayed 1 dead letter to orders"
    rest = ok(gitmq("dlq", "replay", "--all", path, "orders")).out.splitlines()
    assert rest[-1] == "replayed 2 dead letters to orders"
    again = ok(gitmq("dlq", "replay", "--all", path, "orders")).out
    assert again == "nothing to replay: no pending dead letters of orders in orders.dlq\n"
    copies = messages(path, "orders")[3:]
    assert [c.payload for c in copies] == [b"two", b"one", b"three"]
    for copy, original, letter in zip(
        copies, [sent[1], sent[0], sent[2]], [dead[1], dead[0], dead[2]], strict=True
    ):
        assert UUID7.match(copy.id) and copy.id not in {m.id for m in sent}
        assert copy.headers["gitmq-replay-of"] == original.id
        assert copy.headers["gitmq-replay-dead-letter"] == letter.id
        assert copy.headers["gitmq-replay-reason"] == "HandlerFailed: handler command exited 1"
        assert copy.headers["gitmq-replay-attempts"] == "2"
    assert copies[1].headers["k"] == "v"
    assert not any(k.startswith("dead-letter-") for k in copies[1].headers)
    assert first[0] == f"replayed {dead[1].id} (original {sent[1].id}) to orders as {copies[0].id}"
    # billing handles the copies (and nothing else): none is a duplicate of a message there.
    assert ok(gitmq("consume", "--drain", path, "orders", "billing")).out == "two\none\nthree\n"
    assert len(messages(path, "orders.dlq")) == 3 + 3  # the dead letters and three records
    assert ok(gitmq("dlq", "list", path, "orders")).out == "no dead letters of orders\n"
    fails(
        gitmq("dlq", "replay", "--id", dead[0].id, path, "orders"),
        2,
        f"dead letter {dead[0].id} of queue 'orders' was already replayed (as {copies[1].id}); "
        f"nothing was done",
    )


def test_a_replay_is_handled_by_the_consumer_that_gave_up_and_passed_by_the_others(
    path: Path,
) -> None:
    publish(path, "one", "two")
    assert ok(gitmq("consume", "--drain", path, "orders", "shipping")).out == "one\ntwo\n"
    fail_all(path)  # billing gives up on both
    ok(gitmq("dlq", "replay", "--all", path, "orders"))
    # shipping handled the originals: it acknowledges the copies without handling them.
    assert ok(gitmq("consume", "--drain", path, "orders", "shipping")).out == ""
    assert rev_parse(path, "refs/tags/shipping") == rev_parse(path, "refs/heads/orders")
    assert ok(gitmq("consume", "--drain", path, "orders", "billing")).out == "one\ntwo\n"
    with Storage(path, create=False) as storage:  # pull style: the same
        assert [m.payload for m in Consumer(storage, "audit", "orders").poll()] == [b"one", b"two"]
    # Two consumers that gave up on one message: each gets its own copy, once.
    publish(path, "three")
    fail_all(path)
    fail_all(path, consumer="shipping", attempts=1)
    assert [d["consumer"] for d in listed(path)] == ["billing", "shipping"]
    ok(gitmq("dlq", "replay", "--all", path, "orders"))
    assert ok(gitmq("consume", "--drain", path, "orders", "billing")).out == "three\n"
    assert ok(gitmq("consume", "--drain", path, "orders", "shipping")).out == "three\n"
    status = json.loads(ok(gitmq("status", "--json", path)).out)
    assert [q["dead_letters"] for q in status["queues"] if q["name"] == "orders"] == [0]


def test_a_replay_cut_short_before_its_record_is_not_published_twice(path: Path) -> None:
    publish(path, "one")
    fail_all(path)
    [letter] = messages(path, "orders.dlq")
    # What a replay that crashed after publishing the copy, before the record, leaves.
    [copy] = publish(path, ("one", {"gitmq-replay-dead-letter": letter.id}))
    out = ok(gitmq("dlq", "replay", "--all", path, "orders")).out.splitlines()
    assert out[0].endswith(f" as {copy.id}")
    assert [m.id for m in messages(path, "orders")][-1] == copy.id  # nothing new
    assert listed(path) == []


def test_purge_asks_refuses_without_a_terminal_and_keeps_history(path: Path) -> None:
    publish(path, "one", "two", "three")
    fail_all(path)
    dead = messages(path, "orders.dlq")
    before = snapshot(path)
    fails(
        gitmq("dlq", "purge", "--all", path, "orders"),
        2,
        "purge of 3 dead letters of orders not done: pass --yes to confirm (stdin is not a "
        "terminal to ask on)",
    )
    assert ok(gitmq("dlq", "purge", "--dry-run", "--id", dead[0].id, path, "orders")).out == (
        f"would purge {dead[0].id} (original {dead[0].headers['dead-letter-original-id']})\n"
    )
    assert snapshot(path) == before
    status, out, screen = on_terminal(
        [*GITMQ, "dlq", "purge", "--all", path, "orders"], answer=b"n\n"
    )
    assert (status, out) == (1, b""), screen
    assert b"purge 3 dead letters of orders from orders.dlq? [y/N]" in screen
    assert snapshot(path) == before
    assert ok(gitmq("dlq", "purge", "--yes", "--id", dead[1].id, path, "orders")).out == (
        "purged 1 dead letter of orders (they stay in the history of orders.dlq)\n"
    )
    assert [d["id"] for d in listed(path)] == [dead[0].id, dead[2].id]
    status, out, screen = on_terminal(
        [*GITMQ, "dlq", "purge", "--all", path, "orders"], answer=b"y\n"
    )
    assert (status, out) == (
        0,
        b"purged 2 dead letters of orders (they stay in the history of orders.dlq)\n",
    ), screen
    assert listed(path) == []
    history = messages(path, "orders.dlq")
    assert [m.id for m in history[:3]] == [d.id for d in dead]  # nothing rewritten
    assert [m.headers["gitmq-dlq-record"] for m in history[3:]] == ["purged"] * 3
    fails(
        gitmq("dlq", "replay", "--id", dead[0].id, path, "orders"),
        2,
        f"dead letter {dead[0].id} of queue 'orders' was already purged; nothing was done",
    )


def test_another_dead_letter_queue_and_many_with_a_progress_bar(path: Path) -> None:
    publish(path, *(f"m{i}" for i in range(150)))
    fail_all(path, "--dead-letter", "failed")
    assert len(listed(path, "--dead-letter", "failed")) == 150
    assert ok(gitmq("dlq", "list", path, "orders")).out == "no dead letters of orders\n"
    status, out, screen = on_terminal(
        [*GITMQ, "dlq", "replay", "--all", "--dead-letter", "failed", path, "orders"]
    )
    assert status == 0, screen
    assert out.decode().splitlines()[-1] == "replayed 150 dead letters to orders"
    assert b"replaying" in screen
    assert [m.payload for m in messages(path, "orders")[150:]] == [
        f"m{i}".encode() for i in range(150)
    ]


# --------------------------------------------------------------- a cluster

# Fails every message whose payload starts with "bad" unless it is a replayed copy;
# records "ID PAYLOAD REPLAY-OF" for each message it handles.
PICKY = (
    'IFS= read -r payload; case "$payload" in bad*) [ -n "$GITMQ_HEADER_GITMQ_REPLAY_OF" ] '
    '|| exit 1;; esac; printf "%s %s %s\\n" "$GITMQ_ID" "$payload" '
    '"${GITMQ_HEADER_GITMQ_REPLAY_OF:--}" >> "$0"'
)


def picky(node: TestNode, consumer: str) -> None:
    config = yaml.safe_load(node.config.read_text())
    config["consumers"][consumer]["handler"] = {
        "command": ["/bin/sh", "-c", PICKY, str(node.consumer_log(consumer))]
    }
    node.config.write_text(yaml.safe_dump(config, sort_keys=False))


def test_a_dead_letter_replayed_on_another_node_is_handled_once(
    cluster: Cluster, central: Path
) -> None:
    a = cluster.node("a", ["c-a"])
    picky(a, "c-a")
    b = cluster.node("b", [], queues=("orders", "orders.dlq"))
    procs = [a.start(), b.start()]
    a.publish("orders", "good-1", "bad-1", "good-2")
    wait_for(
        lambda: len(remote_messages(central, "orders.dlq")) == 1,
        90,
        "the dead letter on the remote",
        procs=procs,
    )
    [letter] = wait_for(lambda: listed_on(b), 90, "the dead letter on node b", procs=procs)
    assert letter["consumer"] == "c-a" and letter["attempts"] == 3
    replayed = ok(gitmq("dlq", "replay", "--config", b.config, "orders", "--all")).out.splitlines()
    copy_id = replayed[0].rsplit(" ", 1)[1]
    assert (
        replayed[0]
        == f"replayed {letter['id']} (original {letter['original_id']}) to orders as {copy_id}"
    )

    def handled() -> list[str]:
        return [line for line in lines_of(a.consumer_log("c-a")) if " bad-1 " in line]

    assert wait_for(handled, 90, "node a's consumer to handle the copy") == [
        f"{copy_id} bad-1 {letter['original_id']}"
    ]
    # Once c-a's tag on the remote is at the queue's tip, every dead letter a made is there too.
    wait_for(
        lambda: rev_parse(central, "refs/tags/c-a") == rev_parse(central, "refs/heads/orders"),
        90,
        "c-a's tag at the tip on the remote",
    )
    wait_for(lambda: len(remote_messages(central, "orders.dlq")) == 2, 90, "b's replay record")
    assert handled() == [f"{copy_id} bad-1 {letter['original_id']}"]
    assert [m.payload.split(" ")[0] for m in remote_messages(central, "orders.dlq")] == [
        "bad-1",
        "replayed",
    ]
    assert [line.split(" ")[1] for line in lines_of(a.consumer_log("c-a"))] == [
        "good-1",
        "good-2",
        "bad-1",
    ]
    wait_for(lambda: listed_on(a) == [], 90, "node a to see the record")
    again = ok(gitmq("dlq", "replay", "--config", b.config, "orders", "--all")).out
    assert again == "nothing to replay: no pending dead letters of orders in orders.dlq\n"
    assert a.stop() == 0 and b.stop() == 0


def listed_on(node: TestNode) -> list[dict[str, Any]]:
    """The pending dead letters of orders on ``node`` (none while it has neither queue)."""
    result = gitmq("dlq", "list", "--json", "--config", node.config, "orders")
    if result.status == 4:
        return []
    return [json.loads(line) for line in ok(result).out.splitlines()]
