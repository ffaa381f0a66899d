"""Command-line interface for raystream."""

from __future__ import annotations

import click

from raystream import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="raystream", message="%(prog)s %(version)s")
def main() -> None:
    """raystream: Kafka-like event streaming on Ray, backed by an Arrow segment log.

    Run `raystream COMMAND --help` for help on a specific command.
    """


if __name__ == "__main__":
    main()
