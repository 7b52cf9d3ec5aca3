"""`fleet keys revoked`."""
import json

import click

from fleet.cli._options import home_option
from fleet.cli.keys._common import when


@click.command("revoked")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@home_option
def cli(home, as_json):
    """List the revoked nodes, with reason and time."""
    rev = home.keys().revoked()
    if as_json:
        click.echo(json.dumps([{"node": n, **v} for n, v in sorted(rev.items())]))
        return
    if not rev:
        click.echo("no revoked nodes")
        return
    for n, v in sorted(rev.items()):
        click.echo(f"{n:>10}  {when(v['at'])}  {v['reason']}")
