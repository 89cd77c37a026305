"""Reading commit objects through one long-lived ``git cat-file --batch``.

GitPython keeps the batch process; it maps the packs it reads and keeps them
open, so a pack that pruning or a repack deletes stays allocated on disk for
as long as the process lives. The reader therefore restarts it after GitMQ's
own deletions (``refresh()``) and, for repacks run by other processes,
whenever a look at the pack directory (at most once per ``CHECK_EVERY``
seconds) finds the set of packs changed: a pack made and merged away between
two looks may have been opened too, so any change counts, not only a missing
pack. A restart costs a few milliseconds, at most once per look.
"""

from __future__ import annotations

import os
import threading
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import git

from gitmq.errors import NotFoundError, StorageError
from gitmq.storage import gitcli

#: How often (seconds) a busy reader looks for deleted packs.
CHECK_EVERY = 1.0
#: From this many commits on, ``read_bodies`` reads them in one batch process.
BATCH_MIN = 200


class ObjectReader:
    """Thread-safe reads of raw commit bodies from one repository."""

    def __init__(self, git_dir: Path, shown_path: Path) -> None:
        self._git_dir = git_dir
        self._pack_dir = git_dir / "objects" / "pack"
        self._shown = shown_path
        self._repo = git.Repo(git_dir)
        self._lock = threading.Lock()
        self._packs = self._list_packs()
        self._check_at = time.monotonic() + CHECK_EVERY

    def read_body(self, sha: str) -> bytes:
        loose = _read_loose(self._git_dir / "objects" / sha[:2] / sha[2:])
        if loose is not None:
            if loose[0] != b"commit":
                raise StorageError(
                    f"object {sha} in {self._shown} is a {loose[0].decode()}, not a message"
                )
            return loose[1]
        with self._lock:
            self._check_packs()
            try:
                info = self._repo.odb.stream(bytes.fromhex(sha))
                data: bytes = info.read()
                kind = info.type
            except (ValueError, git.BadName, git.BadObject, OSError) as exc:
                self._repo.close()  # the batch process may be out of step; restart it
                raise NotFoundError(f"object {sha} is missing from {self._shown}") from exc
        if kind != b"commit":
            raise StorageError(f"object {sha} in {self._shown} is a {kind.decode()}, not a message")
        return data

    def read_bodies(self, shas: Sequence[str]) -> list[bytes]:
        """The raw bodies of many commits: one ``git cat-file --batch`` for the lot (a few
        microseconds each, against tens for a look-up each) once there are enough."""
        if len(shas) < BATCH_MIN:
            return [self.read_body(sha) for sha in shas]
        out = gitcli.run(
            self._git_dir, ["cat-file", "--batch"], input="\n".join(shas).encode() + b"\n"
        ).stdout
        bodies, pos = [], 0
        for sha in shas:
            end = out.index(b"\n", pos)
            header = out[pos:end].split()
            if len(header) != 3:
                raise NotFoundError(f"object {sha} is missing from {self._shown}")
            if header[1] != b"commit":
                raise StorageError(
                    f"object {sha} in {self._shown} is a {header[1].decode()}, not a message"
                )
            size = int(header[2])
            bodies.append(out[end + 1 : end + 1 + size])
            pos = end + 2 + size
        return bodies

    def check(self) -> None:
        """Restart the batch process if packs changed (rate-limited): for readers that
        sit idle, which would otherwise hold a deleted pack until their next read."""
        with self._lock:
            self._check_packs()

    def refresh(self) -> None:
        """Restart the batch process: packs were deleted (it may hold them open)."""
        with self._lock:
            self._repo.close()
            self._packs = self._list_packs()
            self._check_at = time.monotonic() + CHECK_EVERY

    def close(self) -> None:
        with self._lock:
            self._repo.close()

    def _check_packs(self) -> None:
        now = time.monotonic()
        if now < self._check_at:
            return
        self._check_at = now + CHECK_EVERY
        packs = self._list_packs()
        if packs != self._packs:
            self._repo.close()
            self._packs = packs

    def _list_packs(self) -> set[str]:
        try:
            return {n for n in os.listdir(self._pack_dir) if n.endswith(".pack")}
        except FileNotFoundError:
            return set()


def _read_loose(path: Path) -> tuple[bytes, bytes] | None:
    """(type, body) of a loose object, read in-process (a tenth of the time of a round
    trip through cat-file); None when it is not a loose object here (packed, or
    deleted meanwhile: the batch process answers)."""
    try:
        with open(path, "rb") as fh:
            raw = zlib.decompress(fh.read())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, zlib.error):
        return None  # unreadable or corrupt: let git say what is wrong
    header, _, body = raw.partition(b"\0")
    kind, _, size = header.partition(b" ")
    if not size.isdigit() or int(size) != len(body):
        return None
    return kind, body
