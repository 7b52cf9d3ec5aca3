"""Benchmark: a retention prune while readings are ingested (PostgreSQL, a throwaway cluster with
default durability; or SQLite).

Fills a store with `--readings` readings of `--nodes` nodes, one every 300 s each, over the two
months before last month (bulk SQL), their keys in key generation 0 begun then; then prunes the
two months (PostgreSQL: seal generation 1, drop the month partitions, drop generation 0 whole) on one connection
while another writes batches of 5,000 new readings back to back. Prints how long the prune took,
the batches written meanwhile and the slowest batch before and during it. Asserts nothing.

    .venv/bin/python bench/prune_bench.py [--readings 2000000] [--nodes 100000] [--store postgresql|sqlite]
"""
import argparse
import os
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(1, os.path.join(ROOT, "tests"))  # tests/pg.py

from fleet.store import open_url  # noqa: E402
from fleet.store.postgres import month_start  # noqa: E402

EVERY_S = 300


def fill(store, n_nodes, per_node, start):
    pg = type(store).__name__ == "PostgresStore"
    sel = (f"SELECT n, s, {start} + s * {EVERY_S}, {start} + s * {EVERY_S} + 2, 50, 100, 150, 60, 210, 30, 0, 2, 0, "
           f"-70 FROM generate_series(1, {n_nodes}) AS n, generate_series(0, {per_node - 1}) AS s")
    if pg:
        with store.transaction():
            store._partitions_for(range(start, start + per_node * EVERY_S, 86400 * 27))
        store.db.execute(f"INSERT INTO reading_keys_g0 SELECT n, s, {start} + s * {EVERY_S} FROM "
                         f"generate_series(1, {n_nodes}) AS n, generate_series(0, {per_node - 1}) AS s")
        store.db.execute(f"INSERT INTO readings {sel}")
        store.db.execute(f"INSERT INTO node_state (node, last_seq, min_seq) SELECT n, {per_node - 1}, 0 "
                         f"FROM generate_series(1, {n_nodes}) AS n")
        store.db.execute("UPDATE key_gens SET started_at = %s" % start)
        store.db.execute("ANALYZE")
    else:
        store.db.execute("BEGIN")
        store.db.execute(f"WITH RECURSIVE s(v) AS (SELECT 0 UNION ALL SELECT v + 1 FROM s WHERE v < {per_node - 1}), "
                         f"n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < {n_nodes}) "
                         f"INSERT INTO readings SELECT n.v, s.v, {start} + s.v * {EVERY_S}, 0, 50, 100, 150, 60, 210, "
                         f"30, 0, 2, 0, -70 FROM n, s")
        store.db.execute("COMMIT")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--readings", type=int, default=2_000_000)
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--store", default="postgresql")
    a = ap.parse_args()
    cluster = None
    if a.store == "postgresql":
        from pg import PgCluster

        cluster = PgCluster(durable=True).start()
        url = cluster.url()
    else:
        url = "sqlite://" + os.path.join(tempfile.mkdtemp(prefix="prune-bench-"), "fleet.db")
    try:
        now = int(time.time())
        this = month_start(now)
        two_ago = month_start(month_start(this - 1) - 1)
        per_node = max(1, a.readings // a.nodes)
        with open_url(url) as s:
            t = time.monotonic()
            fill(s, a.nodes, per_node, two_ago)
            print(f"filled {a.nodes * per_node:,} readings of {a.nodes:,} nodes in {time.monotonic() - t:.1f} s")
        before = month_start(this - 1)  # the two months before last ended by then
        done, lat, during = threading.Event(), [], []
        seq = [10_000_000]

        def write():
            with open_url(url) as w:
                while not done.is_set():
                    rows = [(n, seq[0], now, now, 50, 100, 150, 60, 210, 30, 0, 2, 0, -70) for n in range(1, 5001)]
                    seq[0] += 1
                    t0 = time.monotonic()
                    w.add_readings(rows)
                    lat.append((t0, time.monotonic() - t0))

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        time.sleep(3)
        with open_url(url) as p:
            if a.store == "postgresql":  # generation 0 sealed at the start of last month, as a prune then would
                p.prune(two_ago, now_s=month_start(this - 1))
            steps = []
            t0 = time.monotonic()
            horizon, dropped = p.prune(before, now_s=now, on_step=lambda what: steps.append((what, time.monotonic())))
            t1 = time.monotonic()
        time.sleep(1)
        done.set()
        writer.join(60)
        pre = [d for at, d in lat if at < t0]
        during = [d for at, d in lat if t0 <= at < t1]
        print(f"prune: {dropped:,} readings dropped in {t1 - t0:.2f} s, {len(steps)} steps "
              f"({', '.join(f'{w} at {at - t0:.2f} s' for w, at in steps)}); horizon {horizon}")
        print(f"batches of 5,000: before {len(pre)} (slowest {max(pre):.3f} s), during the prune {len(during)} "
              f"(slowest {max(during) if during else 0:.3f} s)")
    finally:
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
