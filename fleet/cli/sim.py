"""`fleet sim …` — the virtual rig. Subcommands live in their own modules (lazy)."""
import importlib

import click

SUBCOMMANDS = {
    # name -> module defining `cli`
    "broker": "fleet.cli.sim_broker",
    "board": "fleet.cli.sim_board",
    "up": "fleet.cli.sim_up",
    "des": "fleet.cli.sim_des",
}


class _Lazy(click.Group):
    def list_commands(self, ctx):
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx, name):
        mod = SUBCOMMANDS.get(name)
        return importlib.import_module(mod).cli if mod else None


@click.group(cls=_Lazy)
def cli():
    """Virtual rig: simulated radio medium, virtual boards, brokers, whole meshes."""
