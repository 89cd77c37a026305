"""Queue and consumer names: they become refs, so they obey git's ref rules.

The rules are those of ``git check-ref-format --branch`` (tests compare the two
on a corpus of names), plus GitMQ's own: no ``HEAD``, no leading ``-`` (it would
read as an option on a command line).
"""

from __future__ import annotations

import re

from gitmq.errors import InvalidNameError

_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


def _problem(name: str) -> str | None:
    if not name:
        return "it is empty"
    if name.startswith("-"):
        return "it starts with '-'"
    if name in ("HEAD", "@") or name.startswith("refs/"):
        return "it is reserved by git"
    if _FORBIDDEN.search(name):
        return "it contains a space, a control character or one of ~ ^ : ? * [ \\"
    if ".." in name or "@{" in name:
        return "it contains '..' or '@{'"
    if name.startswith("/") or name.endswith("/") or "//" in name:
        return "it starts or ends with '/' or contains '//'"
    if name.endswith("."):
        return "it ends with '.'"
    for part in name.split("/"):
        if part.startswith("."):
            return f"component {part!r} starts with '.'"
        if part.endswith(".lock"):
            return f"component {part!r} ends with '.lock'"
    if len(name.encode()) > 200:
        return "it is longer than 200 bytes"
    return None


def check_queue(name: str) -> str:
    """Return ``name`` if it can be a queue (branch) name, else raise."""
    _require_str(name, "a queue name")
    problem = _problem(name)
    if problem:
        raise InvalidNameError(f"invalid queue name {name!r}: {problem}")
    return name


def check_consumer(name: str) -> str:
    """Return ``name`` if it can be a consumer (tag) name, else raise."""
    _require_str(name, "a consumer name")
    problem = _problem(name)
    if problem:
        raise InvalidNameError(f"invalid consumer name {name!r}: {problem}")
    return name


def check_node(name: str) -> str:
    """Return ``name`` if it can be a node name (one ref component: ``registry.py``)."""
    _require_str(name, "a node name")
    problem = _problem(name) or ("it contains '/'" if "/" in name else None)
    if problem:
        raise InvalidNameError(f"invalid node name {name!r}: {problem}")
    return name


def _require_str(value: object, what: str) -> None:
    if not isinstance(value, str):
        raise InvalidNameError(f"{what} must be a str, not {type(value).__name__}")


def queue_ref(name: str) -> str:
    return f"refs/heads/{check_queue(name)}"


def consumer_ref(name: str) -> str:
    return f"refs/tags/{check_consumer(name)}"


def tracking_ref(remote: str, queue: str) -> str:
    """Where a node keeps the remote's copy of ``queue``: its confirmed messages."""
    return f"refs/remotes/{remote}/{queue}"


def sync_lock(remote: str) -> str:
    """The storage-wide lock a sync cycle with ``remote`` holds; pruning a queue synced
    with it and moving a consumer of such a queue take it too."""
    return f"sync-{remote}"
