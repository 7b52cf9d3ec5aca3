"""`fleet plot --node ID [--since T] [--until T] --out FILE.png` — a node's PM2.5 (fleet/plot.py)."""
import sqlite3
import time

import click

from fleet import aqi as aqimod
from fleet.cli._options import NODE_ID, TimeParam, home_option
from fleet.store import store_error


@click.command()
@click.option("--node", "node_id", type=NODE_ID, required=True, metavar="ID", help="Node id.")
@click.option("--since", type=TimeParam(), default=None, help="From this reading time. Default: the last 24 hours.")
@click.option("--until", type=TimeParam(), default=None, help="Before this reading time.")
@click.option("--aqi", type=click.Choice(aqimod.SCHEMES), default=None, help="Category bands: ica or epa.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, metavar="FILE.png", help="Where to write.")
@home_option
def cli(home, node_id, since, until, aqi, out):
    """Plot a node's PM2.5 with the category bands, its 1-hour mean, gaps and flagged readings."""
    from fleet.plot import plot_node

    home = home.with_overrides({"status.aqi": aqi})
    store = home.store()
    start = int(time.time()) - 86400 if since is None else since
    try:
        rows = list(store.iter_readings(node_id, since=start, until=until))
    except sqlite3.Error as e:
        raise store_error(store.path, e) from e
    finally:
        store.close()
    n = plot_node(rows, node_id, out, aqi=home.config["status"]["aqi"])
    click.echo(f"{n} readings of node {node_id} plotted to {out}")
