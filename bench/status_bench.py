"""Benchmark: `fleet status` on a store holding 5,000 and 100,000 nodes.

Fills a fresh fleet home per size (registrations, one status per node, readings ingested in
batches of 10,000 like the collector does, some gaps), then times:
  - ingest: add_readings rows/s (INSERT OR IGNORE + node_state upserts, one transaction per batch)
  - service: fleet.status.fleet_status() (store query + per-node views + summary), as dicts
    (what --json prints) and as rows (what the table reads)
  - json: the service dict as JSON (orjson, as `fleet status --json`)
  - table: rendering of the table text (what `fleet status` prints)
  - cli: wall time of `fleet status --json` and `fleet status` as a subprocess (start-up included)
On each store backend asked for (--stores; postgresql: a throwaway cluster from Debian's
packages, default durability, tests/pg.py). Prints the figures; asserts nothing (speed is not a test).

    .venv/bin/python bench/status_bench.py [--sizes 5000,100000] [--readings-per-node 20] [--stores sqlite,postgresql]
"""
import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(1, os.path.join(ROOT, "tests"))  # tests/pg.py

from fleet.cli.status import _dumps, render  # noqa: E402
from fleet.home import FleetHome  # noqa: E402
from fleet.status import fleet_status  # noqa: E402

BATCH = 10_000


def fill(home, n_nodes, per_node, now):
    rnd = random.Random(n_nodes)
    store = home.store(create=True)
    gateways = max(1, n_nodes // 50)
    store.register_nodes(
        {"node": i, "role": "gateway" if i <= gateways else "node", "fw_version": "0.1.0", "pole": f"P-{i:06d}",
         "lat": 6.255 + rnd.random() * 0.025, "lon": -75.6 + rnd.random() * 0.035, "registered_at": now - 86400}
        for i in range(1, n_nodes + 1)
    )
    # readings: round r carries seq r of every node; nodes heard at various ages
    heard_age = {i: rnd.choice((5, 60, 200, 900, 4000)) for i in range(1, n_nodes + 1)}
    silent = set(rnd.sample(range(1, n_nodes + 1), n_nodes // 100))  # 1 % never heard
    rows = []
    for r in range(per_node):
        for i in range(1, n_nodes + 1):
            if i in silent or (r == per_node // 2 and i % 97 == 0):  # a few lost readings -> gaps
                continue
            ts = now - heard_age[i] - (per_node - r) * 60
            rows.append((i, r, ts, ts + 3, 80, rnd.randint(30, 900), 200, rnd.randint(40, 95), 240, 10, 0,
                         1 + i % 8, 1 + i % gateways, -60 - i % 30))
    t0 = time.perf_counter()
    dup = 0
    for k in range(0, len(rows), BATCH):
        dup += store.add_readings(rows[k:k + BATCH])[1]
    # a QoS-1 redelivery of one batch
    dup += store.add_readings(rows[:BATCH])[1]
    ingest_s = time.perf_counter() - t0
    n_rows = len(rows) + BATCH
    store.update_states(
        (i, now - heard_age[i], {"parent": max(1, i - 1), "link_etx": 10 + i % 20, "path_cost": 10 + i % 80,
                                 "uptime_s": 3600 + i, "heap_free": 70000 + i % 9000, "backlog": i % 3,
                                 "fw_version": "0.1.1" if i % 4 else "0.1.0", "boot_count": 1 + i % 5})
        for i in range(1, n_nodes + 1) if i not in silent
    )
    with store.transaction():
        for i in range(97, n_nodes + 1, 97):
            if i not in silent:
                store.add_gap(i, per_node // 2, per_node // 2, now)
    store.close()
    return n_rows, dup, ingest_s


def best_of(fn, n=3):
    times = []
    out = None
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times), out


def cli_time(home, args, n=3):
    env = dict(os.environ, REDMESH_HOME=home.path)
    fleet = os.path.join(os.path.dirname(sys.executable), "fleet")
    cmd = [fleet] if os.path.exists(fleet) else [sys.executable, "-m", "fleet.cli"]
    times = []
    size = 0
    for _ in range(n):
        t = time.perf_counter()
        store = ["--store", home.store_url] if home.store_url.startswith("postgres") else []
        p = subprocess.run(cmd + ["status"] + args + store, env=env, capture_output=True, timeout=300)
        times.append(time.perf_counter() - t)
        if p.returncode != 0:
            raise SystemExit(f"fleet status failed: {p.stderr.decode()[-500:]}")
        size = len(p.stdout)
    return min(times), size


def bench_size(n, per_node, store_url=None):
    """Fill a fresh home with `n` nodes (on the store `store_url`, default the home's SQLite
    file) and print the figures."""
    tmp = tempfile.mkdtemp(prefix="redmesh-bench-")
    try:
        home = FleetHome(tmp)
        if store_url:
            home = home.with_overrides({"store.url": store_url})
        now = int(time.time())
        rows, dup, ingest_s = fill(home, n, per_node, now)
        with home.store() as s:
            info = s.info()
        print(f"\n== {info['backend']}: {n:,} nodes, {rows:,} reading rows offered ({dup:,} duplicates), "
              f"store {info['size_bytes'] / 1e6:.0f} MB")
        print(f"ingest (batches of {BATCH:,}, dedup + node_state):  {rows / ingest_s:,.0f} rows/s")
        store = home.store()
        best, med, result = best_of(lambda: fleet_status(store, now))
        s = result["summary"]
        print(f"service fleet_status():          best {best * 1e3:7.1f} ms  median {med * 1e3:7.1f} ms  "
              f"({s['online']} online, {s['stale']} stale, {s['offline']} offline, {s['never_heard']} never; "
              f"delivery {s['delivery_ratio']}, gaps {s['gaps']})")
        best, _, text = best_of(lambda: _dumps(result))
        print(f"JSON (orjson, as --json):        best {best * 1e3:7.1f} ms  ({len(text) / 1e6:.1f} MB)")
        best, _, rows = best_of(lambda: fleet_status(store, now, as_rows=True))
        print(f"service as rows (the table's):   best {best * 1e3:7.1f} ms")
        best, _, _ = best_of(lambda: render(rows, "ica", colour=True))
        print(f"table render (text + ANSI):      best {best * 1e3:7.1f} ms")
        best, _, _ = best_of(lambda: fleet_status(store, now, states=["offline"], sort="pm25", limit=50))
        print(f"service, --state offline --sort pm25 --limit 50: best {best * 1e3:7.1f} ms")
        store.close()
        t, size = cli_time(home, ["--json"])
        print(f"`fleet status --json` (process):  best {t * 1e3:7.1f} ms  ({size / 1e6:.1f} MB out)")
        t, size = cli_time(home, [])
        print(f"`fleet status` table (process):   best {t * 1e3:7.1f} ms")
        t, size = cli_time(home, ["--sort", "age", "--limit", "100"])
        print(f"`fleet status --sort age --limit 100` (process): best {t * 1e3:7.1f} ms")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="5000,100000")
    ap.add_argument("--readings-per-node", type=int, default=None,
                    help="default: 20 for <= 10k nodes, 5 above")
    ap.add_argument("--stores", default="sqlite")
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, sqlite {__import__('sqlite3').sqlite_version}, {os.cpu_count()} CPUs")
    cluster = None
    try:
        for backend in args.stores.split(","):
            for n in (int(x) for x in args.sizes.split(",")):
                url = None
                if backend == "postgresql":
                    if cluster is None:
                        from pg import PgCluster

                        cluster = PgCluster(durable=True).start()
                    url = cluster.new_schema()[1]
                bench_size(n, args.readings_per_node or (20 if n <= 10_000 else 5), url)
    finally:
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
