"""``raystream groups list|describe|reset-offsets|delete``: Kafka's kafka-consumer-groups, on raystream.

Connects and reports errors like ``raystream topics`` (one line on stderr, exit 1).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click

from raystream.cli_topics import connect, friendly_errors


@click.group("groups")
def groups() -> None:
    """List, describe, reset the offsets of and delete consumer groups (like kafka-consumer-groups)."""


@groups.command("list")
@click.option("--json", "as_json", is_flag=True, help="A JSON list of group ids.")
@click.pass_context
@friendly_errors
def list_(ctx, as_json):
    """One group id per line."""
    import raystream as rs

    connect(ctx)
    names = rs.Admin().list_groups()
    if as_json:
        click.echo(json.dumps(names))
        return
    for name in names:
        click.echo(name)


def _rows(d: Any) -> list[dict[str, Any]]:
    """One row per partition with a committed offset or an owner, sorted by topic and partition."""
    owners = {tp: m["member_id"] for m in d.members for tp in m.get("assignment") or []}
    rows = []
    for tp in sorted(set(d.offsets) | set(owners), key=lambda tp: (tp.topic, tp.partition)):
        offset, lag = d.offsets.get(tp), d.lag.get(tp)
        rows.append({"topic": tp.topic, "partition": tp.partition, "current_offset": offset,
                     "log_end_offset": None if offset is None or lag is None else offset + lag,
                     "lag": lag, "consumer_id": owners.get(tp)})
    return rows


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _table(columns: list[str], rows: list[list[Any]]) -> None:
    """A plain (borderless, like Kafka's) ``rich`` table on stdout; never truncated when piped."""
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for name in columns:
        table.add_column(name, no_wrap=True)
    for row in rows:
        table.add_row(*(_dash(v) for v in row))
    console = Console(markup=False, highlight=False, emoji=False)
    if console.is_terminal:
        console.print(table)
        return
    console = Console(markup=False, highlight=False, emoji=False, width=100_000)
    with console.capture() as captured:
        console.print(table)
    for line in captured.get().splitlines():
        click.echo(line.rstrip())


@groups.command("describe")
@click.argument("group")
@click.option("--json", "as_json", is_flag=True, help="State, members and per-partition offsets/lag as JSON.")
@click.pass_context
@friendly_errors
def describe(ctx, group, as_json):
    """Committed offset, log-end offset, lag and owner of each partition of GROUP."""
    import raystream as rs

    connect(ctx)
    d = rs.Admin().describe_group(group)
    rows = _rows(d)
    if as_json:
        members = [{**m, "topics": sorted(m.get("topics") or []),
                    "assignment": [{"topic": tp.topic, "partition": tp.partition}
                                   for tp in m.get("assignment") or []]} for m in d.members]
        click.echo(json.dumps({"group_id": d.group_id, "state": d.state, "generation_id": d.generation_id,
                               "protocol": d.protocol, "members": members, "partitions": rows}))
        return
    click.echo(f"Group: {d.group_id}\tState: {d.state}\tGeneration: {d.generation_id}\t"
               f"Protocol: {d.protocol or '-'}\tMembers: {len(d.members)}")
    _table(["GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", "CONSUMER-ID"],
           [[d.group_id, r["topic"], r["partition"], r["current_offset"], r["log_end_offset"], r["lag"],
             r["consumer_id"]] for r in rows])


def _parse_datetime(value: str) -> int:
    """ISO 8601 (a trailing Z or an offset; local time without one) → epoch milliseconds."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.ClickException(f"--to-datetime: not an ISO 8601 date-time: {value!r}") from None
    return int(parsed.timestamp() * 1000)


@groups.command("reset-offsets")
@click.argument("group")
@click.option("--topic", required=True, help="Reset every partition of this topic.")
@click.option("--to-earliest", is_flag=True, help="To each partition's log start offset.")
@click.option("--to-latest", is_flag=True, help="To each partition's log end offset.")
@click.option("--to-offset", type=click.IntRange(min=0), default=None, help="To this offset.")
@click.option("--to-datetime", default=None, help="To the first offset at or after an ISO 8601 date-time.")
@click.option("--to-timestamp", type=click.IntRange(min=1), default=None,
              help="To the first offset at or after this epoch timestamp (ms).")
@click.option("--execute", is_flag=True, help="Apply the plan (without it: a dry run that changes nothing).")
@click.option("--json", "as_json", is_flag=True, help="The plan as JSON.")
@click.pass_context
@friendly_errors
def reset_offsets(ctx, group, topic, to_earliest, to_latest, to_offset, to_datetime, to_timestamp, execute,
                  as_json):
    """Reset GROUP's committed offsets of a topic (the group must have no active member)."""
    import raystream as rs

    chosen = [to for to, given in (("earliest", to_earliest), ("latest", to_latest),
                                   (to_offset, to_offset is not None),
                                   ({"timestamp": to_timestamp}, to_timestamp is not None),
                                   (to_datetime, to_datetime is not None)) if given]
    if len(chosen) != 1:
        raise click.ClickException("give exactly one of --to-earliest, --to-latest, --to-offset, "
                                   "--to-datetime, --to-timestamp")
    to = {"timestamp": _parse_datetime(to_datetime)} if to_datetime is not None else chosen[0]
    connect(ctx)
    admin = rs.Admin()
    targets = admin.reset_offsets(group, topic, to) if execute else admin.plan_reset_offsets(group, topic, to)
    rows = sorted(targets.items(), key=lambda item: (item[0].topic, item[0].partition))
    if as_json:
        click.echo(json.dumps({"group_id": group, "executed": bool(execute),
                               "offsets": [{"topic": tp.topic, "partition": tp.partition,
                                            "new_offset": offset} for tp, offset in rows]}))
    else:
        _table(["GROUP", "TOPIC", "PARTITION", "NEW-OFFSET"],
               [[group, tp.topic, tp.partition, offset] for tp, offset in rows])
    if not execute:
        click.echo("Dry run: nothing changed; add --execute to reset the offsets.", err=True)


@groups.command("delete")
@click.argument("group")
@click.pass_context
@friendly_errors
def delete(ctx, group):
    """Delete GROUP and its committed offsets (it must have no active member)."""
    import raystream as rs

    connect(ctx)
    rs.Admin().delete_group(group)
    click.echo(f"Deleted consumer group {group}.")
