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
    assert json.loads(run(cluster, "topics", "describe", topic_name, "--json").output)["config"][
        "retention.ms"] == 1000
    assert run(cluster, "topics", "delete", topic_name).exit_code == 0
    assert topic_name not in run(cluster, "topics", "list").output.split()


def test_errors_are_one_line_and_exit_nonzero(cluster, topic_name):
    for args in (["topics", "create", "bad/name"], ["topics", "describe", topic_name + "-nope"],
                 ["topics", "create", topic_name, "--config", "retention.ms=soon"],
                 ["topics", "create", topic_name, "--config", "novalue"]):
        result = run(cluster, *args)
        assert result.exit_code != 0
        assert "Traceback" not in result.output
        assert result.output.strip().count("\n") <= 3, result.output
