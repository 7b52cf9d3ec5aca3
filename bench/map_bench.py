"""Map and open-data figures (issue 12): `fleet map` build time and file size at 5,000 and
100,000 nodes (fleet.web.synthetic fleets in a temporary SQLite store), and the API's p50/p99
for the GeoJSON and a 30-day hourly series at 5,000 nodes (in-process ASGI client: the app's own
time, no network). Run: .venv/bin/python bench/map_bench.py [--quick]"""
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fleet.store import SQLiteStore  # noqa: E402
from fleet.web import synthetic  # noqa: E402
from fleet.web.map import map_data, render_html  # noqa: E402


def _pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def map_figures(n, tmp):
    store = SQLiteStore(os.path.join(tmp, f"s{n}.db"))
    now = int(time.time())
    synthetic.build(store, n, now, readings_per_node=1)
    t = time.perf_counter()
    html = render_html(map_data(store, now))
    build_s = time.perf_counter() - t
    store.close()
    return {"nodes": n, "build_s": round(build_s, 3), "size_mb": round(len(html.encode()) / 1e6, 2)}


def api_figures(tmp, reps=40):
    from fleet.web.app import create_app

    path = os.path.join(tmp, "api.db")
    store = SQLiteStore(path)
    now = int(time.time())
    synthetic.build(store, 5000, now, readings_per_node=1)
    # 30 days at one reading per 10 minutes for the series node
    store.add_readings([(1001, 10 + i, now - 30 * 86400 + i * 600, None, 10, 100 + i % 90, 150, 60, 250, 10, 0,
                         1, 1000, -60) for i in range(30 * 144)])
    store.close()
    app = create_app(lambda: SQLiteStore(path))
    out = {}
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        for name, url in (("geojson", "/api/poles.geojson"),
                          ("series_30d_1h", f"/api/nodes/1001/readings?since={now - 30 * 86400}&until={now}&every=1h")):
            ts = []
            for _ in range(reps):
                t = time.perf_counter()
                r = c.get(url)
                ts.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
            out[name] = {"p50_ms": round(1000 * _pct(ts, 50), 1), "p99_ms": round(1000 * _pct(ts, 99), 1)}
    return out


def main():
    quick = "--quick" in sys.argv
    with tempfile.TemporaryDirectory() as tmp:
        res = {"map": [map_figures(n, tmp) for n in ((5000,) if quick else (5000, 100000))],
               "api_5000_nodes": api_figures(tmp, reps=10 if quick else 40)}
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
