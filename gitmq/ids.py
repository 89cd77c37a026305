"""Message ids: UUIDv7 (RFC 9562), unique and sortable by publish time.

Python 3.11 has no ``uuid.uuid7``; this is the layout of RFC 9562 section 5.7
with a per-process counter in ``rand_a`` so ids made in the same millisecond
by one process still sort in publish order.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_id(now_ns: int | None = None) -> str:
    """A new UUIDv7 string such as ``0192f0c4-...``."""
    global _last_ms, _counter
    ms = (now_ns if now_ns is not None else time.time_ns()) // 1_000_000
    with _lock:
        if ms <= _last_ms:
            ms = _last_ms
            _counter += 1
            if _counter > 0xFFF:  # 4,096 ids in one millisecond: borrow the next one
                ms += 1
                _counter = 0
        else:
            _counter = int.from_bytes(os.urandom(2), "big") & 0x3FF
        _last_ms = ms
        rand_a = _counter
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))
