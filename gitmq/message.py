"""Storage format v1: a message is an empty-tree commit (docs/format.md).

This module turns a message into the bytes of its commit object and back. It
knows nothing of repositories; the storage layer stores and finds the bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from gitmq.errors import UsageError

EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
ID_HEADER = "gitmq-id"
ENCODING_HEADER = "gitmq-encoding"
USER_HEADER = "gitmq-header"
CONTROL_HEADER = "gitmq-control"
PREVIOUS_HEADER = "gitmq-previous"
#: A replayed dead letter is for the consumer that gave up on it, and no other.
FOR_CONSUMER_HEADER = "gitmq-replay-consumer"
_HEADER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_IDENT_BAD = re.compile(r"[<>\n\x00]")


@dataclass(frozen=True)
class Identity:
    """A name and e-mail address as git records them."""

    name: str
    email: str

    def __post_init__(self) -> None:
        for what, value in (("name", self.name), ("email", self.email)):
            if _IDENT_BAD.search(value) or value != value.strip() or not value:
                raise UsageError(
                    f"invalid identity {what} {value!r}: it must be non-empty, without "
                    f"'<', '>', newlines or surrounding spaces"
                )

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>"


@dataclass(frozen=True)
class Message:
    """One message of a queue, as a consumer or ``log`` sees it."""

    id: str
    sha: str
    payload: bytes
    author: Identity
    time: datetime
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)
    parent: str | None = None
    committer: Identity | None = None
    control: str | None = None  # "close"/"open" segment markers; never given to handlers
    # Why this commit is not a message (docs/format.md), None for every real one;
    # then payload is the raw commit message and consumers dead-letter it.
    undecodable: str | None = None
    # The commit of an earlier message on the queue with this message's gitmq-id,
    # set by a consumer's screen (gitmq/screen.py): this one is a copy.
    duplicate_of: str | None = None

    @property
    def unfit(self) -> str | None:
        """Why a consumer dead-letters this commit unhandled, or None (docs/semantics.md)."""
        if self.undecodable is not None:
            return f"undecodable: {self.undecodable}"
        if self.duplicate_of is not None:
            return (
                f"duplicate: message {self.id} is already on the queue as commit "
                f"{self.duplicate_of}; a copy is not delivered again"
            )
        return None

    @property
    def text(self) -> str:
        """The payload decoded as UTF-8 (raises UsageError if it is not text)."""
        try:
            return self.payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(f"message {self.id} is not UTF-8 text; use .payload") from exc

    def json(self) -> Any:
        """The payload parsed as JSON."""
        try:
            return json.loads(self.payload)
        except ValueError as exc:
            raise UsageError(f"message {self.id} is not valid JSON: {exc}") from exc


@dataclass(frozen=True)
class Draft:
    """Everything about a message that does not depend on where it is placed."""

    id: str
    payload: bytes
    author: Identity
    time: datetime
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)
    control: str | None = None


def validate_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Check user headers and return them as a plain dict."""
    if not isinstance(headers, Mapping):
        raise UsageError(f"headers must be a mapping of str to str, not {type(headers).__name__}")
    clean: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise UsageError(
                f"header {name!r}: names and values must be str, not "
                f"{type(name).__name__} and {type(value).__name__}"
            )
        if not _HEADER_NAME.match(name):
            raise UsageError(f"invalid header name {name!r}: use letters, digits, '.', '_' and '-'")
        if "\n" in value or "\r" in value or "\x00" in value:
            raise UsageError(f"invalid value for header {name!r}: it must be one line")
        clean[name] = value
    return clean


def encode(draft: Draft, parent: str | None, committer: Identity, now: datetime) -> bytes:
    """The commit object body for ``draft`` placed on ``parent``."""
    payload = draft.payload
    lines = [f"tree {EMPTY_TREE}"]
    if parent:
        lines.append(f"parent {parent}")
    lines.append(f"author {draft.author} {_git_time(draft.time)}")
    lines.append(f"committer {committer} {_git_time(now)}")
    lines.append(f"{ID_HEADER} {draft.id}")
    if draft.control:
        lines.append(f"{CONTROL_HEADER} {draft.control}")
    if not _is_plain(payload):
        lines.append(f"{ENCODING_HEADER} base64")
        payload = base64.b64encode(payload)
    for name, value in draft.headers.items():
        lines.append(f"{USER_HEADER} {name} {value}")
    return ("\n".join(lines) + "\n\n").encode("utf-8") + payload


def reparent(body: bytes, parent: str | None, committer: Identity, now: datetime) -> bytes:
    """The same message on a new parent: only ``parent`` and ``committer`` change."""
    head, sep, message = body.partition(b"\n\n")
    out: list[bytes] = []
    for line in head.split(b"\n"):
        if line.startswith(b"parent "):
            continue
        if line.startswith(b"committer "):
            line = f"committer {committer} {_git_time(now)}".encode()
        out.append(line)
        if line.startswith(b"tree ") and parent:
            out.append(f"parent {parent}".encode("ascii"))
    return b"\n".join(out) + sep + message


def decode(sha: str, body: bytes) -> Message:
    """Parse a commit object body into a :class:`Message`; never raises.

    Anyone who can push to a remote can put any commit on a queue. One that is
    not a message of docs/format.md ("Undecodable messages") comes back with
    ``undecodable`` set to the reason and its raw commit message as the payload:
    consumers dead-letter it instead of stopping on it.
    """
    head, _, message = body.partition(b"\n\n")
    parsed = _Head(head)
    author, when, dated = _parse_ident(parsed.fields.get("author", "unknown <unknown> 0 +0000"))
    committer = None
    if "committer" in parsed.fields:
        committer = _parse_ident(parsed.fields["committer"])[0]
    problem = parsed.problem() or (None if dated else "its author time is out of range")
    payload = message
    if problem is None and parsed.fields.get(ENCODING_HEADER) == "base64":
        try:
            payload = base64.b64decode(message, validate=True)
        except ValueError:
            problem = "its body is not valid base64 although it has 'gitmq-encoding base64'"
    control = parsed.fields.get(CONTROL_HEADER)
    return Message(
        id=parsed.message_id() or derived_id(body),
        sha=sha,
        payload=payload,
        author=author,
        time=when,
        headers=parsed.headers if problem is None else {},
        parent=parsed.parents[0] if parsed.parents else None,
        committer=committer,
        control=control if problem is None else None,
        undecodable=problem,
    )


_IDENT_LINE = re.compile(r"^(?:[^<>\n]* )?<[^<>\n]*> \d{1,15} [+-]\d{4}$")
_ID_VALUE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._:-]{0,99}$")
_CONTROLS = ("close", "open")
_SINGLE = ("tree", "author", "committer", ID_HEADER, ENCODING_HEADER, CONTROL_HEADER)


class _Head:
    """The header lines of a commit, and the first thing that makes it no message."""

    def __init__(self, head: bytes) -> None:
        self.fields: dict[str, str] = {}
        self.headers: dict[str, str] = {}
        self.parents: list[str] = []
        self._problems: list[str] = []
        last = ""
        for raw in head.split(b"\n"):
            line = raw.decode("utf-8", "replace")
            if line.startswith(" "):  # continuation of a multi-line header (gpgsig)
                if last in self.fields:
                    self.fields[last] += "\n" + line[1:]
                continue
            key, _, value = line.partition(" ")
            last = key
            if key == "parent":
                self.parents.append(value)
            elif key == USER_HEADER:
                self._user_header(value)
            elif key in self.fields and key in _SINGLE:
                self._problems.append(f"it has two '{key}' lines")
            else:
                self.fields.setdefault(key, value)

    def _user_header(self, value: str) -> None:
        name, _, hval = value.partition(" ")
        if not _HEADER_NAME.match(name) or "\r" in hval or "\x00" in hval:
            self._problems.append(f"it has a malformed 'gitmq-header' line {value[:60]!r}")
        else:
            self.headers[name] = hval

    def message_id(self) -> str | None:
        """The ``gitmq-id``, when there is one well-formed line of it."""
        value = self.fields.get(ID_HEADER)
        return value if value is not None and _ID_VALUE.match(value) else None

    def problem(self) -> str | None:
        """Why these headers are not a message's, or None when they are."""
        fields = self.fields
        checks = (
            (fields.get("tree") != EMPTY_TREE, "its tree is not the empty tree (it has files)"),
            (len(self.parents) > 1, f"it is a merge commit ({len(self.parents)} parents)"),
            (not _IDENT_LINE.match(fields.get("author", "")), "its author line is malformed"),
            (
                not _IDENT_LINE.match(fields.get("committer", "")),
                "its committer line is malformed",
            ),
            (
                fields.get(ENCODING_HEADER, "base64") != "base64",
                f"its 'gitmq-encoding' is {fields.get(ENCODING_HEADER, '')[:40]!r}, not 'base64'",
            ),
            (
                ID_HEADER in fields and not _ID_VALUE.match(fields[ID_HEADER]),
                f"its 'gitmq-id' {fields.get(ID_HEADER, '')[:60]!r} is malformed",
            ),
            (
                fields.get(CONTROL_HEADER, "close") not in _CONTROLS,
                f"its 'gitmq-control' {fields.get(CONTROL_HEADER, '')[:40]!r} is unknown",
            ),
        )
        found = [*self._problems, *(reason for bad, reason in checks if bad)]
        return found[0] if found else None


def control_of(body: bytes) -> str | None:
    """The ``gitmq-control`` value of a commit body (segment markers), if any."""
    return _header(body, CONTROL_HEADER)


def message_id(body: bytes) -> str | None:
    """The ``gitmq-id`` of a commit body, or None when it has none."""
    return _header(body, ID_HEADER)


def stable_id(body: bytes) -> str:
    """The id that survives re-parenting: ``gitmq-id``, or the derived id of a message
    written without one (what deduplication compares)."""
    return _header(body, ID_HEADER) or derived_id(body)


def parents(body: bytes) -> list[str]:
    """The parent commit ids of a raw commit body."""
    head = body.partition(b"\n\n")[0]
    return [ln[7:].decode() for ln in head.split(b"\n") if ln.startswith(b"parent ")]


def _header(body: bytes, name: str) -> str | None:
    head = body.partition(b"\n\n")[0]
    marker = b"\n" + name.encode() + b" "
    start = head.find(marker)
    if start < 0:
        return None
    start += len(marker)
    end = head.find(b"\n", start)
    return head[start : end if end >= 0 else len(head)].decode("ascii", "replace")


#: How a derived id starts (a message written without ``gitmq-id``).
DERIVED_PREFIX = "sha1-"


def derived_id(body: bytes) -> str:
    """A stable id for a message written without one (by the Ruby gem or git).

    It hashes the author line and the payload, which re-parenting keeps.
    """
    head, _, message = body.partition(b"\n\n")
    author = next((ln for ln in head.split(b"\n") if ln.startswith(b"author ")), b"")
    digest = hashlib.sha1(author + b"\n" + message, usedforsecurity=False).hexdigest()
    return DERIVED_PREFIX + digest


def _is_plain(payload: bytes) -> bool:
    if b"\x00" in payload:
        return False
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _git_time(when: datetime) -> str:
    offset = when.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return f"{int(when.timestamp())} {sign}{minutes // 60:02d}{minutes % 60:02d}"


def _parse_ident(value: str) -> tuple[Identity, datetime, bool]:
    """The identity and time of an author or committer line, and whether the time
    was readable (else it is the epoch)."""
    name, _, rest = value.rpartition("<") if value.startswith("<") else value.partition(" <")
    email, _, stamp = rest.partition("> ")
    seconds, _, tz = stamp.partition(" ")
    dated = True
    try:
        sign = -1 if tz.startswith("-") else 1
        offset = timedelta(hours=int(tz[1:3]), minutes=int(tz[3:5])) * sign
        when = datetime.fromtimestamp(int(seconds), timezone(offset))
    except (ValueError, IndexError, OverflowError, OSError):
        when, dated = datetime.fromtimestamp(0, UTC), False
    ident = Identity.__new__(Identity)  # as recorded, even if we would not write it
    object.__setattr__(ident, "name", name.strip() or "unknown")
    object.__setattr__(ident, "email", email.strip() or "unknown")
    return ident, when, dated
