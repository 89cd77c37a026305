"""How many nodes share a remote: one ref per node, in the repository itself.

A node syncing with a remote that has a budget (``budget.py``) keeps the ref
``refs/gitmq/nodes/<node>/<epoch>.<role>`` there: the name says when it was
last refreshed and whether the node pushes (``p``: it pushed messages or tags
in the last ``REFRESH`` seconds) or only reads (``r``). It points at
``BODY``, one small commit, the same for every node (pushed once, ever; a queue
tip would keep that queue's old history alive on the server). The node
refreshes it every ``REFRESH`` seconds inside a push it makes anyway (alone
only if it made none), and deletes it in its last push when it stops. A ref
not refreshed for ``EXPIRE`` seconds (a node killed, or gone for good) no
longer counts; the first node by name deletes such refs after ``FORGET``.
Every node reads the refs from the listing it makes each cycle anyway.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from gitmq.budget import Pace
from gitmq.storage import Storage
from gitmq.storage.remote import RefUpdate

log = logging.getLogger("gitmq.sync")

PREFIX = "refs/gitmq/nodes/"
REFRESH = 300.0
EXPIRE = 900.0
FORGET = 3600.0
_NAME = re.compile(r"^refs/gitmq/nodes/([^/]+)/(\d{1,12})\.([pr])$")
#: What every node ref names: a root commit of the empty tree, fixed bytes.
BODY = (
    b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n"
    b"author gitmq <registry@gitmq.invalid> 0 +0000\n"
    b"committer gitmq <registry@gitmq.invalid> 0 +0000\n"
    b"\ngitmq node registry\n"
)


@dataclass(frozen=True)
class Entry:
    ref: str
    sha: str
    node: str
    at: int  # epoch seconds of the refresh
    pushing: bool


def entries(remote_refs: Mapping[str, str]) -> list[Entry]:
    """The node refs among a remote's refs."""
    out = []
    for ref, sha in remote_refs.items():
        match = _NAME.match(ref)
        if match:
            node, at, role = match.groups()
            out.append(Entry(ref, sha, node, int(at), role == "p"))
    return out


class Registry:
    """This node's ref on one remote, and what the others' refs say."""

    def __init__(self, node: str = "", remote: str = "") -> None:
        self.node, self.remote = node, remote  # no node: nobody counts (no budget)
        self.pushed_at: float | None = None  # when this node last pushed anything else
        self.leaving = False  # the node stops: its next push deletes its ref

    def observe(self, remote_refs: Mapping[str, str], now: float, pace: Pace) -> None:
        """Share ``pace``'s budget among the nodes the listing counts; say so when the
        count changed (and, once, when the node's schedule then asks too much)."""
        if self.node and pace.share(*self.count(remote_refs, now)):
            log.info("budget %s: %s", self.remote, pace.line())
            if pace.shortfall():
                log.warning("budget %s: %s", self.remote, pace.shortfall())

    def plan(
        self,
        storage: Storage,
        remote_refs: Mapping[str, str],
        now: datetime,
        pushing: list[RefUpdate],
        excluded: set[str],
    ) -> list[RefUpdate]:
        """The node-ref updates to add to a sync's push (none while the server refuses
        node refs); ``BODY`` is stored here first, inside the caller's guard."""
        if not self.node or any(ref.startswith(PREFIX) for ref in excluded):
            return []
        anchor = functools.partial(_store_body, storage)
        return self.updates(remote_refs, now.timestamp(), pushing, anchor, leaving=self.leaving)

    def count(self, remote_refs: Mapping[str, str], now: float) -> tuple[int, int]:
        """(nodes, pushing nodes) sharing the remote, this one included."""
        live = [e for e in entries(remote_refs) if e.node != self.node and now - e.at < EXPIRE]
        nodes = len({e.node for e in live}) + 1
        pushers = len({e.node for e in live if e.pushing}) + self._pushing(now)
        return nodes, pushers

    def _pushing(self, now: float) -> bool:
        return self.pushed_at is not None and now - self.pushed_at < REFRESH

    def updates(
        self,
        remote_refs: Mapping[str, str],
        now: float,
        pushing: Iterable[RefUpdate],
        anchor: Callable[[], str],
        *,
        leaving: bool = False,
    ) -> list[RefUpdate]:
        """The node-ref updates to add to a push: ``pushing`` are its other updates
        (none: a push of its own, made only when the ref is due); ``anchor`` stores
        ``BODY`` and returns its id (called only when the ref is due)."""
        found = entries(remote_refs)
        mine = [e for e in found if e.node == self.node]
        drop = [RefUpdate("", e.ref, lease=e.sha, delete=True) for e in mine]
        if leaving:
            return drop
        others = list(pushing)
        if others:
            self.pushed_at = now
        role = "p" if self._pushing(now) else "r"
        newest = max(mine, key=lambda e: e.at, default=None)
        due = newest is None or now - newest.at >= REFRESH or newest.pushing != (role == "p")
        if not due:
            return []
        ref = f"{PREFIX}{self.node}/{int(now)}.{role}"
        return [RefUpdate(anchor(), ref, lease=""), *drop, *self._forget(found, now)]

    def _forget(self, found: list[Entry], now: float) -> list[RefUpdate]:
        """Deletions of refs long stale, by the first live node by name only (so that
        two nodes do not race to delete one ref)."""
        live = sorted({e.node for e in found if now - e.at < EXPIRE} | {self.node})
        if live[0] != self.node:
            return []
        old = [e for e in found if now - e.at >= FORGET and e.node != self.node]
        return [RefUpdate("", e.ref, lease=e.sha, delete=True) for e in old[:10]]


def _store_body(storage: Storage) -> str:
    """Write ``BODY`` into ``storage`` (it may have been collected since); its id."""
    return storage.write_commits([BODY])[0]
