"""`fleet plot` pictures (matplotlib, Agg: no display needed).

`node_plot(store, node, since, until, path, aqi)`: PM2.5 of one node with the index's category
bands (official colours, fleet.aqi), its 1-hour mean, gaps drawn as gaps (the line breaks where
two readings are more than GAP_FACTOR x the usual interval apart), flagged readings (high
humidity, sensor error, short warm-up, checksum) marked with a red x.
`fleet_plot(store, since, until, path, bucket_s)`: readings delivered per interval and nodes
heard per interval, from every node's readings. Returns the number of points drawn.
"""
import datetime as dt

from fleet import aqi as aqimod
from fleet.errors import FleetError
from protocol.frames import FLAG_CHECKSUM, FLAG_HIGH_RH, FLAG_SENSOR_ERROR, FLAG_WARMUP_SHORT

FLAGGED = FLAG_SENSOR_ERROR | FLAG_HIGH_RH | FLAG_CHECKSUM | FLAG_WARMUP_SHORT
GAP_FACTOR = 3
FLAG_MARK = "#d00000"


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


def fleet_plot(store, since, until, path, bucket_s=3600):
    counts, heard = {}, {}
    for node in sorted(store.node_ids()):
        for r in store.iter_readings(node, since=since, until=until):
            b = r["ts"] // bucket_s * bucket_s
            counts[b] = counts.get(b, 0) + 1
            heard.setdefault(b, set()).add(node)
    if not counts:
        raise FleetError("no readings in that time range")
    bs = sorted(counts)
    plt = _plt()
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
    a1.step([_t(b) for b in bs], [counts[b] for b in bs], where="post")
    a1.set_ylabel(f"readings / {bucket_s // 60} min")
    a2.step([_t(b) for b in bs], [len(heard[b]) for b in bs], where="post", color="#2a7f2a")
    a2.set_ylabel("nodes heard")
    a1.set_title("fleet delivery")
    fig.autofmt_xdate()
    fig.tight_layout()
    _save(fig, path)
    return len(bs)
