"""`fleet verify throughput` — drive a rig at an offered rate and report what arrived."""
import click

from fleet.cli._lazy import lazy_group

SUBCOMMANDS = {
    # name -> module defining `cli`
    "throughput": "fleet.cli.verify.throughput",
}


@click.group("verify", cls=lazy_group(SUBCOMMANDS))
def cli():
    """Verification runs against a rig (the virtual rig unless told otherwise)."""
