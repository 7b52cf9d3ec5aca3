"""`fleet export --format csv|geojson [--since T] [--until T] --out FILE` — the open-data dump.

geojson: every placed pole as a Point with its state, latest PM2.5 and category (the map's data,
fleet/fleetmap.py); csv: every node's readings in [since, until) in `fleet readings --csv`
columns (fleet/cli/readings.py owns them). Nothing else: no MAC, no key, no internal address.
"""
import csv
import json
import sqlite3
import time

import click

from fleet import aqi as aqimod
from fleet import fleetmap
from fleet.cli._options import TimeParam, home_option
from fleet.cli.readings import COLUMNS, export_row
from fleet.errors import FleetError
from fleet.store import store_error

PROPS = ("node", "lat", "lon", "gateway", "state", "level", "pm25", "parent", "hops", "pole", "last_heard", "firmware")


def geojson(data):
    """The map data (fleetmap.map_data) as a GeoJSON FeatureCollection (dict)."""
    names = {level: name for level, _c, name, _r in fleetmap.legend(data["aqi"])}
    feats = []
    for n in data["nodes"]:
        p = dict(zip(PROPS, n, strict=True))
        feats.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [p.pop("lon"), p.pop("lat")]},
                      "properties": {**p, "gateway": bool(p["gateway"]), "state": fleetmap.STATES[p["state"]],
                                     "category": names.get(p["level"]), "level": p["level"] or None,
                                     "index": data["aqi"], "metric": data["metric"]}})
    return {"type": "FeatureCollection", "generated_at": data["generated_at"], "features": feats}


@click.command()
@click.option("--format", "fmt", type=click.Choice(("csv", "geojson")), required=True, help="Dump format.")
@click.option("--since", type=TimeParam(), default=None,
              help="csv: from this reading time (unix s, -1d, ISO 8601). Default: the last 24 hours.")
@click.option("--until", type=TimeParam(), default=None, help="csv: before this reading time.")
@click.option("--aqi", type=click.Choice(aqimod.SCHEMES), default=None, help="geojson: index of the categories.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, metavar="FILE", help="Where to write.")
@home_option
def cli(home, fmt, since, until, aqi, out):
    """Write the open-data dump: poles as GeoJSON, or a day's readings as CSV."""
    home = home.with_overrides({"status.aqi": aqi})
    cfg = home.config["status"]
    now = int(time.time())
    store = home.store()
    rows = 0
    try:
        with open(out, "w", encoding="utf-8", newline="") as f:
            if fmt == "geojson":
                data = fleetmap.map_data(store, now, aqi=cfg["aqi"], stale_after_s=cfg["stale_after_s"],
                                         offline_after_s=cfg["offline_after_s"], rh_correction=cfg["rh_correction"])
                doc = geojson(data)
                rows = len(doc["features"])
                json.dump(doc, f, separators=(",", ":"))
            else:
                w = csv.writer(f)
                w.writerow(COLUMNS)
                start = now - 86400 if since is None else since
                for node in sorted(r["node"] for r in store.status_rows(fields=("node",))):
                    for r in store.iter_readings(node, since=start, until=until):
                        w.writerow(export_row(r))
                        rows += 1
    except sqlite3.Error as e:
        raise store_error(store.path, e) from e
    except OSError as e:
        raise FleetError(f"cannot write {out}: {e.strerror or e}") from e
    finally:
        store.close()
    click.echo(f"{rows} {'poles' if fmt == 'geojson' else 'readings'} written to {out}")
