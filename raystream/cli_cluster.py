"""``raystream start|status|stop``: run raystream on a running Ray cluster and look at it.

``start`` finds or creates the cluster's controller (idempotent; it registers a broker on every Ray node and
re-creates any missing replica; a controller it creates takes the ``--config`` file's defaults) and, with a
``gateway:`` section in that file, a Kafka gateway on every node; ``status`` shows nodes, brokers, topics
(leader, ISR, under-replicated, offline partitions) and consumer groups with their lag, as ``rich`` tables
or ``--json``; ``stop`` stops the gateways, then the controller and every replica gracefully (logs flushed
and closed; the data stays on disk, and the next ``start`` finds everything again).
"""

from __future__ import annotations

import json
from typing import Any

import click

from raystream.cli_topics import connect, friendly_errors


def _status(handle: Any) -> dict[str, Any]:
    import ray

    import raystream as rs

    admin = rs.Admin()
    brokers = handle.brokers()
    node_of = {b: info.node_id for b, info in brokers.items()}
    topics = []
    for name in admin.list_topics():
        description = admin.describe_topic(name)
        parts = []
        for p in description.partitions:
            parts.append({"partition": p.partition, "leader": p.leader, "leader_epoch": p.leader_epoch,
                          "replicas": p.replicas, "isr": p.isr, "high_watermark": p.high_watermark,
                          "under_replicated": len(p.isr) < len(p.replicas), "offline": p.leader is None})
        topics.append({"topic": name, "partitions": parts})
    groups = []
    for group_id in admin.list_groups():
        try:
            d = admin.describe_group(group_id)
        except rs.errors.GroupIdNotFoundError:  # deleted meanwhile
            continue
        lags = [lag for lag in d.lag.values() if lag is not None]
        groups.append({"group": group_id, "state": d.state, "members": len(d.members),
                       "lag": sum(lags) if lags else None})
    nodes = [{"node_id": n["NodeID"], "alive": n["Alive"], "address": n.get("NodeManagerAddress"),
              "broker": next((b for b, node in node_of.items() if node == n["NodeID"]), None)}
             for n in ray.nodes()]
    return {"cluster": handle.cluster, "data_dir": handle.data_dir, "nodes": nodes,
            "brokers": [{"broker": b, "node_id": i.node_id, "data_dir": i.data_dir, "log_dir": i.log_dir,
                         "alive": i.alive} for b, i in sorted(brokers.items())],
            "topics": topics, "groups": groups}


def _print_status(status: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    console.print(f"raystream cluster [bold]{status['cluster']}[/bold] (data dir {status['data_dir']})")
    nodes = Table("NODE", "ALIVE", "ADDRESS", "BROKER", title="Nodes")
    for n in status["nodes"]:
        nodes.add_row(n["node_id"][:12], str(n["alive"]), str(n["address"]), str(n["broker"]))
    console.print(nodes)
    parts = Table("TOPIC", "PARTITION", "LEADER", "EPOCH", "REPLICAS", "ISR", "HW", "STATE", title="Partitions")
    for t in status["topics"]:
        for p in t["partitions"]:
            state = "offline" if p["offline"] else "under-replicated" if p["under_replicated"] else "ok"
            parts.add_row(t["topic"], str(p["partition"]), (p["leader"] or "-")[:12], str(p["leader_epoch"]),
                          str(len(p["replicas"])), str(len(p["isr"])), str(p["high_watermark"]), state)
    console.print(parts)
    groups = Table("GROUP", "STATE", "MEMBERS", "LAG", title="Consumer groups")
    for g in status["groups"]:
        groups.add_row(g["group"], g["state"], str(g["members"]), "-" if g["lag"] is None else str(g["lag"]))
    console.print(groups)


@click.command("start")
@click.pass_context
@friendly_errors
def start(ctx: click.Context) -> None:
    """Start raystream on the running Ray cluster (idempotent).

    With --config (or RAYSTREAM_CONFIG), a controller created now takes the file's broker settings and
    topic defaults; one already running keeps its own (run `raystream stop` first to change them).
    """
    import raystream as rs

    connect(ctx, create=True)
    handle = rs.current()
    config_file = (ctx.find_root().obj or {}).get("config")
    click.echo(f"raystream cluster {handle.cluster} is running with {len(handle.brokers())} broker(s); "
               f"data dir {handle.data_dir}" + (f"; defaults from {config_file}" if config_file else ""))
    _start_gateways(handle.cluster, config_file)


def _start_gateways(cluster: str, config_file: str | None) -> None:
    """The config file's ``gateway:`` section: a Kafka gateway on every node (raystream.actors.gateway_actor)."""
    from raystream import cluster_config

    settings = cluster_config.load(config_file, environ={}).gateway if config_file else None
    if settings is None or not settings.enabled:
        return
    from raystream.actors.gateway_actor import start_gateways

    entries = start_gateways(cluster, settings)
    click.echo(f"Kafka gateways ({len(entries)}): " + ", ".join(f"{e.host}:{e.port} (node {e.node_id})"
                                                               for e in entries))


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for scripts).")
@click.pass_context
@friendly_errors
def status(ctx: click.Context, as_json: bool) -> None:
    """Nodes, brokers, partitions (leader, ISR, under-replicated) and consumer groups with lag."""
    import raystream as rs

    connect(ctx)
    result = _status(rs.current())
    if as_json:
        click.echo(json.dumps(result))
    else:
        _print_status(result)


@click.command("stop")
@click.pass_context
@friendly_errors
def stop(ctx: click.Context) -> None:
    """Stop the controller and every replica gracefully; the data stays on disk."""
    import raystream as rs
    from raystream import api

    connect(ctx)
    handle = rs.current()
    api.stop(handle)
    api.shutdown()
    click.echo(f"raystream cluster {handle.cluster} stopped; its data stays in {handle.data_dir}")
