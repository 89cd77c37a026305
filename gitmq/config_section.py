"""Reading one mapping of a YAML config, key by key, against a table of its keys.

Every error names the file and the key path, what was expected and what was
found (``node.yml: queues.orders.prune.max_age: expected a duration like 10s,
5m, 7d, found 'soon'``); ``done()`` reports keys the table does not have, so a
typo cannot silently turn a feature off. The table (``Key``) is the one
description of a config: the loader reads only keys it lists, with the kind,
default and requiredness it gives, and the JSON Schema and the key reference are
generated from it (``gitmq.config_schema``). ``${NAME}`` in a string is the
environment variable NAME (``$$`` is a literal ``$``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gitmq.errors import ConfigError
from gitmq.units import parse_duration, parse_size

_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

Kind = Literal[
    "text", "path", "flag", "number", "rate", "size", "duration", "schedule", "command",
    "section", "named", "list",
]  # fmt: skip
_TABLE: Any = object()  # "the default the key table gives"


@dataclass(frozen=True)
class Key:
    """One key of a config mapping. ``keys``: the keys of a ``section``, of each member
    of a ``named`` mapping, or of each item of a ``list``. ``shown``: the default as
    words, when the loader computes it. ``also``: words accepted instead of a section."""

    name: str
    kind: Kind
    doc: str
    default: object = None
    required: bool = False
    minimum: int = 0
    pattern: str | None = None
    keys: tuple[Key, ...] = ()
    shown: str | None = None
    also: tuple[str, ...] = ()


class Section:
    """A mapping at a key path of a config file, read key by key."""

    def __init__(self, file: Path, path: str, data: object, keys: Sequence[Key]) -> None:
        self.file, self.path = file, path
        if not isinstance(data, dict):
            self.fail(None, "a mapping", data)
        self.data: dict[str, Any] = data  # type: ignore[assignment]
        self.keys = {k.name: k for k in keys}
        self.used: set[str] = set()

    def where(self, key: str | None) -> str:
        return ".".join(p for p in (self.path, key) if p) or "(top level)"

    def fail(self, key: str | None, expected: str, found: object) -> None:
        shown = repr(found) if not isinstance(found, dict | list) else type(found).__name__
        raise ConfigError(f"{self.file}: {self.where(key)}: expected {expected}, found {shown}")

    def error(self, key: str | None, text: str) -> ConfigError:
        return ConfigError(f"{self.file}: {self.where(key)}: {text}")

    def spec(self, key: str, *kinds: Kind) -> Key:
        """The table's entry for ``key``: reading a key the table lacks, or as another
        kind, is a bug in the loader, not in the user's file."""
        spec = self.keys.get(key)
        assert spec is not None, f"{self.where(key)} is not in the key table"
        assert not kinds or spec.kind in kinds, f"{self.where(key)} is a {spec.kind}, not {kinds}"
        return spec

    def get(self, key: str, default: object = _TABLE, *kinds: Kind) -> Any:
        spec = self.spec(key, *kinds)
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if spec.required:
                raise self.error(key, "is required")
            return spec.default if default is _TABLE else default
        value = self.data[key]
        if isinstance(value, list):  # e.g. a handler command: its arguments are expanded too
            return [self._expand(key, v) if isinstance(v, str) else v for v in value]
        return self._expand(key, value) if isinstance(value, str) else value

    def _expand(self, key: str, value: str) -> str:
        """Replace ``${NAME}`` with that environment variable (``$$`` is a ``$``)."""

        def sub(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name = match.group(1)
            if name not in os.environ:
                raise self.error(key, f"uses ${{{name}}}, which is not set in the environment")
            return os.environ[name]

        return _ENV_REF.sub(sub, value)

    def text(self, key: str, default: str | None = _TABLE, kind: Kind = "text") -> Any:
        value = self.get(key, default, kind)
        if value is not None and (not isinstance(value, str) or not value):
            self.fail(key, "a non-empty string", value)
        return value

    def flag(self, key: str) -> Any:
        value = self.get(key, _TABLE, "flag")
        if value is not None and not isinstance(value, bool):
            self.fail(key, "true or false", value)
        return value

    def number(self, key: str) -> Any:
        value, minimum = self.get(key, _TABLE, "number"), self.spec(key).minimum
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < minimum
        ):
            self.fail(key, f"a whole number >= {minimum}", value)
        return value

    def size(self, key: str) -> int:
        value = self.get(key, _TABLE, "size")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        try:
            return parse_size(str(value))
        except ValueError as exc:
            self.fail(key, str(exc), value)
            raise

    def duration(self, key: str) -> Any:
        value = self.get(key, _TABLE, "duration")
        if value is None:
            return value
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(key, str(exc), value)
            raise

    def path_value(self, key: str, base: Path) -> Path | None:
        value = self.text(key, _TABLE, "path")
        return None if value is None else (base / Path(value).expanduser())

    def section(self, key: str) -> Section | None:
        value = self.get(key, _TABLE, "section")
        return (
            None
            if value is None
            else Section(self.file, self.where(key), value, self.keys[key].keys)
        )

    def children(self, key: str) -> list[tuple[str, Section]]:
        """The members of a mapping of names (``queues: {orders: {...}}``)."""
        value = self.get(key, {}, "named")
        if not isinstance(value, dict):
            self.fail(key, "a mapping", value)
        keys = self.keys[key].keys
        return [
            (str(k), Section(self.file, f"{self.where(key)}.{k}", v, keys))
            for k, v in value.items()
        ]

    def items(self, key: str) -> list[Section]:
        """The items of a list of mappings (``deploy_keys: [{title: ...}]``)."""
        value = self.get(key, [], "list")
        if not isinstance(value, list):
            self.fail(key, "a list", value)
        keys = self.keys[key].keys
        return [Section(self.file, self.where(f"{key}[{i}]"), v, keys) for i, v in enumerate(value)]

    def done(self) -> None:
        unknown = sorted(set(self.data) - set(self.keys))
        if unknown:
            raise self.error(
                None,
                f"unknown key {unknown[0]!r} (expected one of: {', '.join(sorted(self.keys))})",
            )
        assert self.used == set(self.keys), (
            f"{self.where(None)}: unread {set(self.keys) - self.used}"
        )
