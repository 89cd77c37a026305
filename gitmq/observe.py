"""What a running node tells the outside: metrics, health, the node file and systemd.

The node makes one :class:`Observer` and hands it every cycle's report and the
scheduler's tick; the observer logs the cycle (``remote_log.py``), counts it
(``metrics.py``), keeps the node file (``presence.py``), tells systemd when the
node is ready and that it lives (``notify.py``), and, when the config has
``observability.listen``, serves over HTTP:

- ``/metrics``: the Prometheus text format;
- ``/healthz``: 200 while the process and its scheduler work (the scheduler runs
  and its tick came within three tick intervals), else 503;
- ``/readyz``: 200 when the storage is there, every consumer's thread runs and
  the last sync with each remote worked within three ``sync.interval``\\ s, else
  503. Both bodies are JSON: each check with ``ok`` and the reason.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gitmq.config import NodeConfig
from gitmq.consumer import Consumer
from gitmq.errors import ConfigError
from gitmq.metrics import Figures, Handler, Metrics
from gitmq.notify import Notifier
from gitmq.presence import Presence
from gitmq.remote_log import RemoteLog
from gitmq.storage import Storage
from gitmq.sync import SyncReport, SyncTarget

log = logging.getLogger("gitmq.observe")

#: Seconds between scheduler ticks without a systemd watchdog (with one: half of it).
TICK_SECONDS = 1.0
Check = dict[str, Any]


def check(name: str, ok: bool, reason: str) -> Check:
    return {"name": name, "ok": ok, "reason": reason}


class Observer:
    """The node's metrics, health, node file and systemd notices."""

    def __init__(
        self,
        config: NodeConfig,
        storage: Storage,
        targets: Mapping[str, SyncTarget],
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config, self.storage, self.targets = config, storage, targets
        self.metrics = Metrics(list(targets), list(config.consumers))
        self.log = RemoteLog()
        self.notifier = Notifier(environ)
        self.tick_seconds = self.notifier.watchdog / 2 if self.notifier.watchdog else TICK_SECONDS
        self.consumers: list[Consumer] = []
        self.syncs: dict[str, dict[str, Any]] = {}  # the node file's "syncs"
        self.synced: set[str] = set()  # remotes with a first sync cycle (READY=1 after all)
        self.worked: dict[str, float] = {}  # when the last sync that worked finished
        self.presence: Presence | None = None
        self.ready = False
        self._ticked = time.monotonic()
        self._said = ""  # the last STATUS= line
        self._scheduler: Any = None
        self._server: ThreadingHTTPServer | None = None

    def record(self, consumers: list[tuple[Consumer, Handler]]) -> list[tuple[Consumer, Handler]]:
        """The node's consumers with their handlers timed and counted."""
        self.consumers = [consumer for consumer, _ in consumers]
        queues = [*self.config.queues, *(c.dead_letter for c in self.config.consumers.values())]
        figures = Figures(self.storage, list(dict.fromkeys(queues)), self.consumers, self.targets)
        self.metrics.registry.register(figures)
        return [(c, self.metrics.recorded(c, handler)) for c, handler in consumers]

    # ------------------------------------------------------------ the node's life

    @contextlib.contextmanager
    def running(self, scheduler: Any) -> Iterator[None]:
        """:meth:`start` for the node's run, and :meth:`stop` however it ends: no port
        left listening, no node file naming a node that is gone."""
        self.start(scheduler)
        try:
            yield
        finally:
            self.stop()

    def start(self, scheduler: Any) -> None:
        """Serve (a port in use fails here, before any consumer starts) and write the
        node file; ``scheduler`` is what ``/healthz`` watches."""
        self._scheduler = scheduler
        listen = self.config.observability
        if listen is not None:
            self._server = serve(self, listen.host, listen.port, str(self.config.file))
        where = f"{listen.host}:{listen.port}" if listen else None
        self.presence = Presence(self.storage, self.config.name, self.targets, where)
        self.tick()
        self._ready_when_synced()

    def stopping(self) -> None:
        self.notifier.stopping(f"node {self.config.name} stopping: pushing what is pending")

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self.presence is not None:
            self.presence.withdraw()

    def tick(self) -> None:
        """The scheduler's heartbeat: pets systemd's watchdog, refreshes the node file."""
        self._ticked = time.monotonic()
        self.notifier.pet()
        self._show_consumers()

    def _show_consumers(self) -> None:
        if self.presence is not None:
            self.presence.consumers({c.name: consumer_state(c) for c in self.consumers})

    def saw(self, report: SyncReport, poll: bool = False) -> None:
        """One cycle with a remote: log it, count it, record it, maybe say ready."""
        self.log.saw(report, poll)
        self.metrics.saw(report, poll)
        if poll and report.error is None:
            return
        remote = report.remote
        if not poll:
            self.synced.add(remote)
        if not poll and report.ok:
            self.worked[remote] = time.monotonic()
        self.syncs[remote] = {
            "at": time.time(),
            "ok": report.ok,
            "line": report.line(),
            "error": report.error,
            "down_since": self.log.down_since(remote),
        }
        if self.presence is not None:
            self.presence.remote(remote, self.targets[remote].pace.line())
            self.presence.sync(remote, self.syncs[remote])
        self._show_consumers()
        self._ready_when_synced()

    def _ready_when_synced(self) -> None:
        """READY=1 once every remote had a first cycle; then STATUS= when it changes."""
        status, said = self.status(), self._said
        if not self.ready and self.presence is not None and self.synced >= set(self.targets):
            self.ready = True
            self.notifier.ready(status)
        elif self.ready and status != said:
            self.notifier.status(status)
        self._said = status

    def status(self) -> str:
        syncs = dict(self.syncs)  # a copy: sync jobs add to it from their threads
        up = sum(1 for s in syncs.values() if s["ok"])
        running = sum(1 for c in self.consumers if c.running)
        down = ", ".join(f"{r} ({s['error']})" for r, s in syncs.items() if s["error"])
        text = f"{up}/{len(self.targets)} remotes up, "
        text += f"{running}/{len(self.consumers)} consumers running"
        return text + (f"; down: {down}" if down else "")

    # ------------------------------------------------------------ the checks

    def health(self) -> list[Check]:
        state = getattr(self._scheduler, "running", False)
        age = time.monotonic() - self._ticked
        return [
            check("scheduler", bool(state), "running" if state else "the scheduler is not running"),
            check(
                "tick",
                age < 3 * self.tick_seconds,
                f"last scheduler tick {age:.1f}s ago (every {self.tick_seconds:g}s)",
            ),
        ]

    def readiness(self) -> list[Check]:
        there = (self.storage.git_dir / "HEAD").is_file()
        out = [check("storage", there, f"{self.storage.path} {'open' if there else 'is gone'}")]
        for c in self.consumers:
            why = "running" if c.running else f"not running: {c.last_error or 'thread ended'}"
            out.append(check(f"consumer {c.name}", c.running, why))
        return out + [self._remote_check(name) for name in self.targets]

    def _remote_check(self, remote: str) -> Check:
        limit = 3 * self.config.sync.interval
        worked, last = self.worked.get(remote), self.syncs.get(remote)
        if worked is not None and time.monotonic() - worked <= limit:
            return check(f"remote {remote}", True, f"synced {time.monotonic() - worked:.1f}s ago")
        since = (
            "no sync worked yet"
            if worked is None
            else f"no sync worked for {time.monotonic() - worked:.1f}s (limit {limit:g}s)"
        )
        error = last and (last["error"] or last["line"])
        return check(f"remote {remote}", False, since + (f"; last: {error}" if error else ""))


def consumer_state(consumer: Consumer) -> dict[str, Any]:
    return {
        "queue": consumer.branch,
        "running": consumer.running,
        "last_error": consumer.last_error,
        "delivered": consumer.delivered,
        "dead_lettered": consumer.dead_lettered,
    }


# ------------------------------------------------------------------ HTTP


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    observer: Observer


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        observer = self.server.observer
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, generate_latest(observer.metrics.registry))
        elif path in ("/healthz", "/readyz"):
            checks = observer.health() if path == "/healthz" else observer.readiness()
            ok = all(c["ok"] for c in checks)
            body = {"status": "ok" if ok else "failing", "checks": checks}
            self._send(200 if ok else 503, "application/json", json.dumps(body).encode() + b"\n")
        else:
            self._send(404, "text/plain", b"not found: try /metrics, /healthz or /readyz\n")

    def _send(self, status: int, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def serve(observer: Observer, host: str, port: int, file: str) -> ThreadingHTTPServer:
    """Serve ``observer`` on ``host:port`` from a daemon thread; a port that cannot be
    had is a :class:`ConfigError` naming the setting."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        server = (_Server6 if ":" in host else _Server)((host, port), _Handler)
    except OSError as exc:
        why = (
            "address already in use; stop what listens there or choose another address"
            if exc.errno == errno.EADDRINUSE
            else f"{exc.strerror}; choose an address of this host"
        )
        raise ConfigError(f"observability.listen {where}: {why} in {file}") from None
    server.observer = observer
    thread = threading.Thread(target=server.serve_forever, name="gitmq-observe", daemon=True)
    thread.start()
    log.info("serving /metrics, /healthz and /readyz on http://%s", where)
    return server
