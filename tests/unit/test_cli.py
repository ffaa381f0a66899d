"""Tests for the ``raystream`` command-line entry point."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

import raystream
from raystream.cli import main


def test_version_is_0_1_0() -> None:
    assert raystream.__version__ == "0.1.0"


def test_cli_version_in_process() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"raystream {raystream.__version__}"


def test_cli_help_in_process() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert "Kafka-like event streaming on Ray" in result.output
    assert "--version" in result.output


def test_cli_no_args_shows_help() -> None:
    result = CliRunner().invoke(main, [])
    # click groups print usage when invoked without a subcommand (exit code 0 or 2 depending on version).
    assert "Usage:" in result.output


def test_cli_version_subprocess() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "raystream.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"raystream {raystream.__version__}"


def test_cli_help_subprocess() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "raystream.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout
    assert "--version" in proc.stdout
