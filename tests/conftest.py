"""Top-level test configuration shared by all test suites."""

import os

# Keep Ray quiet and local for every test run (must happen before Ray is imported anywhere).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


import time  # noqa: E402

import pytest  # noqa: E402


def _wait_for(condition, timeout_s: float = 30.0, interval_s: float = 0.05, message: str = "condition"):
    """Poll ``condition`` until it returns a truthy value (returned) or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the condition may raise while the system settles
            last_exc = exc
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {message} (last error: {last_exc!r})")


@pytest.fixture
def wait_for():
    """Wait on a condition with a deadline (never sleep as synchronisation)."""
    return _wait_for
