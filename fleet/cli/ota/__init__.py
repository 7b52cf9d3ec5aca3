"""`fleet ota …` — OTA bundles and campaigns. One module per subcommand (lazy), each defining
`cli`; add a line to SUBCOMMANDS for a new one (push, status, abort come with campaigns)."""
import importlib

import click

SUBCOMMANDS = {
    # name -> module defining `cli`
    "build": "fleet.cli.ota.build",
    "inspect": "fleet.cli.ota.inspect",
    "push": "fleet.cli.ota.push",
    "status": "fleet.cli.ota.status",
    "abort": "fleet.cli.ota.abort",
}


class _Lazy(click.Group):
    def list_commands(self, ctx):
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx, name):
        mod = SUBCOMMANDS.get(name)
        return importlib.import_module(mod).cli if mod else None


@click.group(cls=_Lazy)
def cli():
    """Build, inspect and push signed firmware bundles (over-the-air updates)."""
