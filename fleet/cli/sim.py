"""`fleet sim …` — the virtual rig. Subcommands live in their own modules (lazy)."""
import click

from fleet.cli._lazy import lazy_group

SUBCOMMANDS = {
    # name -> module defining `cli`
    "broker": "fleet.cli.sim_broker",
    "board": "fleet.cli.sim_board",
    "up": "fleet.cli.sim_up",
    "des": "fleet.cli.sim_des",
}


@click.group(cls=lazy_group(SUBCOMMANDS))
def cli():
    """Virtual rig: simulated radio medium, virtual boards, brokers, whole meshes."""
