"""The node's Prometheus metrics, on a registry of its own (no global state).

Two kinds: what is counted as it happens (handler calls and their durations,
sync cycles and their outcomes), and what is read from the storage when
Prometheus scrapes (queue sizes and ages, consumer lag, deliveries and dead
letters, the budget's share), computed by :mod:`gitmq.figures` so ``/metrics``
shows what ``gitmq status`` shows. Every name starts with ``gitmq_``; the
process's own figures (``process_*``, ``python_info``) come with it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from gitmq.consumer import Consumer
from gitmq.errors import GitMQError
from gitmq.figures import Counts, consumer_lag, queue_figures
from gitmq.message import Message
from gitmq.storage import Storage
from gitmq.sync import SyncReport, SyncTarget

log = logging.getLogger("gitmq.metrics")

Handler = Callable[[Message], object]
HANDLER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
SYNC_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
RESULTS = ("ok", "failed", "refused", "rewritten")


def result(report: SyncReport) -> str:
    """A cycle's outcome: ``failed`` (the remote could not be reached, or every push
    lost its race), ``refused`` (the server refused an update), ``rewritten`` (a
    queue's remote history lost its confirmed tip), else ``ok``."""
    if report.error is not None:
        return "failed"
    return "refused" if report.refused else "rewritten" if report.rewritten else "ok"


class Metrics:
    """The registry ``/metrics`` serves, and the counters the node feeds."""

    def __init__(self, remotes: Sequence[str], consumers: Sequence[str]) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.handler_seconds = Histogram(
            "gitmq_handler_duration_seconds",
            "Handler call durations",
            ["consumer"],
            registry=r,
            buckets=HANDLER_BUCKETS,
        )
        self.failures = Counter(
            "gitmq_handler_failures", "Handler calls that failed", ["consumer"], registry=r
        )
        self.retries = Counter(
            "gitmq_handler_retries", "Failed handler calls retried", ["consumer"], registry=r
        )
        self.sync_seconds = Histogram(
            "gitmq_sync_duration_seconds",
            "Sync cycle durations",
            ["remote"],
            registry=r,
            buckets=SYNC_BUCKETS,
        )
        self.syncs = Counter(
            "gitmq_syncs", "Sync cycles by result", ["remote", "result"], registry=r
        )
        self.polls = Counter(
            "gitmq_polls",
            "Fetch-only cycles (sync.poll) by result",
            ["remote", "result"],
            registry=r,
        )
        self.pushes = Counter("gitmq_sync_pushes", "Pushes made", ["remote"], registry=r)
        self.rejections = Counter(
            "gitmq_sync_rejections", "Pushes rejected (a lost race)", ["remote"], registry=r
        )
        self.fetched = Counter(
            "gitmq_sync_fetched_messages", "Messages fetched", ["remote"], registry=r
        )
        self.pushed = Counter(
            "gitmq_sync_pushed_messages", "Messages pushed", ["remote"], registry=r
        )
        self.up = Gauge(
            "gitmq_remote_up",
            "1 when the last cycle with the remote worked",
            ["remote"],
            registry=r,
        )
        self.last_sync = Gauge(
            "gitmq_remote_last_sync_timestamp_seconds",
            "When the last sync cycle finished",
            ["remote"],
            registry=r,
        )
        for name in consumers:  # every series from the start, at 0
            for family in (self.handler_seconds, self.failures, self.retries):
                family.labels(name)
        for name in remotes:
            self.sync_seconds.labels(name)
            for family in (self.pushes, self.rejections, self.fetched, self.pushed):
                family.labels(name)
            for outcome in RESULTS:
                self.syncs.labels(name, outcome)
                self.polls.labels(name, outcome)

    def saw(self, report: SyncReport, poll: bool = False) -> None:
        """Count one cycle's ``report``."""
        remote = report.remote
        (self.polls if poll else self.syncs).labels(remote, result(report)).inc()
        self.pushes.labels(remote).inc(report.pushes)
        self.rejections.labels(remote).inc(report.rejections)
        self.fetched.labels(remote).inc(report.fetched)
        self.pushed.labels(remote).inc(report.pushed_messages)
        self.up.labels(remote).set(1 if report.error is None else 0)
        if not poll:
            self.sync_seconds.labels(remote).observe(report.seconds)
            self.last_sync.labels(remote).set(time.time())

    def recorded(self, consumer: Consumer, handler: Handler) -> Handler:
        return HandlerRecorder(handler, consumer.name, consumer.retry.max_attempts, self)


class HandlerRecorder:
    """A consumer's handler, timed and counted: each failed call is a failure, and a
    retry when the consumer tries the message again (attempts left)."""

    def __init__(self, handler: Handler, consumer: str, attempts: int, metrics: Metrics) -> None:
        self.handler, self.attempts = handler, attempts
        self.seconds = metrics.handler_seconds.labels(consumer)
        self.failures = metrics.failures.labels(consumer)
        self.retries = metrics.retries.labels(consumer)
        self._current: tuple[str, int] = ("", 0)  # the message and its failed attempts

    def __call__(self, message: Message) -> object:
        started = time.monotonic()
        try:
            value = self.handler(message)
        except Exception:
            self._failed(message.sha)
            raise
        finally:
            self.seconds.observe(time.monotonic() - started)
        self._current = ("", 0)
        return value

    def _failed(self, sha: str) -> None:
        self.failures.inc()
        failed = (self._current[1] if self._current[0] == sha else 0) + 1
        if failed < self.attempts:
            self.retries.inc()
            self._current = (sha, failed)
        else:
            self._current = ("", 0)


class Figures:
    """A collector of what the storage holds now, read at each scrape."""

    def __init__(
        self,
        storage: Storage,
        queues: Sequence[str],
        consumers: Sequence[Consumer],
        targets: Mapping[str, SyncTarget],
    ) -> None:
        self.storage, self.queues, self.consumers = storage, queues, consumers
        self.targets = targets
        self.counts = Counts(storage)  # each scrape counts only what changed since the last
        self._lock = threading.Lock()  # one scrape at a time reads the storage

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = time.time()
            yield from self._queues(now)
            yield from self._consumers(now)
            yield from self._budgets()

    def _queues(self, now: float) -> Iterator[Metric]:
        names = ("messages", "confirmed_messages", "unpushed_messages")
        count = {
            n: GaugeMetricFamily(f"gitmq_queue_{n}", f"Queue {n}", labels=["queue"]) for n in names
        }
        newest = GaugeMetricFamily(
            "gitmq_queue_newest_age_seconds",
            "Since the newest message was published",
            labels=["queue"],
        )
        confirmed = GaugeMetricFamily(
            "gitmq_queue_confirmed_age_seconds",
            "Since the newest confirmed message was published",
            labels=["queue"],
        )
        for queue in self.queues:
            try:
                f = queue_figures(self.storage, queue, now, self.counts)
            except GitMQError as exc:  # a scrape never fails for one queue
                log.warning("metrics: queue %s: %s", queue, exc)
                continue
            count["messages"].add_metric([queue], f.messages)
            count["unpushed_messages"].add_metric([queue], f.unpushed)
            if f.confirmed is not None:
                count["confirmed_messages"].add_metric([queue], f.confirmed)
            if f.newest_age is not None:
                newest.add_metric([queue], f.newest_age)
            if f.confirmed_age is not None:
                confirmed.add_metric([queue], f.confirmed_age)
        yield from (*count.values(), newest, confirmed)

    def _consumers(self, now: float) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "gitmq_consumer_lag_messages", "Messages pending", labels=["consumer", "queue"]
        )
        wait = GaugeMetricFamily(
            "gitmq_consumer_lag_seconds",
            "How long the oldest pending message has waited",
            labels=["consumer", "queue"],
        )
        running = GaugeMetricFamily(
            "gitmq_consumer_running", "1 while the consumer's thread runs", labels=["consumer"]
        )
        delivered = CounterMetricFamily(
            "gitmq_consumer_delivered", "Messages handled", labels=["consumer"]
        )
        dead = CounterMetricFamily(
            "gitmq_consumer_dead_lettered",
            "Messages moved to the dead-letter queue",
            labels=["consumer"],
        )
        for c in self.consumers:
            figures = consumer_lag(self.storage, c.name, c.branch, now)
            if figures.problem is None:
                lag.add_metric([c.name, c.branch], figures.messages)
                wait.add_metric([c.name, c.branch], figures.seconds)
            running.add_metric([c.name], 1 if c.running else 0)
            delivered.add_metric([c.name], c.delivered)
            dead.add_metric([c.name], c.dead_lettered)
        yield from (lag, wait, running, delivered, dead)

    def _budgets(self) -> Iterator[Metric]:
        reads = GaugeMetricFamily(
            "gitmq_budget_reads_per_minute",
            "This node's share of the remote's read budget",
            labels=["remote"],
        )
        pushes = GaugeMetricFamily(
            "gitmq_budget_pushes_per_minute",
            "This node's share of the remote's push budget",
            labels=["remote"],
        )
        nodes = GaugeMetricFamily(
            "gitmq_budget_nodes", "Nodes sharing the remote's budget", labels=["remote"]
        )
        taken = CounterMetricFamily(
            "gitmq_budget_taken",
            "Requests this node took from the remote's budget",
            labels=["remote", "kind"],
        )
        for name, target in self.targets.items():
            pace = target.pace
            if not pace.budget.limited:
                continue
            if pace.reads_per_minute is not None:
                reads.add_metric([name], pace.reads_per_minute)
            if pace.pushes_per_minute is not None:
                pushes.add_metric([name], pace.pushes_per_minute)
            nodes.add_metric([name], pace.nodes)
            taken.add_metric([name, "read"], pace.taken[0])
            taken.add_metric([name, "push"], pace.taken[1])
        yield from (reads, pushes, nodes, taken)
