"""`fleet plot --node ID --out FILE.png` — PM2.5 of one node with category bands, 1-hour mean,
gaps and flagged readings; `fleet plot --fleet --out FILE.png` — readings delivered, nodes
heard and latency (reading to gateway, p50/p90) over time (fleet/web/plot.py)."""

import click

from fleet import aqi as aqimod
from fleet.cli._options import NODE_ID, TimeParam, home_option


@click.command()
@click.option("--node", "node_id", type=NODE_ID, default=None, metavar="ID", help="Plot this node's PM2.5.")
@click.option("--fleet", "whole", is_flag=True, help="Plot the fleet's delivery, nodes heard and latency instead.")
@click.option("--since", type=TimeParam(), default=None, help="From this reading time (unix s, -1d, ISO 8601).")
@click.option("--until", type=TimeParam(), default=None, help="Before this reading time.")
@click.option("--aqi", type=click.Choice(aqimod.SCHEMES), default=None, help="Category bands: ica or epa.")
@click.option("--out", type=click.Path(dir_okay=False, writable=True), required=True, metavar="FILE.png")
@home_option
def cli(home, node_id, whole, since, until, aqi, out):
    """Draw a node's PM2.5 or the fleet's delivery, nodes heard and latency as a PNG."""
    if (node_id is None) == (not whole):
        raise click.UsageError("give exactly one of --node ID and --fleet")
    from fleet.web.plot import fleet_plot, node_plot

    home = home.with_overrides({"status.aqi": aqi})
    store = home.store()
    if whole:
        n = fleet_plot(store, since, until, out)
    else:
        n = node_plot(store, node_id, since, until, out, aqi=home.config["status"]["aqi"])
    click.echo(f"wrote {out} ({n} points)")
