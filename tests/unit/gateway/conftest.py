"""A gateway on a free loopback port in front of the in-process fake cluster (tests/unit/client)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "client"))

from fake_transport import FakeTransport  # noqa: E402
from gateway_runner import RunningGateway  # noqa: E402


@pytest.fixture
def fake():
    return FakeTransport()


@pytest.fixture
def gateway(fake):
    running = RunningGateway(fake, connections_max_idle_ms=60_000, request_timeout_ms=2_000)
    yield running
    running.close()
