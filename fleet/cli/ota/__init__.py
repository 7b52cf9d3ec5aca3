"""`fleet ota …` — OTA bundles and campaigns. One module per subcommand (lazy), each defining
`cli`; add a line to SUBCOMMANDS for a new one (push, status, abort come with campaigns)."""
import click

from fleet.cli._lazy import lazy_group

SUBCOMMANDS = {
    # name -> module defining `cli`
    "build": "fleet.cli.ota.build",
    "inspect": "fleet.cli.ota.inspect",
    "push": "fleet.cli.ota.push",
    "status": "fleet.cli.ota.status",
    "abort": "fleet.cli.ota.abort",
}


@click.group(cls=lazy_group(SUBCOMMANDS))
def cli():
    """Build, inspect and push signed firmware bundles (over-the-air updates)."""
