"""Benchmark (issue 11): one node's 30-day series from a store holding 10 million readings.

Fills a fresh store per backend with `--readings` readings: `--nodes` nodes, one reading every
300 s each, ending now (bulk SQL, not the collector: the fill is not what is measured), with the
hourly sums built from them as the collector keeps them. Then times, for one node, best of 5:
  - `fleet readings --every 1h` over 30 days (the hourly sums: 720 rows)
  - `fleet readings --every 1d` over 30 days
  - the raw readings over 30 days (8,640 rows)
  - each as the `fleet readings` command (a process, start-up included) too.
PostgreSQL: a throwaway cluster from Debian's packages (tests/pg.py), default durability; its
readings are partitioned by month. Prints the figures; asserts nothing.

    .venv/bin/python bench/series_bench.py [--readings 10000000] [--stores sqlite,postgresql]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(1, os.path.join(ROOT, "tests"))  # tests/pg.py

from fleet.home import FleetHome  # noqa: E402

EVERY_S = 300


def fill(store, n_nodes, per_node, end):
    """Bulk-load per_node readings for each of n_nodes nodes (every EVERY_S s up to `end`), and
    their hourly sums, with set-based SQL on this backend."""
    start = end - per_node * EVERY_S
    store.register_nodes([{"node": n} for n in range(1, n_nodes + 1)])
    pg = type(store).__name__ == "PostgresStore"
    if pg:
        with store.transaction():
            store._partitions_for(range(start, end + 1, 86400 * 27))
        nodes = f"generate_series(1, {n_nodes}) AS n"
        seqs = f"generate_series(0, {per_node - 1}) AS s"
        gen = store.db.execute("SELECT gen FROM key_gens WHERE sealed_at IS NULL").fetchone()[0]  # the current keys
        store.db.execute(f"INSERT INTO reading_keys_g{gen} SELECT n, s, {start} + s * {EVERY_S} FROM {nodes}, {seqs}")
        store.db.execute(f"INSERT INTO readings SELECT n, s, {start} + s * {EVERY_S}, {start} + s * {EVERY_S} + 2, "
                         f"50, 100 + (n * 7 + s) % 300, 150, 60, 210, 30, 0, 2, 0, -70 FROM {nodes}, {seqs}")
    else:
        store.db.execute("BEGIN")
        store.db.execute(f"WITH RECURSIVE s(v) AS (SELECT 0 UNION ALL SELECT v + 1 FROM s WHERE v < {per_node - 1}), "
                         f"n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < {n_nodes}) "
                         f"INSERT INTO readings (node, seq, ts, rx_ts, pm1, pm25, pm10, rh, temp, n, flags, hops, "
                         f"gateway, rssi) SELECT n.v, s.v, {start} + s.v * {EVERY_S}, {start} + s.v * {EVERY_S} + 2, "
                         f"50, 100 + (n.v * 7 + s.v) % 300, 150, 60, 210, 30, 0, 2, 0, -70 FROM n, s")
        store.db.execute("COMMIT")
    store.db.execute("INSERT INTO hourly SELECT node, ts / 3600, count(*), sum(pm1), sum(pm25), sum(pm10) "
                     "FROM readings GROUP BY node, ts / 3600")
    if pg:
        store.db.execute("ANALYZE")


def best(fn, n=5):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = fn()
        out.append(time.perf_counter() - t)
    return min(out), r


def run(backend, args, cluster):
    d = tempfile.mkdtemp(prefix="series-bench-")
    try:
        home = FleetHome(d)
        if backend == "postgresql":
            home = home.with_overrides({"store.url": cluster.new_schema()[1]})
        per_node = args.readings // args.nodes
        now = int(time.time())
        store = home.store(create=True)
        t = time.perf_counter()
        fill(store, args.nodes, per_node, now)
        fill_s = time.perf_counter() - t
        (total,), = store.query("SELECT count(*) FROM readings")
        size = store.info()["size_bytes"]
        print(f"\n== {backend}: {total:,} readings ({args.nodes:,} nodes x {per_node:,}, one per {EVERY_S} s), "
              f"store {size / 1e9:.2f} GB, filled in {fill_s:.0f} s")
        node, since = args.nodes // 2, now - 30 * 86400
        for label, fn in (("1h means, 30 days", lambda: store.means(node, "1h", since=since)),
                          ("1d means, 30 days", lambda: store.means(node, "1d", since=since)),
                          ("raw readings, 30 days", lambda: store.readings(node, since=since))):
            dt, rows = best(fn)
            print(f"  store  {label:24s} {dt * 1000:8.1f} ms  ({len(rows)} rows)")
        store.close()
        for every in ("1h", "1d", "raw"):
            fleet = os.path.join(os.path.dirname(sys.executable), "fleet")
            argv = [fleet, "readings", "--node", str(node), "--every", every, "--since",
                    str(since), "--csv", "--home", home.path]
            if backend == "postgresql":
                argv += ["--store", home.store_url]
            dt, p = best(lambda a=argv: subprocess.run(a, capture_output=True, text=True, cwd=ROOT, timeout=120), 3)
            lines = p.stdout.count("\n") - 1 if p.returncode == 0 else f"failed: {p.stderr[-200:]}"
            print(f"  `fleet readings --every {every:3s} --since 30 days` {dt * 1000:8.1f} ms  ({lines} rows)")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--readings", type=int, default=10_000_000)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--stores", default="sqlite,postgresql")
    args = ap.parse_args()
    stores = args.stores.split(",")
    cluster = None
    if "postgresql" in stores:
        from pg import PgCluster, PgUnavailable

        try:
            cluster = PgCluster(durable=True).start()
        except (PgUnavailable, OSError) as e:
            print(f"PostgreSQL unavailable ({e}): its case is skipped")
            stores.remove("postgresql")
    try:
        for backend in stores:
            run(backend, args, cluster)
    finally:
        if cluster is not None:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
