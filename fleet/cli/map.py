"""`fleet map --out FILE.html` — the offline fleet map: one self-contained HTML file (see
fleet/web/map.py): poles coloured by air-quality category, gateways as squares, the mesh tree,
stale/offline nodes hollow grey, pan/zoom, details on hover/click, a legend, the time made."""
import time

import click

from fleet import aqi as aqimod
from fleet.cli._options import BoundedInt, home_option


@click.command()
@click.option("--out", "out", type=click.Path(dir_okay=False, writable=True), required=True, metavar="FILE.html",
              help="Where to write the map.")
@click.option("--metric", type=click.Choice(["latest", "1h", "24h"]), default="latest", show_default=True,
              help="PM2.5 shown: the latest reading, or the mean of the last hour / 24 hours.")
@click.option("--aqi", type=click.Choice(aqimod.SCHEMES), default=None,
              help="Index: ica (Colombia) or epa (US AQI). Default: fleet.toml status.aqi.")
@click.option("--links/--no-links", default=True, show_default=True, help="Draw each node's parent link.")
@click.option("--stale-after", type=BoundedInt(1), default=None, metavar="S",
              help="Seconds of silence before a node is stale. Default: fleet.toml status.stale_after_s.")
@click.option("--offline-after", type=BoundedInt(1), default=None, metavar="S",
              help="Seconds of silence before a node is offline. Default: fleet.toml status.offline_after_s.")
@home_option
def cli(home, out, metric, aqi, links, stale_after, offline_after):
    """Write the fleet map as one HTML file that works offline."""
    from fleet.web.map import map_data, render_html, write_map

    home = home.with_overrides({"status.aqi": aqi, "status.stale_after_s": stale_after,
                                "status.offline_after_s": offline_after})
    cfg = home.config["status"]
    store = home.store()
    data = map_data(store, int(time.time()), metric=metric, aqi=cfg["aqi"], stale_after_s=cfg["stale_after_s"],
                    offline_after_s=cfg["offline_after_s"], links=links)
    html = render_html(data)
    write_map(out, html)
    click.echo(f"wrote {out}: {len(data['nodes'])} nodes drawn"
               + (f", {data['unplaced']} without a position" if data["unplaced"] else "")
               + f", {len(html.encode()) // 1024} KB")

