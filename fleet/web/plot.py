"""`fleet plot` pictures (matplotlib, Agg: no display needed).

`node_plot(store, node, since, until, path, aqi)`: PM2.5 of one node with the index's category
bands (official colours, fleet.aqi), its 1-hour mean, gaps drawn as gaps (the line breaks where
two readings are more than GAP_FACTOR x the usual interval apart), flagged readings (high
humidity, sensor error, short warm-up, checksum) marked with a red x.
`fleet_plot(store, since, until, path, bucket_s)`: readings delivered per interval, nodes heard
per interval, and latency per interval (p50 and p90 of rx_ts - ts: from the reading's time to
its reception by a gateway, as the store holds it - in whole seconds, on the gateway's clock
corrected by the collector; the collector's own arrival time is not stored, so the MQTT leg is
not in it; a resent reading's latency includes the wait for the resend). Buckets hold readings
by their reading time. Returns the number of buckets drawn.
"""
import datetime as dt

from fleet import aqi as aqimod
from fleet.errors import FleetError
from protocol.frames import FLAG_CHECKSUM, FLAG_HIGH_RH, FLAG_SENSOR_ERROR, FLAG_WARMUP_SHORT

FLAGGED = FLAG_SENSOR_ERROR | FLAG_HIGH_RH | FLAG_CHECKSUM | FLAG_WARMUP_SHORT
GAP_FACTOR = 3
FLAG_MARK = "#d00000"
LATENCY_P50 = "#7a1fa2"  # the latency panel's line colours (tests look for them)
LATENCY_P90 = "#e08a00"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _t(ts):
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc)


def _save(fig, path):
    try:
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise FleetError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        _plt().close(fig)


def node_plot(store, node, since, until, path, aqi="ica"):
    rows = [r for r in store.iter_readings(node, since=since, until=until) if r["pm25"] is not None]
    if not rows:
        raise FleetError(f"node {node} has no PM2.5 readings in that time range")
    rows.sort(key=lambda r: r["ts"])
    ts = [r["ts"] for r in rows]
    steps = sorted(b - a for a, b in zip(ts, ts[1:], strict=False) if b > a)
    usual = steps[len(steps) // 2] if steps else 60
    xs, ys = [], []
    for i, r in enumerate(rows):
        if i and r["ts"] - rows[i - 1]["ts"] > GAP_FACTOR * usual:
            xs.append(_t(rows[i - 1]["ts"] + usual))
            ys.append(float("nan"))  # a gap: matplotlib breaks the line here
        xs.append(_t(r["ts"]))
        ys.append(r["pm25"] / 10)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    top = max(y for y in ys if y == y) * 1.15 + 1
    for level, name, lo in aqimod.categories(aqi):
        nxt = [c[2] for c in aqimod.categories(aqi) if c[0] == level + 1]
        hi = nxt[0] if nxt else max(top, lo + 1)
        if lo < top:
            ax.axhspan(lo, min(hi, top), color=aqimod.LEVEL_HEX[level], alpha=0.25, lw=0, label=name)
    ax.plot(xs, ys, color="#333333", lw=1, label="PM2.5")
    means = store.reading_means(node, since if since is not None else ts[0], until if until is not None else ts[-1] + 1,
                                3600)
    ax.plot([_t(m["start"] + 1800) for m in means], [m["pm25"] / 10 for m in means], color="#1f4fbf", lw=2,
            label="1-hour mean")
    bad = [(_t(r["ts"]), r["pm25"] / 10) for r in rows if (r["flags"] or 0) & FLAGGED]
    if bad:
        ax.scatter([b[0] for b in bad], [b[1] for b in bad], marker="x", color=FLAG_MARK, s=40, zorder=5,
                   label="flagged (RH, sensor error, warm-up)")
    ax.set_ylim(0, top)
    ax.set_ylabel("PM2.5 (µg/m³)")
    ax.set_title(f"node {node} - PM2.5, {'ICA' if aqi == 'ica' else 'US EPA AQI'} categories")
    ax.legend(loc="upper left", fontsize=7)
    fig.autofmt_xdate()
    fig.tight_layout()
    _save(fig, path)
    return len(rows)


def _quantile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def fleet_series(store, since, until, bucket_s=3600):
    """Per bucket start: (readings, nodes heard, latency p50 s or None, latency p90 s or None)."""
    counts, heard, lat = {}, {}, {}
    for node in sorted(store.node_ids()):
        for r in store.iter_readings(node, since=since, until=until):
            b = r["ts"] // bucket_s * bucket_s
            counts[b] = counts.get(b, 0) + 1
            heard.setdefault(b, set()).add(node)
            if r["rx_ts"] is not None:
                lat.setdefault(b, []).append(max(0, r["rx_ts"] - r["ts"]))
    return {b: (counts[b], len(heard[b]), _quantile(lat[b], 0.5) if b in lat else None,
                _quantile(lat[b], 0.9) if b in lat else None) for b in sorted(counts)}


def fleet_plot(store, since, until, path, bucket_s=3600):
    series = fleet_series(store, since, until, bucket_s)
    if not series:
        raise FleetError("no readings in that time range")
    bs = list(series)
    xs = [_t(b) for b in bs]
    plt = _plt()
    fig, (a1, a2, a3) = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    xe = xs + [_t(bs[-1] + bucket_s)]  # the last bucket drawn to its end, not as a bare riser
    a1.step(xe, [series[b][0] for b in bs] + [series[bs[-1]][0]], where="post")
    a1.set_ylabel(f"readings / {bucket_s // 60} min")
    a2.step(xe, [series[b][1] for b in bs] + [series[bs[-1]][1]], where="post", color="#2a7f2a")
    a2.set_ylabel("nodes heard")
    xs = [_t(b + bucket_s // 2) for b in bs]  # latency at the bucket's middle
    nan = float("nan")
    p50 = [series[b][2] if series[b][2] is not None else nan for b in bs]
    p90 = [series[b][3] if series[b][3] is not None else nan for b in bs]
    if any(series[b][2] is not None for b in bs):
        a3.plot(xs, p90, color=LATENCY_P90, lw=1, marker=".", label="p90")
        a3.plot(xs, p50, color=LATENCY_P50, lw=2, marker=".", label="p50")
        a3.legend(loc="upper left", fontsize=7)
    else:
        a3.text(0.5, 0.5, "no reception times (rx_ts) stored for these readings", transform=a3.transAxes,
                ha="center", va="center", color="#666666")
    a3.set_ylabel("latency (s)\nreading to gateway")
    a3.set_ylim(bottom=0)
    a1.set_title("fleet delivery, nodes heard, latency")
    fig.autofmt_xdate()
    fig.tight_layout()
    _save(fig, path)
    return len(bs)
