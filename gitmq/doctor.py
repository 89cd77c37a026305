"""``gitmq doctor``: check a node's setup before it runs (or while it does).

Each check is a small function returning findings, one line each, that say
what was found and what to do: ``ok``, ``warn`` (works, but look at it) or
``FAIL`` (the node cannot do its job this way). The remote checks make real
requests with the node's own credentials (``storage/probe.py``): a listing
(reachable, authenticated, protocol v2) and a scratch ref pushed and deleted
again (writable, atomic push), so three requests per remote.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import secrets
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gitmq import figures, presence
from gitmq.budget import Pace
from gitmq.config import NodeConfig, check_handlers
from gitmq.errors import GitMQError, RemoteError
from gitmq.node import credentials
from gitmq.registry import Registry
from gitmq.storage import Storage
from gitmq.storage.probe import Advertised, advertised, scratch_push

#: Committer times this far ahead of this clock mean one of the clocks is off.
MAX_SKEW_SECONDS = 60.0
#: A lock file this old, with no node running, was left by a process that died.
STALE_LOCK_SECONDS = 600.0
#: A queue without a prune policy holding more than this wants one.
MAX_UNPRUNED_MESSAGES = 100_000
#: Less free space than this share of the file system is "nearly full".
MIN_FREE_SHARE = 0.10
SCRATCH_PREFIX = "refs/gitmq/doctor/"


class Level(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Finding:
    level: Level
    subject: str  # "remote origin", "clock", "disk", "consumer billing", ...
    text: str

    def line(self) -> str:
        return f"{self.level.value:<4} {self.subject}: {self.text}"


def ok(subject: str, text: str) -> Finding:
    return Finding(Level.OK, subject, text)


def warn(subject: str, text: str) -> Finding:
    return Finding(Level.WARN, subject, text)


def fail(subject: str, text: str) -> Finding:
    return Finding(Level.FAIL, subject, text)


def diagnose(config: NodeConfig, environ: Mapping[str, str], now: float) -> list[Finding]:
    """Every check, in the order an operator fixes things: config, storage, remotes."""
    found = handlers(config)
    storage = _open(config, found)
    try:
        if storage is not None:
            found += consumers(storage, config, now)
            found += disk(storage, config, now)
            found += locks(storage.git_dir, now, presence.read(storage) is not None)
        for name in config.remotes:
            found += remote(config, name, environ, storage, now)
    finally:
        if storage is not None:
            storage.close()
    return found


def _open(config: NodeConfig, found: list[Finding]) -> Storage | None:
    try:
        return Storage(config.storage_path, create=False)
    except GitMQError as exc:
        if config.storage_path.exists():
            found.append(fail("storage", exc.message))
        else:
            found.append(
                ok(
                    "storage",
                    f"{config.storage_path} does not exist yet; "
                    "'gitmq node' creates it (or clones it) on start",
                )
            )
        return None


# ------------------------------------------------------------------ config


def handlers(config: NodeConfig) -> list[Finding]:
    """Each consumer's handler can run (``config.check_handlers``, one consumer at a time
    so that every bad one is named, not only the first)."""
    found = []
    for name, consumer in config.consumers.items():
        one = dataclasses.replace(config, consumers={name: consumer}, github=None)
        try:
            check_handlers(one)
        except GitMQError as exc:
            found.append(fail(f"handler of {name}", exc.message))
    try:
        check_handlers(dataclasses.replace(config, consumers={}))  # the GitHub App key
    except GitMQError as exc:
        found.append(fail("github app", exc.message))
    if not found:
        found.append(ok("handlers", f"every handler can run ({len(config.consumers)})"))
    return found


# ------------------------------------------------------------------ storage


def consumers(storage: Storage, config: NodeConfig, now: float) -> list[Finding]:
    """No consumer of the config sits on a position its queue does not hold."""
    found = []
    for consumer in config.consumers.values():
        lag = figures.consumer_lag(storage, consumer.name, consumer.queue, now)
        if lag.problem is not None:
            found.append(fail(f"consumer {consumer.name}", lag.problem))
    if not found:
        found.append(ok("consumers", f"none in conflict ({len(config.consumers)})"))
    return found


def disk(storage: Storage, config: NodeConfig, now: float) -> list[Finding]:
    """The storage's size, the file system's free space, and queues that grow unbounded."""
    found = []
    used = storage.disk_usage()
    fs = shutil.disk_usage(storage.git_dir)
    free = fs.free / fs.total if fs.total else 1.0
    text = f"the storage takes {_size(used)}; its file system has {_size(fs.free)} free"
    if free < MIN_FREE_SHARE:
        found.append(
            warn(
                "disk",
                f"{text} ({free:.0%}): nearly full; free space, or prune "
                "queues (queues.NAME.prune in the config, 'gitmq prune')",
            )
        )
    else:
        found.append(ok("disk", f"{text} ({free:.0%})"))
    for queue in config.queues.values():
        if queue.prune is not None or queue.rotate is not None:
            continue
        messages = figures.queue_figures(storage, queue.name, now).messages
        if messages > MAX_UNPRUNED_MESSAGES:
            found.append(
                warn(
                    f"queue {queue.name}",
                    f"holds {messages} messages and has no "
                    f"prune policy; add queues.{queue.name}.prune (max_age or "
                    "max_messages) to keep its history bounded",
                )
            )
    return found


def locks(git_dir: Path, now: float, node_running: bool) -> list[Finding]:
    """Lock files that a dead process left behind (they block the refs they lock)."""
    if node_running:
        return [ok("locks", "a node is running here; its locks are its own")]
    found = []
    for path in sorted(git_dir.rglob("*.lock")):
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:  # released meanwhile
            continue
        if age > STALE_LOCK_SECONDS:
            found.append(
                warn(
                    "lock",
                    f"{path} is {int(age // 60)} minutes old and no node "
                    f"runs here: a process died holding it; remove it (rm {path})",
                )
            )
    return found or [ok("locks", "no stale lock files")]


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


# ------------------------------------------------------------------ remotes


def remote(
    config: NodeConfig,
    name: str,
    environ: Mapping[str, str],
    storage: Storage | None,
    now: float,
) -> list[Finding]:
    """Reachable, authenticated, protocol v2, atomic push, writable; then the clock
    against what it holds and the budget against the node's schedule."""
    subject, url = f"remote {name}", config.remotes[name].url
    try:
        creds = credentials(config.remotes[name], environ, config.github)
        listing = advertised(url, creds)
    except RemoteError as exc:
        if "authentication failed" in exc.message:
            return [fail(subject, exc.message)]
        return [
            fail(
                subject,
                f"unreachable: {exc.message}; check the url, the network and that the server runs",
            )
        ]
    except GitMQError as exc:  # a token variable that is not set, an app key
        return [fail(subject, exc.message)]
    passed, found = ["reachable", "authenticated"], []
    if listing.protocol == 2:
        passed.append("protocol v2")
    else:
        found.append(
            warn(
                subject,
                "the server answers in protocol v0 only: every fetch lists "
                "every ref; upgrade the server to git 2.18 or later",
            )
        )
    scratch = f"{SCRATCH_PREFIX}{config.name}-{secrets.token_hex(4)}"
    probe = scratch_push(url, creds, scratch)
    if "atomic" in probe.capabilities:
        passed.append("atomic push")
    elif probe.capabilities:
        found.append(
            fail(
                subject,
                "the server does not support atomic push, which sync needs "
                "(all refs of a cycle move together); use a git server that does",
            )
        )
    if probe.error is not None:
        found.append(
            fail(
                subject,
                f"cannot push (a scratch ref {scratch}): {probe.error}; give "
                "this node write access (a deploy key or token that may write)",
            )
        )
    else:
        passed.append("scratch push and delete")
    if probe.cleanup_error is not None:
        found.append(
            warn(
                subject,
                f"the scratch ref {scratch} was pushed but not deleted "
                f"({probe.cleanup_error}); delete it: git push {url} :{scratch}",
            )
        )
    found.insert(0, ok(subject, ", ".join(passed)))
    if storage is not None:
        found.append(clock(storage, name, listing, now))
    return [*found, budget(config, name, listing, now)]


def clock(storage: Storage, name: str, listing: Advertised, now: float) -> Finding:
    """The newest commit on the remote's queue branches against this clock: a committer
    time ahead of now means this clock is behind (or the committing node's is ahead)."""
    shas = {sha for ref, sha in listing.refs.items() if ref.startswith("refs/heads/")}
    shas |= set(storage.list_refs(f"refs/remotes/{name}/").values())
    times = _committer_times(storage, shas)
    if not times:
        return ok(
            "clock",
            f"nothing of remote {name} is here yet to compare this clock with "
            "(run 'gitmq sync --config FILE' first)",
        )
    ahead = max(times) - now
    if ahead > MAX_SKEW_SECONDS:
        return warn(
            "clock",
            f"the newest commit on remote {name} was made {ahead:.0f}s in this "
            "clock's future: this machine's clock is behind (or that node's is ahead); "
            "check NTP on both (timedatectl, chronyc tracking)",
        )
    return ok(
        "clock",
        f"the newest commit on remote {name} is {max(0.0, -ahead):.0f}s old; "
        f"no sign of skew (more than {MAX_SKEW_SECONDS:g}s ahead would be)",
    )


_COMMITTER = re.compile(rb"^committer .* (\d+) [+-]\d{4}$", re.MULTILINE)


def _committer_times(storage: Storage, shas: Iterable[str]) -> list[float]:
    out = []
    for sha in sorted(shas):
        if storage.is_commit(sha):
            head = storage.read_body(sha).partition(b"\n\n")[0]
            match = _COMMITTER.search(head)
            if match:
                out.append(float(match[1]))
    return out


def budget(config: NodeConfig, name: str, listing: Advertised, now: float) -> Finding:
    """The node's schedule against its share of the remote's budget (as the node works
    it out at start: ``node.say_budgets``)."""
    remote_config = config.remotes[name]
    sync = config.sync
    demand = 60 / sync.interval + (60 / sync.poll if sync.poll else 0)
    pace = Pace(remote_config.budget, demand=demand)
    if remote_config.budget.limited:
        pace.share(*Registry(config.name, name).count(listing.refs, now))
    short = pace.shortfall()
    if short is not None:
        return warn(f"budget {name}", short)
    return ok(f"budget {name}", pace.line())


def exit_code(found: Iterable[Finding]) -> int:
    return 1 if any(f.level is Level.FAIL for f in found) else 0
