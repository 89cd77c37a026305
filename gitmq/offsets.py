"""Consumer offsets across nodes: how a consumer tag moves in a sync cycle.

A consumer tag only moves forward along its queue, with one exception: a
deliberate move back by an operator (``gitmq seek`` to replay, ``seek
beginning``, ``gitmq consumer delete``). Such a move is *recorded*: the ref
``refs/gitmq/resets/<consumer>`` says "the local tag was moved on purpose",
so the next sync pushes it over the remote's copy (with a lease on the copy
it last saw) instead of taking it for a node that is behind, then drops the
record. Every other node sees the remote's tag go *back* from the value it
last saw (or vanish), which a tag never does on its own, and follows it.

The rules for one consumer, with ``local`` the local tag, ``seen`` the remote's
copy before this cycle's fetch and ``remote`` the copy after it:

- a reset is recorded: push ``local`` (or the deletion) with a lease on ``remote``;
- ``remote`` went back from ``seen`` (or vanished): another node reset it; follow;
- ``local`` before ``remote`` (or absent): fast-forward, a redeployed node resumes;
- ``remote`` before ``local`` (or absent): push ``local``, but only if it is on
  the confirmed history of its queue (a tag on an unpushed message would name
  a commit that sync may still re-parent away);
- otherwise the tags diverged (two nodes run a consumer of that name): report
  it, move neither.

See docs/semantics.md ("Moving a consumer back").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gitmq.storage import Storage
from gitmq.storage.remote import RefUpdate

log = logging.getLogger("gitmq.sync")

RESETS = "refs/gitmq/resets/"
Order = Callable[[str, str], bool]  # before(a, b): a is at or before b in queue order


def remote_tag_ref(remote: str, consumer: str) -> str:
    """Where the remote's copy of a consumer tag is kept (never in refs/tags)."""
    return f"refs/gitmq/remotes/{remote}/tags/{consumer}"


def reset_ref(consumer: str) -> str:
    """The record of a deliberate move of ``consumer``'s tag not pushed yet."""
    return RESETS + consumer


def record_reset(storage: Storage, consumer: str, marker: str) -> None:
    """Record that ``consumer``'s tag was moved on purpose (``marker``: any commit of
    its queue, the record's value means nothing): the next sync makes it hold."""
    ref = reset_ref(consumer)
    storage.compare_and_swap(ref, marker, storage.read_ref(ref))


def clear_reset(storage: Storage, consumer: str) -> None:
    ref = reset_ref(consumer)
    value = storage.read_ref(ref)
    if value is not None:
        storage.delete_ref(ref, value)


@dataclass
class Plan:
    """What the offsets of one cycle push, and what to record once the push landed."""

    updates: list[RefUpdate] = field(default_factory=list)
    confirm: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    resets: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    followed: int = 0

    def drop(self, refs: set[str]) -> None:
        """Leave the tags ``refs`` out of this push (the server refused them)."""
        gone = {u.ref.removeprefix("refs/tags/") for u in self.updates if u.ref in refs}
        self.updates = [u for u in self.updates if u.ref not in refs]
        self.confirm = [c for c in self.confirm if c[0].rpartition("/tags/")[2] not in gone]
        self.resets = [c for c in self.resets if c not in gone]

    def report(self, text: str) -> None:
        """A tag that cannot move as asked: in the sync report and the log."""
        self.conflicts.append(text)
        log.error("%s", text)


class OffsetSync:
    """The consumer tags of one sync cycle with one remote."""

    def __init__(
        self,
        storage: Storage,
        remote: str,
        consumers: tuple[str, ...],
        before: Order,
        confirmed: Callable[[str], bool],
    ) -> None:
        self.storage, self.remote, self.consumers = storage, remote, consumers
        self.before, self.confirmed = before, confirmed
        self.seen: dict[str, str | None] = {}

    def remember(self, remote_copies: Mapping[str, str | None]) -> None:
        """The remote copies as they were before this cycle's fetch."""
        self.seen = dict(remote_copies)

    def to_fetch(self, remote_refs: Mapping[str, str]) -> list[str]:
        """The refspecs that fetch the consumer tags that changed on the remote (into
        their remote copies); a copy whose tag the remote deleted (a reset elsewhere)
        goes. Remembers the copies as they were (``remember``)."""
        specs, copies = [], {}
        for consumer in self.consumers:
            ref, mine = f"refs/tags/{consumer}", remote_tag_ref(self.remote, consumer)
            theirs, known = remote_refs.get(ref), self.storage.read_ref(mine)
            copies[consumer] = known
            if theirs and theirs != known:
                specs.append(f"+{ref}:{mine}")
            elif theirs is None and known is not None:
                self.storage.delete_ref(mine, known)
        self.remember(copies)
        return specs

    def follow(self, plan: Plan) -> None:
        """Move local tags to the remote's where the rules say so (before fetched
        messages become visible: a consumer that saw them first would redeliver what
        the cluster already finished)."""
        for consumer in self.consumers:
            local, remote = self._values(consumer)
            if local == remote or self.storage.read_ref(reset_ref(consumer)) is not None:
                continue
            if self._went_back(consumer, remote):
                log.info(
                    "consumer %s: its tag on %s was moved back by an operator (to %s); "
                    "following it",
                    consumer,
                    self.remote,
                    remote[:12] if remote else "the beginning",
                )
            elif not (remote is not None and (local is None or self.before(local, remote))):
                continue
            if self._set_local(consumer, remote, local):
                plan.followed += 1

    def plan(self, plan: Plan) -> None:
        """Add the tag pushes of this cycle to ``plan``."""
        for consumer in self.consumers:
            local, remote = self._values(consumer)
            if self.storage.read_ref(reset_ref(consumer)) is not None:
                self._push(plan, consumer, local, remote, reset=True)
            elif local is not None and local != remote:
                if remote is None or self.before(remote, local):
                    self._push(plan, consumer, local, remote, reset=False)
                elif not self.before(local, remote):
                    self._conflict(plan, consumer, local, remote)

    def landed(self, plan: Plan) -> None:
        """The push of ``plan`` landed: record the remote's new copies, drop the resets."""
        for ref, new, old in plan.confirm:
            if new is None:
                if old is not None:
                    self.storage.delete_ref(ref, old)
            else:
                self.storage.compare_and_swap(ref, new, old)
        for consumer in plan.resets:
            clear_reset(self.storage, consumer)

    # ----------------------------------------------------------------- rules

    def _values(self, consumer: str) -> tuple[str | None, str | None]:
        return (
            self.storage.read_ref(f"refs/tags/{consumer}"),
            self.storage.read_ref(remote_tag_ref(self.remote, consumer)),
        )

    def _went_back(self, consumer: str, remote: str | None) -> bool:
        seen = self.seen.get(consumer)
        if seen is None or seen == remote:
            return False
        return remote is None or self.before(remote, seen)

    def _set_local(self, consumer: str, value: str | None, old: str | None) -> bool:
        tag = f"refs/tags/{consumer}"
        if value is None:
            return old is not None and self.storage.delete_ref(tag, old)
        return self.storage.compare_and_swap(tag, value, old)

    def _push(
        self, plan: Plan, consumer: str, local: str | None, remote: str | None, *, reset: bool
    ) -> None:
        tag = f"refs/tags/{consumer}"
        if local == remote:
            plan.resets.append(consumer)  # already there: only the record goes
            return
        if local is not None and not self.confirmed(local):
            plan.report(
                f"consumer {consumer!r}: its tag {local[:12]} is not on the confirmed history "
                f"of its queue (set on an unpushed message?); not pushed to {self.remote}: "
                f"move it with 'gitmq seek'"
            )
            return
        if local is None:
            assert remote is not None
            plan.updates.append(RefUpdate("", tag, lease=remote, delete=True))
        else:
            plan.updates.append(RefUpdate(local, tag, lease=remote or ""))
        plan.confirm.append((remote_tag_ref(self.remote, consumer), local, remote))
        if reset:
            plan.resets.append(consumer)

    def _conflict(self, plan: Plan, consumer: str, local: str, remote: str) -> None:
        plan.report(
            f"consumer {consumer!r}: local tag {local[:12]} and the tag on {self.remote} "
            f"{remote[:12]} have diverged (two nodes run a consumer of that name?); "
            f"neither was moved"
        )
