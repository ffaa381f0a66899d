"""kcat (the Kafka command-line client, on librdkafka) against `raystream gateway` run as a subprocess on the
shared test cluster: kcat produces keyed records with headers, consumes them, lists metadata, and
raystream's own Consumer reads what kcat wrote (and kcat what raystream's Producer wrote).

Skipped where kcat is not installed; .ci/run installs it (Debian's package ``kcat``).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from cli_process import clean_env, gateway_process

import raystream as rs

KCAT = shutil.which("kcat")
KCAT_TIMEOUT_S = 60

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(KCAT is None, reason="kcat is not installed (`apt-get install kcat`; .ci/run "
                                                      "installs it)")]


def kcat(bootstrap: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([KCAT, "-b", bootstrap, *args], input=input, text=True, capture_output=True,
                            timeout=KCAT_TIMEOUT_S)
    assert result.returncode == 0, f"{result.args}: {result.stdout[-1000:]} {result.stderr[-2000:]}"
    return result


@pytest.fixture
def bootstrap(cluster, wait_for):
    """`raystream gateway` for the shared cluster, in a subprocess joining the session's Ray."""
    import ray

    with gateway_process(ray.get_runtime_context().gcs_address, cluster.cluster, clean_env(), wait_for) as address:
        yield address


def test_kcat_produces_consumes_and_lists_metadata(bootstrap, topic_name, wait_for):
    rs.Admin().create_topic(topic_name, partitions=1, replication_factor=1)
    lines = "a:one\nb:two:with:colons\nc:\n"  # the first ":" splits key from value; "c" has an empty value
    produced = kcat(bootstrap, "-P", "-t", topic_name, "-K:", "-H", "trace=abc", "-H", "empty=", "-H", "flag",
                    input=lines)
    assert produced.stdout == ""

    consumed = kcat(bootstrap, "-C", "-t", topic_name, "-o", "beginning", "-e", "-f", "%k %s %h %o\n")
    assert consumed.stdout == ("a one trace=abc,empty=,flag=NULL 0\n"
                               "b two:with:colons trace=abc,empty=,flag=NULL 1\n"
                               "c  trace=abc,empty=,flag=NULL 2\n")
    assert f"Reached end of topic {topic_name} [0] at offset 3" in consumed.stderr

    listed = kcat(bootstrap, "-L", "-t", topic_name)
    assert listed.stdout == (f"Metadata for {topic_name} (from broker 0: {bootstrap}/0):\n"
                             " 1 brokers:\n"
                             f"  broker 0 at {bootstrap} (controller)\n"
                             " 1 topics:\n"
                             f'  topic "{topic_name}" with 1 partitions:\n'
                             "    partition 0, leader 0, replicas: 0, isrs: 0\n")
    everything = kcat(bootstrap, "-L").stdout.splitlines()
    assert everything[:3] == [f"Metadata for all topics (from broker 0: {bootstrap}/0):", " 1 brokers:",
                              f"  broker 0 at {bootstrap} (controller)"]
    assert everything[3] == f" {len(rs.Admin().list_topics())} topics:"
    assert f'  topic "{topic_name}" with 1 partitions:' in everything

    # raystream's own consumer reads what kcat wrote: keys, values, headers (a null value too), timestamps
    as_json = [json.loads(line) for line in
               kcat(bootstrap, "-C", "-t", topic_name, "-o", "beginning", "-e", "-J").stdout.splitlines()]
    with rs.Consumer(auto_offset_reset="earliest") as consumer:
        consumer.assign([rs.TopicPartition(topic_name, 0)])
        got = []
        wait_for(lambda: got.extend(consumer.poll(timeout=0.5)) or len(got) >= 3, timeout_s=30,
                 message="raystream's consumer reads kcat's records")
    assert [(r.offset, r.key, r.value, list(r.headers)) for r in got] == [
        (offset, key, value, [("trace", b"abc"), ("empty", b""), ("flag", None)])
        for offset, key, value in [(0, b"a", b"one"), (1, b"b", b"two:with:colons"), (2, b"c", b"")]]
    assert [r.timestamp for r in got] == [m["ts"] for m in as_json]  # kcat's CreateTime, to the millisecond
    assert {m["tstype"] for m in as_json} == {"create"}

    # and kcat reads what raystream's producer wrote after them
    with rs.Producer(acks="all") as producer:
        producer.send(topic_name, value=b"from-raystream", key=b"d", headers=[("origin", b"rs")]).result(30)
    tail = kcat(bootstrap, "-C", "-t", topic_name, "-o", "3", "-e", "-f", "%k %s %h %o\n")
    assert tail.stdout == "d from-raystream origin=rs 3\n"
