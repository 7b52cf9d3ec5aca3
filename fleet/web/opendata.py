"""Open data, as plain data: the poles as GeoJSON (latest, 1 h and 24 h means, categories) and
a node's readings as rows (raw or hourly/daily means). Used by `fleet serve` and `fleet export`.
Nothing here names a MAC, a key or a network address: only node ids, poles and positions."""
import datetime as dt

from fleet import aqi as aqimod
from fleet.rows import COLUMNS as RAW_COLUMNS
from fleet.rows import export_row
from fleet.status import fleet_status

EVERY = {"raw": None, "1h": 3600, "1d": 86400}
MEAN_COLUMNS = ("node", "time", "ts", "every_s", "n", "pm1_ugm3", "pm25_ugm3", "pm10_ugm3", "rh_pct", "temp_c")


def _iso(ts):
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cat(aqi, dug):
    if dug is None:
        return None, None
    i = aqimod.index_pm25(aqi, dug)
    return i[2], i[1]


def poles_geojson(store, now_s, aqi="ica", stale_after_s=300, offline_after_s=1800, until=None):
    """A GeoJSON FeatureCollection: one Point per positioned node, properties: node, pole, role,
    state, firmware, hops, parent, last_heard, pm25 (latest, ug/m3) and its category, pm25_1h,
    pm25_24h (means ending at `until`, default now) and their categories."""
    end = now_s if until is None else until
    st = fleet_status(store, now_s, stale_after_s, offline_after_s, aqi=aqi)
    where = {n["node"]: n for n in store.nodes()}
    m1 = store.pm25_means(end - 3600, end + 1)
    m24 = store.pm25_means(end - 86400, end + 1)
    feats = []
    for v in st["nodes"]:
        reg = where.get(v["node"])
        if reg is None or reg["lat"] is None or reg["lon"] is None:
            continue
        latest = None if v["pm25"] is None else round(v["pm25"] * 10)
        a = m1.get(v["node"], (None,))[0]
        b = m24.get(v["node"], (None,))[0]
        c0, l0 = _cat(aqi, latest)
        c1, l1 = _cat(aqi, a)
        c24, l24 = _cat(aqi, b)
        feats.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [reg["lon"], reg["lat"]]},
                      "properties": {
                          "node": v["node"], "pole": v["pole"], "role": v["role"], "state": v["state"],
                          "firmware": v["firmware"], "hops": v["hops"], "parent": v["parent"],
                          "last_heard": None if v["last_heard"] is None else _iso(v["last_heard"]),
                          "pm25": v["pm25"], "category": c0, "level": l0,
                          "pm25_1h": None if a is None else a / 10, "category_1h": c1, "level_1h": l1,
                          "pm25_24h": None if b is None else b / 10, "category_24h": c24, "level_24h": l24,
                      }})
    return {"type": "FeatureCollection", "generated_at": _iso(now_s), "aqi": aqi, "features": feats}


def node_rows(store, node, since, until, every="raw", offset=0, limit=1000):
    """Return (columns, rows) of node `node` in [since, until): raw readings (fleet readings'
    columns) or means per hour / day (MEAN_COLUMNS), rows offset..offset+limit."""
    if EVERY[every] is None:
        it = store.iter_readings(node, since=since, until=until, limit=offset + limit)
        rows = [export_row(r) for i, r in enumerate(it) if i >= offset]
        return RAW_COLUMNS, rows
    e = EVERY[every]
    means = store.reading_means(node, since, until, e)[offset:offset + limit]

    def d(v):
        return None if v is None else round(v / 10, 1)

    rows = [(node, _iso(m["start"]), m["start"], e, m["n"], d(m["pm1"]), d(m["pm25"]), d(m["pm10"]),
             None if m["rh"] is None else round(m["rh"], 1), d(m["temp"])) for m in means]
    return MEAN_COLUMNS, rows
