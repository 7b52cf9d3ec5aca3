"""The offline fleet map (fleet map, fleet/web/map.py), checked in a real headless Chromium:
the pixel at each known node's position has its category's official colour, the number of
markers drawn equals the number of nodes, a stale node is a hollow grey ring, a gateway is a
square."""
import math
import re

import pytest
from browser import dump_dom, screenshot
from cli_run import assert_clean, run_fleet

from fleet import aqi as aqimod
from fleet.home import FleetHome
from fleet.web import map as mapmod

NOW = 1_780_000_000
SIZE = (800, 600)
# node, role, lat, lon, pm25 (0.1 ug/m3), seconds since heard
NODES = [
    (1, "gateway", 6.200, -75.600, 50, 10),    # ICA Buena (green)
    (2, "node", 6.210, -75.580, 300, 10),      # Aceptable (yellow)
    (3, "node", 6.220, -75.590, 1000, 10),     # Danina a la salud (red)
    (4, "node", 6.200, -75.580, 1000, 900),    # stale: hollow grey
    (5, "node", 6.220, -75.600, 450, 10),      # grupos sensibles (orange)
]


def _fill(store, nodes=NODES):
    store.register_nodes([{"node": n, "role": r, "pole": f"P{n}", "lat": la, "lon": lo, "fw_version": "1.2.0"}
                          for n, r, la, lo, _, _ in nodes])
    store.add_readings([(n, 1, NOW - age, NOW - age, pm, pm, pm, 50, 250, 10, 0, 1, 1, -60)
                        for n, _, _, _, pm, age in nodes])
    store.update_states([(n, NOW - age, {"parent": None if r == "gateway" else 1, "hops": 0 if r == "gateway" else 1})
                         for n, r, _, _, _, age in nodes])


def _project(nodes, size):
    """The page's projection (fleet/web/map.py docstring), in Python."""
    w, h = size[0] - mapmod.PANEL_PX, size[1]
    lats, lons = [n[2] for n in nodes], [n[3] for n in nodes]
    kx = math.cos((min(lats) + max(lats)) / 2 * math.pi / 180)
    pad = mapmod.PAD_PX
    aw, ah = w - 2 * pad, h - 2 * pad
    dx, dy = (max(lons) - min(lons)) * kx, max(lats) - min(lats)
    s = min(aw / dx, ah / dy)
    ox, oy = pad + (aw - dx * s) / 2, pad + (ah - dy * s) / 2
    return {n[0]: (mapmod.PANEL_PX + ox + (n[3] - min(lons)) * kx * s, oy + (max(lats) - n[2]) * s) for n in nodes}


def _rgb(hexcol):
    return tuple(int(hexcol[i:i + 2], 16) for i in (1, 3, 5))


def _near(a, b, tol=30):
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


@pytest.fixture
def map_file(tmp_path):
    home = FleetHome.resolve(str(tmp_path / "home"))
    store = home.store(create=True)
    _fill(store)
    data = mapmod.map_data(store, NOW, aqi="ica", links=False)
    store.close()
    path = tmp_path / "map.html"
    mapmod.write_map(str(path), mapmod.render_html(data))
    return path


def test_map_pixels_markers_and_stale_in_chromium(map_file, tmp_path):
    img = screenshot(map_file.as_uri(), str(tmp_path / "shot.png"), str(tmp_path / "profile"), SIZE)
    pos = _project(NODES, SIZE)
    bg = _rgb("#f4f4f0")
    for n, _, _, _, pm, age in NODES:
        x, y = (round(v) for v in pos[n])
        got = img.getpixel((x, y))
        if age > 300:  # stale: hollow (the centre is the background) with a grey ring
            assert _near(got, bg), (n, got)
            ring = [img.getpixel((x + dx, y)) for dx in (5, 6, 7)] + [img.getpixel((x - dx, y)) for dx in (5, 6, 7)]
            assert any(_near(p, _rgb(mapmod.HOLLOW), 40) for p in ring), (n, ring)
        else:
            want = _rgb(aqimod.LEVEL_HEX[aqimod.ica_pm25(pm)[1]])
            assert _near(got, want), (n, got, want)
    # the gateway is a square: its corner (outside a disc of the same size) is filled
    x, y = (round(v) for v in pos[1])
    r = mapmod.RADIUS_PX
    assert _near(img.getpixel((x + r - 1, y + r - 1)), _rgb(aqimod.LEVEL_HEX[1])), img.getpixel((x + r - 1, y + r - 1))
    # and a node is a disc: the same corner is background
    x, y = (round(v) for v in pos[3])
    assert _near(img.getpixel((x + r - 1, y + r - 1)), bg), img.getpixel((x + r - 1, y + r - 1))


def test_marker_count_equals_nodes_in_chromium(map_file, tmp_path):
    dom = dump_dom(map_file.as_uri(), str(tmp_path / "profile"), SIZE)
    m = re.search(r'data-markers="(\d+)"', dom)
    assert m, dom[:500]
    assert int(m.group(1)) == len(NODES)


def test_map_means_and_no_network(tmp_path):
    home = FleetHome.resolve(str(tmp_path / "home"))
    store = home.store(create=True)
    _fill(store)
    # node 2: an old high reading (2 h ago) and a recent low one: the 1 h mean sees only the low one
    store.add_readings([(2, 0, NOW - 7200, NOW - 7200, 0, 2000, 0, 50, 250, 10, 0, 1, 1, -60)])
    rows = {r[0]: r for r in mapmod.map_data(store, NOW, metric="1h")["nodes"]}
    assert rows[2][4] == 30.0
    rows = {r[0]: r for r in mapmod.map_data(store, NOW, metric="24h")["nodes"]}
    assert rows[2][4] == 115.0 and rows[2][5] == aqimod.ica_pm25(1150)[1]
    store.close()
    r = run_fleet(["map", "--home", str(tmp_path / "home"), "--out", str(tmp_path / "m.html"), "--aqi", "epa"])
    assert_clean(r, (0,))
    html = (tmp_path / "m.html").read_text()
    assert not re.search(r"https?://|src=|href=|@import", html)
    r = run_fleet(["map", "--home", str(tmp_path / "home"), "--out", str(tmp_path / "m.html"), "--metric", "2h"])
    assert_clean(r, (2,))
    r = run_fleet(["map", "--home", str(tmp_path / "home"), "--out", str(tmp_path / "nodir" / "m.html")])
    assert_clean(r, (1,))


def test_5000_nodes_under_3_mb(tmp_path):
    from fleet.store import SQLiteStore
    from fleet.web import synthetic

    store = SQLiteStore(str(tmp_path / "s.db"))
    synthetic.build(store, 5000, NOW, readings_per_node=1)
    html = mapmod.render_html(mapmod.map_data(store, NOW))
    store.close()
    assert len(html.encode()) <= 3 * 1024 * 1024
    assert html.count('"P-') == 5000
