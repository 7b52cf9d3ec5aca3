"""Per-node PM2.5 plot (PNG, matplotlib Agg): the readings, the index's category bands in their
official colours (fleet.aqi.LEVEL_HEX), the trailing 1-hour mean, gaps drawn as gaps (a break
wherever two readings are more than `gap_s` apart) and flagged readings marked (sensor error,
high humidity, short warm-up: protocol/frames.py FLAG_*)."""
import datetime as dt

from fleet import aqi as aqimod
from fleet.errors import FleetError
from protocol.frames import FLAG_HIGH_RH, FLAG_SENSOR_ERROR, FLAG_WARMUP_SHORT

_MARKS = ((FLAG_SENSOR_ERROR, "x", "sensor error"), (FLAG_HIGH_RH, "^", "RH > 75 %"),
          (FLAG_WARMUP_SHORT, "v", "short warm-up"))


def _segments(ts, gap_s):
    """Split indices into runs with no step longer than gap_s."""
    runs, cur = [], []
    for i, t in enumerate(ts):
        if cur and t - ts[cur[-1]] > gap_s:
            runs.append(cur)
            cur = []
        cur.append(i)
    if cur:
        runs.append(cur)
    return runs


def plot_node(readings, node, out, aqi="ica", gap_s=None):
    """Write the PNG of `readings` (Store.iter_readings dicts) of `node` to `out`; return the
    number of readings drawn. Raises FleetError when there is nothing to draw or out is unwritable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted((r for r in readings if r["ts"] is not None and r["pm25"] is not None), key=lambda r: r["ts"])
    if not rows:
        raise FleetError(f"node {node} has no readings in that time range: nothing to plot")
    ts = [r["ts"] for r in rows]
    pm = [r["pm25"] / 10 for r in rows]
    if gap_s is None:  # 3 x the median interval
        steps = sorted(b - a for a, b in zip(ts, ts[1:], strict=False)) or [60]
        gap_s = 3 * max(steps[len(steps) // 2], 1)
    when = [dt.datetime.fromtimestamp(t, dt.UTC) for t in ts]
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    tab, unit = aqimod.table(aqi)
    top = max(max(pm) * 1.1, 20)
    lo = 0.0
    for _c_lo, c_hi, _a, _b, level, name in tab:
        hi = (c_hi + 1) * unit / 10 if unit == 10 else (c_hi + 1) / 10
        if lo < top:
            ax.axhspan(lo, min(hi, top), color=aqimod.LEVEL_HEX[level], alpha=0.18, lw=0, label=None)
            ax.text(when[0], lo, " " + name, fontsize=7, va="bottom", alpha=0.7)
        lo = hi
    mean, j, acc = [], 0, 0.0
    for i, t in enumerate(ts):  # trailing 1-hour mean
        acc += pm[i]
        while ts[j] <= t - 3600:
            acc -= pm[j]
            j += 1
        mean.append(acc / (i - j + 1))
    for k, run in enumerate(_segments(ts, gap_s)):
        ax.plot([when[i] for i in run], [pm[i] for i in run], color="#333", lw=1, marker=".", ms=3,
                label="PM2.5" if k == 0 else None)
        ax.plot([when[i] for i in run], [mean[i] for i in run], color="#0050c8", lw=2,
                label="1-hour mean" if k == 0 else None)
    for bit, marker, label in _MARKS:
        idx = [i for i, r in enumerate(rows) if (r["flags"] or 0) & bit]
        if idx:
            ax.scatter([when[i] for i in idx], [pm[i] for i in idx], marker=marker, color="k", zorder=3, label=label)
    ax.set_ylim(0, top)
    ax.set_ylabel("PM2.5 (ug/m3)")
    ax.set_title(f"node {node}: PM2.5, {'ICA' if aqi == 'ica' else 'US AQI'} categories (UTC)")
    ax.legend(loc="upper right", fontsize=8)
    fig.autofmt_xdate()
    try:
        fig.savefig(out, format="png")
    except OSError as e:
        raise FleetError(f"cannot write the plot to {out}: {e.strerror or e}") from e
    finally:
        plt.close(fig)
    return len(rows)
