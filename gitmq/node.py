"""The node: one storage, its consumers, and scheduled sync with its remotes.

``Node.run_once()`` is the whole job once (sync, deliver, sync) for tests and
cron; ``Node.run()`` schedules the same sync body with APScheduler and stops
cleanly when the stop event is set (SIGTERM/SIGINT in the CLI).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Protocol

from gitmq import eager
from gitmq.budget import Pace
from gitmq.config import ConsumerConfig, GithubConfig, NodeConfig, RemoteConfig
from gitmq.consumer import Consumer
from gitmq.errors import ConfigError, RemoteError
from gitmq.handlers import command_handler, python_handler
from gitmq.message import Message
from gitmq.observe import Observer
from gitmq.prune import PruneReport, prune_queue
from gitmq.registry import Registry
from gitmq.schedule import scheduler_for
from gitmq.storage import Storage
from gitmq.storage.remote import Credentials
from gitmq.sync import SyncReport, SyncTarget, sync_once

log = logging.getLogger("gitmq.node")


class StopFlag(Protocol):
    """What ``Node.run`` waits on: a ``threading.Event``, or the CLI's ``SignalStop``."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


#: How long a stopping node lets a running handler finish.
HANDLER_GRACE_SECONDS = 30.0


def credentials(
    remote: RemoteConfig, environ: Mapping[str, str], github: GithubConfig | None = None
) -> Credentials:
    token = None
    source = None
    if remote.github_app:
        assert github is not None and github.app is not None  # the config loader checks
        from gitmq.github_app import InstallationTokens  # PyGithub: only when used

        source = InstallationTokens(github.app, github.base_url)
    if remote.token_env:
        token = environ.get(remote.token_env)
        if not token:
            raise ConfigError(
                f"remote {remote.name!r} needs a token in the environment variable "
                f"{remote.token_env}, which is not set"
            )
    return Credentials(
        token=token,
        token_file=remote.token_file,
        token_source=source,
        token_user=remote.token_user,
        ssh_key=remote.ssh_key,
        known_hosts=remote.known_hosts,
        ssh_config=remote.ssh_config,
        timeout=remote.timeout,
        ssh_reuse=remote.ssh_reuse,
    )


def sync_targets(config: NodeConfig, environ: Mapping[str, str]) -> dict[str, SyncTarget]:
    """What the node syncs with each remote of ``config``."""
    demand = 60 / config.sync.interval + (60 / config.sync.poll if config.sync.poll else 0)
    return {
        name: SyncTarget(
            remote=name,
            url=remote.url,
            queues=tuple(config.synced_queues(name)),
            consumers=tuple(
                c.name for c in config.consumers.values() if config.queues[c.queue].remote == name
            ),
            committer=config.identity,
            credentials=credentials(remote, environ, config.github),
            max_attempts=config.sync.max_push_attempts,
            rotations={
                q.name: q.rotate
                for q in config.queues.values()
                if q.remote == name and q.rotate is not None
            },
            interval=config.sync.interval,
            pace=Pace(remote.budget, demand=demand),
            registry=Registry(config.name if remote.budget.limited else "", name),
        )
        for name, remote in config.remotes.items()
    }


def eager_remotes(config: NodeConfig) -> set[str]:
    """The remotes a local publish syncs with at once (``sync.eager``; by default those
    with a budget, which keeps the host's load in bounds)."""
    eager = config.sync.eager
    return {n for n, r in config.remotes.items() if eager or (eager is None and r.budget.limited)}


def say_budgets(targets: Mapping[str, SyncTarget]) -> None:
    """Log each remote's budget at start, and a schedule it cannot carry."""
    for name, target in targets.items():
        if target.pace.budget.limited:
            log.info("budget %s: %s", name, target.pace.line())
        if target.pace.shortfall():
            log.warning("budget %s: %s", name, target.pace.shortfall())


def consumers_for(config: NodeConfig, storage: Storage) -> list[tuple[Consumer, Handler]]:
    return [
        (
            Consumer(
                storage,
                c.name,
                c.queue,
                retry=c.retry,
                dead_letter=c.dead_letter,
                identity=config.identity,
            ),
            handler_for(c),
        )
        for c in config.consumers.values()
    ]


def record_upstreams(storage: Storage, config: NodeConfig, targets: Iterable[SyncTarget]) -> None:
    """Say in the storage which queues sync with which remote (and that the others do
    not), so that whoever opens it (a consumer, a seek) reads confirmed messages as the
    node does. The node's own consumers find their source the same way."""
    synced = {q: t.remote for t in targets for q in t.queues}
    for queue in config.queues:
        storage.set_upstream(queue, synced.get(queue))
    for queue, remote in synced.items():
        storage.set_upstream(queue, remote)


Handler = Callable[[Message], object]


def handler_for(c: ConsumerConfig) -> Handler:
    if c.handler.command:
        return command_handler(c.handler.command, c.queue, c.name, c.handler.timeout)
    assert c.handler.python is not None
    return python_handler(c.handler.python)


class Node:
    """A running GitMQ node built from a validated :class:`NodeConfig`."""

    def __init__(self, config: NodeConfig, environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.targets = sync_targets(config, os.environ if environ is None else environ)
        self.storage = Storage(config.storage_path, fsync=config.fsync)
        record_upstreams(self.storage, config, self.targets.values())
        self.observer = Observer(config, self.storage, self.targets, environ)
        self.consumers = self.observer.record(consumers_for(config, self.storage))
        self._sync_lock = threading.Lock()
        say_budgets(self.targets)

    def close(self) -> None:
        self.storage.close()

    # -------------------------------------------------------------- one pass

    def sync(self, leaving: bool = False) -> list[SyncReport]:
        """One sync cycle with every remote (``leaving``: the last, at stop)."""
        return [self.sync_remote(name, leaving) for name in self.targets]

    def poll_remote(self, name: str) -> SyncReport | None:
        """A fetch-only cycle between full syncs (``sync.poll``); skipped while a
        sync runs."""
        if not self._sync_lock.acquire(blocking=False):
            return None
        try:
            report = sync_once(self.storage, self.targets[name], listen_only=True)
        finally:
            self._sync_lock.release()
        self.observer.saw(report, poll=True)  # logged as "poll ..." when it fetched or failed
        return report

    def sync_remote(self, name: str, leaving: bool = False) -> SyncReport:
        target = self.targets[name]  # waits for its turn in the budget outside the lock
        report = target.pace.when_ready(
            self._sync_lock, lambda: sync_once(self.storage, target, leaving=leaving)
        )
        self.storage.release_deleted_packs()
        self.observer.saw(report)  # the log (a failing remote: once, then summaries), metrics
        return report

    def prune(self, queue: str, now: datetime | None = None) -> PruneReport:
        """Apply ``queue``'s prune policy once (the body the scheduler calls)."""
        config = self.config.queues[queue]
        assert config.prune is not None
        report = prune_queue(
            self.storage,
            queue,
            config.prune,
            now=now or datetime.now(UTC),
            consumers=[c.name for c in self.config.consumers.values() if c.queue == queue],
            remote=config.remote,
        )
        log.info("prune %s", report.line(), extra={"prune": vars(report)})
        return report

    def deliver(self) -> int:
        """Deliver every pending confirmed message to every consumer once."""
        return sum(consumer.deliver_pending(handler) for consumer, handler in self.consumers)

    def run_once(self) -> int:
        """Sync, deliver, sync again (to push the moved tags); for tests and cron."""
        reports = self.sync()
        delivered = self.deliver()
        reports += self.sync()
        log.info("once: delivered %d messages", delivered)
        failed = [r for r in reports if not r.ok]
        if failed:
            raise RemoteError(failed[-1].error or "; ".join(failed[-1].rewritten))
        return 0

    # ------------------------------------------------------------ the daemon

    def run(self, stop: StopFlag) -> int:
        """Run until ``stop`` is set, then drain, push what is pending and return 0."""
        scheduler = scheduler_for(
            self.config, self.targets, self.sync_remote, self.poll_remote, self.prune, self.observer
        )
        with self.observer.running(scheduler):  # /metrics (a port in use fails here), node file
            for consumer, handler in self.consumers:
                consumer.consume(handler)
            scheduler.start()
            eager_ones = eager_remotes(self.config)
            waker = eager.Waker(self.storage, self.targets, eager_ones, self.sync_remote).start()
            log.info(
                "node %s running: %d consumers, %d remotes",
                self.config.name,
                len(self.consumers),
                len(self.targets),
            )
            # Wake up now and then, whatever ``stop`` is: an untimed wait has slept through
            # SIGTERM before (the signal landed on a thread busy starting git).
            while not stop.wait(0.5):
                pass
            log.info("node %s stopping: finishing handlers, pushing the rest", self.config.name)
            self.observer.stopping()
            for consumer, _ in self.consumers:
                consumer.stop(HANDLER_GRACE_SECONDS)
            for target in self.targets.values():
                target.pace.release()  # no waiting for the budget: the last sync goes at once
            waker.stop()
            scheduler.shutdown(wait=True)
            self.sync(leaving=True)
        log.info("node %s stopped", self.config.name)
        return 0
