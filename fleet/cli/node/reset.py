"""`fleet node reset`."""
import json

import click

from fleet import provision as prov
from fleet.cli.node._common import baud_option, port_option


@click.command("reset")
@port_option
@baud_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def cli(port, baud, as_json):
    """Hard-reset the board (machine.reset()): it reboots into its app."""
    result = prov.node_reset(port, baud=baud)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        state = "booting" if result["boot_seen"] else "reset sent, no boot output seen yet"
        click.echo(f"{port}: reset ({state})")
