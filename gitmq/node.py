"""The node: one storage, its consumers, and scheduled sync with its remotes.

``Node.run_once()`` is the whole job once (sync, deliver, sync) for tests and
cron; ``Node.run()`` schedules the same sync body with APScheduler and stops
cleanly when the stop event is set (SIGTERM/SIGINT in the CLI).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Protocol

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from gitmq.config import ConsumerConfig, NodeConfig, RemoteConfig
from gitmq.consumer import Consumer
from gitmq.errors import ConfigError, RemoteError
from gitmq.handlers import command_handler, python_handler
from gitmq.message import Message
from gitmq.prune import PruneReport, prune_queue
from gitmq.storage import Storage
from gitmq.storage.remote import Credentials
from gitmq.sync import SyncReport, SyncTarget, sync_once, tracking_ref

log = logging.getLogger("gitmq.node")


class StopFlag(Protocol):
    """What ``Node.run`` waits on: a ``threading.Event``, or the CLI's ``SignalStop``."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


#: How long a stopping node lets a running handler finish.
HANDLER_GRACE_SECONDS = 30.0


def credentials(remote: RemoteConfig, environ: Mapping[str, str]) -> Credentials:
    token = None
    if remote.token_env:
        token = environ.get(remote.token_env)
        if not token:
            raise ConfigError(
                f"remote {remote.name!r} needs a token in the environment variable "
                f"{remote.token_env}, which is not set"
            )
    return Credentials(
        token=token,
        token_user=remote.token_user,
        ssh_key=remote.ssh_key,
        known_hosts=remote.known_hosts,
        ssh_config=remote.ssh_config,
        timeout=remote.timeout,
    )


class Node:
    """A running GitMQ node built from a validated :class:`NodeConfig`."""

    def __init__(self, config: NodeConfig, environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        env = os.environ if environ is None else environ
        self.targets = {
            name: SyncTarget(
                remote=name,
                url=remote.url,
                queues=tuple(config.synced_queues(name)),
                consumers=tuple(
                    c.name
                    for c in config.consumers.values()
                    if config.queues[c.queue].remote == name
                ),
                committer=config.identity,
                credentials=credentials(remote, env),
                max_attempts=config.sync.max_push_attempts,
                rotations={
                    q.name: q.rotate
                    for q in config.queues.values()
                    if q.remote == name and q.rotate is not None
                },
            )
            for name, remote in config.remotes.items()
        }
        self.storage = Storage(config.storage_path, fsync=config.fsync)
        self._record_upstreams()
        self.consumers = [(self._consumer(c), self._handler(c)) for c in config.consumers.values()]
        self._sync_lock = threading.Lock()

    def _consumer(self, c: ConsumerConfig) -> Consumer:
        remote = self.config.queues[c.queue].remote
        return Consumer(
            self.storage,
            c.name,
            c.queue,
            source_ref=tracking_ref(remote, c.queue) if remote else None,
            retry=c.retry,
            dead_letter=c.dead_letter,
            identity=self.config.identity,
        )

    @staticmethod
    def _handler(c: ConsumerConfig) -> Callable[[Message], object]:
        if c.handler.command:
            return command_handler(c.handler.command, c.queue, c.name, c.handler.timeout)
        assert c.handler.python is not None
        return python_handler(c.handler.python)

    def _record_upstreams(self) -> None:
        """Say in the storage which queues sync with which remote, so that a consumer or
        a seek opened on this storage by hand reads confirmed messages as the node does."""
        synced = {q: t.remote for t in self.targets.values() for q in t.queues}
        for queue in self.config.queues:
            self.storage.set_upstream(queue, synced.get(queue))
        for queue, remote in synced.items():
            self.storage.set_upstream(queue, remote)

    def close(self) -> None:
        self.storage.close()

    # -------------------------------------------------------------- one pass

    def sync(self) -> list[SyncReport]:
        """One sync cycle with every remote (the body the scheduler calls)."""
        return [self.sync_remote(name) for name in self.targets]

    def listen_remote(self, name: str) -> SyncReport | None:
        """A fetch-only cycle between full syncs (``sync.poll``); skipped while a
        sync runs."""
        if not self._sync_lock.acquire(blocking=False):
            return None
        try:
            report = sync_once(self.storage, self.targets[name], listen_only=True)
        finally:
            self._sync_lock.release()
        if report.fetched or not report.ok:
            log.info("listen %s", report.line(), extra={"sync": vars(report)})
        return report

    def sync_remote(self, name: str) -> SyncReport:
        with self._sync_lock:
            report = sync_once(self.storage, self.targets[name])
        self.storage.release_deleted_packs()
        level = logging.INFO if report.ok else logging.WARNING
        log.log(level, "%s", report.line(), extra={"sync": vars(report)})
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

    def _schedule_prunes(self, scheduler: BackgroundScheduler) -> None:
        for queue in self.config.queues.values():
            policy = queue.prune
            if policy is None:
                continue
            trigger = (
                CronTrigger.from_crontab(policy.cron, timezone=UTC)
                if policy.cron
                else IntervalTrigger(seconds=policy.every or 3600)
            )
            scheduler.add_job(
                self.prune,
                trigger,
                args=[queue.name],
                id=f"prune-{queue.name}",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )

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
            raise RemoteError(failed[-1].error or "sync failed")
        return 0

    # ------------------------------------------------------------ the daemon

    def run(self, stop: StopFlag) -> int:
        """Run until ``stop`` is set, then drain, push what is pending and return 0."""
        scheduler = BackgroundScheduler(timezone=UTC)
        for name in self.targets:
            scheduler.add_job(
                self.sync_remote,
                IntervalTrigger(
                    seconds=self.config.sync.interval, jitter=self.config.sync.jitter or None
                ),
                args=[name],
                id=f"sync-{name}",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
                next_run_time=datetime.now(UTC),
            )
            if self.config.sync.poll:
                scheduler.add_job(
                    self.listen_remote,
                    IntervalTrigger(seconds=self.config.sync.poll),
                    args=[name],
                    id=f"listen-{name}",
                    max_instances=1,
                    coalesce=True,
                    misfire_grace_time=None,
                )
        self._schedule_prunes(scheduler)
        for consumer, handler in self.consumers:
            consumer.consume(handler)
        scheduler.start()
        log.info(
            "node %s running: %d consumers, %d remotes",
            self.config.name,
            len(self.consumers),
            len(self.targets),
        )
        # Wake up now and then: a signal can land on any thread (the sync thread starts
        # git all the time), and its Python handler only runs once the main thread is
        # back in the interpreter. A plain wait() could sleep through SIGTERM forever.
        while not stop.wait(0.5):
            pass
        log.info("node %s stopping: finishing handlers, pushing what is pending", self.config.name)
        for consumer, _ in self.consumers:
            consumer.stop(HANDLER_GRACE_SECONDS)
        scheduler.shutdown(wait=True)
        self.sync()
        log.info("node %s stopped", self.config.name)
        return 0
