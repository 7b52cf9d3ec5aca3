"""`fleet serve` over real HTTP: a real uvicorn process on a free 127.0.0.1 port (started and
stopped by PID), httpx as the client, hypothesis on the query parameters, a writer adding
readings while the service answers, and the served page in headless Chromium."""
import asyncio
import csv
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from browser import dump_dom, screenshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_collector_mqtt import FAST_ARGS, Gateway
from test_map import NODES, NOW, SIZE, _fill, _near, _project, _rgb  # noqa: F401

from fleet.collector_mqtt import start_collector_process
from fleet.home import FleetHome
from fleet.sim.broker import mosquitto_path, start_broker_process, start_mosquitto

SECRET_MAC = "aa:bb:cc:dd:ee:ff"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home_dir = tmp_path_factory.mktemp("serve") / "home"
    home = FleetHome.resolve(str(home_dir))
    store = home.store(create=True)
    _fill(store)
    store.register_node(1, role="gateway", mac=SECRET_MAC, pole="P1", lat=6.2, lon=-75.6)
    # 30 days of hourly readings for node 2 (a series to page through)
    store.add_readings([(2, 100 + i, NOW - 30 * 86400 + i * 3600, None, 10, 100 + i % 50, 150, 60, 250, 10,
                         4 if i % 7 == 0 else 0, 1, 1, -60) for i in range(30 * 24)])
    store.close()
    port = _free_port()
    p = subprocess.Popen([sys.executable, "-c", "from fleet.cli import main; main()", "serve", "--home",
                          str(home_dir), "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            if p.poll() is not None:
                raise AssertionError(f"fleet serve exited: {p.stderr.read().decode()[-1000:]}")
            try:
                httpx.get(base + "/api/summary", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise AssertionError("fleet serve did not answer within 30 s") from None
                time.sleep(0.1)
        with httpx.Client(base_url=base, timeout=10) as c:
            yield c, home_dir, base
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)


def test_geojson_summary_docs_and_read_only(served):
    c, _, _ = served
    r = c.get("/api/poles.geojson")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/geo+json")
    feats = r.json()["features"]
    assert len(feats) == len(NODES)
    by = {f["properties"]["node"]: f for f in feats}
    assert by[3]["geometry"]["coordinates"] == [-75.59, 6.22]
    assert by[3]["properties"]["level"] == 4 and by[4]["properties"]["state"] != "online"
    s = c.get("/api/summary").json()
    assert s["nodes"] == len(NODES)
    assert c.get("/openapi.json").status_code == 200 and c.get("/docs").status_code == 200
    for path in ("/api/poles.geojson", "/api/nodes/2/readings", "/api/summary"):
        assert c.post(path).status_code == 405
        assert c.delete(path).status_code == 405
    for path in ("/", "/api/poles.geojson", "/api/summary", "/api/map.json", "/api/nodes/1/readings"):
        body = c.get(path).text.lower()
        assert SECRET_MAC not in body and "aabbccddeeff" not in body and "mac" not in re.findall(r'"(\w+)":', body)


def test_readings_raw_means_csv_and_pages(served):
    c, _, _ = served
    since = NOW - 30 * 86400
    r = c.get("/api/nodes/2/readings", params={"since": since, "until": NOW, "every": "1h", "limit": 500})
    assert r.status_code == 200, r.text
    j = r.json()
    assert len(j["rows"]) == 500 and j["next_page"] == 2
    r2 = c.get("/api/nodes/2/readings", params={"since": since, "until": NOW, "every": "1h", "limit": 500, "page": 2})
    assert len(r2.json()["rows"]) == 30 * 24 + 1 - 500 and r2.json()["next_page"] is None
    r = c.get("/api/nodes/2/readings", params={"since": since, "until": NOW, "every": "1d", "format": "csv"})
    rows = list(csv.reader(io.StringIO(r.text)))
    days = {(since + i * 3600) // 86400 for i in range(30 * 24)} | {(NOW - 10) // 86400}
    assert rows[0][0] == "node" and len(rows) == 1 + len(days)
    assert [int(row[2]) for row in rows[1:]] == sorted(d * 86400 for d in days)
    r = c.get("/api/nodes/2/readings", params={"since": since, "until": since + 7200})
    assert [row[1] for row in r.json()["rows"]] == [100, 101]


@pytest.mark.parametrize("params,code", [
    ({"every": "5m"}, 422), ({"limit": 100000}, 422), ({"limit": 0}, 422), ({"page": 0}, 422),
    ({"since": "yesterday"}, 400), ({"since": "200", "until": "100"}, 400), ({"format": "xml"}, 422),
])
def test_bad_parameters_get_4xx_with_a_message(served, params, code):
    c, _, _ = served
    r = c.get("/api/nodes/2/readings", params=params)
    assert r.status_code == code, r.text
    assert r.json()["detail"]
    assert c.get("/api/nodes/999/readings").status_code == 404
    assert c.get("/api/nodes/abc/readings").status_code == 422


_text = st.one_of(st.none(), st.integers(-10**12, 10**13).map(str), st.text(max_size=12),
                  st.sampled_from(["-1h", "-2d", "2026-01-01T00:00:00Z", "nan", "1e9"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(since=_text, until=_text, every=st.one_of(st.none(), st.sampled_from(["raw", "1h", "1d", "", "x"])),
       fmt=st.one_of(st.none(), st.sampled_from(["json", "csv", "JSON"])),
       page=st.one_of(st.none(), st.integers(-5, 2_000_000)), limit=st.one_of(st.none(), st.integers(-5, 20000)))
def test_any_query_gets_an_answer_not_a_crash(served, since, until, every, fmt, page, limit):
    c, _, _ = served
    params = {k: v for k, v in dict(since=since, until=until, every=every, format=fmt, page=page,
                                     limit=limit).items() if v is not None}
    r = c.get("/api/nodes/2/readings", params=params)
    assert r.status_code in (200, 400, 422), (params, r.status_code, r.text[:300])
    if r.status_code == 200 and fmt in (None, "json"):
        assert len(r.json()["rows"]) <= min(limit or 1000, 10000)
    elif r.status_code != 200:
        assert r.json()["detail"]


@pytest.mark.timeout(120)
async def test_keeps_answering_while_a_collector_writes(served, tmp_path):
    """A real `fleet collect` process stores frames a gateway publishes through a real broker
    (mosquitto, else the amqtt broker process) while the uvicorn process answers: every answer
    is 200 and well formed, and the readings the API shows grow to all the gateway sent."""
    c, home_dir, _ = served
    home = FleetHome.resolve(str(home_dir))
    if not home.keys().exists():
        home.keys().init()
    if mosquitto_path() is not None:
        os.makedirs(tmp_path / "mosquitto")
        broker = start_mosquitto(data_dir=str(tmp_path / "mosquitto"))
    else:
        broker = start_broker_process(log_path=str(tmp_path / "amqtt.log"))
    cp = gw = None
    writers = [3, 5]  # registered, positioned; node 2's 30-day series is left alone

    def check(before):
        r = c.get("/api/summary")
        assert r.status_code == 200, r.text
        total = r.json()["readings"]
        g = c.get("/api/poles.geojson")
        assert g.status_code == 200 and len(g.json()["features"]) == len(NODES)
        r = c.get("/api/nodes/5/readings", params={"since": 1_000_000_000, "until": 3_000_000_000, "limit": 10000})
        assert r.status_code == 200 and r.json()["columns"][:2] == ["node", "seq"], r.text
        assert all(len(row) == len(r.json()["columns"]) for row in r.json()["rows"])
        assert total >= before  # never goes back
        return total

    try:
        cp = await asyncio.to_thread(start_collector_process, str(home_dir), f"mqtt://127.0.0.1:{broker.port}",
                                     log_path=str(tmp_path / "collector.log"), extra_args=FAST_ARGS)
        gw = Gateway(home.keys(), broker.port).start()
        for n in writers:
            gw.next_seq[n] = 2  # seq 1 is the fixture's reading: no gap to repair
        await asyncio.wait_for(gw.connected.wait(), 20)
        start = await asyncio.to_thread(check, 0)
        seen = [start]
        for _ in range(20):
            await gw.publish(gw.produce_envelope(n_frames=25, nodes=writers))
            await asyncio.sleep(0.25)  # the collector flushes every 0.5 s: answers come between its writes
            seen.append(await asyncio.to_thread(check, seen[-1]))
        sent = sum(gw.next_seq[n] - 2 for n in writers)
        deadline = time.monotonic() + 30
        while seen[-1] < start + sent:
            assert time.monotonic() < deadline, f"API shows {seen[-1] - start} of {sent} readings; {cp.log_tail()}"
            await asyncio.sleep(0.2)
            seen.append(await asyncio.to_thread(check, seen[-1]))
    finally:
        if gw is not None:
            await gw.stop()
        if cp is not None:
            await asyncio.to_thread(cp.stop)
        broker.close()
    assert seen[-1] == start + sent > start
    print(f"{len(seen)} rounds of answers, all 200; readings seen through the API: {sorted(set(seen))}")


def test_served_page_draws_every_node_in_chromium(served, tmp_path):
    _, _, base = served
    dom = dump_dom(base + "/", str(tmp_path / "profile"))
    m = re.search(r'data-markers="(\d+)"', dom)
    assert m and int(m.group(1)) == len(NODES)
    assert "/api/map.json" in dom


def test_served_page_screenshot_shows_each_marker_where_it_belongs(served, tmp_path):
    """The page at / photographed: each node's marker at its projected position. The fixture's
    readings are from tests/test_map.py's fixed NOW, months before the server's clock, so every
    node is offline there: drawn hollow (a grey ring; tests/test_map.py checks the category
    colours of a map made at NOW), the gateway a hollow square. The page draws the parent
    links, which end at the markers' centres, so the centres are not checked here."""
    from fleet.web import map as mapmod

    _, _, base = served
    img = screenshot(base + "/", str(tmp_path / "shot.png"), str(tmp_path / "profile"), SIZE)
    pos = _project(NODES, SIZE)
    from fleet import aqi as aqimod

    bg, grey = _rgb("#f4f4f0"), _rgb(mapmod.HOLLOW)
    colours = [_rgb(h) for h in aqimod.LEVEL_HEX.values()]
    assert _near(img.getpixel((SIZE[0] - 4, SIZE[1] - 4)), bg)  # the map's background, away from the poles
    r = mapmod.RADIUS_PX
    for n, role, _, _, _, _ in NODES:
        x, y = (round(v) for v in pos[n])
        assert not any(_near(img.getpixel((x + d, y + d)), c, 40) for d in (0, 1) for c in colours), (n, "coloured")
        if role == "gateway":  # the square's outline runs through its corners
            edge = [img.getpixel((x + d, y + d)) for d in (r - 1, r, r + 1)]
        else:
            edge = [img.getpixel((x + d, y)) for d in (r - 1, r, r + 1)] + [img.getpixel((x - d, y)) for d in (r - 1, r, r + 1)]
        assert any(_near(q, grey, 40) for q in edge), (n, edge)


def test_export_csv_and_geojson(tmp_path):
    import json

    from cli_run import assert_clean, run_fleet

    home = FleetHome.resolve(str(tmp_path / "home"))
    store = home.store(create=True)
    _fill(store)
    store.close()
    h = ["--home", str(tmp_path / "home")]
    r = run_fleet(["export", "--format", "csv", "--since", str(NOW - 3600), "--until", str(NOW), "--out",
                   str(tmp_path / "d.csv"), *h])
    assert_clean(r, (0,))
    rows = list(csv.reader(open(tmp_path / "d.csv")))
    assert rows[0][0] == "node" and sorted(int(x[0]) for x in rows[1:]) == [n[0] for n in NODES]
    r = run_fleet(["export", "--format", "csv", "--since", str(NOW - 5), "--until", str(NOW), *h])
    assert_clean(r, (0,))
    assert len(r.stdout.strip().splitlines()) == 1  # every reading is older than 5 s: the header only
    r = run_fleet(["export", "--format", "geojson", "--until", str(NOW), *h])
    assert_clean(r, (0,))
    assert len(json.loads(r.stdout)["features"]) == len(NODES)
    r = run_fleet(["export", "--format", "geojson", "--since", str(NOW), "--until", str(NOW - 1), *h])
    assert_clean(r, (2,))
