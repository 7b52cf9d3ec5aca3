"""Benchmark (issue 15, item 5): the mesh on a bad night, as a matrix of `fleet sim des` runs.

    .venv/bin/python bench/loss_matrix.py [--sizes 2000,5000] [--losses 0,0.1,0.2]
        [--scenarios none,gateway,power] [--minutes 60] [--seed 1] [--jobs 2] [--quick]

Every cell is `fleet sim des --nodes N --loss L [--gateway-failure | --power-cut-street] --json`
in its own process (district, one gateway per 1,000 nodes, status reports every 300 s as node.py
sends them, gap repair `route`: resend requests down source routes, flooded when no path is
known - real at every size), --jobs cells at a time. Prints one row per cell: first pass, after
repair, latency p99, repair latency p50/p99, control transmissions per delivered reading by kind
(beacons, status reports, down-routed, fallback floods, replies and resent telemetry), parent
changes per node-hour, wall time. Writes bench/out/loss_matrix.json and bench/out/loss_matrix.png. Figures
are for this machine; a cell's wall time varies with the load of the others. Asserts nothing.
--quick: 2,000 nodes, losses 0 and 0.2, 30 minutes.
"""
import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.des_bench import OUT, run_size, save  # noqa: E402

SCENARIOS = {"none": (), "gateway": ("--gateway-failure",), "power": ("--power-cut-street",)}


def cell(n, loss, scenario, minutes, seed, timeout_s):
    extra = ("--loss", str(loss), *SCENARIOS[scenario])
    r = run_size(n, minutes, seed, timeout_s, extra)
    r["scenario"] = scenario
    return r


def per_reading(r):
    """Control transmissions per delivered reading, by kind."""
    k = {kind: v or 0 for kind, v in r["control_per_reading"].items()}
    return {"beacons": k["beacons"], "status": k["status"], "flooded": k["flooded"] + k["fallback"],
            "routed": k["routed"], "replies+resent": k["replies"] + k["resent_telemetry"]}


def row(r):
    k = per_reading(r)
    f = lambda v, fmt: (fmt % v) if v is not None else "-"  # noqa: E731
    return ("%5d %4.2f %-7s %s | %7s %7s | p99 %6s s | repair p50 %6s p99 %6s s, %4s tx/gap-hop | ctrl %5.2f = bcn %5.2f + "
            "flood %5.2f + routed %4.2f + resent %4.2f (status %4.2f) | parents %6.2f /node-h | %5.0f s" % (
                r["nodes"], r["loss"], r["scenario"], r["repair_mode"][:5], f(r["delivery_first_pass"], "%.5f"),
                f(r["delivery_after_repair"], "%.5f"), f(r["latency_p99_s"], "%.3f"), f(r["repair_latency_p50_s"], "%.0f"),
                f(r["repair_latency_p99_s"], "%.0f"), f(r["repair"].get("tx_per_gap_hop"), "%.1f"),
                r["control_overhead"] or 0, k["beacons"], k["flooded"], k["routed"],
                k["replies+resent"], k["status"], r["parent_changes_per_node_hour"], r["process_s"]))


def plot(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["nodes"] for r in runs})
    fig, axes = plt.subplots(len(sizes), 3, figsize=(14, 3.6 * len(sizes)), squeeze=False)
    for i, n in enumerate(sizes):
        for sc, mark in (("none", "o-"), ("gateway", "s--"), ("power", "^:")):
            rs = sorted((r for r in runs if r["nodes"] == n and r["scenario"] == sc), key=lambda r: r["loss"])
            if not rs:
                continue
            xs = [100 * r["loss"] for r in rs]
            axes[i][0].plot(xs, [100 * (r["delivery_first_pass"] or 0) for r in rs], mark, label=sc)
            axes[i][1].plot(xs, [r["control_overhead"] or 0 for r in rs], mark, label=sc)
            axes[i][2].plot(xs, [r["parent_changes_per_node_hour"] for r in rs], mark, label=sc)
        for ax, title in zip(axes[i], ("first pass delivered (%)", "control tx per reading", "parent changes per node-hour"), strict=True):
            ax.set_title("%d nodes: %s" % (n, title))
            ax.set_xlabel("extra loss on every link (%)")
            ax.grid(True, alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2000,5000")
    ap.add_argument("--losses", default="0,0.1,0.2")
    ap.add_argument("--scenarios", default="none,gateway,power")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=5400, help="seconds per cell")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv[1:])
    if a.quick:
        a.sizes, a.losses, a.minutes = "2000", "0,0.2", 30.0
    try:
        sizes = [int(x) for x in a.sizes.split(",")]
        losses = [float(x) for x in a.losses.split(",")]
    except ValueError:
        ap.error("--sizes and --losses are comma-separated numbers")
    scenarios = a.scenarios.split(",")
    bad = [s for s in scenarios if s not in SCENARIOS]
    if bad:
        ap.error("unknown scenario %s (known: %s)" % (", ".join(bad), ", ".join(SCENARIOS)))
    cells = [(n, loss, sc) for n in sizes for sc in scenarios for loss in losses]
    os.makedirs(OUT, exist_ok=True)
    runs = []
    with ThreadPoolExecutor(max(1, a.jobs)) as pool:
        futs = [pool.submit(cell, n, loss, sc, a.minutes, a.seed, a.timeout) for n, loss, sc in cells]
        for fu in futs:
            r = fu.result()
            runs.append(r)
            print(row(r), flush=True)
    save(runs, a.minutes, a.seed, "loss_matrix.json", plot, "loss_matrix.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
