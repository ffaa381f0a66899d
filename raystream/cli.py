"""Command-line interface for raystream (``raystream --help``).

Errors print one line on stderr and exit non-zero; no tracebacks for expected failures.
"""

from __future__ import annotations

import json
import sys

import click

from raystream import __version__
from raystream.cli_cluster import start, status, stop
from raystream.cli_groups import groups
from raystream.cli_perf import perf_test
from raystream.cli_topics import configs, consume, produce, topics


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="raystream", message="%(prog)s %(version)s")
@click.option("--address", envvar="RAY_ADDRESS", default=None, help="Ray cluster address (default: auto).")
@click.option("--cluster", default="default", show_default=True, help="raystream cluster name.")
@click.option("--data-dir", envvar="RAYSTREAM_DATA_DIR", default=None, help="Data directory.")
@click.pass_context
def main(ctx: click.Context, address: str | None, cluster: str, data_dir: str | None) -> None:
    """raystream: Kafka-like event streaming on Ray, backed by an Arrow segment log.

    Run `raystream COMMAND --help` for help on a specific command.
    """
    ctx.obj = {"address": address, "cluster": cluster, "data_dir": data_dir}


main.add_command(topics)
main.add_command(configs)
main.add_command(produce)
main.add_command(consume)
main.add_command(groups)
main.add_command(perf_test)
main.add_command(start)
main.add_command(status)
main.add_command(stop)


@main.command("dump-log")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def dump_log_command(directory: str, as_json: bool) -> None:
    """Print every batch of a partition log directory (like kafka-dump-log)."""
    from raystream.storage.dump import dump_log

    bad = 0
    for entry in dump_log(directory):
        if entry.get("error") or entry.get("crc_valid") is False:
            bad += 1
        if as_json:
            click.echo(json.dumps(entry))
        elif entry["kind"] == "segment":
            click.echo(f"Dumping {entry['file']} ({entry.get('size', '?')} bytes) "
                       f"schema: {', '.join(entry.get('schema', []))}{entry.get('error', '')}")
        elif "error" in entry:
            click.echo(f"position: {entry['position']} ERROR: {entry['error']}")
        else:
            click.echo(
                "baseOffset: {base_offset} lastOffset: {last_offset} count: {count} baseSequence: "
                "{base_sequence} producerId: {producer_id} producerEpoch: {producer_epoch} partitionLeaderEpoch: "
                "{leader_epoch} isTransactional: {is_transactional} isControl: {is_control} position: {position} "
                "CreateTime: {max_timestamp} size: {size} crc: {crc} isvalid: {crc_valid}".format(**entry))
    if bad:
        click.echo(f"{bad} invalid batch(es) found", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
