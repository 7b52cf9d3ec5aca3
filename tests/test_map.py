"""`fleet map`: the self-contained HTML map, checked in a real headless Chromium.

The page is opened from a file:// URL; the screenshot is read back pixel by pixel: each pole's
centre has its category's official colour (fleet.aqi.LEVEL_HEX), a stale or never-heard pole is
a hollow grey ring, the number of marker blobs equals the number of placed poles, and a pole
without lat/lon is counted as not placed."""
import json
import re
import time

import browser  # tests/browser.py
import pytest
from click.testing import CliRunner

from fleet import aqi as aqimod
from fleet import fleetmap
from fleet.cli import group
from fleet.home import FleetHome

SIZE = (1000, 700)
BG = (0xF4, 0xF1, 0xEA)
LAT0, LON0 = 6.2442, -75.5812
# node -> (role, grid row, grid col, PM2.5 in 0.1 ug/m3, seconds since heard or None = never)
POLES = {
    1: ("gateway", 0, 0, 50, 5),     # ICA 1 Buena, green square
    2: ("node", 0, 1, 300, 5),       # 2 Aceptable, yellow
    3: ("node", 0, 2, 450, 5),       # 3 sensitive groups, orange
    4: ("node", 1, 0, 1000, 5),      # 4 Danina, red
    5: ("node", 1, 1, 2000, 5),      # 5 Muy danina, purple
    6: ("node", 1, 2, 4000, 5),      # 6 Peligrosa, maroon
    7: ("node", 2, 0, 50, 900),      # stale: hollow grey although its last value is green
    8: ("node", 2, 2, None, None),   # provisioned, never heard: hollow grey
}


@pytest.fixture
def home(tmp_path):
    now = int(time.time())
    h = FleetHome(str(tmp_path / "home"))
    store = h.store(create=True)
    regs = [{"node": n, "role": role, "pole": f"P-{n}", "lat": LAT0 - 0.002 * r, "lon": LON0 + 0.003 * c,
             "fw_version": "0.3.0"} for n, (role, r, c, _pm, _age) in POLES.items()]
    regs.append({"node": 9, "pole": "P-9"})  # no lat/lon: not placed
    store.register_nodes(regs)
    for n, (_role, _r, _c, pm, age) in POLES.items():
        if age is None:
            continue
        ts = now - age
        store.add_readings([(n, 0, ts, ts, pm // 2, pm, pm, 60, 240, 10, 0, 1, 1, -70)])
        store.update_state(n, ts, parent=None if n == 1 else 1, hops=1, gateway=1)
    store.close()
    return h


def make_map(home, path, *args):
    r = CliRunner().invoke(group, ["map", "--out", str(path), "--home", home.path, *args])
    assert r.exit_code == 0, r.output
    return r.output


def test_map_file_is_self_contained(home, tmp_path):
    out = tmp_path / "m.html"
    text = make_map(home, out)
    assert "map of 8 poles, 1 without lat/lon not placed" in text
    page = out.read_text()
    # nothing fetched from anywhere: no URL, no external script, style, image or font
    assert not re.search(r"https?://|src=|<link|@import|url\(", page)
    assert "Buena" in page and "made " in page and "not placed (no lat/lon): <b>1</b>" in page
    make_map(home, out, "--aqi", "epa", "--metric", "24h", "--no-links")
    page = out.read_text()
    assert "Unhealthy for Sensitive Groups" in page and "24-hour mean" in page


def test_map_bad_options(home, tmp_path):
    r = CliRunner().invoke(group, ["map", "--out", str(tmp_path / "m.html"), "--metric", "7d", "--home", home.path])
    assert r.exit_code == 2 and "7d" in r.output
    r = CliRunner().invoke(group, ["map", "--out", str(tmp_path / "no" / "m.html"), "--home", home.path])
    assert r.exit_code == 1 and "cannot write the map" in r.output and "Traceback" not in r.output


def test_map_1h_mean_from_readings(home):
    store = home.store()
    now = int(time.time())
    store.add_readings([(2, s, now - 30 * s, now, 0, 100 * s, 0, 60, 240, 10, 0, 1, 1, -70) for s in range(1, 4)])
    d = fleetmap.map_data(store, now, metric="1h")
    by = {n[0]: n for n in d["nodes"]}
    assert by[2][6] == pytest.approx((300 + 100 + 200 + 300) / 4 / 10)  # seq 0 (300) and 1..3
    assert by[8][6] is None and by[8][5] == 0  # never heard: no value for the metric
    store.close()


def _rgb(img, x, y):
    return img.getpixel((x, y))[:3]


def _close(a, b, tol=10):
    return all(abs(p - q) <= tol for p, q in zip(a, b, strict=True))


def _hex(h):
    return tuple(int(h[i:i + 2], 16) for i in (1, 3, 5))


def _blobs(img, x_min):
    """Connected groups of non-background pixels right of x_min (the legend is on the left)."""
    w, h = img.size
    px = img.load()
    seen = set()
    count = 0
    for y in range(h):
        for x in range(x_min, w):
            if (x, y) in seen or _close(px[x, y][:3], BG, 6):
                continue
            count += 1
            stack = [(x, y)]
            seen.add((x, y))
            while stack:
                cx, cy = stack.pop()
                for nx, ny in ((cx + 1, cy), (cx - 1, cy), (cx, cy + 1), (cx, cy - 1)):
                    if x_min <= nx < w and 0 <= ny < h and (nx, ny) not in seen and not _close(px[nx, ny][:3], BG, 6):
                        seen.add((nx, ny))
                        stack.append((nx, ny))
    return count


@pytest.mark.skipif(browser.chromium() is None, reason="no chromium (Debian package `chromium`; .ci/run installs it)")
def test_map_in_chromium(home, tmp_path):
    from PIL import Image

    out = tmp_path / "m.html"
    make_map(home, out, "--no-links")
    url = out.resolve().as_uri()
    dom = browser.dump_dom(url + "#probe&size=%dx%d" % SIZE, SIZE)
    m = re.search(r'<output id="probe" hidden="" data-drawn="(\d+)">([^<]*)</output>', dom)
    assert m, "the page's script did not run"
    assert int(m.group(1)) == len(POLES)
    pos = {int(k): v for k, v in json.loads(m.group(2)).items()}
    assert sorted(pos) == sorted(POLES)
    png = tmp_path / "m.png"
    browser.shoot(url + "#size=%dx%d" % SIZE, str(png), SIZE)
    img = Image.open(png).convert("RGB")
    assert img.size == SIZE
    for n, (_role, _r, _c, pm, age) in POLES.items():
        x, y = pos[n]
        if age is not None and age < 300:
            want = _hex(aqimod.LEVEL_HEX[aqimod.ica_pm25(pm)[1]])
            assert _close(_rgb(img, x, y), want), f"pole {n} at {x},{y}: {_rgb(img, x, y)} != {want}"
        else:  # hollow grey ring: background inside, grey on the ring
            assert _close(_rgb(img, x, y), BG), f"pole {n} is not hollow: {_rgb(img, x, y)}"
            ring = [_rgb(img, x + dx, y) for dx in (4, 5, 6)]
            assert any(abs(r - g) < 12 and abs(g - b) < 12 and 100 < r < 190 for r, g, b in ring), ring
    # as many marker blobs on screen as poles placed (no links drawn, the legend excluded)
    assert _blobs(img, min(x for x, _ in pos.values()) - 20) == len(POLES)


def test_export_geojson_and_csv(home, tmp_path):
    out = tmp_path / "poles.geojson"
    r = CliRunner().invoke(group, ["export", "--format", "geojson", "--out", str(out), "--home", home.path])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    feats = {f["properties"]["node"]: f for f in doc["features"]}
    assert sorted(feats) == sorted(POLES)
    assert feats[3]["geometry"]["coordinates"] == [pytest.approx(LON0 + 0.006), pytest.approx(LAT0)]
    assert feats[3]["properties"]["level"] == 3 and feats[7]["properties"]["state"] == "stale"
    assert "mac" not in out.read_text().lower()
    out = tmp_path / "day.csv"
    r = CliRunner().invoke(group, ["export", "--format", "csv", "--since", "-1h", "--out", str(out), "--home", home.path])
    assert r.exit_code == 0, r.output
    lines = out.read_text().splitlines()
    assert len(lines) == 1 + 7 and lines[0].startswith("node,")  # 7 poles heard, one reading each
    r = CliRunner().invoke(group, ["export", "--format", "xml", "--out", str(out), "--home", home.path])
    assert r.exit_code == 2


def test_plot_node(home, tmp_path):
    from PIL import Image

    store = home.store()
    now = int(time.time())
    # node 2: readings every 60 s, a 20-minute gap, one flagged high-RH reading
    rows = [(2, s, now - 3000 + 60 * s, now, 0, 100 + 10 * s, 0, 60, 240, 10, 2 if s == 5 else 0, 1, 1, -70)
            for s in range(1, 40) if not 10 <= s < 30]
    store.add_readings(rows)
    store.close()
    out = tmp_path / "n2.png"
    r = CliRunner().invoke(group, ["plot", "--node", "2", "--since", "-2h", "--out", str(out), "--home", home.path])
    assert r.exit_code == 0, r.output
    assert "20 readings of node 2" in r.output  # seq 0 and 19 of 1..39
    assert Image.open(out).size == (1000, 400)
    r = CliRunner().invoke(group, ["plot", "--node", "8", "--out", str(out), "--home", home.path])
    assert r.exit_code == 1 and "no readings" in r.output
