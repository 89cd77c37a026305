"""The figures status, doctor and /metrics show (gitmq/figures.py), on real storages: the
counts a node remembers between scrapes stay equal to a fresh count whatever the
history does (grows, is pruned, is rewritten, is deleted and made again)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from gitmq import Consumer, Producer, Storage
from gitmq.config import PrunePolicy
from gitmq.figures import Counts, consumer_lag, queue_figures
from gitmq.prune import prune_queue

REF = "refs/heads/orders"


def fresh(storage: Storage) -> int:
    return storage.count(None, storage.read_ref(REF))


def test_remembered_counts_follow_growth_pruning_rewrites_and_deletion(tmp_path: Path) -> None:
    with Storage(tmp_path / "s.git") as storage:
        producer = Producer(storage, "orders")
        counts = Counts(storage)

        def check() -> None:
            tip = storage.read_ref(REF)
            assert counts.upto(REF, tip) == fresh(storage)
            assert queue_figures(storage, "orders", time.time(), counts).messages == fresh(storage)

        producer.publish_many([f"a{i}" for i in range(50)])
        check()
        producer.publish_many([f"b{i}" for i in range(30)])  # forward: only the 30 counted
        check()
        prune_queue(storage, "orders", PrunePolicy(max_messages=20), now=datetime.now(UTC))
        assert fresh(storage) == 20
        check()  # the same commits, a shorter history: counted afresh
        old = storage.read_ref(REF)
        assert old is not None
        other = Producer(storage, "other").publish_many(["x", "y"])[-1].sha
        assert storage.compare_and_swap(REF, other, old)  # a rewritten branch
        check()
        assert storage.delete_ref(REF, other)
        assert counts.upto(REF, None) == 0
        producer.publish("again")
        check()


def test_lag_counts_what_follows_the_position_and_how_long_the_oldest_waited(
    tmp_path: Path,
) -> None:
    with Storage(tmp_path / "s.git") as storage:
        sent = Producer(storage, "orders").publish_many([f"m{i}" for i in range(10)])
        consumer = Consumer(storage, "billing", "orders")
        consumer.seek(sent[4].id)  # next delivered: m4
        lag = consumer_lag(storage, "billing", "orders", sent[4].time.timestamp() + 60)
        assert (lag.messages, lag.problem) == (6, None)
        assert 59 <= lag.seconds <= 61
        Producer(storage, "elsewhere").publish("x")
        elsewhere = storage.read_ref("refs/heads/elsewhere")
        assert elsewhere is not None
        assert storage.compare_and_swap("refs/tags/billing", elsewhere, sent[3].sha)
        lag = consumer_lag(storage, "billing", "orders", time.time())
        assert lag.problem is not None and "not on queue 'orders'" in lag.problem
