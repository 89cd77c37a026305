"""Durations (``10s``, ``5m``, ``7d``, ``100ms``) and sizes (``1MiB``) as people write them."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "KiB": 1024,
    "MB": 10**6,
    "MiB": 1024**2,
    "GB": 10**9,
    "GiB": 1024**3,
}


def parse_duration(text: str) -> float:
    """Seconds in ``text``; raises ValueError with the accepted forms."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError("a duration like 100ms, 10s, 5m, 2h, 7d or 1w")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_size(text: str) -> int:
    """Bytes in ``text`` (``1048576``, ``512KiB``, ``1MiB``)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError("a size like 1048576, 512KiB or 1MiB")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def format_duration(seconds: float) -> str:
    """``45s``, ``3m20s``, ``1h02m``, ``2d03h``: a duration as people read it."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"
