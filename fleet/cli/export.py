"""`fleet export --format csv|geojson --since ...` — the open-data dump: every node's readings
in the range as one CSV (fleet readings' columns), or the poles as GeoJSON with their latest
and 1 h / 24 h means ending at --until. Writes to --out, else stdout."""
import csv
import json
import sys
import time

import click

from fleet import aqi as aqimod
from fleet.cli._options import TimeParam, home_option
from fleet.errors import FleetError


@click.command()
@click.option("--format", "fmt", type=click.Choice(["csv", "geojson"]), required=True, help="Dump format.")
@click.option("--since", type=TimeParam(), default=None, help="From this reading time (default: 24 h before --until).")
@click.option("--until", type=TimeParam(), default=None, help="Before this reading time (default: now).")
@click.option("--aqi", type=click.Choice(aqimod.SCHEMES), default=None, help="Index for the GeoJSON categories.")
@click.option("--out", type=click.Path(dir_okay=False, writable=True), default=None, metavar="FILE",
              help="Write here instead of stdout.")
@home_option
def cli(home, fmt, since, until, aqi, out):
    """Write the open-data dump (CSV of readings or GeoJSON of poles)."""
    from fleet.rows import COLUMNS, export_row
    from fleet.web.opendata import poles_geojson

    home = home.with_overrides({"status.aqi": aqi})
    cfg = home.config["status"]
    now = int(time.time())
    t1 = until if until is not None else now + 1
    t0 = since if since is not None else t1 - 86400
    if t0 >= t1:
        raise click.UsageError("--since must be before --until")
    store = home.store()
    try:
        f = open(out, "w", newline="", encoding="utf-8") if out else sys.stdout
    except OSError as e:
        raise FleetError(f"cannot write {out}: {e.strerror or e}") from None
    n = 0
    try:
        if fmt == "geojson":
            body = poles_geojson(store, now, aqi=cfg["aqi"], stale_after_s=cfg["stale_after_s"],
                                 offline_after_s=cfg["offline_after_s"], until=t1)
            json.dump(body, f, ensure_ascii=False)
            f.write("\n")
            n = len(body["features"])
        else:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for node in sorted(store.node_ids()):
                for r in store.iter_readings(node, since=t0, until=t1):
                    w.writerow(export_row(r))
                    n += 1
    finally:
        if out:
            f.close()
        else:
            f.flush()
    click.echo(f"exported {n} {'poles' if fmt == 'geojson' else 'readings'}", err=True)
