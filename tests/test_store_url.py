"""The store behind one interface: URL selection (store.url, --store), the store's own error
types (no sqlite3 or psycopg error reaches a caller), `fleet store info|migrate` on both
backends, no SQLite or psycopg outside its backend, and no password in any message."""
import json
import os
import pathlib
import re
import sqlite3
import subprocess
import sys
import threading

import pytest
from click.testing import CliRunner
from old_stores import sqlite_schema1

from fleet.cli import group
from fleet.home import FleetHome
from fleet.store import SCHEMA_VERSION, SQLiteStore, StoreBusy, StoreError, mask_url, open_url, parse_url

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_parse_url_forms(tmp_path):
    assert parse_url("sqlite:///var/x.db") == ("sqlite", "/var/x.db")
    assert parse_url("sqlite:////var/x.db") == ("sqlite", "/var/x.db")
    assert parse_url("sqlite://x.db", str(tmp_path)) == ("sqlite", str(tmp_path / "x.db"))
    assert parse_url("postgresql://u@h/db")[0] == "postgresql"
    for bad in ("", "mysql://h/db", "sqlite://", "sqlite:///x.db?mode=ro", "/plain/path"):
        with pytest.raises(StoreError):
            parse_url(bad)


def test_an_unreachable_postgresql_store_is_one_line_without_the_password():
    with pytest.raises(StoreError, match="cannot open the store") as e:
        open_url("postgresql://fleet:s3cret-Pw@127.0.0.1:1/db")
    assert "s3cret-Pw" not in str(e.value) and "fleet:***@127.0.0.1:1" in str(e.value)
    assert not _is_psycopg(e.value) and e.value.__cause__ is None and e.value.__suppress_context__
    assert mask_url("postgresql://u:p@h/db?password=q&sslmode=require") == \
        "postgresql://u:***@h/db?password=***&sslmode=require"
    with pytest.raises(StoreError, match="not a valid PostgreSQL URL"):
        parse_url("postgresql://u:pw@h:notaport/db")
    for cmd in (["status"], ["store", "info"], ["readings", "--node", "1"]):
        r = CliRunner().invoke(group, cmd + ["--home", "/nonexistent/h", "--store",
                                             "postgresql://fleet:s3cret-Pw@127.0.0.1:1/db"])
        assert r.exit_code == 1 and "cannot open the store" in r.output, (cmd, r.output)
        assert "s3cret-Pw" not in r.output and "Traceback" not in r.output


def _is_psycopg(e):
    return type(e).__module__.startswith("psycopg")


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/s.db"
    return request.getfixturevalue("pg_url")


def test_store_url_from_config_and_option(tmp_path):
    other = tmp_path / "elsewhere" / "fleet.db"
    home = FleetHome(str(tmp_path / "home")).with_overrides({"store.url": f"sqlite://{other}"})
    s = home.store(create=True)
    s.register_node(7)
    s.close()
    assert other.exists() and not os.path.exists(home.store_path)
    r = CliRunner().invoke(group, ["store", "info", "--json", "--home", str(tmp_path / "home"),
                                   "--store", f"sqlite://{other}"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["backend"] == "sqlite" and info["rows"]["nodes"] == 1 and info["schema_version"] == SCHEMA_VERSION
    assert info["url"] == f"sqlite://{other}" and info["size_bytes"] > 0
    # without --store the home's own (missing) store is meant: exit 1, one line
    r = CliRunner().invoke(group, ["store", "info", "--home", str(tmp_path / "home")])
    assert r.exit_code == 1 and "no fleet store" in r.output


def test_migrate_reports_versions(tmp_path):
    path = tmp_path / "old.db"
    SQLiteStore(str(path)).close()
    sqlite_schema1(path)
    run = CliRunner().invoke
    r = run(group, ["store", "migrate", "--home", str(tmp_path / "h"), "--store", f"sqlite://{path}"])
    assert r.exit_code == 0 and f"from version 1 to {SCHEMA_VERSION}" in r.output, r.output
    r = run(group, ["store", "migrate", "--home", str(tmp_path / "h"), "--store", f"sqlite://{path}"])
    assert r.exit_code == 0 and "up to date" in r.output, r.output


_HOLD_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_method_raises_the_stores_own_error(tmp_path):
    path = str(tmp_path / "s.db")
    s = SQLiteStore(path)
    s.register_node(1)
    s.db.execute("PRAGMA busy_timeout = 50")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreBusy, match="busy") as e:  # a write method
            s.register_node(2)
        assert not isinstance(e.value, sqlite3.Error)
    finally:
        holder.stdin.close()
        holder.wait(10)
    s.close()
    with pytest.raises(StoreError):  # a generator, failing while iterated
        list(s.iter_readings(1))
    with pytest.raises(StoreError):  # a read method
        s.node_ids()


def test_no_sqlite_outside_the_sqlite_backend():
    leaks = []
    store_pkg = ROOT / "fleet" / "store"
    for p in sorted((ROOT / "fleet").rglob("*.py")):
        text = p.read_text(encoding="utf-8")
        pats = []
        if p != store_pkg / "sqlite.py":
            pats += [r"\bimport sqlite3\b", r"\bsqlite3\."]
        if p != store_pkg / "postgres.py":
            pats += [r"\bimport psycopg", r"\bfrom psycopg", r"\bpsycopg\."]
        if p.parent != store_pkg:
            pats += [r"\bstore\.db\b", r"\.db\.execute\b"]
        for pat in pats:
            if re.search(pat, text):
                leaks.append(f"{p.relative_to(ROOT)}: {pat}")
    assert not leaks, leaks


def test_a_late_status_never_overwrites_a_newer_one(backend_url):
    with open_url(backend_url) as s:
        s.update_state(5, 100, status_seq=7, uptime_s=700, parent=1)
        s.update_state(5, 110, status_seq=6, uptime_s=600, parent=2)  # late: delivered after 7
        st = s.node_state(5)
        assert (st["status_seq"], st["uptime_s"], st["parent"], st["status_at"]) == (7, 700, 1, 100)
        assert st["last_heard"] == 110  # it was still heard
        s.update_state(5, 120, status_seq=8, uptime_s=800, parent=3)
        st = s.node_state(5)
        assert (st["status_seq"], st["uptime_s"], st["parent"], st["status_at"]) == (8, 800, 3, 120)


def _r(seq, ts, pm25):
    return (3, seq, ts, ts + 1, 50, pm25, 80, 60, 210, 1, 0, 1, 9, -60)


def test_means_kept_as_readings_arrive_late_and_resent_included(tmp_path, backend_url):
    h0 = 1_800_000_000 // 86400 * 86400  # a UTC midnight
    home = FleetHome(str(tmp_path / "home")).with_overrides({"store.url": backend_url})
    s = home.store(create=True)
    s.add_readings([_r(0, h0 + 10, 100), _r(2, h0 + 3600 + 5, 300)])
    s.add_readings([_r(1, h0 + 20, 200), _r(0, h0 + 10, 999)])  # a repaired gap, and a duplicate
    assert [(m["start"], m["n"], m["pm25"]) for m in s.means(3, "1h")] == [(h0, 2, 150.0), (h0 + 3600, 1, 300.0)]
    assert [(m["start"], m["n"], m["pm25"]) for m in s.means(3, "1d")] == [(h0, 3, 200.0)]
    assert [m["start"] for m in s.means(3, "1h", since=h0 + 1)] == [h0 + 3600]
    s.close()
    r = CliRunner().invoke(group, ["readings", "--node", "3", "--every", "1h", "--json", "--home", home.path,
                                   "--store", backend_url])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [(x["readings"], x["pm25_ugm3"], x["pm1_ugm3"]) for x in rows] == [(2, 15.0, 5.0), (1, 30.0, 5.0)]
    r = CliRunner().invoke(group, ["readings", "--node", "3", "--every", "1d", "--csv", "--home", home.path,
                                   "--store", backend_url])
    assert r.exit_code == 0 and r.output.splitlines()[1].endswith(",3,5.0,20.0,8.0"), r.output


def test_migration_to_hourly_means_fills_them_from_stored_readings(tmp_path):
    path = str(tmp_path / "s.db")
    with SQLiteStore(path) as s:
        s.add_readings([_r(0, 7200, 100), _r(1, 7300, 300)])
    db = sqlite3.connect(path)  # a schema-3 store: readings, no hourly sums
    db.execute("DROP TABLE hourly")
    db.execute("ALTER TABLE node_state DROP COLUMN epoch")
    db.execute("DROP TABLE repair_nodes")  # schema 6 on
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()
    with SQLiteStore(path) as s:
        assert [(m["start"], m["n"], m["pm25"]) for m in s.means(3, "1h")] == [(7200, 2, 200.0)]


def test_status_shows_1h_and_24h_means_marked_under_75_percent(tmp_path, backend_url):
    from fleet.status import fleet_status

    now = 1_800_000_000 // 3600 * 3600 + 600  # 10 min into an hour
    h = now // 3600
    with open_url(backend_url) as s:
        # node 3: every 5 min for the 24 complete hours (full coverage): 12.0 ug/m3, last hour 30.0
        rows = [_r(i, (h - 24) * 3600 + i * 300, 300 if i >= 23 * 12 else 120) for i in range(24 * 12)]
        rows += [_r(1000, now - 60, 999)]  # the current hour: not in either mean
        # node 4: 17 of 24 hours (70.8 %): marked
        rows += [(4, i, (h - 17) * 3600 + i * 300, None, 0, 400, 0, 50, 200, 1, 0, 1, 9, -60) for i in range(17 * 12)]
        s.add_readings(rows)
        result = fleet_status(s, now)
        got = {v["node"]: v for v in result["nodes"]}
    from fleet.cli.status import render

    table = render(result, "ica")
    assert " 40.0* " in table and " 12.8 " in table, table
    n3, n4 = got[3], got[4]
    assert (n3["pm25_1h"], n3["coverage_1h"], n3["coverage_24h"], n3["low_coverage_24h"]) == (30.0, 1.0, 1.0, False)
    assert n3["pm25_24h"] == round((23 * 12 * 120 + 12 * 300) / 288 / 10, 1) and n3["ica_24h"]
    assert (n4["pm25_24h"], n4["coverage_24h"], n4["low_coverage_24h"]) == (40.0, 0.708, True)
    assert n4["ica_24h"] and n4["aqi_category_24h"]
    home = FleetHome(str(tmp_path / "home"))
    r = CliRunner().invoke(group, ["status", "--json", "--home", home.path, "--store", backend_url])
    assert r.exit_code == 0, r.output
    assert {"pm25_24h", "coverage_24h", "low_coverage_24h", "ica_24h"} <= set(json.loads(r.output)["nodes"][0])


# ------------------------------------------------------------------------------ PostgreSQL


def test_postgresql_info_and_migrate_from_the_base_schema(tmp_path, pg_url, pg_cluster):
    """A PostgreSQL store keeps its versions in redmesh_schema; a version-3 store (no hourly
    sums) is migrated to 4 by `fleet store migrate`, hourly sums filled from its readings."""
    import psycopg

    with open_url(pg_url) as s:
        assert [v for v, _at, _d in s.migrations()] == list(range(3, SCHEMA_VERSION + 1))
        s.add_readings([_r(0, 7200, 100), _r(1, 7300, 300)])
    with psycopg.connect(pg_url, autocommit=True) as c:  # make it the version-3 store
        c.execute("DROP TABLE hourly")
        c.execute("DELETE FROM redmesh_schema WHERE version >= 4")
        c.execute("ALTER TABLE node_state DROP COLUMN epoch")
        c.execute("DROP TABLE journal")
        c.execute("DROP TABLE repair_nodes")
        c.execute("CREATE TABLE r3 AS SELECT * FROM readings")  # unpartitioned, keyed (node, seq)
        c.execute("DROP TABLE readings, reading_keys_g0, store_meta, key_gens, sealed_seqs")
        c.execute("ALTER TABLE r3 RENAME TO readings")
        c.execute("ALTER TABLE readings ADD PRIMARY KEY (node, seq)")
    run = CliRunner().invoke
    home = ["--home", str(tmp_path / "h"), "--store", pg_url]
    r = run(group, ["store", "migrate"] + home)
    assert r.exit_code == 0 and f"from version 3 to {SCHEMA_VERSION}" in r.output, r.output
    r = run(group, ["store", "migrate"] + home)
    assert r.exit_code == 0 and "up to date" in r.output, r.output
    r = run(group, ["store", "info", "--json"] + home)
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert (info["backend"], info["schema_version"], info["rows"]["readings"], info["rows"]["hourly"]) == \
        ("postgresql", SCHEMA_VERSION, 2, 1)
    assert info["size_bytes"] > 0
    with open_url(pg_url) as s:
        assert [(m["start"], m["n"], m["pm25"]) for m in s.means(3, "1h")] == [(7200, 2, 200.0)]
    # a newer schema is refused; a schema holding something else's tables too
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("INSERT INTO redmesh_schema VALUES (99, 0, 'from the future')")
    with pytest.raises(StoreError, match="newer"):
        open_url(pg_url)
    name, other = pg_cluster.new_schema()
    try:
        with psycopg.connect(other, autocommit=True) as c:
            c.execute("CREATE TABLE invoices (id INTEGER)")
        with pytest.raises(StoreError, match="something else"):
            open_url(other)
    finally:
        pg_cluster.drop_schema(name)


def test_postgresql_errors_are_the_stores_own_and_a_lost_connection_is_reopened(pg_url):
    import psycopg

    s = open_url(pg_url)
    s.register_node(1)
    with pytest.raises(StoreError) as e:
        s.query("SELECT no_such_column FROM nodes")
    assert not _is_psycopg(e.value) and "no_such_column" in str(e.value)
    # the server ends the session (as a restart would): the next call reconnects
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                  "WHERE application_name = 'redmesh-fleet' AND pid <> pg_backend_pid()")
    with pytest.raises(StoreError):
        s.node_ids()  # this call finds the connection dead
    assert s.node_ids() == {1}
    s.close()


def test_postgresql_two_writers_store_each_reading_once(pg_url):
    """Two collectors' batches overlapping in (node, seq), written at once: every reading is
    stored once, counted once in delivered, node_state and hourly agree (no deadlock)."""
    batches = [[_r4(node, seq) for node in range(1, 21) for seq in range(start, start + 60)]
               for start in (0, 30)]
    with open_url(pg_url) as s:
        s.register_nodes([{"node": n} for n in range(1, 21)])
    results, errors = [], []

    def write(rows):
        try:
            with open_url(pg_url) as w:
                for _ in range(3):  # each batch delivered three times (QoS-1 redelivery)
                    results.append(w.add_readings(rows[::-1]))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sum(stored for stored, _ in results) == 20 * 90
    assert sum(dups for _, dups in results) == 6 * 20 * 60 - 20 * 90
    with open_url(pg_url) as s:
        assert s.query("SELECT count(*), count(DISTINCT (node, seq)) FROM readings")[0] == (1800, 1800)
        st = s.node_state(7)
        assert (st["delivered"], st["min_seq"], st["last_seq"]) == (90, 0, 89)
        assert s.query("SELECT sum(n) FROM hourly")[0][0] == 1800


def _r4(node, seq):
    return (node, seq, 1_000_000 + seq * 60, 1_000_000 + seq * 60 + 2, 50, 100, 150, 50, 215, 10, 0, 1, 1, -70)


def test_postgresql_pooled_stores_share_connections(pg_url):
    """What `fleet serve` opens per request: a store on a connection of the process's pool."""
    pids = set()
    for _ in range(3):
        with open_url(pg_url, pooled=True) as s:
            s.register_node(5)
            pids.add(s.query("SELECT pg_backend_pid()")[0][0])
            assert s.node_ids() == {5}
    assert len(pids) < 3  # connections given back and taken again (the pool may open a second one
    # while its first is still connecting)


def test_retention_drops_old_raw_readings_keeps_means_and_refuses_them_later(tmp_path, backend_url):
    """Issue 11 item 4: raw readings older than the retention go (PostgreSQL: whole month
    partitions dropped), hourly and daily means stay for ever, and a late resend of a pruned
    reading is not stored again (counted beyond_retention) - (node, seq) stays once."""
    jan, feb, mar = 1_704_067_200, 1_706_745_600, 1_709_251_200  # 2024-01-01, -02-01, -03-01 UTC
    home = FleetHome(str(tmp_path / "home")).with_overrides({"store.url": backend_url})
    s = home.store(create=True)
    try:
        s.add_readings([_r(0, jan + 100, 100), _r(1, jan + 200, 300), _r(2, feb + 100, 200), _r(3, mar + 100, 400),
                        _r(4, 0, 500)])  # seq 4: a node without a clock yet (time 0)
        assert s.add_readings([_r(1, jan + 7000, 999)]) == (0, 1)  # a resend re-stamped: still a duplicate
        if backend_url.startswith("postgresql"):
            parts = {n for (n,) in s.query("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                           "WHERE i.inhparent = 'readings'::regclass")}
            assert {"readings_p202401", "readings_p202402", "readings_p202403", "readings_p0", "readings_p9"} <= parts
        horizon, dropped = s.prune(feb + 86400 * 10)
        left = [seq for (seq,) in s.query("SELECT seq FROM readings WHERE node = 3 ORDER BY seq")]
        if backend_url.startswith("postgresql"):  # the months that ended by then: January (and time 0)
            assert (horizon, dropped, left) == (feb, 3, [2, 3])
        else:  # up to the instant
            assert (horizon, dropped, left) == (feb + 86400 * 10, 4, [3])
        assert [(m["start"], m["n"]) for m in s.means(3, "1d", since=jan, until=mar + 86400)] == \
            [(jan, 2), (feb, 1), (mar, 1)]  # the means stay
        assert s.add_readings([_r(0, jan + 100, 100), _r(5, jan + 300, 100)]) == (0, 2)  # older than the horizon
        assert s.rejects()["beyond_retention"]["count"] == 2
        assert s.add_readings([_r(6, mar + 200, 100)]) == (1, 0)
        assert s.prune(feb)[1] == 0  # the horizon never goes back
    finally:
        s.close()
    r = CliRunner().invoke(group, ["store", "prune", "--older-than-days", "1", "--json", "--home", home.path,
                                   "--store", backend_url])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["readings_dropped"] == len(left) + 1  # all of 2024 is long over
    r = CliRunner().invoke(group, ["store", "prune", "--older-than-days", "0", "--home", home.path])
    assert r.exit_code == 2


def test_the_repair_view_keeps_the_reply_window_whole(store_url):
    """Schema 9: repair_nodes holds the leader's reply replay window (both backends), its 64-bit
    bitmap stored signed and read back whole (the downgrade tests above migrate through 9)."""
    from fleet.store.base import REPAIR_FIELDS

    with open_url(store_url) as s:
        s.save_repair_nodes([(5, 9, 0, 3, 1, 7, "1.2", 70, -(1 << 63) | 1)])
        assert s.repair_nodes()[5] == dict(zip(REPAIR_FIELDS, (5, 9, 0, 3, 1, 7, "1.2", 70, -(1 << 63) | 1),
                                               strict=True))
        assert s.schema_version() == SCHEMA_VERSION
