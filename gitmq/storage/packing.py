"""Keeping the object store packed, off the publish path.

Every loose object takes a whole filesystem block (4 KiB) while a packed
message takes about 200 bytes, and git's own automatic gc stalls whoever
triggers it for seconds. So GitMQ turns automatic gc off and, after a
process has written enough objects, starts one background
``git repack -d --geometric=2``: it folds loose objects and small packs into
a geometric progression of packs, so the number of packs stays logarithmic
and no repack rewrites the whole history. A lock file keeps it to one at a
time per repository, across processes.

Run as ``python -m gitmq.storage.packing GIT_DIR``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from gitmq.errors import StorageError
from gitmq.storage import gitcli

LOCK_NAME = "gitmq-repack.lock"
STALE_SECONDS = 3600.0
#: After a repack, go again while this many loose objects are left. Writers
#: skip their trigger while a repack runs, so without this the objects written
#: during the last repack of a burst would stay loose (4 KiB each) until the
#: next burst, or for good if none comes.
CATCH_UP_LOOSE = 100
MAX_ROUNDS = 5


def start_background(git_dir: Path) -> subprocess.Popen[bytes] | None:
    """Start a detached repack unless one is already running."""
    lock = git_dir / LOCK_NAME
    with contextlib.suppress(FileNotFoundError):  # released between a look and a stat
        if time.time() - lock.stat().st_mtime < STALE_SECONDS:
            return None
    return subprocess.Popen(
        [sys.executable, "-m", "gitmq.storage.packing", str(git_dir)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@contextlib.contextmanager
def held(git_dir: Path, timeout: float = 600.0) -> Iterator[None]:
    """Hold the repack lock, waiting for a running repack to finish (pruning
    must not interleave with a repack that could re-add what it drops)."""
    deadline = time.monotonic() + timeout
    while True:
        with try_held(git_dir) as taken:
            if taken:
                yield
                return
        if time.monotonic() > deadline:
            raise StorageError(
                f"{git_dir / LOCK_NAME} stayed held for {timeout:g}s; if no gitmq process "
                f"is running, delete it"
            )
        time.sleep(0.05)


def wait_idle(git_dir: Path, timeout: float) -> float:
    """Wait until no repack holds the lock of ``git_dir``; return seconds waited."""
    start = time.monotonic()
    while (git_dir / LOCK_NAME).exists() and time.monotonic() - start < timeout:
        time.sleep(0.05)
    return time.monotonic() - start


@contextlib.contextmanager
def try_held(git_dir: Path) -> Iterator[bool]:
    """Hold the repack lock if it is free; yields whether it was taken (never waits)."""
    lock = git_dir / LOCK_NAME
    with contextlib.suppress(FileNotFoundError):
        if time.time() - lock.stat().st_mtime > STALE_SECONDS:
            lock.unlink()
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        yield False
        return
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield True
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


def repack(git_dir: Path) -> bool:
    """Repack under the lock; False when another repack holds it."""
    with try_held(git_dir) as taken:
        if not taken:
            return False
        for _ in range(MAX_ROUNDS):
            gitcli.run(
                git_dir,
                ["repack", "-d", "-q", "--geometric=2", "--no-write-bitmap-index"],
                timeout=3600,
            )
            if count_loose(git_dir / "objects") < CATCH_UP_LOOSE:
                break
            os.utime(git_dir / LOCK_NAME)  # still ours: not stale
    return True


def count_loose(objects_dir: Path) -> int:
    """How many loose objects ``objects_dir`` holds (temporary files not counted)."""
    total = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(objects_dir) as top:
        for fanout in top:
            if len(fanout.name) != 2 or not fanout.is_dir():
                continue
            with contextlib.suppress(FileNotFoundError), os.scandir(fanout.path) as files:
                total += sum(1 for f in files if not f.name.startswith("tmp_"))
    return total


if __name__ == "__main__":
    repack(Path(sys.argv[1]))
