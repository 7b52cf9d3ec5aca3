"""`fleet map --out FILE.html` — one self-contained HTML map of every pole (fleet/fleetmap.py).

Thin: fleetmap.map_data() reads the store, render_html() draws the page; this writes it.
"""
import sqlite3
import time

import click

from fleet import aqi as aqimod
from fleet import fleetmap
from fleet.cli._options import home_option
from fleet.store import store_error


@click.command()
@click.option("--out", "out", type=click.Path(dir_okay=False, writable=True), required=True, metavar="FILE.html",
              help="Where to write the map (one HTML file, works offline).")
@click.option("--metric", type=click.Choice(fleetmap.METRICS), default="latest", show_default=True,
              help="PM2.5 shown: the latest reading, or the 1-hour / 24-hour mean of the stored readings.")
@click.option("--aqi", type=click.Choice(aqimod.SCHEMES), default=None,
              help="Index and colours: ica (Colombia) or epa (US AQI). Default: fleet.toml status.aqi.")
@click.option("--links/--no-links", default=True, show_default=True, help="Draw each node's link to its parent.")
@home_option
def cli(home, out, metric, aqi, links):
    """Write an offline map of the fleet: poles coloured by air-quality category, the mesh tree."""
    home = home.with_overrides({"status.aqi": aqi})
    cfg = home.config["status"]
    store = home.store()
    t0 = time.perf_counter()
    try:
        data = fleetmap.map_data(store, int(time.time()), aqi=cfg["aqi"], metric=metric,
                                 stale_after_s=cfg["stale_after_s"], offline_after_s=cfg["offline_after_s"],
                                 rh_correction=cfg["rh_correction"])
    except sqlite3.Error as e:
        raise store_error(store.path, e) from e
    finally:
        store.close()
    page = fleetmap.render_html(data, links=links)
    fleetmap.write_map(out, page)
    extra = f", {data['unplaced']} without lat/lon not placed" if data["unplaced"] else ""
    click.echo(f"map of {len(data['nodes'])} poles{extra} written to {out} ({len(page.encode()) // 1024} KB, "
               f"{time.perf_counter() - t0:.2f} s)")
