"""Reading one mapping of a YAML config, key by key, with errors that say where.

Every error names the file and the key path, what was expected and what was
found (``node.yml: queues.orders.prune.max_age: expected a duration like 10s,
5m, 7d, found 'soon'``); ``done()`` reports keys nobody read, so a typo cannot
silently turn a feature off. ``${NAME}`` in a string is the environment
variable NAME (``$$`` is a literal ``$``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from gitmq.errors import ConfigError
from gitmq.units import parse_duration, parse_size

_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Section:
    """A mapping at a key path of a config file, read key by key."""

    def __init__(self, file: Path, path: str, data: object) -> None:
        self.file, self.path = file, path
        if not isinstance(data, dict):
            self.fail(None, "a mapping", data)
        self.data: dict[str, Any] = data  # type: ignore[assignment]
        self.used: set[str] = set()

    def where(self, key: str | None) -> str:
        return ".".join(p for p in (self.path, key) if p) or "(top level)"

    def fail(self, key: str | None, expected: str, found: object) -> None:
        shown = repr(found) if not isinstance(found, dict | list) else type(found).__name__
        raise ConfigError(f"{self.file}: {self.where(key)}: expected {expected}, found {shown}")

    def error(self, key: str | None, text: str) -> ConfigError:
        return ConfigError(f"{self.file}: {self.where(key)}: {text}")

    def get(self, key: str, default: object = None, *, required: bool = False) -> Any:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if required:
                raise self.error(key, "is required")
            return default
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

    def text(self, key: str, default: str | None = None, *, required: bool = False) -> Any:
        value = self.get(key, default, required=required)
        if value is not None and (not isinstance(value, str) or not value):
            self.fail(key, "a non-empty string", value)
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            self.fail(key, "true or false", value)
        return bool(value)

    def number(self, key: str, default: int | None = None, *, minimum: int = 0) -> Any:
        value = self.get(key, default)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < minimum
        ):
            self.fail(key, f"a whole number >= {minimum}", value)
        return value

    def size(self, key: str, default: int) -> int:
        value = self.get(key, default)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        try:
            return parse_size(str(value))
        except ValueError as exc:
            self.fail(key, str(exc), value)
            raise

    def duration(self, key: str, default: float | None = None) -> Any:
        value = self.get(key, default)
        if value is None or (isinstance(value, float) and value == default):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(key, str(exc), value)
            raise

    def path_value(self, key: str, base: Path) -> Path | None:
        value = self.text(key)
        return None if value is None else (base / Path(value).expanduser())

    def section(self, key: str, *, required: bool = False) -> Section | None:
        value = self.get(key, required=required)
        return None if value is None else Section(self.file, self.where(key), value)

    def children(self, key: str) -> list[tuple[str, Section]]:
        value = self.get(key, {})
        parent = Section(self.file, self.where(key), value)
        parent.used = set(parent.data)
        return [
            (str(k), Section(self.file, parent.where(str(k)), v)) for k, v in parent.data.items()
        ]

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.error(
                None,
                f"unknown key {unknown[0]!r} (expected one of: {', '.join(sorted(self.used))})",
            )
