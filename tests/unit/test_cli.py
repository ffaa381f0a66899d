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


def test_groups_describe_shows_owners_and_uncommitted_partitions(monkeypatch) -> None:
    """Partitions assigned but never committed appear with "-"; CONSUMER-ID is the owning member."""
    import json

    import raystream.cli_groups as cli_groups
    from raystream.protocol import GroupDescription, TopicPartition

    t0, t1, t2 = (TopicPartition("orders", p) for p in range(3))
    description = GroupDescription(
        "g", "Stable", 3,
        [{"member_id": "m-1", "group_instance_id": None, "client_id": "c", "topics": ["orders"],
          "assignment": [t0, t1]},
         {"member_id": "m-2", "group_instance_id": None, "client_id": "c", "topics": ["orders"],
          "assignment": [t2]}],
        {t0: 5, t2: 7}, {t0: 2, t2: None}, "range")

    class FakeAdmin:
        def describe_group(self, group_id):
            assert group_id == "g"
            return description

    monkeypatch.setattr(cli_groups, "connect", lambda ctx: None)
    monkeypatch.setattr(raystream, "Admin", FakeAdmin)
    result = CliRunner().invoke(main, ["groups", "describe", "g"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split("\t") == ["Group: g", "State: Stable", "Generation: 3", "Protocol: range", "Members: 2"]
    assert [line.split() for line in lines[2:]] == [["g", "orders", "0", "5", "7", "2", "m-1"],
                                                    ["g", "orders", "1", "-", "-", "-", "m-1"],
                                                    ["g", "orders", "2", "7", "-", "-", "m-2"]]
    parsed = json.loads(CliRunner().invoke(main, ["groups", "describe", "g", "--json"]).stdout)
    assert parsed["state"] == "Stable" and parsed["generation_id"] == 3 and parsed["protocol"] == "range"
    assert parsed["members"][1]["assignment"] == [{"topic": "orders", "partition": 2}]
    assert parsed["partitions"][1] == {"topic": "orders", "partition": 1, "current_offset": None,
                                       "log_end_offset": None, "lag": None, "consumer_id": "m-1"}


def test_topics_describe_filters_under_replicated_and_unavailable_partitions(monkeypatch) -> None:
    import json

    import raystream.cli_topics as cli_topics
    from raystream.protocol import PartitionInfo, TopicDescription

    parts = [PartitionInfo(0, "a", 1, ["a", "b", "c"], ["a", "b", "c"], 0, 5, 5),
             PartitionInfo(1, "b", 2, ["a", "b", "c"], ["b"], 0, 3, 3),
             PartitionInfo(2, None, 3, ["a", "b", "c"], ["c"], 0, -1, -1)]

    class FakeAdmin:
        def list_topics(self):
            return ["orders", "healthy"]

        def describe_topic(self, name):
            return TopicDescription(name, parts if name == "orders" else parts[:1], {}, None)

    monkeypatch.setattr(cli_topics, "connect", lambda ctx: None)
    monkeypatch.setattr(raystream, "Admin", FakeAdmin)

    def described(*flags):
        out = CliRunner().invoke(main, ["topics", "describe", "--json", *flags])
        assert out.exit_code == 0, out.output
        return [(d["name"], [p["partition"] for p in d["partitions"]]) for d in map(json.loads, out.stdout.split("\n")[:-1])]

    assert described() == [("orders", [0, 1, 2]), ("healthy", [0])]
    assert described("--under-replicated-partitions") == [("orders", [1, 2])]
    assert described("--unavailable-partitions") == [("orders", [2])]
    text = CliRunner().invoke(main, ["topics", "describe", "--under-replicated-partitions"]).stdout
    assert "Partition: 1" in text and "Partition: 0" not in text and "healthy" not in text
