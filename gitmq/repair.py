"""A queue branch the remote rewrote or lost: what sync says, and the two repairs.

Queue branches on a remote only grow (docs/sync.md). When a fetched tip no
longer contains the tip this node confirmed, someone rewrote the branch (a
force push, a restored backup, an unrelated repository at the same URL).
Sync then moves nothing for that queue and says so (``sync.py``); an operator
picks one of two repairs, run on one node while it may keep running:

- :func:`restore` pushes this node's confirmed history back over the remote's
  (with a lease on the remote tip it saw), then sync carries on as before;
- :func:`adopt` takes the remote's history: the node's unpushed messages are
  re-parented onto it, and each consumer tag moves to the same message in it.

A deleted queue branch is held back the same way; ``restore`` pushes it back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gitmq import message as fmt
from gitmq import names
from gitmq.errors import NotFoundError, RemoteError, UsageError
from gitmq.message import Identity
from gitmq.names import sync_lock, tracking_ref
from gitmq.replay import Outbox
from gitmq.storage import Storage
from gitmq.storage.remote import (
    Credentials,
    PushRefused,
    PushRejected,
    RefUpdate,
    fetch,
    ls_remote,
    push_atomic,
)

RESTORE, ADOPT = "restore", "adopt-remote"


def rewritten_line(remote: str, branch: str, confirmed: str, remote_tip: str | None) -> str:
    """The one line sync reports for a rewritten (``remote_tip``) or deleted (None)
    remote queue branch."""
    what = (
        f"has no branch {branch} although it confirmed {confirmed[:12]} here"
        if remote_tip is None
        else f"rewrote queue branch {branch}: its tip {remote_tip[:12]} does not contain "
        f"this node's confirmed tip {confirmed[:12]}"
    )
    return (
        f"remote {remote} {what}, so nothing of {branch} moves here and its consumers keep "
        f"their place; run 'gitmq repair --config NODE.yml {branch} --restore' to push this "
        f"node's history back, or '--adopt-remote' to take the remote's (docs/operations.md)"
    )


class Held:
    """The queue branches one sync attempt leaves alone because the remote rewrote
    or deleted them, with the report lines that say so (``lines``: the report's)."""

    def __init__(self, storage: Storage, remote: str, lines: list[str]) -> None:
        self.storage, self.remote, self.lines = storage, remote, lines
        self.branches: set[str] = set()

    def grown(self, branch: str, known: str | None, tip: str) -> list[str] | None:
        """The commits ``tip`` adds to the confirmed ``known`` (one rev-list), or None
        when ``tip`` lacks some of it: then ``branch`` is held."""
        if known is None:
            return []
        lost, new = self.storage.divergence(known, tip)
        if lost:
            self.hold(branch, known, tip)
            return None
        return new

    def hold(self, branch: str, confirmed: str, remote_tip: str | None) -> None:
        """Move nothing of ``branch`` and say why (once per report)."""
        self.branches.add(branch)
        line = rewritten_line(self.remote, branch, confirmed, remote_tip)
        if line not in self.lines:
            self.lines.append(line)

    def tags(self, updates: Sequence[RefUpdate]) -> set[str]:
        """The tag updates onto (or, deleting, from) a held branch's confirmed history:
        nothing of a held queue moves."""
        tips = [self.storage.read_ref(tracking_ref(self.remote, b)) for b in self.branches]
        return {
            u.ref
            for u in updates
            if any(
                tip and sha and self.storage.is_ancestor(sha, tip)
                for tip in tips
                for sha in (u.sha, u.lease)
            )
        }


@dataclass
class RepairReport:
    """What a repair did to one queue."""

    queue: str
    action: str
    remote_tip: str | None  # the remote's tip before the repair
    tip: str  # the remote's (and the confirmed) tip after it
    replaced: int = 0  # remote commits no longer on the branch (restore)
    replayed: int = 0  # unpushed messages re-parented onto the remote's history (adopt)
    moved: list[str] = field(default_factory=list)  # consumers whose tag moved (adopt)
    unplaced: list[str] = field(default_factory=list)  # consumers to seek by hand (adopt)

    def line(self) -> str:
        was = self.remote_tip[:12] if self.remote_tip else "no branch"
        text = f"queue {self.queue}: {self.action} done; remote was {was}, now {self.tip[:12]}"
        if self.action == RESTORE:
            commits = "commit" if self.replaced == 1 else "commits"
            text += f"; {self.replaced} remote {commits} left the branch"
            if self.replaced and self.remote_tip:
                text += f" (still readable as {self.remote_tip} until pruned)"
        else:
            messages = "message" if self.replayed == 1 else "messages"
            text += f"; {self.replayed} unpushed {messages} re-parented onto it"
            text += f"; consumer tags moved: {', '.join(self.moved) or 'none'}"
        if self.unplaced:
            text += (
                f"; consumers {', '.join(self.unplaced)} were at messages the remote's "
                f"history lacks: set each with 'gitmq seek'"
            )
        return text


@dataclass(frozen=True)
class Remote:
    """The remote a queue syncs with, as a repair needs it."""

    name: str
    url: str
    credentials: Credentials
    committer: Identity  # who re-parents the unpushed messages (adopt)


class Repair:
    """The repairs of one synced queue of one storage; ``consumers`` are the queue's."""

    def __init__(
        self, storage: Storage, target: Remote, queue: str, consumers: Sequence[str]
    ) -> None:
        self.storage, self.target = storage, target
        self.queue = names.check_queue(queue)
        self.consumers = consumers
        self.ref = names.queue_ref(queue)
        self.tracking = tracking_ref(target.name, queue)
        self.scratch = f"refs/gitmq/repair/{target.name}/{queue}"

    def run(self, action: str) -> RepairReport:
        with self.storage.exclusive(sync_lock(self.target.name)):  # no sync meanwhile
            confirmed = self.storage.read_ref(self.tracking)
            remote_tip = self._fetch()
            try:
                if confirmed is not None and remote_tip == confirmed:
                    raise UsageError(
                        f"queue {self.queue}: the remote's branch is this node's confirmed "
                        f"history ({confirmed[:12]}); nothing to repair"
                    )
                if action == RESTORE:
                    return self._restore(confirmed, remote_tip)
                return self._adopt(confirmed, remote_tip)
            finally:
                if remote_tip is not None:
                    self.storage.delete_ref(self.scratch, remote_tip)

    def _fetch(self) -> str | None:
        t = self.target
        tip = ls_remote(self.storage.git_dir, t.url, t.credentials).get(self.ref)
        if tip is not None:
            with self.storage.writing():
                fetch(self.storage.git_dir, t.url, [f"+{self.ref}:{self.scratch}"], t.credentials)
        return tip

    def _restore(self, confirmed: str | None, remote_tip: str | None) -> RepairReport:
        if confirmed is None:
            raise NotFoundError(
                f"queue {self.queue}: this node has no confirmed history from remote "
                f"{self.target.name} to push back; run the repair on a node that has, or "
                f"use --adopt-remote"
            )
        replaced = 0
        if remote_tip is not None:
            if self.storage.is_ancestor(confirmed, remote_tip):
                raise UsageError(
                    f"queue {self.queue}: the remote's branch ({remote_tip[:12]}) contains "
                    f"this node's confirmed history; nothing to repair"
                )
            replaced = len(self.storage.divergence(remote_tip, confirmed)[0])
        update = RefUpdate(confirmed, self.ref, lease=remote_tip or "")
        t = self.target
        try:
            push_atomic(self.storage.git_dir, t.url, [update], t.credentials)
        except PushRefused as exc:
            raise RemoteError(
                f"remote {t.name} refused to restore {self.ref} ({exc.refused[self.ref]}"
                f"{': ' + exc.said if exc.said else ''}); allow a forced update of it for the "
                f"repair, or use --adopt-remote (docs/operations.md)"
            ) from None
        except PushRejected:
            raise RemoteError(
                f"remote {t.name}: {self.ref} moved while it was being restored; run the "
                f"repair again"
            ) from None
        return RepairReport(self.queue, RESTORE, remote_tip, confirmed, replaced=replaced)

    def _adopt(self, confirmed: str | None, remote_tip: str | None) -> RepairReport:
        if remote_tip is None:
            raise NotFoundError(
                f"queue {self.queue}: remote {self.target.name} has no branch "
                f"{self.queue} to adopt; use --restore to push this node's history back"
            )
        theirs = self.storage.commits_between(None, remote_tip)
        by_id = {
            fmt.stable_id(body): sha
            for sha, body in zip(theirs, self.storage.read_bodies(theirs), strict=True)
        }
        report = RepairReport(self.queue, ADOPT, remote_tip, remote_tip)
        now = datetime.now(UTC)

        def onto_theirs(current: str | None) -> tuple[list[bytes], str | None]:
            ours = self.storage.commits_between(confirmed, current) if current else []
            bodies, parent = [], remote_tip
            for body in self.storage.read_bodies(ours):
                if fmt.stable_id(body) in by_id:
                    continue  # the remote's history has it already
                bodies.append(fmt.reparent(body, parent, self.target.committer, now))
                parent = self.storage.commit_id(bodies[-1])
            report.replayed = len(bodies)
            return bodies, parent

        with self.storage.writing():
            self.storage.rewrite_branch(self.ref, onto_theirs)
            self.storage.compare_and_swap(self.tracking, remote_tip, confirmed)
        Outbox(self.storage, self.target.name, self.queue).clear()
        for consumer in self.consumers:
            self._place(consumer, remote_tip, by_id, report)
        return report

    def _place(
        self, consumer: str, remote_tip: str, by_id: dict[str, str], report: RepairReport
    ) -> None:
        """Move ``consumer``'s tag to its message in the adopted history."""
        ref = names.consumer_ref(consumer)
        position = self.storage.read_ref(ref)
        if position is None or self.storage.is_ancestor(position, remote_tip):
            return
        same = by_id.get(fmt.stable_id(self.storage.read_body(position)))
        if same is None:
            report.unplaced.append(consumer)
        elif self.storage.compare_and_swap(ref, same, position):
            report.moved.append(consumer)
