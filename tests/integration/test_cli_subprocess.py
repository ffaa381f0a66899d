"""The `raystream` command end to end: real subprocesses against a Ray head started with `ray start --head`.

The head is its own Ray (own port, own temp dir, token authentication on: RAY_AUTH_MODE=token for the head
and every client, with a random token generated for the test in RAY_AUTH_TOKEN — the ways docs/deploy.md
tells users to run it), started with ``--block`` in a
new process group so that the whole group is stopped by its id at the end — never `ray stop`, which would
stop every Ray on the machine, including the shared test session's.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from pathlib import Path

import pytest
from cli_process import BIN, clean_env, free_port, gateway_process, stop_process_group

pytestmark = pytest.mark.integration

HEAD_START_TIMEOUT_S = 60
COMMAND_TIMEOUT_S = 120

_TOKEN = {"RAY_AUTH_TOKEN": secrets.token_hex(32)}


def _env() -> dict[str, str]:
    return clean_env(RAY_AUTH_MODE="token", **_TOKEN)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    port = free_port()
    temp_dir = tmp_path_factory.mktemp("rayhead")
    log = open(temp_dir / "ray-start.log", "wb")  # noqa: SIM115 (closed at teardown)
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={temp_dir}", "--block"],
        env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + HEAD_START_TIMEOUT_S
        while True:  # the GCS answers once `ray status` succeeds
            if head.poll() is not None:
                raise AssertionError(f"ray start exited with {head.returncode}: "
                                     f"{(temp_dir / 'ray-start.log').read_text()[-2000:]}")
            status = subprocess.run([str(BIN / "ray"), "status", f"--address={address}"], env=_env(),
                                    capture_output=True, timeout=COMMAND_TIMEOUT_S)
            if status.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"ray head at {address} not up: {status.stderr.decode()[-2000:]}")
            time.sleep(0.5)  # a retry interval between status probes (not synchronisation)
        yield address
    finally:
        stop_process_group(head)
        log.close()


def cli(address: str, data_dir: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "raystream"), "--address", address, "--cluster", "sub",
                           "--data-dir", str(data_dir), *args], input=input, text=True, capture_output=True,
                          env=_env(), timeout=COMMAND_TIMEOUT_S)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{result.args}: {result.stdout[-1000:]} {result.stderr[-2000:]}"
    return result


def test_start_topics_produce_consume_groups_status_stop(ray_head, tmp_path):
    data = tmp_path / "data"
    assert "running with 1 broker" in ok(cli(ray_head, data, "start")).stdout
    assert "running" in ok(cli(ray_head, data, "start")).stdout  # idempotent
    ok(cli(ray_head, data, "topics", "create", "events", "--partitions", "2"))
    assert ok(cli(ray_head, data, "topics", "list")).stdout.split() == ["events"]
    ok(cli(ray_head, data, "produce", "events", "--key-separator", ":", input="a:1\nb:2\nc:3\n"))
    consumed = ok(cli(ray_head, data, "consume", "events", "--group", "g", "--from-beginning",
                      "--max-messages", "3", "--print-key", "--key-separator", ":"))
    assert sorted(line for line in consumed.stdout.splitlines() if ":" in line) == ["a:1", "b:2", "c:3"]
    assert "g" in ok(cli(ray_head, data, "groups", "list")).stdout.split()
    status = json.loads(ok(cli(ray_head, data, "status", "--json")).stdout)
    assert status["cluster"] == "sub" and len(status["brokers"]) == 1
    assert [t["topic"] for t in status["topics"]] == ["events"]
    assert sum(p["high_watermark"] for p in status["topics"][0]["partitions"]) == 3
    assert status["groups"] == [{"group": "g", "state": "Empty", "members": 0, "lag": 0}]
    unknown = cli(ray_head, data, "topics", "describe", "nope")
    assert unknown.returncode != 0 and "Traceback" not in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1, unknown.stderr
    ok(cli(ray_head, data, "stop"))
    assert (data / "sub").is_dir()  # the data stays
    stopped = cli(ray_head, data, "topics", "list")  # only `raystream start` starts a cluster
    assert stopped.returncode == 1 and stopped.stderr.strip().splitlines() == [
        "Error: ClusterNotFoundError: no raystream cluster named 'sub' is running on this Ray cluster; "
        "start it with `raystream start`"]
    ok(cli(ray_head, data, "start"))  # and it comes back with its data
    assert sum(p["high_watermark"] for t in json.loads(ok(cli(ray_head, data, "status", "--json")).stdout)["topics"]
               for p in t["partitions"]) == 3
    no_token = subprocess.run([str(BIN / "raystream"), "--address", ray_head, "--cluster", "sub", "topics", "list"],
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                              env={**_env(), "RAY_AUTH_TOKEN": secrets.token_hex(32)})
    assert no_token.returncode != 0 and "Traceback" not in no_token.stderr  # token auth is on
    ok(cli(ray_head, data, "stop"))


def test_gateway_command_serves_kafka_clients(ray_head, tmp_path, wait_for):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    data = tmp_path / "data"
    ok(cli(ray_head, data, "start"))
    ok(cli(ray_head, data, "topics", "create", "kafka-in", "--partitions", "1"))
    try:
        with gateway_process(ray_head, "sub", _env(), wait_for) as bootstrap:
            producer = KafkaProducer(bootstrap_servers=bootstrap)  # kafka-python's defaults: idempotent
            assert [producer.send("kafka-in", value=b"m%d" % i).get(30).offset for i in range(3)] == [0, 1, 2]
            producer.close()
            consumed = ok(cli(ray_head, data, "consume", "kafka-in", "--from-beginning", "--max-messages", "3"))
            assert [line for line in consumed.stdout.splitlines() if line.startswith("m")] == ["m0", "m1", "m2"]
            consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                     consumer_timeout_ms=5000, enable_auto_commit=False)
            consumer.assign([TopicPartition("kafka-in", 0)])
            assert [m.value for m in consumer] == [b"m0", b"m1", b"m2"]
            consumer.close()
    finally:
        ok(cli(ray_head, data, "stop"))
