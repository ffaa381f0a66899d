"""``raystream topics|produce|consume|perf-test``: Kafka's command-line tools, on raystream.

Every command joins the running raystream cluster with ``rs.init(create=False)`` (to ``--address``, else
``RAY_ADDRESS``, else a running local Ray via ``auto``); only ``raystream start`` may create one. Expected
failures print one line on stderr and exit 1.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import sys

import click

from raystream import errors


def connect(ctx: click.Context, create: bool = False) -> None:
    """Join the raystream cluster on the Ray cluster; only ``raystream start`` (``create``) may start one."""
    import raystream as rs

    opts = ctx.find_root().obj or {}
    try:
        # Ray's INFO lines ("Connecting to existing Ray cluster ...") are noise in a command's output.
        rs.init(address=opts.get("address") or "auto", cluster=opts.get("cluster", "default"),
                data_dir=opts.get("data_dir"), create=create, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise click.ClickException(f"cannot reach a Ray cluster ({exc}); start one with `ray start --head` "
                                   "or pass --address") from None


def friendly_errors(fn):
    """Turn raystream errors into one clear line and exit code 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (errors.RaystreamError, ValueError, TypeError) as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None

    return wrapper


def parse_configs(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--config")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


@click.group("topics")
def topics() -> None:
    """Create, list, describe, alter and delete topics (like kafka-topics)."""


@topics.command("create")
@click.argument("topic")
@click.option("--partitions", type=int, default=None,
              help="Partition count [default: the cluster's num.partitions, 1 unless the config file sets it].")
@click.option("--replication-factor", type=int, default=None,
              help="Replicas per partition [default: the cluster's default.replication.factor, 1 unless the "
                   "config file sets it].")
@click.option("--config", "configs", multiple=True, help="Topic config KEY=VALUE (repeatable).")
@click.pass_context
@friendly_errors
def create(ctx, topic, partitions, replication_factor, configs):
    import raystream as rs

    connect(ctx)
    rs.Admin().create_topic(topic, partitions=partitions, replication_factor=replication_factor,
                            config=parse_configs(configs))
    click.echo(f"Created topic {topic}.")


@topics.command("list")
@click.pass_context
@friendly_errors
def list_(ctx):
    import raystream as rs

    connect(ctx)
    for name in rs.Admin().list_topics():
        click.echo(name)


@topics.command("describe")
@click.argument("topic", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.option("--under-replicated-partitions", "under_replicated", is_flag=True,
              help="Only partitions whose ISR is smaller than their replica set.")
@click.option("--unavailable-partitions", "unavailable", is_flag=True, help="Only partitions without a leader.")
@click.pass_context
@friendly_errors
def describe(ctx, topic, as_json, under_replicated, unavailable):
    import raystream as rs

    connect(ctx)
    admin = rs.Admin()
    for name in [topic] if topic else admin.list_topics():
        d = admin.describe_topic(name)
        if under_replicated or unavailable:  # kafka-topics: print only the matching partitions
            parts = [p for p in d.partitions if (under_replicated and len(p.isr) < len(p.replicas))
                     or (unavailable and p.leader is None)]
            if not parts:
                continue
            d = dataclasses.replace(d, partitions=parts)
        if as_json:
            click.echo(json.dumps({"name": d.name, "config": d.config,
                                   "partitions": [vars(p) for p in d.partitions]}))
            continue
        changed = {k: v for k, v in d.config.items()}
        click.echo(f"Topic: {d.name}\tPartitionCount: {len(d.partitions)}\t"
                   f"ReplicationFactor: {len(d.partitions[0].replicas) if d.partitions else 0}\t"
                   f"Configs: {','.join(f'{k}={v}' for k, v in changed.items())}")
        for p in d.partitions:
            click.echo(f"\tTopic: {d.name}\tPartition: {p.partition}\tLeader: {_short(p.leader)}\t"
                       f"Replicas: {','.join(map(_short, p.replicas))}\tIsr: {','.join(map(_short, p.isr))}\t"
                       f"LogStartOffset: {p.log_start_offset}\tHighWatermark: {p.high_watermark}")


def _short(node_id) -> str:
    return str(node_id)[:8] if node_id else "none"


@topics.command("alter")
@click.argument("topic")
@click.option("--config", "configs", multiple=True, required=True)
@click.pass_context
@friendly_errors
def alter(ctx, topic, configs):
    import raystream as rs

    connect(ctx)
    rs.Admin().alter_topic_config(topic, parse_configs(configs))
    click.echo(f"Updated config of topic {topic}.")


@topics.command("delete")
@click.argument("topic")
@click.pass_context
@friendly_errors
def delete(ctx, topic):
    import raystream as rs

    connect(ctx)
    rs.Admin().delete_topic(topic)
    click.echo(f"Deleted topic {topic}.")


@click.command("produce")
@click.argument("topic")
@click.option("--key-separator", default=None, help="Split each line into KEY<sep>VALUE.")
@click.option("--acks", default="all", type=click.Choice(["0", "1", "all"]))
@click.pass_context
@friendly_errors
def produce(ctx, topic, key_separator, acks):
    """Send lines from stdin as records (like kafka-console-producer)."""
    import raystream as rs

    connect(ctx)
    count = 0
    with rs.Producer(acks=acks if acks == "all" else int(acks)) as producer:
        futures = []
        for line in sys.stdin:
            line = line.rstrip("\n")
            key = None
            if key_separator is not None and key_separator in line:
                key, line = line.split(key_separator, 1)
            futures.append(producer.send(topic, value=line.encode(), key=key.encode() if key else None))
            count += 1
        producer.flush()
        for f in futures:
            f.result()
    click.echo(f"Produced {count} records to {topic}.", err=True)


@click.command("consume")
@click.argument("topic")
@click.option("--from-beginning", is_flag=True)
@click.option("--max-messages", type=int, default=None)
@click.option("--timeout-ms", type=int, default=None, help="Exit after this long without a message.")
@click.option("--print-key", is_flag=True)
@click.option("--key-separator", default="\t", show_default=True)
@click.option("--group", default=None,
              help="Consume as a member of this consumer group (subscribe; offsets auto-committed).")
@click.pass_context
@friendly_errors
def consume(ctx, topic, from_beginning, max_messages, timeout_ms, print_key, key_separator, group):
    """Print records of a topic (like kafka-console-consumer). With --group, --from-beginning applies only
    where the group has no committed offset."""
    import time

    import raystream as rs

    connect(ctx)
    seen = 0
    idle_since = time.monotonic()
    reset = "earliest" if from_beginning else "latest"
    with rs.Consumer(group_id=group, auto_offset_reset=reset) as consumer:
        if group:
            consumer.subscribe([topic])
        else:
            partitions = len(rs.Admin().describe_topic(topic).partitions)
            consumer.assign([rs.TopicPartition(topic, p) for p in range(partitions)])
        while max_messages is None or seen < max_messages:
            # never read past --max-messages: what a group member polled is what it commits
            remaining = None if max_messages is None else max_messages - seen
            records = consumer.poll(timeout=0.2, max_records=remaining)
            if not records:
                if timeout_ms is not None and (time.monotonic() - idle_since) * 1000 >= timeout_ms:
                    break
                continue
            idle_since = time.monotonic()
            for r in records:
                value = r.value.decode(errors="replace") if r.value is not None else "null"
                if print_key:
                    key = r.key.decode(errors="replace") if r.key is not None else "null"
                    click.echo(f"{key}{key_separator}{value}")
                else:
                    click.echo(value)
                seen += 1
    click.echo(f"Processed a total of {seen} messages", err=True)


@click.group("configs")
def configs() -> None:
    """Describe and alter topic configs (like kafka-configs --entity-type topics)."""


@configs.command("describe")
@click.option("--topic", "topic", required=True, help="The topic (entity name).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@friendly_errors
def configs_describe(ctx, topic, as_json):
    import raystream as rs

    connect(ctx)
    config = rs.Admin().describe_topic(topic).config
    if as_json:
        click.echo(json.dumps(config))
        return
    click.echo(f"Dynamic configs for topic {topic} are:")
    for key in sorted(config):
        click.echo(f"  {key}={config[key]}")


@configs.command("alter")
@click.option("--topic", "topic", required=True, help="The topic (entity name).")
@click.option("--add-config", "add", default="", help="k1=v1,k2=v2 to set.")
@click.pass_context
@friendly_errors
def configs_alter(ctx, topic, add):
    import raystream as rs

    pairs = tuple(p for p in add.split(",") if p)
    if not pairs:
        raise click.ClickException("nothing to alter: pass --add-config k1=v1[,k2=v2]")
    connect(ctx)
    rs.Admin().alter_topic_config(topic, parse_configs(pairs))
    click.echo(f"Completed updating config for topic {topic}.")
