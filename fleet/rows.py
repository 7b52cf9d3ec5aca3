"""A stored reading and a period's means as export rows (physical units, ISO times): one owner
for `fleet readings`, `fleet export` and the open-data pages (fleet/web/opendata.py)."""
import datetime as dt

COLUMNS = ("node", "seq", "time", "ts", "rx_ts", "pm1_ugm3", "pm25_ugm3", "pm10_ugm3", "rh_pct", "temp_c", "n",
           "flags", "hops", "gateway", "rssi")


def _d(v):
    return None if v is None else round(v / 10, 1)


MEAN_COLUMNS = ("node", "time", "start", "readings", "pm1_ugm3", "pm25_ugm3", "pm10_ugm3")


def mean_row(m):
    """Return one period's means (store.means dict) as an export row (MEAN_COLUMNS order)."""
    iso = dt.datetime.fromtimestamp(m["start"], dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (m["node"], iso, m["start"], m["n"], round(m["pm1"] / 10, 1), round(m["pm25"] / 10, 1),
            round(m["pm10"] / 10, 1))


def export_row(r):
    """Return one stored reading (dict) as an export row (COLUMNS order, physical units)."""
    ts = r["ts"]
    iso = dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if ts is not None else None
    return (r["node"], r["seq"], iso, ts, r["rx_ts"], _d(r["pm1"]), _d(r["pm25"]), _d(r["pm10"]), r["rh"],
            _d(r["temp"]), r["n"], r["flags"], r["hops"], r["gateway"], r["rssi"])
