"""Map figures: `fleet map` build time and file size at 5,000 and 100,000 poles.

    .venv/bin/python bench/map_bench.py [--nodes 5000,100000]

`populate()` builds a synthetic district (also the README screenshot's and the tests' larger
fleet): poles on a street grid around Medellin, gateways every 25 poles, each node's parent
the previous pole on its street, PM2.5 spread across the categories, a few stale/offline nodes.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fleet import fleetmap  # noqa: E402
from fleet.store import SQLiteStore  # noqa: E402

LAT0, LON0 = 6.2442, -75.5812  # Medellin
PM_CYCLE = (55, 150, 300, 420, 600, 900, 1800, 2600)  # 0.1 ug/m3: every ICA and EPA category


def populate(store, n, now, readings=1):
    """Register `n` poles (node ids 1..n) and give each `readings` readings and a state."""
    side = max(1, int(n ** 0.5))
    regs = []
    for i in range(1, n + 1):
        row, col = divmod(i - 1, side)
        regs.append({"node": i, "role": "gateway" if i % 25 == 1 else "node", "pole": f"P-{row:03d}-{col:03d}",
                     "lat": LAT0 + row * 0.0004, "lon": LON0 + col * 0.0004, "fw_version": "0.3.0"})
    store.register_nodes(regs)
    rows, states = [], []
    for i in range(1, n + 1):
        pm = PM_CYCLE[i % len(PM_CYCLE)]
        age = 4000 if i % 97 == 0 else 900 if i % 53 == 0 else 10
        for s in range(readings):
            ts = now - age - 60 * (readings - 1 - s)
            rows.append((i, s, ts, ts, pm // 2, pm, pm + 50, 60, 240, 10, 0, 1, 1, -70))
        col = (i - 1) % side
        parent = None if i % 25 == 1 else i - 1 if col else i - side if i > side else None
        states.append((i, now - age, {"parent": parent, "hops": (i - 1) % 25, "gateway": 1 + 25 * ((i - 1) // 25)}))
        if len(rows) >= 20000:
            store.add_readings(rows)
            rows = []
    if rows:
        store.add_readings(rows)
    store.update_states(states)


def run(sizes):
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for n in sizes:
            store = SQLiteStore(os.path.join(d, f"s{n}.db"))
            now = int(time.time())
            populate(store, n, now)
            t0 = time.perf_counter()
            page = fleetmap.render_html(fleetmap.map_data(store, now))
            fleetmap.write_map(os.path.join(d, f"m{n}.html"), page)
            dt = time.perf_counter() - t0
            store.close()
            out[n] = {"build_s": round(dt, 3), "size_kb": len(page.encode()) // 1024}
            print(f"map {n:>7} poles: built in {dt:.2f} s, {len(page.encode()) / 1e6:.2f} MB "
                  f"(budget at 5,000: 2 s, 3 MB)")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", default="5000,100000")
    a = ap.parse_args()
    run([int(x) for x in a.nodes.split(",")])
