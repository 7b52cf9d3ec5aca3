"""`fleet node logs`."""

import click

from fleet import devstrings
from fleet import provision as prov
from fleet.cli._options import BoundedFloat
from fleet.cli.node._common import baud_option, port_option


@click.command("logs")
@port_option
@baud_option
@click.option("--follow", "-f", is_flag=True, help="Keep reading until Ctrl-C.")
@click.option("--lines", "-n", type=click.IntRange(1), help="Stop after N lines.")
@click.option("--timeout-s", type=BoundedFloat(0.1), default=10.0, show_default=True,
              help="Without --follow: stop after this long.")
@click.option("--crash-log", is_flag=True,
              help="First stop the app to read the crash log on the flash (/crash.log), then restart it.")
def cli(port, baud, follow, lines, timeout_s, crash_log):
    """Print the board's serial console (the running app's output) without interrupting it. A
    board idle at its REPL (its app crashed or ended) shows its crash log (/crash.log) instead."""
    for line in prov.node_logs(port, lines=lines, follow=follow, timeout_s=timeout_s, baud=baud,
                               crash_log=crash_log):
        click.echo(devstrings.expand(line))  # the board's coded messages, as text
