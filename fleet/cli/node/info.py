"""`fleet node info`."""
import json

import click

from fleet import provision as prov
from fleet.cli._options import home_option
from fleet.cli.node._common import baud_option, port_option, render_info


@click.command("info")
@port_option
@baud_option
@click.option("--no-restart", is_flag=True, help="Leave the app stopped after reading (default: restart it).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@home_option
def cli(home, port, baud, no_restart, as_json):
    """What is on the board: slots, versions, config (no secrets), free flash."""
    info = prov.node_info(port, home=home, baud=baud, restart=not no_restart)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo("\n".join(render_info(info)))
