"""Fixtures for the storage unit tests: logs in ``tmp_path`` that are closed (or dropped) at teardown."""

from __future__ import annotations

import pytest
from storage_helpers import open_log

from raystream.storage.log import Log


@pytest.fixture
def log_dir(tmp_path):
    return tmp_path / "topic-0"


@pytest.fixture
def make_log(log_dir):
    """``make_log(config=None, path=log_dir, **kwargs)`` opens a Log; every log still open is dropped at
    teardown without a flush (a test may leave a log in any state)."""
    opened: list[Log] = []

    def _make(config=None, path=None, **kwargs) -> Log:
        log = open_log(path or log_dir, config, **kwargs)
        opened.append(log)
        return log

    yield _make
    for log in opened:
        if not log._closed:
            log._simulate_crash()
