"""The store, on both backends (SQLite and a throwaway PostgreSQL cluster): de-duplication, node_state kept in step with readings, gaps, counters,
transactions, views, and refusing files that are not a Red Mesh store."""
import os
import sqlite3

import pytest
from old_stores import sqlite_schema1

from fleet.store import READING_FIELDS, SCHEMA_VERSION, SQLiteStore, StoreError, open_url


@pytest.fixture
def store(store_url):
    s = open_url(store_url)
    yield s
    s.close()


def reading(node, seq, ts=None, rx_ts=None, pm25=100, rh=50, hops=2, gateway=1, rssi=-70):
    ts = 1_000_000 + seq * 60 if ts is None else ts
    rx_ts = ts + 5 if rx_ts is None else rx_ts
    return (node, seq, ts, rx_ts, 50, pm25, 150, rh, 215, 10, 0, hops, gateway, rssi)


def test_pragmas_wal_and_normal_sync(tmp_path):
    store = SQLiteStore(str(tmp_path / "fleet.db"))
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    store.close()


def test_duplicates_are_stored_once_and_counted(store):
    assert store.add_readings([reading(5, s) for s in range(10)]) == (10, 0)
    # a QoS-1 redelivery of part of it, plus new ones, plus a repeat inside the batch
    batch = [reading(5, s) for s in range(5, 15)] + [reading(5, 14)]
    assert store.add_readings(batch) == (5, 6)
    assert [r["seq"] for r in store.readings(5)] == list(range(15))
    st = store.node_state(5)
    assert st["delivered"] == 15 and st["duplicates"] == 6
    assert st["min_seq"] == 0 and st["last_seq"] == 14


def test_batches_larger_than_one_statement(store):
    rows = [reading(n, s) for s in range(500) for n in range(1, 6)]  # 2,500 rows, several chunks
    assert store.add_readings(rows) == (2500, 0)
    assert store.add_readings(rows[1000:1500] + [reading(9, 0)]) == (1, 500)
    assert store.summary()["readings"] == 2501
    for n in range(1, 6):
        st = store.node_state(n)
        assert (st["delivered"], st["min_seq"], st["last_seq"]) == (500, 0, 499)


def test_state_follows_the_newest_reading_not_resends(store):
    store.add_readings([reading(7, s, pm25=100 + s) for s in range(10, 20)])
    st = store.node_state(7)
    assert (st["last_seq"], st["pm25"], st["last_ts"]) == (19, 119, 1_000_000 + 19 * 60)
    # gap repair: older seqs arrive later; they count as delivered but do not become "latest"
    store.add_readings([reading(7, s, pm25=999, rx_ts=2_000_000) for s in range(5, 10)])
    st = store.node_state(7)
    assert (st["last_seq"], st["pm25"], st["min_seq"], st["delivered"]) == (19, 119, 5, 15)
    assert st["last_heard"] == 2_000_000  # but the node was heard


def test_path_fields_come_from_the_latest_heard_copy(store):
    store.add_readings([reading(3, 0, rx_ts=100, hops=4, gateway=1, rssi=-80)])
    store.add_readings([reading(3, 0, rx_ts=200, hops=2, gateway=2, rssi=-60)])  # duplicate, newer path
    st = store.node_state(3)
    assert (st["hops"], st["gateway"], st["rssi"], st["last_heard"]) == (2, 2, -60, 200)
    store.add_readings([reading(3, 1, rx_ts=150, hops=7, gateway=3)])  # stored late, heard earlier
    st = store.node_state(3)
    assert (st["gateway"], st["last_heard"], st["last_seq"]) == (2, 200, 1)


def test_dict_rows_and_bad_rows(store):
    d = dict(zip(READING_FIELDS, reading(4, 0), strict=True))
    assert store.add_readings([d]) == (1, 0)
    with pytest.raises(ValueError):
        store.add_readings([(4, 1, 2)])
    with pytest.raises(ValueError):  # ts is NOT NULL: the whole batch is refused
        store.add_readings([reading(4, 2), (4, 3, None) + reading(4, 3)[3:]])
    assert [r["seq"] for r in store.readings(4)] == [0]
    assert store.node_state(4)["delivered"] == 1
    assert store.add_readings([]) == (0, 0)


def test_transaction_rolls_back_everything(store):
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.add_readings([reading(1, 0)])
            store.update_state(1, 50, parent=9)
            store.count_reject("bad_tag", 50)
            raise RuntimeError("collector crashed mid-batch")
    assert store.readings(1) == []
    assert store.node_state(1) is None
    assert store.rejects() == {}
    with store.transaction():
        store.add_readings([reading(1, 0)])
        store.update_state(1, 60, parent=9)
    assert store.node_state(1)["parent"] == 9


def test_update_state(store):
    store.update_state(2, 100, parent=1, link_etx=13, uptime_s=50, heap_free=90000, fw_version="0.2.0", boot_count=3)
    store.update_state(2, 90, backlog=4)  # an older frame processed late: last_heard stays
    st = store.node_state(2)
    assert (st["parent"], st["link_etx"], st["backlog"], st["last_heard"], st["fw_version"]) == (1, 13, 4, 100, "0.2.0")
    assert st["delivered"] == 0
    with pytest.raises(ValueError):
        store.update_state(2, 100, colour="red")
    store.update_states([(3, 10, {"parent": 2}), (4, 11, {"parent": 3, "hops": 2})])
    assert store.node_state(4)["hops"] == 2


def test_registration_and_status_rows(store):
    store.register_node(1, role="gateway", mac="aa:bb", pole="P-001", lat=6.26, lon=-75.58, fw_version="0.1.0",
                        registered_at=10)
    store.register_nodes([{"node": n, "fw_version": "0.1.0"} for n in (2, 3)])
    with pytest.raises(ValueError):
        store.register_node(4, role="router")
    store.add_readings([reading(2, 0, gateway=1)])
    store.update_state(77, 500, parent=2, gateway=1)  # heard but never registered
    assert store.node(1)["pole"] == "P-001" and store.node(99) is None
    assert [n["node"] for n in store.nodes()] == [1, 2, 3]
    assert store.node_ids() == {1, 2, 3}
    rows = {r["node"]: r for r in store.status_rows()}
    assert sorted(rows) == [1, 2, 3, 77]
    assert rows[3]["last_heard"] is None and rows[3]["registered_fw"] == "0.1.0"
    assert rows[1]["role"] == "gateway" and rows[77]["role"] == "node"
    assert rows[2]["pm25"] == 100 and rows[2]["delivered"] == 1
    assert [r["node"] for r in store.status_rows(nodes=[3, 77])] == [3, 77]
    assert [r["node"] for r in store.status_rows(gateway=1)] == [2, 77]
    # re-registration keeps the first registration time
    store.register_node(1, role="gateway", registered_at=99)
    assert store.node(1)["registered_at"] == 10


def test_gaps(store):
    store.add_readings([reading(8, s) for s in (0, 1, 2, 5, 6, 9)])
    assert store.missing_seqs(8, 0, 12) == [(3, 4), (7, 8), (10, 12)]
    assert store.missing_seqs(8, 5, 6) == []
    g1 = store.add_gap(8, 3, 4, 100)
    g2 = store.add_gap(8, 7, 8, 100)
    store.mark_gap(g1, "requested", 110)
    store.mark_gap(g1, "requested", 120)
    pending = store.open_gaps(node=8)
    assert [(g["id"], g["state"], g["requests"]) for g in pending] == [(g1, "requested", 2), (g2, "open", 0)]
    store.mark_gap(g1, "recovered", 130)
    store.mark_gap(g2, "lost", 130)
    assert store.open_gaps() == []
    assert store.gap_counts() == {8: {"recovered": 1, "lost": 1}}
    assert store.summary()["gaps"] == {"open": 0, "requested": 0, "recovered": 1, "lost": 1}
    with pytest.raises(ValueError):
        store.mark_gap(g1, "forgotten", 140)
    with pytest.raises(KeyError):
        store.mark_gap(12345, "lost", 140)
    with pytest.raises(ValueError):
        store.add_gap(8, 5, 4, 100)


def test_events_rejects_and_command_counters(store):
    store.record_event(10, "reboot", node=3, detail={"boot_count": 4})
    store.record_event(20, "reparent", node=4, detail="parent 2 -> 5")
    assert [e["kind"] for e in store.events()] == ["reboot", "reparent"]
    assert store.events(node=3)[0]["detail"] == '{"boot_count": 4}'
    assert [e["node"] for e in store.events(since=15)] == [4]
    store.count_reject("bad_tag", 10)
    store.count_reject("bad_tag", 12, n=4)
    store.count_reject("unknown_node", 13)
    assert store.rejects() == {"bad_tag": {"count": 5, "last_ts": 12}, "unknown_node": {"count": 1, "last_ts": 13}}
    assert [store.next_cseq(0) for _ in range(3)] == [1, 2, 3]
    assert store.next_cseq(42) == 1
    assert store.next_cseq(42, floor=1000) == 1000
    assert store.next_cseq(42) == 1001


def test_readings_time_window(store):
    store.add_readings([reading(6, s, ts=1000 + 10 * s) for s in range(10)])
    assert [r["seq"] for r in store.readings(6, since=1030, until=1060)] == [3, 4, 5]
    assert [r["seq"] for r in store.readings(6, limit=2)] == [0, 1]
    assert store.readings(99) == []


def test_summary(store):
    store.register_nodes([{"node": n} for n in range(1, 4)])
    store.add_readings([reading(1, s) for s in (0, 1, 3)] + [reading(1, 3)])
    store.update_state(50, 10, parent=1)
    s = store.summary()
    assert (s["nodes"], s["heard"], s["readings"], s["duplicates"], s["expected"]) == (4, 2, 3, 1, 4)


def test_persists_across_reopen(store_url):
    with open_url(store_url) as s:
        s.add_readings([reading(1, 0)])
    with open_url(store_url) as s:
        assert s.node_state(1)["delivered"] == 1


def test_refuses_a_file_that_is_not_a_database(tmp_path):
    path = tmp_path / "fleet.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable Red Mesh store"):
        SQLiteStore(str(path))


def test_refuses_another_applications_database(tmp_path):
    path = str(tmp_path / "other.db")
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (id INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="something else"):
        SQLiteStore(path)


def test_refuses_a_newer_schema(tmp_path):
    path = str(tmp_path / "fleet.db")
    SQLiteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer"):
        SQLiteStore(path)
    assert os.path.exists(path)


def test_opens_a_schema_1_store_and_adds_the_status_columns(tmp_path):
    """A store written before status frames carried radio_drops and readings_lost (schema 1)
    opens, keeps its rows and gains both columns (NULL until a node reports them)."""
    path = str(tmp_path / "fleet.db")
    with SQLiteStore(path) as s:
        s.add_readings([reading(1, 0)])
        s.update_state(1, 1000, heap_min=40000)
    sqlite_schema1(path)
    with SQLiteStore(path) as s:
        st = s.node_state(1)
        assert st["delivered"] == 1 and st["heap_min"] == 40000
        assert st["radio_drops"] is None and st["readings_lost"] is None
        s.update_state(1, 1001, radio_drops=4, readings_lost=2)
        assert (s.node_state(1)["radio_drops"], s.node_state(1)["readings_lost"]) == (4, 2)
        assert s.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    with SQLiteStore(path) as s:  # and opens again without migrating twice
        assert s.node_state(1)["radio_drops"] == 4
