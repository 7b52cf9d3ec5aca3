"""`fleet` — the Red Mesh command-line tool.

One module per command (group) under fleet/cli/; each exposes a click command named `cli`.
Commands are thin: they call services that return plain data and only render it.
Only `main()` exits the process.
"""
import sys

import click

from fleet.cli._lazy import lazy_group

# name -> module under fleet.cli that defines `cli`. Imported lazily so `fleet --help` is fast
# and a broken optional command cannot take the whole tool down.
COMMANDS = {
    "collect": "fleet.cli.collect",
    "decode": "fleet.cli.decode",
    "sim": "fleet.cli.sim",
    "keys": "fleet.cli.keys",
    "ota": "fleet.cli.ota",
    "readings": "fleet.cli.readings",
    "status": "fleet.cli.status",
    "provision": "fleet.cli.provision",
    "flash": "fleet.cli.flash",
    "node": "fleet.cli.node",
    "verify": "fleet.cli.verify",
    "store": "fleet.cli.store",
    "map": "fleet.cli.map",
    "serve": "fleet.cli.serve",
    "export": "fleet.cli.export",
    "plot": "fleet.cli.plot",
}


@click.group(cls=lazy_group(COMMANDS), context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="redmesh")
def group():
    """Red Mesh fleet tool: provision nodes, collect telemetry, run OTA campaigns, show status."""


def main(argv=None):
    """The console entry point: expected failures are click errors (one line, exit 1 or 2); an
    unexpected exception is a bug, shown as one line too (REDMESH_DEBUG=1 shows the traceback)."""
    import os

    try:
        group.main(args=argv, prog_name="fleet", standalone_mode=True)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - no traceback reaches an operator
        if os.environ.get("REDMESH_DEBUG"):
            raise
        click.echo(f"Error: unexpected {type(e).__name__}: {e} - this is a bug in fleet; run again with "
                   f"REDMESH_DEBUG=1 for the traceback and report it", err=True)
        sys.exit(1)
