"""The CLI end to end against the shared cluster (in-process through click's runner)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from raystream.cli import main

pytestmark = pytest.mark.integration


def run(cluster, *args, input=None):
    result = CliRunner().invoke(main, ["--cluster", cluster.cluster, "--data-dir", cluster.data_dir, *args],
                                input=input, catch_exceptions=False)
    return result


def test_topics_produce_consume(cluster, topic_name):
    assert run(cluster, "topics", "create", topic_name, "--partitions", "2", "--config",
               "retention.ms=60000").exit_code == 0
    assert topic_name in run(cluster, "topics", "list").output.split()
    described = json.loads(run(cluster, "topics", "describe", topic_name, "--json").output)
    assert described["config"]["retention.ms"] == 60000 and len(described["partitions"]) == 2
    produced = run(cluster, "produce", topic_name, "--key-separator", ":", input="a:1\nb:2\nc:3\n")
    assert produced.exit_code == 0, produced.output
    consumed = run(cluster, "consume", topic_name, "--from-beginning", "--max-messages", "3", "--print-key",
                   "--key-separator", ":")
    assert consumed.exit_code == 0
    assert sorted(line for line in consumed.output.splitlines() if ":" in line) == ["a:1", "b:2", "c:3"]
    assert run(cluster, "topics", "alter", topic_name, "--config", "retention.ms=1000").exit_code == 0
    assert run(cluster, "configs", "alter", "--topic", topic_name, "--add-config",
               "retention.ms=2000,segment.ms=60000").exit_code == 0
    configs = json.loads(run(cluster, "configs", "describe", "--topic", topic_name, "--json").output)
    assert configs["retention.ms"] == 2000 and configs["segment.ms"] == 60000
    assert "retention.ms=2000" in run(cluster, "configs", "describe", "--topic", topic_name).output
    assert run(cluster, "configs", "alter", "--topic", topic_name, "--add-config",
               "retention.ms=1000").exit_code == 0
    assert json.loads(run(cluster, "topics", "describe", topic_name, "--json").output)["config"][
        "retention.ms"] == 1000
    assert run(cluster, "topics", "delete", topic_name).exit_code == 0
    assert topic_name not in run(cluster, "topics", "list").output.split()


def test_errors_are_one_line_and_exit_nonzero(cluster, topic_name):
    for args in (["topics", "create", "bad/name"], ["topics", "describe", topic_name + "-nope"],
                 ["topics", "create", topic_name, "--config", "retention.ms=soon"],
                 ["topics", "create", topic_name, "--config", "novalue"],
                 ["--config", f"/nonexistent/{topic_name}.yaml", "topics", "list"]):
        result = run(cluster, *args)
        assert result.exit_code != 0
        assert "Traceback" not in result.output
        assert result.output.strip().count("\n") <= 3, result.output


def group_partitions(cluster, group):
    described = run(cluster, "groups", "describe", group, "--json")
    assert described.exit_code == 0, described.output
    return json.loads(described.stdout)


def test_consumer_groups(cluster, topic_name):
    group = f"g-{topic_name}"
    assert run(cluster, "topics", "create", topic_name, "--partitions", "2").exit_code == 0
    # keyed (murmur2, as Kafka): a, b, c, e -> partition 0; d, f -> partition 1
    produced = run(cluster, "produce", topic_name, "--key-separator", ":", input="a:1\nb:2\nc:3\nd:4\n")
    assert produced.exit_code == 0, produced.output
    consumed = run(cluster, "consume", topic_name, "--group", group, "--from-beginning",
                   "--max-messages", "4", "--timeout-ms", "15000")
    assert consumed.exit_code == 0, consumed.output
    assert sorted(consumed.stdout.split()) == ["1", "2", "3", "4"]

    assert group in run(cluster, "groups", "list").stdout.split()
    assert group in json.loads(run(cluster, "groups", "list", "--json").stdout)
    d = group_partitions(cluster, group)
    assert d["group_id"] == group and d["state"] == "Empty" and d["members"] == []
    assert {"generation_id", "protocol"} <= set(d)
    assert d["partitions"] == [
        {"topic": topic_name, "partition": p, "current_offset": o, "log_end_offset": o, "lag": 0,
         "consumer_id": None} for p, o in ((0, 3), (1, 1))]

    assert run(cluster, "produce", topic_name, "--key-separator", ":", input="e:5\nf:6\n").exit_code == 0
    parts = group_partitions(cluster, group)["partitions"]
    assert [(p["current_offset"], p["log_end_offset"], p["lag"]) for p in parts] == [(3, 4, 1), (1, 2, 1)]
    table = run(cluster, "groups", "describe", group)
    assert table.exit_code == 0 and "State: Empty" in table.stdout
    lines = [line.split() for line in table.stdout.splitlines()]
    assert lines[1] == ["GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG",
                        "CONSUMER-ID"]
    assert lines[2:] == [[group, topic_name, "0", "3", "4", "1", "-"],
                         [group, topic_name, "1", "1", "2", "1", "-"]]

    # dry runs: the plan is printed, nothing changes
    for args, expected in ((["--to-earliest"], [0, 0]), (["--to-latest"], [4, 2]),
                           (["--to-offset", "1"], [1, 1]), (["--to-timestamp", "1"], [0, 0]),
                           (["--to-datetime", "2999-01-01T00:00:00Z"], [4, 2])):
        result = run(cluster, "groups", "reset-offsets", group, "--topic", topic_name, *args, "--json")
        assert result.exit_code == 0, result.output
        planned = json.loads(result.stdout)
        assert planned["executed"] is False and "Dry run" in result.stderr
        assert [o["new_offset"] for o in planned["offsets"]] == expected, args
        assert [o["partition"] for o in planned["offsets"]] == [0, 1]
    result = run(cluster, "groups", "reset-offsets", group, "--topic", topic_name, "--to-earliest")
    assert result.exit_code == 0 and "Dry run" in result.stderr
    assert [line.split() for line in result.stdout.splitlines()] == [
        ["GROUP", "TOPIC", "PARTITION", "NEW-OFFSET"], [group, topic_name, "0", "0"],
        [group, topic_name, "1", "0"]]
    assert [p["current_offset"] for p in group_partitions(cluster, group)["partitions"]] == [3, 1]

    executed = run(cluster, "groups", "reset-offsets", group, "--topic", topic_name, "--to-earliest",
                   "--execute")
    assert executed.exit_code == 0 and "Dry run" not in executed.output
    parts = group_partitions(cluster, group)["partitions"]
    assert [(p["current_offset"], p["lag"]) for p in parts] == [(0, 4), (0, 2)]
    # the group resumes from its committed offsets (no --from-beginning needed)
    again = run(cluster, "consume", topic_name, "--group", group, "--max-messages", "6",
                "--timeout-ms", "15000")
    assert sorted(again.stdout.split()) == ["1", "2", "3", "4", "5", "6"]

    assert run(cluster, "groups", "delete", group).exit_code == 0
    assert group not in run(cluster, "groups", "list").stdout.split()
    for args in (["groups", "describe", group], ["groups", "delete", group],
                 ["groups", "reset-offsets", group, "--topic", topic_name],
                 ["groups", "reset-offsets", group, "--topic", topic_name, "--to-earliest",
                  "--to-offset", "3"]):
        result = run(cluster, *args)
        assert result.exit_code != 0 and result.stdout == "", args
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr


def test_start_status_stop_on_a_second_cluster(cluster, tmp_path):
    """start / status --json / stop on another raystream cluster in the same Ray (the shared one stays)."""
    import raystream as rs

    other = CliRunner()
    base = ["--cluster", "cli-ops", "--data-dir", str(tmp_path)]
    try:
        started = other.invoke(main, [*base, "start"], catch_exceptions=False)
        assert started.exit_code == 0 and "running with 1 broker" in started.output
        assert other.invoke(main, [*base, "topics", "create", "ops", "--partitions", "2"]).exit_code == 0
        assert other.invoke(main, [*base, "produce", "ops"], input="a\nb\n").exit_code == 0
        assert other.invoke(main, [*base, "consume", "ops", "--group", "g", "--from-beginning",
                                   "--max-messages", "2"]).exit_code == 0
        status = json.loads(other.invoke(main, [*base, "status", "--json"]).output)
        assert status["cluster"] == "cli-ops" and len(status["brokers"]) == 1
        assert [t["topic"] for t in status["topics"]] == ["ops"]
        assert all(not p["under_replicated"] and not p["offline"] for p in status["topics"][0]["partitions"])
        assert status["groups"] == [{"group": "g", "state": "Empty", "members": 0, "lag": 0}]
        table = other.invoke(main, [*base, "status"])
        assert table.exit_code == 0 and "Partitions" in table.output and "ops" in table.output
        stopped = other.invoke(main, [*base, "stop"])
        assert stopped.exit_code == 0 and str(tmp_path) in stopped.output
        # the data stays: a new start finds the topic and its records again
        assert other.invoke(main, [*base, "start"]).exit_code == 0
        again = json.loads(other.invoke(main, [*base, "status", "--json"]).output)
        assert [t["topic"] for t in again["topics"]] == ["ops"]
        assert sum(p["high_watermark"] for p in again["topics"][0]["partitions"]) == 2
        assert other.invoke(main, [*base, "stop"]).exit_code == 0
    finally:
        rs.init(cluster=cluster.cluster, data_dir=cluster.data_dir)  # the session's cluster again
