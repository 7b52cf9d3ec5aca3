"""`fleet sim …` — the virtual rig. Subcommands live in their own modules (lazy)."""
import click

from fleet.cli._lazy import lazy_group

SUBCOMMANDS = {
    # name -> module defining `cli`
    "broker": "fleet.cli.sim.broker",
    "board": "fleet.cli.sim.board",
    "up": "fleet.cli.sim.up",
    "des": "fleet.cli.sim.des",
}


@click.group(cls=lazy_group(SUBCOMMANDS))
def cli():
    """Virtual rig: simulated radio medium, virtual boards, brokers, whole meshes."""
