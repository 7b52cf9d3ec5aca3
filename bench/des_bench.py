"""Benchmark: the discrete-event simulator (`fleet sim des`) on the district at growing sizes.

    .venv/bin/python bench/des_bench.py [--sizes 1000,2000,5000] [--minutes 60] [--quick] [--seed 1]

Each size runs in its own process (`fleet sim des --json`, one gateway per 1,000 nodes), so its
wall time and peak memory are its own. Writes bench/out/des.json ({"runs": [results...]}) and
bench/out/des_scale.png (delivery ratio, and latency p50/p99, against network size), and prints
one line per size. Figures are for this machine (2 shared cores): times vary by tens of percent
with the load of other processes. Asserts nothing.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out")


def run_size(n, minutes, seed, timeout_s, extra=()):
    """Run `fleet sim des` for n nodes in a child process (extra: more options); return its
    results dict."""
    cmd = [sys.executable, "-c", "from fleet.cli import main; main()", "sim", "des", "--nodes", str(n),
           "--topology", "district", "--minutes", str(minutes), "--seed", str(seed), "--json", *extra]
    t0 = time.time()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    if p.returncode != 0:
        raise RuntimeError(f"{n} nodes: exit {p.returncode}: {p.stderr.strip()[-2000:]}")
    r = json.loads(p.stdout)
    r["process_s"] = round(time.time() - t0, 1)
    return r


def plot(runs, path):
    """Delivery (first pass, after repair) and latency (p50, p99) against network size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(runs, key=lambda r: r["nodes"])
    xs = [r["nodes"] for r in runs]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(xs, [100 * (r["delivery_first_pass"] or 0) for r in runs], "o-", label="first pass")
    a1.plot(xs, [100 * (r["delivery_after_repair"] or 0) for r in runs], "s--", label="after repair")
    a1.set_xscale("log")
    a1.set_xlabel("nodes (district, 1 gateway per 1,000)")
    a1.set_ylabel("readings delivered (%)")
    a1.set_title("Delivery ratio")
    lo = min([100 * (r["delivery_first_pass"] or 0) for r in runs] + [99.0])
    a1.set_ylim(max(0.0, lo - 0.5), 100.1)
    a1.grid(True, which="both", alpha=0.3)
    a1.legend()
    a2.plot(xs, [r["latency_p50_s"] for r in runs], "o-", label="p50")
    a2.plot(xs, [r["latency_p99_s"] for r in runs], "s--", label="p99")
    a2.set_xscale("log")
    a2.set_xlabel("nodes")
    a2.set_ylabel("origination to gateway (s)")
    a2.set_title("End-to-end latency")
    a2.grid(True, which="both", alpha=0.3)
    a2.legend()
    mins = runs[0]["minutes"] if runs else 0
    fig.suptitle("fleet sim des: %g virtual minutes, telemetry every %s s" % (
        mins, runs[0]["report_interval_s"] if runs else "-"))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,2000,5000", help="comma-separated node counts (add 10000 if you wait)")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="sizes 1000 and 2000 only")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per size")
    args = ap.parse_args(argv[1:])
    sizes = [1000, 2000] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    os.makedirs(OUT, exist_ok=True)
    runs = []
    for n in sizes:
        r = run_size(n, args.minutes, args.seed, args.timeout)
        runs.append(r)
        print("%6d nodes x %g min: wall %6.1f s (build %.1f s), %7.0f events/s, peak %6.0f MB | delivery %.4f / %.4f"
              " | latency p50 %.3f s p99 %.3f s | hops %.2f | control %.2f tx/reading | parent changes %.3f /node-h"
              % (n, args.minutes, r["wall_s"], r["build_s"], r["events_per_s"] or 0, r["peak_rss_mb"],
                 r["delivery_first_pass"] or 0, r["delivery_after_repair"] or 0, r["latency_p50_s"] or 0,
                 r["latency_p99_s"] or 0, r["hops_mean"] or 0, r["control_overhead"] or 0,
                 r["parent_changes_per_node_hour"]), flush=True)
    save(runs, args.minutes, args.seed, "des.json", plot, "des_scale.png")
    return 0


def save(runs, minutes, seed, json_name, plot_fn, png_name):
    """Write bench/out/<json_name> ({"minutes", "seed", "runs"}) and plot_fn's bench/out/<png_name>."""
    with open(os.path.join(OUT, json_name), "w") as f:
        json.dump({"minutes": minutes, "seed": seed, "runs": runs}, f, indent=1, sort_keys=True)
    plot_fn(runs, os.path.join(OUT, png_name))
    print("wrote bench/out/%s and bench/out/%s" % (json_name, png_name))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
