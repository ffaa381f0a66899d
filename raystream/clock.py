"""The wall clock in milliseconds, as Kafka's timestamps are (one definition for every layer).

Pure and thread-safe; tests inject time where it matters (``now=`` / ``now_ms=`` parameters) rather than
patching this.
"""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the epoch (integer arithmetic: no float rounding)."""
    return time.time_ns() // 1_000_000
