"""`fleet node info|logs|reset` — look at one board on a serial port.

Thin: the services are fleet.provision.node_info / node_logs / node_reset (plain data); this
module renders them. `info` interrupts the app to read the flash and restarts it (soft reset)
unless --no-restart; `logs` only listens (the app keeps running, like `mpremote resume`), except
on a board idle at its REPL (then it shows the crash log first) or with --crash-log.
"""
import click

from fleet.cli._lazy import lazy_group

SUBCOMMANDS = {
    # name -> module defining `cli`
    "info": "fleet.cli.node.info",
    "logs": "fleet.cli.node.logs",
    "reset": "fleet.cli.node.reset",
}


@click.group(cls=lazy_group(SUBCOMMANDS))
def cli():
    """Inspect, follow or reset one node on a serial port."""
