"""The cluster defaults file (``raystream.yaml``): parsing, checking, precedence and the CLI's --config.

No Ray: the CLI cases stop before any command connects (a bad file) or replace ``connect``.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

import raystream
from raystream import cluster_config
from raystream.cli import main
from raystream.cluster_config import ClusterConfig, load, parse, resolve_connection
from raystream.config import TopicConfig
from raystream.errors import InvalidConfigurationError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"

FULL = """\
cluster: prod
address: ray://head:10001
data_dir: data              # relative: to this file
broker:
  default.replication.factor: 3
  num_partitions: 6         # the attribute spelling works too
  replica.lag.time.max.ms: "20000"
topic_defaults:
  retention.ms: 3600000
  retention_bytes: 1073741824
  flush.messages: 10000
  flush.ms: 1000
  cleanup.policy: [delete, compact]
  unclean.leader.election.enable: "true"
"""


def write(tmp_path: Path, text: str, name: str = "raystream.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_full_file_is_parsed_into_kafka_names(tmp_path):
    path = write(tmp_path, FULL)
    config = load(path)
    assert config.path == str(Path(path).resolve())
    assert (config.cluster, config.address) == ("prod", "ray://head:10001")
    assert config.data_dir == str((tmp_path / "data").resolve())
    assert config.broker == {"default.replication.factor": 3, "num.partitions": 6,
                             "replica.lag.time.max.ms": 20000}
    assert config.topic_defaults == {"retention.ms": 3600000, "retention.bytes": 1 << 30, "flush.messages": 10000,
                                     "flush.ms": 1000, "cleanup.policy": "compact,delete",
                                     "unclean.leader.election.enable": True}


def test_no_file_and_empty_file_change_nothing(tmp_path):
    assert load(None, environ={}) == ClusterConfig()
    empty = load(write(tmp_path, "# only a comment\n"))
    assert (empty.cluster, empty.broker, empty.topic_defaults) == (None, {}, {})
    assert empty.topic_config() == TopicConfig()
    assert empty.broker_config() == {}


def test_path_from_argument_wins_over_environment(tmp_path):
    env_file = write(tmp_path, "cluster: from-env\n", "env.yaml")
    arg_file = write(tmp_path, "cluster: from-arg\n", "arg.yaml")
    environ = {cluster_config.ENV_VAR: env_file}
    assert load(None, environ=environ).cluster == "from-env"
    assert load(arg_file, environ=environ).cluster == "from-arg"
    assert cluster_config.config_path("", environ={}) is None


def test_topic_config_given_at_create_wins_over_file_over_kafka_defaults(tmp_path):
    config = load(write(tmp_path, "topic_defaults:\n  retention.ms: 3600000\n  flush.messages: 10\n"))
    plain = config.topic_config()
    assert (plain.retention_ms, plain.flush_messages) == (3600000, 10)
    assert plain.segment_bytes == TopicConfig().segment_bytes  # not in the file: Kafka's default
    own = config.topic_config({"retention.ms": 60000, "segment_bytes": 4096})
    assert (own.retention_ms, own.flush_messages, own.segment_bytes) == (60000, 10, 4096)


def test_broker_config_argument_wins_over_file_in_either_spelling(tmp_path):
    config = load(write(tmp_path, "broker:\n  replica.lag.time.max.ms: 20000\n  num.partitions: 4\n"))
    assert config.broker_config({"replica_lag_time_max_ms": 5000}) == {"replica.lag.time.max.ms": 5000,
                                                                       "num.partitions": 4}


def test_connection_arguments_over_environment_over_file(tmp_path):
    file = load(write(tmp_path, "cluster: prod\naddress: auto\ndata_dir: /srv/rs\n"))
    assert resolve_connection(file, environ={}) == cluster_config.Connection("auto", "prod", "/srv/rs")
    env = {"RAY_ADDRESS": "10.0.0.1:6379", "RAYSTREAM_DATA_DIR": str(tmp_path / "env")}
    assert resolve_connection(file, environ=env) == cluster_config.Connection(
        "10.0.0.1:6379", "prod", str(tmp_path / "env"))
    explicit = resolve_connection(file, "local", "mine", str(tmp_path / "arg"), environ=env)
    assert explicit == cluster_config.Connection("local", "mine", str(tmp_path / "arg"))
    bare = resolve_connection(ClusterConfig(), environ={})
    assert (bare.address, bare.cluster) == (None, "default")
    assert bare.data_dir == str(Path("~/.raystream/data").expanduser().resolve())


@pytest.mark.parametrize("text, key, words", [
    ("retention.ms: 1000\n", "retention.ms", "under topic_defaults"),
    ("broker:\n  bogus.key: 1\n", "broker.bogus.key", "unknown broker key"),
    ("broker:\n  retention.ms: 1\n", "broker.retention.ms", "under topic_defaults"),
    ("topic_defaults:\n  num.partitions: 3\n", "topic_defaults.num.partitions", "under broker"),
    ("topic_defaults:\n  retention.msx: 1\n", "topic_defaults.retention.msx", "unknown topic_defaults key"),
    ("topic_defaults:\n  retention.ms: soon\n", "topic_defaults.retention.ms", "invalid value 'soon'"),
    ("topic_defaults:\n  min.insync.replicas: 0\n", "topic_defaults.min.insync.replicas", "must be >= 1"),
    ("topic_defaults:\n  cleanup.policy: forever\n", "topic_defaults.cleanup.policy", "must be one of"),
    ("topic_defaults:\n  retention.ms: 1\n  retention_ms: 2\n", "topic_defaults.retention_ms", "given twice"),
    ("topic_defaults:\n  unclean.leader.election.enable: maybe\n", "topic_defaults.unclean.leader.election.enable",
     "expected bool"),
    ("broker:\n  num.partitions: 0\n", "broker.num.partitions", "must be >= 1"),
    ("broker:\n  default.replication.factor: three\n", "broker.default.replication.factor", "invalid value"),
    ("broker: [1, 2]\n", "broker", "must be a mapping"),
    ("topic_defaults: 5\n", "topic_defaults", "must be a mapping"),
    ("- a\n- b\n", "", "the top level must be a mapping"),
    ("cluster: bad/name\n", "cluster", "cluster name 'bad/name' has illegal characters"),
    ("cluster: 42\n", "cluster", "must be a non-empty string"),
    ("data_dir: ''\n", "data_dir", "must be a non-empty string"),
    ("1: x\n", "", "keys in the top level must be strings"),
])
def test_unknown_keys_and_bad_values_name_the_key_and_the_file(tmp_path, text, key, words):
    path = write(tmp_path, text)
    with pytest.raises(InvalidConfigurationError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(str(Path(path).resolve()) + ": ") and words in message, message
    assert info.value.key == key and info.value.file == str(Path(path).resolve())
    assert "\n" not in message


def test_unreadable_or_unparsable_files_name_the_file(tmp_path):
    with pytest.raises(InvalidConfigurationError, match=r"config file .*missing\.yaml not found"):
        load(str(tmp_path / "missing.yaml"))
    with pytest.raises(InvalidConfigurationError, match=r"not valid YAML at line \d+, column \d+: expected ',' or ']'"):
        load(write(tmp_path, "broker:\n  a: [1, 2\n"))
    with pytest.raises(InvalidConfigurationError, match="cannot read config file"):
        load(str(tmp_path))  # a directory
    (tmp_path / "latin1.yaml").write_bytes(b"cluster: \xe9\n")
    with pytest.raises(InvalidConfigurationError, match="not UTF-8"):
        load(str(tmp_path / "latin1.yaml"))


def test_parse_accepts_both_spellings_at_every_level():
    config = parse({"data.dir": "/d", "topic.defaults": {"flush_ms": 5}, "broker": None}, "/etc/rs.yaml")
    assert (config.data_dir, config.topic_defaults, config.broker) == ("/d", {"flush.ms": 5}, {})


def test_the_example_in_the_operations_docs_is_a_valid_file(tmp_path):
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.S)
    example = next(b for b in blocks if "topic_defaults:" in b)
    config = load(write(tmp_path, example))
    assert config.broker and config.topic_defaults and config.data_dir


# -- the CLI's --config ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [None, "broker:\n  nope: 1\n", "topic_defaults:\n  retention.ms: soon\n",
                                  "a: [\n"])
def test_cli_bad_config_file_is_one_line_and_exits_nonzero(tmp_path, text):
    path = str(tmp_path / "missing.yaml") if text is None else write(tmp_path, text)
    result = CliRunner(env={"RAY_ADDRESS": None}).invoke(main, ["--config", path, "topics", "list"])
    assert result.exit_code == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: InvalidConfigurationError: "), result.stderr
    assert str(Path(path).resolve()) in lines[0] and "Traceback" not in result.output


def test_cli_config_flag_wins_over_environment_and_flags_over_file(tmp_path, monkeypatch):
    import raystream.cli_topics as cli_topics

    env_file = write(tmp_path, "cluster: from-env\n", "env.yaml")
    flag_file = write(tmp_path, "cluster: from-flag\naddress: ray://head:10001\n", "flag.yaml")
    seen = []

    def fake_connect(ctx):
        seen.append((dict(ctx.find_root().obj), os.environ.get(cluster_config.ENV_VAR)))

    class FakeAdmin:
        def list_topics(self):
            return []

    monkeypatch.setattr(cli_topics, "connect", fake_connect)
    monkeypatch.setattr(raystream, "Admin", FakeAdmin)
    monkeypatch.delenv(cluster_config.ENV_VAR, raising=False)
    runner = CliRunner(env={cluster_config.ENV_VAR: env_file, "RAY_ADDRESS": None})
    assert runner.invoke(main, ["topics", "list"]).exit_code == 0
    assert runner.invoke(main, ["--config", flag_file, "topics", "list"]).exit_code == 0
    assert runner.invoke(main, ["--config", flag_file, "--cluster", "mine", "--address", "auto",
                                "topics", "list"]).exit_code == 0
    (env_obj, env_seen), (flag_obj, flag_seen), (over_obj, _) = seen
    assert (env_obj["cluster"], env_obj["config"], env_seen) == ("from-env", str(Path(env_file).resolve()),
                                                                 str(Path(env_file).resolve()))
    # rs.init, called by connect, reads the file the flag chose
    assert (flag_obj["cluster"], flag_obj["address"], flag_seen) == ("from-flag", "ray://head:10001",
                                                                     str(Path(flag_file).resolve()))
    assert (over_obj["cluster"], over_obj["address"]) == ("mine", "auto")
    assert cluster_config.ENV_VAR not in os.environ  # the command's choice did not leak
    without = CliRunner(env={cluster_config.ENV_VAR: None}).invoke(main, ["topics", "list"])
    assert without.exit_code == 0 and seen[-1][0]["cluster"] == "default" and seen[-1][0]["config"] is None


def test_cli_unreachable_address_fails_fast_in_one_line(tmp_path):
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = write(tmp_path, f"address: 127.0.0.1:{port}\n")
    runner = CliRunner(env={"RAY_ADDRESS": None, cluster_config.ENV_VAR: None})
    for args in (["--address", f"127.0.0.1:{port}", "status"], ["--config", path, "topics", "list"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 1 and result.stdout == "", result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"cannot reach a Ray cluster at 127.0.0.1:{port}" in lines[0], result.stderr
    dumped = runner.invoke(main, ["--address", f"127.0.0.1:{port}", "dump-log", str(tmp_path)])
    assert "cannot reach" not in dumped.output  # dump-log reads files only
