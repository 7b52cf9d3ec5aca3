"""A synthetic fleet in a store, for the map's tests, benchmarks and the README screenshot:
`n` poles along a grid of streets around Medellin (6.2442 N, 75.5812 W), one gateway per street
(the street's first pole), each node's parent the previous pole on its street, PM2.5 rising
towards the valley's centre, a few nodes stale or offline. Deterministic for a given `seed`."""
import math
import random

CENTRE = (6.2442, -75.5812)
SPACING_DEG = 0.0009  # ~100 m between poles


def build(store, n, now_s, readings_per_node=2, every_s=600, seed=1, street_len=None):
    """Register `n` nodes and store their readings and state; return the list of node dicts
    (node, role, lat, lon, parent, pm25 latest in 0.1 ug/m3, heard)."""
    rnd = random.Random(seed)
    cols = street_len or max(4, int(math.sqrt(n)))
    out = []
    for i in range(n):
        row, col = divmod(i, cols)
        lat = CENTRE[0] + (row - n / cols / 2) * SPACING_DEG + rnd.uniform(-1, 1) * SPACING_DEG * 0.1
        lon = CENTRE[1] + (col - cols / 2) * SPACING_DEG + rnd.uniform(-1, 1) * SPACING_DEG * 0.1
        node = 1000 + i
        gw = col == 0
        d = math.hypot(row - n / cols / 2, col - cols / 2) / max(1.0, math.sqrt(n) / 2)
        pm = max(20, int(700 * (1 - d) ** 2 + rnd.uniform(0, 60)))  # 0.1 ug/m3
        heard = now_s - (30 if rnd.random() > 0.05 else rnd.choice((900, 7200)))
        out.append({"node": node, "role": "gateway" if gw else "node", "lat": lat, "lon": lon,
                    "parent": None if gw else node - 1, "pm25": pm, "heard": heard, "hops": col})
    store.register_nodes([{"node": o["node"], "role": o["role"], "pole": f"P-{o['node']}", "lat": o["lat"],
                           "lon": o["lon"], "fw_version": "1.2.0"} for o in out])
    rows = []
    for o in out:
        for k in range(readings_per_node):
            seq = k + 1
            ts = o["heard"] - (readings_per_node - 1 - k) * every_s
            pm = o["pm25"] if k == readings_per_node - 1 else max(0, o["pm25"] + rnd.randint(-50, 50))
            rows.append((o["node"], seq, ts, ts + 1, pm // 2, pm, pm + 40, 60, 245, 10, 0, o["hops"],
                         out[(o["node"] - 1000) // cols * cols]["node"], -70))
    for i in range(0, len(rows), 20000):
        store.add_readings(rows[i:i + 20000])
    store.update_states([(o["node"], o["heard"], {"parent": o["parent"], "hops": o["hops"], "fw_version": "1.2.0"})
                         for o in out])
    return out
