"""`fleet status` and `fleet readings` through the real CLI (CliRunner) on a real store (each
test on both backends: the home's SQLite file, and a PostgreSQL schema named by fleet.toml):
JSON shape and stable keys, states by last-heard age, never-heard nodes, filters and sorting,
and clear errors (no traceback) for a missing or damaged store or fleet.toml."""
import csv
import io
import json
import time

import pytest
from click.testing import CliRunner

from fleet.cli import group
from fleet.home import FleetHome
from fleet.status import NODE_KEYS, SUMMARY_KEYS, fleet_status


def reading(node, seq, ts, pm25, rh=60, gateway=1, hops=2):
    return (node, seq, ts, ts + 2, 40, pm25, 180, rh, 230, 10, 0, hops, gateway, -71)


@pytest.fixture(params=["sqlite", "postgresql"])
def home(request, tmp_path):
    """A fleet home with: gateways 1, 2; node 10 online (gw 1), 11 stale (gw 2), 12 offline,
    13 provisioned but never heard, 20 heard but never registered; default thresholds 300/1800 s.
    postgresql: its fleet.toml names a fresh PostgreSQL schema as the store (store.url)."""
    now = int(time.time())
    h = FleetHome(str(tmp_path / "home"))
    if request.param == "postgresql":
        h.write_config({"store": {"url": request.getfixturevalue("pg_url")}})
        h = FleetHome(h.path)
    store = h.store(create=True)
    store.register_nodes([
        {"node": 1, "role": "gateway", "fw_version": "0.1.0"},
        {"node": 2, "role": "gateway", "fw_version": "0.1.0"},
        {"node": 10, "fw_version": "0.1.0", "pole": "P-10"},
        {"node": 11, "fw_version": "0.1.0"},
        {"node": 12, "fw_version": "0.1.0"},
        {"node": 13, "fw_version": "0.1.0"},
    ])
    store.update_state(1, now - 5, uptime_s=9000, fw_version="0.1.0")
    store.update_state(2, now - 20, uptime_s=9000, fw_version="0.1.0")
    store.add_readings([reading(10, s, now - 600 + 60 * s, 120 + s) for s in range(10)])  # last pm25 12.9
    store.add_readings([reading(10, 0, now - 600, 120)])  # one duplicate
    store.update_state(10, now - 10, parent=1, link_etx=12, path_cost=12, uptime_s=3700, heap_free=81920,
                       heap_min=40960, backlog=0, fw_version="0.1.1", hops=1, gateway=1, radio_drops=37,
                       readings_lost=5)
    store.add_readings([reading(11, s, now - 1000 + s, 456, gateway=2, hops=3) for s in (0, 1, 2, 5)])
    store.update_state(11, now - 900, parent=2, gateway=2)
    store.add_readings([reading(12, 0, now - 7200, 1300, gateway=1)])
    store.update_state(20, now - 30, parent=10, gateway=1)
    store.add_gap(11, 3, 4, now)
    gid = store.add_gap(12, 1, 1, now)
    store.mark_gap(gid, "lost", now)
    store.count_reject("bad_tag", now, 2)
    store.close()
    return h


def run(args, home=None, env=None):
    argv = list(args) + (["--home", home.path] if home is not None else [])
    return CliRunner().invoke(group, argv, env=env)


def status_json(home, *args):
    r = run(["status", "--json", *args], home)
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_json_shape_and_stable_keys(home):
    out = status_json(home)
    assert set(out) == {"summary", "nodes"}
    assert set(out["summary"]) == set(SUMMARY_KEYS)
    for n in out["nodes"]:
        assert set(n) == set(NODE_KEYS)
    s = out["summary"]
    assert (s["nodes"], s["online"], s["stale"], s["offline"], s["never_heard"]) == (7, 4, 1, 1, 1)
    assert s["readings"] == 15 and s["duplicates"] == 1
    assert s["expected"] == 10 + 6 + 1          # seq ranges 0-9, 0-5, 0-0
    assert s["delivery_ratio"] == round(15 / 17, 4)
    assert (s["gaps"], s["gaps_lost"]) == (1, 1)
    assert s["rejects"] == 2
    assert s["firmware"] == {"0.1.0": 5, "0.1.1": 1, "unknown": 1}


def test_node_fields(home):
    nodes = {n["node"]: n for n in status_json(home)["nodes"]}
    n10 = nodes[10]
    assert n10["state"] == "online" and n10["role"] == "node" and n10["pole"] == "P-10"
    assert n10["pm25"] == 12.9 and isinstance(n10["pm25"], float)
    assert (n10["ica"], n10["ica_index"]) == ("Buena", 50)     # 12.9 -> 12 ug/m3
    assert (n10["aqi_category"], n10["aqi"]) == ("Moderate", 58)   # 51 + 49 * 3.8 / 26.3
    assert n10["firmware"] == "0.1.1"                           # reported beats registered
    assert (n10["hops"], n10["parent"], n10["link_etx"], n10["uptime_s"], n10["heap_free"]) == (1, 1, 1.2, 3700, 81920)
    assert 0 <= n10["age_s"] <= 15
    assert n10["delivered"] == 10 and n10["duplicates"] == 1 and n10["delivery_ratio"] == 1.0
    assert (n10["heap_min"], n10["radio_drops"], n10["readings_lost"]) == (40960, 37, 5)
    # not reported (firmware 1.0 status frames, or none yet): null, not 0
    assert (nodes[11]["heap_min"], nodes[11]["radio_drops"], nodes[11]["readings_lost"]) == (None, None, None)
    assert nodes[11]["state"] == "stale" and nodes[11]["gaps"] == 1
    assert nodes[12]["state"] == "offline" and nodes[12]["ica"] == "Dañina a la salud" and nodes[12]["gaps_lost"] == 1
    assert nodes[1]["role"] == "gateway" and nodes[1]["pm25"] is None and nodes[1]["ica"] is None


def test_never_heard_nodes_show_at_once(home):
    n13 = next(n for n in status_json(home)["nodes"] if n["node"] == 13)
    assert n13["state"] == "never"
    assert n13["last_heard"] is None and n13["age_s"] is None and n13["pm25"] is None
    assert n13["firmware"] == "0.1.0"  # as provisioned


def test_unregistered_but_heard_node_is_listed(home):
    n20 = next(n for n in status_json(home)["nodes"] if n["node"] == 20)
    assert n20["state"] == "online" and n20["parent"] == 10 and n20["firmware"] is None


def test_filters(home):
    assert [n["node"] for n in status_json(home, "--node", "11", "--node", "13")["nodes"]] == [11, 13]
    out = status_json(home, "--state", "stale", "--state", "never")
    assert [n["node"] for n in out["nodes"]] == [11, 13]
    assert (out["summary"]["nodes"], out["summary"]["stale"], out["summary"]["online"]) == (2, 1, 0)
    assert [n["node"] for n in status_json(home, "--gateway", "2")["nodes"]] == [11]
    assert status_json(home, "--node", "999")["nodes"] == []


def test_sorting_and_limit(home):
    assert [n["node"] for n in status_json(home)["nodes"]] == [1, 2, 10, 11, 12, 13, 20]
    by_pm = [n["node"] for n in status_json(home, "--sort", "pm25")["nodes"]]
    assert by_pm[:3] == [12, 11, 10]
    by_age = [n["node"] for n in status_json(home, "--sort", "age")["nodes"]]
    assert by_age[:3] == [13, 12, 11]  # never heard first, then the longest silent
    assert [n["node"] for n in status_json(home, "--sort", "hops", "--limit", "2")["nodes"]] == [11, 12]
    out = status_json(home, "--sort", "node", "--reverse", "--limit", "1")
    assert [n["node"] for n in out["nodes"]] == [20] and out["summary"]["nodes"] == 7


def test_thresholds_and_index_options(home):
    s = status_json(home, "--stale-after", "5000", "--offline-after", "10000")["summary"]
    assert (s["online"], s["stale"], s["offline"]) == (5, 1, 0)
    s = status_json(home, "--aqi", "epa")["summary"]
    assert s["aqi"] == "epa" and s["categories"] == {
        "Moderate": 1, "Unhealthy for Sensitive Groups": 1, "Very Unhealthy": 1}
    r = run(["status", "--stale-after", "100", "--offline-after", "50"], home)
    assert r.exit_code == 1 and "must be below" in r.output and isinstance(r.exception, (SystemExit, type(None)))  # a clean exit, not a crash


def test_humidity_correction_changes_pm25(home):
    n10 = next(n for n in status_json(home, "--rh-correction", "epa2021")["nodes"] if n["node"] == 10)
    assert n10["pm25_raw"] == 12.9
    assert n10["pm25"] == round(0.524 * 12.9 - 0.0862 * 60 + 5.75, 1)


def test_table_output(home):
    r = run(["status"], home)
    assert r.exit_code == 0, r.output
    first = r.output.splitlines()[0]
    assert "7 nodes: 4 online, 1 stale, 1 offline, 1 never heard" in first
    assert "delivery 88.24 %" in first and "gaps 1 pending" in first
    assert "Buena" in r.output and "never" in r.output
    head = next(line for line in r.output.splitlines() if "heap min" in line)
    assert "rx drops" in head and "lost" in head
    row = next(line for line in r.output.splitlines() if line.split()[:1] == ["10"])
    assert "80K" in row and "40K" in row and " 37 " in row + " " and " 5 " in row + " "
    r = run(["status", "--aqi", "epa", "--node", "12"], home)
    assert "Very Unhealthy" in r.output and "Buena" not in r.output


def test_watch_prints_one_json_object_per_refresh(home):
    r = run(["status", "--watch", "--json", "--interval", "0.1", "--count", "2"], home)
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 2 and all(json.loads(x)["summary"]["nodes"] == 7 for x in lines)
    r = run(["status", "--watch", "--interval", "0.1", "--count", "2"], home)
    assert r.exit_code == 0 and "7 nodes" in r.output


def test_home_from_environment(home, tmp_path):
    r = run(["status", "--json"], env={"REDMESH_HOME": home.path})
    assert r.exit_code == 0 and json.loads(r.output)["summary"]["nodes"] == 7
    # --home wins over the environment
    r = CliRunner().invoke(group, ["status", "--home", str(tmp_path / "empty")], env={"REDMESH_HOME": home.path})
    assert r.exit_code == 1 and "no fleet store" in r.output


def test_missing_store_is_a_clear_error(tmp_path):
    r = run(["status"], FleetHome(str(tmp_path / "nowhere")))
    assert r.exit_code == 1
    assert "no fleet store" in r.output and "fleet collect" in r.output and isinstance(r.exception, (SystemExit, type(None)))  # a clean exit, not a crash
    assert not (tmp_path / "nowhere").exists()  # status creates nothing


def test_corrupt_store_is_a_clear_error(tmp_path):
    h = FleetHome(str(tmp_path / "home")).ensure()
    with open(h.store_path, "wb") as f:
        f.write(b"\x00garbage" * 512)
    r = run(["status", "--json"], h)
    assert r.exit_code == 1 and "not a usable Red Mesh store" in r.output and isinstance(r.exception, (SystemExit, type(None)))  # a clean exit, not a crash
    assert r.exception is None or isinstance(r.exception, SystemExit)


@pytest.mark.parametrize("toml,expect", [
    ("[status\nstale_after_s = 1", "not valid TOML"),
    ("[status]\nstale_after_s = \"soon\"\n", "'status.stale_after_s' must be an integer, got str"),
    ("[status]\nstale_afterr_s = 10\n", "unknown key 'status.stale_afterr_s'"),
    ("[network]\nid = -1\n", "'network.id' must be between 0 and 4294967295"),
    ("[status]\naqi = \"uk\"\n", "'status.aqi' must be one of 'ica', 'epa'"),
    ("status = 3\n", "must be a [status] table"),
])
def test_bad_toml_is_a_clear_error(home, toml, expect):
    with open(home.config_path, "w") as f:
        f.write(toml)
    r = run(["status"], home)
    assert r.exit_code == 1, r.output
    assert expect in r.output and home.config_path in r.output and isinstance(r.exception, (SystemExit, type(None)))  # a clean exit, not a crash


def test_toml_settings_apply_and_options_override_them(home):
    with open(home.config_path, "a") as f:  # keeps the store's URL
        f.write("[status]\naqi = \"epa\"\nstale_after_s = 5000\noffline_after_s = 9000\n")
    s = status_json(home)["summary"]
    assert s["aqi"] == "epa" and s["stale_after_s"] == 5000 and s["stale"] == 1
    assert status_json(home, "--aqi", "ica")["summary"]["aqi"] == "ica"


def test_service_directly_is_plain_data(home):
    store = home.store()
    try:
        out = fleet_status(store, int(time.time()), nodes=[10])
    finally:
        store.close()
    assert json.loads(json.dumps(out)) == out


def test_rows_and_dicts_are_one_view(home):
    """The table reads positional rows (as_rows: no dict per node); the JSON reads dicts. Both
    come from one builder: the same values under NODE_KEYS, the same table from either, and
    colour that changes no cell's text or alignment."""
    import re

    from fleet.cli.status import render
    store = home.store()
    try:
        now = int(time.time())
        for sort, reverse in (("node", False), ("node", True), ("pm25", False), ("age", True)):
            kw = {"sort": sort, "reverse": reverse, "revoked": [12], "epoch": 1}
            dicts = fleet_status(store, now, **kw)
            rows = fleet_status(store, now, as_rows=True, **kw)
            assert rows["summary"] == dicts["summary"]
            assert {len(r) for r in rows["rows"]} == {len(NODE_KEYS) + 2}  # then expected, gaps recovered
            assert [dict(zip(NODE_KEYS, r[:-2], strict=True)) for r in rows["rows"]] == dicts["nodes"]
            for aqi in ("ica", "epa"):
                plain = render(rows, aqi)
                assert render(dicts, aqi) == plain
                coloured = render(rows, aqi, colour=True)
                assert coloured != plain and re.sub(r"\x1b\[[0-9;]*m", "", coloured) == plain
    finally:
        store.close()
    lines = plain.splitlines()
    assert len(lines) == 2 + 7 and "REVOKED" in next(ln for ln in lines if ln.split()[:1] == ["12"])


# ------------------------------------------------------------------------ fleet readings

def test_readings_csv(home):
    r = run(["readings", "--node", "10", "--csv"], home)
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [int(x["seq"]) for x in rows] == list(range(10))
    assert rows[0]["pm25_ugm3"] == "12.0" and rows[0]["temp_c"] == "23.0" and rows[0]["time"].endswith("Z")


def test_readings_json_and_since(home):
    # reading times are fixture-time - 600 + 60 * seq: the bounds sit 30 s inside a reading
    # interval, so a slow fixture (a busy box, a PostgreSQL store) does not move them across one
    r = run(["readings", "--node", "10", "--json", "--since", "-210s"], home)
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [x["seq"] for x in rows] == [7, 8, 9]
    assert rows[-1]["pm25_ugm3"] == 12.9
    r = run(["readings", "--node", "10", "--json", "--since", str(int(time.time()) - 150), "--limit", "1"], home)
    assert [x["seq"] for x in json.loads(r.stdout)] == [8]


def test_readings_table_and_unknown_node(home):
    r = run(["readings", "--node", "11"], home)
    assert r.exit_code == 0 and "pm25_ugm3" in r.stdout and "45.6" in r.stdout
    r = run(["readings", "--node", "999", "--json"], home)  # unknown: a failure, not an empty export
    assert r.exit_code == 1 and r.stdout == ""
    assert "never heard" in r.stderr
    r = run(["readings", "--node", "13", "--json"], home)  # registered, never heard: empty, exit 0
    assert r.exit_code == 0 and json.loads(r.stdout) == [] and "no readings for node 13" in r.stderr


def test_readings_bad_time_is_a_usage_error(home):
    r = run(["readings", "--node", "10", "--since", "last tuesday"], home)
    assert r.exit_code == 2 and "-1h" in r.output and isinstance(r.exception, (SystemExit, type(None)))  # a clean exit, not a crash


def test_an_unexpected_error_is_one_line_not_a_traceback(tmp_path):
    import subprocess
    import sys

    # a bug: something no command expects raises inside `fleet status`
    code = ("import sys; from fleet.home import FleetHome\n"
            "def boom(*a, **k): raise RuntimeError('simulated bug')\n"
            "FleetHome.resolve = staticmethod(boom)\n"
            "from fleet.cli import main; sys.exit(main(['status', '--home', sys.argv[1]]))\n")
    home = tmp_path / "h"
    home.mkdir()
    p = subprocess.run([sys.executable, "-c", code, str(home)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr and p.stderr.count("\n") == 1
    assert p.stderr.startswith("Error: unexpected") and "REDMESH_DEBUG=1" in p.stderr
