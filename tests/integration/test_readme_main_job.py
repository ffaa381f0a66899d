"""The README's main-job command must stay true: it runs the demo end to end in its own process."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_demo_runs_end_to_end():
    result = subprocess.run([sys.executable, "-m", "raystream.demo"], capture_output=True, text=True,
                            timeout=300, env={**__import__("os").environ, "RAY_ADDRESS": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "consumed 25000 of 25000 records" in result.stdout
    assert "900 intact records kept" in result.stdout
