"""Operator actions on a synced cluster (issue 8): seek, replay and delete hold on every
node, act on confirmed messages only, and never push a tag off the confirmed history.

Two storages, a and b, sync with a git daemon; both carry the consumer ``billing`` (a
consumer that moved between nodes, or a node redeployed): whatever an operator does
to it on one node must hold there and on the other after any number of syncs.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from nodes import remote_messages
from servers import GitDaemon
from test_sync import REMOTE, consumer, producer, synced, target
from util import fails, gitmq, ok, rev_parse

from gitmq import Message, Storage
from gitmq.offsets import remote_tag_ref, reset_ref
from gitmq.sync import SyncTarget, sync_once, tracking_ref

TAG = "refs/tags/billing"


class Pair:
    """Nodes a and b with five confirmed messages, billing at the end on both."""

    def __init__(self, url: str, central: Path, storages: dict[str, Storage]) -> None:
        self.url, self.central = url, central
        self.a, self.b = storages["a"], storages["b"]
        self.sent = [producer(self.a, "a").publish(f"m{i}") for i in range(5)]
        self.sync_all()
        self.deliver(self.a)
        self.sync_all()

    def tgt(self, node: str) -> SyncTarget:
        return target(self.url, node, consumers=("billing",))

    def sync_all(self, rounds: int = 2) -> None:
        for _ in range(rounds):
            synced(self.a, self.tgt("a"))
            synced(self.b, self.tgt("b"))

    def deliver(self, storage: Storage) -> list[str]:
        got: list[Message] = []
        consumer(storage, "billing").deliver_pending(got.append)
        return [m.payload.decode() for m in got]

    def remote_tag(self) -> str | None:
        return rev_parse(self.central, TAG)

    def confirmed(self) -> list[str]:
        return [m.sha for m in remote_messages(self.central, "orders")]

    def tags(self) -> tuple[str | None, str | None, str | None]:
        return self.a.read_ref(TAG), self.b.read_ref(TAG), self.remote_tag()


@pytest.fixture
def pair(git_daemon: GitDaemon, central: Path, storages: dict[str, Storage]) -> Iterator[Pair]:
    yield Pair(git_daemon.url("central.git"), central, storages)


def test_seek_beginning_replays_and_holds_on_every_node(pair: Pair) -> None:
    end = pair.confirmed()[-1]
    assert pair.tags() == (end, end, end)
    consumer(pair.a, "billing").seek("beginning")
    pair.sync_all(rounds=3)
    assert pair.tags() == (None, None, None)
    assert pair.a.read_ref(reset_ref("billing")) is None  # the record went with the push
    assert pair.deliver(pair.a) == [f"m{i}" for i in range(5)]
    pair.sync_all()
    assert pair.tags() == (end, end, end)


@pytest.mark.parametrize("how", ["id", "commit", "time"])
def test_a_backward_seek_holds_on_both_nodes_and_redelivers(pair: Pair, how: str) -> None:
    shas = pair.confirmed()
    third = pair.sent[2]
    target_text = {
        "id": third.id,
        "commit": third.sha[:10],
        "time": (third.time - timedelta(microseconds=1)).isoformat(),
    }[how]
    if how == "time":  # every message has the same second: replay from the first one
        expected_tag, replayed = None, [f"m{i}" for i in range(5)]
    else:
        expected_tag, replayed = shas[1], ["m2", "m3", "m4"]
    assert consumer(pair.b, "billing").seek(target_text) == expected_tag
    pair.sync_all(rounds=3)
    assert pair.tags() == (expected_tag, expected_tag, expected_tag)
    assert pair.deliver(pair.a) == replayed
    pair.sync_all()
    assert pair.tags() == (shas[-1],) * 3


def test_cli_seek_on_a_node_storage_moves_within_confirmed_messages(pair: Pair) -> None:
    """Another node pushed first and a message is unpushed here: ``seek end`` puts the
    tag on the confirmed tip, never on the unpushed message (sync would re-parent it
    away and push an orphan as the cluster's tag), and an unpushed id is not found."""
    unpushed = producer(pair.a, "a").publish("local only")
    producer(pair.b, "b").publish("from b")
    synced(pair.b, pair.tgt("b"))
    assert sync_once(pair.a, pair.tgt("a"), listen_only=True).fetched == 1  # no push
    producer(pair.a, "a").publish("later")
    confirmed_tip = pair.a.read_ref(tracking_ref(REMOTE, "orders"))
    out = ok(gitmq("seek", pair.a.path, "orders", "billing", "end")).out
    assert out == f"consumer billing now at {confirmed_tip[:12]}\n"
    fails(
        gitmq("seek", pair.a.path, "orders", "billing", unpushed.id),
        4,
        f"no message {unpushed.id!r} on queue 'orders' among its confirmed messages; give a "
        f"message id, a commit id, an ISO time, 'beginning' or 'end'",
    )
    pair.sync_all(rounds=3)
    tag = pair.remote_tag()
    assert tag is not None and tag in pair.confirmed()
    assert pair.deliver(pair.a) == ["local only", "later"]
    assert pair.deliver(pair.b) == ["local only", "later"]
    pair.sync_all()
    assert pair.tags() == (pair.confirmed()[-1],) * 3


def test_consume_on_a_node_storage_delivers_confirmed_messages_only(pair: Pair) -> None:
    """``gitmq consume`` opened by hand on a node's storage reads what the node reads;
    after the node re-parents its unpushed message, that consumer is still on the
    queue."""
    producer(pair.a, "a").publish("unpushed")
    producer(pair.b, "b").publish("from b")
    synced(pair.b, pair.tgt("b"))
    drained = ok(gitmq("consume", pair.a.path, "orders", "ops", "--drain"))
    assert drained.out.splitlines() == [f"m{i}" for i in range(5)]
    synced(pair.a, pair.tgt("a"))  # re-parents "unpushed" onto "from b" and pushes it
    again = ok(gitmq("consume", pair.a.path, "orders", "ops", "--drain"))
    assert again.out.splitlines() == ["from b", "unpushed"]


def test_consumer_delete_removes_the_tag_everywhere(pair: Pair) -> None:
    out = ok(gitmq("consumer", "delete", pair.b.path, "orders", "billing")).out
    end = pair.confirmed()[-1]
    assert out == (
        f"consumer billing deleted (it was at {end[:12]}); its tag on {REMOTE} goes at the "
        f"next sync\n"
    )
    pair.sync_all(rounds=3)
    assert pair.tags() == (None, None, None)
    assert pair.a.read_ref(remote_tag_ref(REMOTE, "billing")) is None
    fails(
        gitmq("consumer", "delete", pair.b.path, "orders", "billing"),
        4,
        f"consumer 'billing' has no offset in {pair.b.path} (no tag refs/tags/billing); "
        f"nothing to delete",
    )


def test_a_forward_seek_is_an_ordinary_push_and_a_reset_beats_progress_elsewhere(
    pair: Pair,
) -> None:
    """Forward moves need no record; a move back on one node wins over a node that went
    on meanwhile (its lease is on what it saw), and then that node follows."""
    shas = pair.confirmed()
    consumer(pair.a, "billing").seek(pair.sent[1].id)  # back to before m1
    more = [producer(pair.b, "b").publish(f"n{i}") for i in range(2)]
    synced(pair.b, pair.tgt("b"))
    pair.deliver(pair.b)  # b goes on to n1, not knowing about the seek yet
    synced(pair.b, pair.tgt("b"))
    assert pair.remote_tag() == more[-1].sha
    pair.sync_all(rounds=3)
    assert pair.tags() == (shas[0],) * 3  # the operator's move held
    consumer(pair.a, "billing").seek(pair.sent[3].id)  # forward again: no record
    assert pair.a.read_ref(reset_ref("billing")) is None
    pair.sync_all()
    assert pair.tags() == (shas[2],) * 3


def test_a_tag_off_the_confirmed_history_is_never_pushed(pair: Pair) -> None:
    """A tag set by hand on an unpushed message (a tool of the old days) is reported and
    stays local once sync re-parents that message; the cluster's tag does not move, and
    a seek to the message (now confirmed, as its copy) repairs it."""
    end = pair.confirmed()[-1]
    unpushed = producer(pair.a, "a").publish("unpushed")
    producer(pair.b, "b").publish("from b")
    synced(pair.b, pair.tgt("b"))
    assert pair.a.compare_and_swap(TAG, unpushed.sha, end)
    report = sync_once(pair.a, pair.tgt("a"))
    assert report.ok and report.conflicts == [
        f"consumer 'billing': its tag {unpushed.sha[:12]} is not on the confirmed history "
        f"of its queue (set on an unpushed message?); not pushed to {REMOTE}: move it "
        f"with 'gitmq seek'"
    ]
    assert pair.remote_tag() == end and pair.a.read_ref(TAG) == unpushed.sha
    from_b = pair.confirmed()[-2]
    assert consumer(pair.a, "billing").seek(unpushed.id) == from_b
    pair.sync_all()
    assert pair.tags() == (from_b, from_b, from_b)
    assert pair.deliver(pair.b) == ["unpushed"]
