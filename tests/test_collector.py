"""The collector core (fleet/collector.py Ingest) against a real store (SQLite and PostgreSQL), with frames made by
protocol.encode and keys derived by protocol.auth. No MQTT: messages are (topic, payload)."""
import json
import os
import random as random_mod
import sqlite3
import threading

import pytest

import protocol
from fleet.collector import CollectorConfig, Ingest
from fleet.repair import RepairConfig
from fleet.store import SQLiteStore, open_url
from protocol import auth
from protocol.envelope import downlink_topic

SECRET = bytes(range(1, 33))
NET = 1
GW = 100
GW2 = 200
T0 = 1_700_000_000
UP = f"redmesh/{NET}/up/{GW}"
UP2 = f"redmesh/{NET}/up/{GW2}"
MESH = auth.derive_mesh_key(SECRET, NET)
NODES = (1, 2, 3, 4, 5)


def nkey(node):
    return auth.derive_node_key(SECRET, NET, node)


class Keys:
    """The two methods of fleet.keys.Keystore the collector uses, on a fixed secret."""

    def mesh_key(self):
        return MESH

    def node_key(self, node):
        return nkey(node)


def reading(i=0, pm25=123):
    return protocol.Reading(dt_s=i, pm1=80, pm25=pm25, pm10=150, rh=55, temp=215, n=30, flags=0)


def telemetry(node, seq, k=1, time_s=T0, key=None, mesh=MESH, hops=2):
    f = protocol.Telemetry(origin=node, seq=seq, time_s=time_s, readings=[reading(k - 1 - i) for i in range(k)],
                           hops=hops, cost=20)
    return protocol.encode(f, mesh, nkey(node) if key is None else key)


def status(node, seq, boot_count=1, parent=7, backlog=0, uptime_s=60, radio_drops=0, readings_lost=0):
    body = protocol.StatusBody(fw_seq=3, fw_version="1.2.0", uptime_s=uptime_s, heap_free=40000, heap_min=30000,
                               backlog=backlog, parent=parent, link_etx=12, path_cost=25, rssi=-70,
                               boot_count=boot_count, ota_state=0, ota_progress=0, errors=0,
                               radio_drops=radio_drops, readings_lost=readings_lost)
    return protocol.encode(protocol.Status(origin=node, seq=seq, time_s=T0, body=body, hops=1), MESH, nkey(node))


def reply(node, seq, cseq, code, result):
    f = protocol.Reply(origin=node, seq=seq, time_s=T0, cseq=cseq, code=code, result=result, hops=1)
    return protocol.encode(f, MESH, nkey(node))


def envelope(frames, gw=GW, eseq=1, rx_ms=T0 * 1000 + 500):
    return protocol.encode(protocol.Envelope(gw, eseq, [(rx_ms, -61, fb) for fb in frames]))


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """A store on each backend (PostgreSQL: a fresh schema of the worker's throwaway cluster)."""
    if request.param == "sqlite":
        s = SQLiteStore(str(tmp_path / "fleet.db"))
    else:
        s = open_url(request.getfixturevalue("pg_url"))
    s.register_nodes([{"node": n} for n in NODES] + [{"node": GW, "role": "gateway"},
                                                      {"node": GW2, "role": "gateway"}])
    yield s
    s.close()


class Clock:
    def __init__(self, t=float(T0)):
        self.t = t

    def __call__(self):
        return self.t


def make_ingest(store, clock=None, **repair):
    rc = RepairConfig(**{"grace_s": 10, "retry_s": 5, "retry_max_s": 20, "follow_s": 1, "max_attempts": 3,
                         **repair})
    return Ingest(store, Keys(), NET, now_fn=clock or Clock(), config=CollectorConfig(batch_rows=1000, repair=rc))


def seqs(store, node):
    return [r["seq"] for r in store.readings(node)]


def gap_rows(store):
    return [tuple(r) for r in store.query("SELECT node, first_seq, last_seq, state, requests FROM gaps "
                                          "ORDER BY node, first_seq")]


def decode_commands(out, node):
    """Decode downlink messages into (topic, Command) for `node`, checking its auth tag."""
    cmds = []
    for topic, payload in out:
        dl = protocol.decode(payload)
        assert dl.type == protocol.T_DOWNLINK
        for fb in dl.frames:
            c = protocol.decode(fb, MESH, nkey(node) if protocol.decode(fb).target == node else None)
            if c.target == node:
                cmds.append((topic, c))
    return cmds


# ---- storage and de-duplication ------------------------------------------------------------------


def test_an_envelope_in_hand_is_handled_as_its_mqtt_message(tmp_path):
    """on_envelope (the simulator's entry: the frames without the MQTT payload around them) takes
    the path on_message takes after decoding: same result, rows, rejects, state and counters."""
    frames = [telemetry(1, 0, k=3), status(2, 1), telemetry(3, 5, key=nkey(4)), telemetry(1, 0, k=3)]
    items = [(T0 * 1000 + 500, -61, fb) for fb in frames]
    out = []
    for via_mqtt in (True, False):
        s = SQLiteStore(str(tmp_path / f"{via_mqtt}.db"))
        s.register_nodes([{"node": n} for n in NODES] + [{"node": GW, "role": "gateway"}])
        ing = make_ingest(s, Clock())
        seen = []
        ing.on_readings = lambda *a, seen=seen: seen.append(a)
        res = ing.on_message(UP, envelope(frames)) if via_mqtt else ing.on_envelope(GW, items)
        ing.flush()
        snap = ing.snapshot()
        out.append((res, seen, s.query("SELECT * FROM readings ORDER BY node, seq"), s.node_state(2)["parent"],
                    {k: v for k, v in snap.items() if k != "store_failing_s"}))
        s.close()
    assert out[0] == out[1]
    res, seen, rows, parent, snap = out[0]
    assert res == {"frames": 3, "readings": 6, "rejects": {"bad_tag": 1}} and parent == 7
    assert seen == [(1, 0, 2, GW, 2, float(T0)), (1, 0, 2, GW, 2, float(T0))]  # on_readings: each accepted frame
    assert len(rows) == 3 and snap["duplicates"] == 3 and snap["envelopes"] == 1 and snap["messages"] == 1



def test_valid_telemetry_stored_once_even_when_delivered_three_times(store):
    ing = make_ingest(store)
    env = envelope([telemetry(1, 0, k=3), telemetry(2, 0, k=2)])
    for _ in range(3):
        res = ing.on_message(UP, env)
        assert res == {"frames": 2, "readings": 5, "rejects": {}}
    assert ing.flush() == (5, 10)
    env2 = envelope([telemetry(1, 0, k=3)])
    ing.on_message(UP, env2)
    assert ing.flush() == (0, 3)
    assert seqs(store, 1) == [0, 1, 2] and seqs(store, 2) == [0, 1]
    r = store.readings(1)[2]
    assert (r["pm25"], r["rh"], r["temp"], r["hops"], r["gateway"], r["rssi"]) == (123, 55, 215, 2, GW, -61)
    assert r["ts"] == T0 and store.readings(1)[0]["ts"] == T0 - 2  # time_s - dt_s
    assert r["rx_ts"] == T0
    st = store.node_state(1)
    assert (st["delivered"], st["duplicates"], st["last_seq"]) == (3, 9, 2)
    snap = ing.snapshot()
    assert (snap["stored"], snap["duplicates"], snap["rejects"], snap["gaps_pending"]) == (5, 13, 0, 0)


def test_batch_flushes_by_rows_and_by_time(store):
    clock = Clock()
    ing = Ingest(store, Keys(), NET, now_fn=clock, config=CollectorConfig(batch_rows=10, flush_interval_s=0.5))
    ing.on_message(UP, envelope([telemetry(1, s) for s in range(9)]))
    assert ing.pending_rows() == 9 and seqs(store, 1) == []
    ing.on_message(UP, envelope([telemetry(1, 9)]))
    assert ing.pending_rows() == 0 and len(seqs(store, 1)) == 10  # batch full: flushed at once
    ing.on_message(UP, envelope([telemetry(1, 10)]))
    clock.t += 0.2
    ing.poll()
    assert ing.pending_rows() == 1
    clock.t += 0.4
    ing.poll()
    assert ing.pending_rows() == 0 and seqs(store, 1)[-1] == 10


# ---- bad input -----------------------------------------------------------------------------------


def test_forged_and_foreign_frames_rejected_and_counted(store):
    ing = make_ingest(store)
    forged = telemetry(1, 5, key=nkey(2))  # node 2 cannot speak for node 1
    foreign = telemetry(1, 6, mesh=auth.derive_mesh_key(SECRET, NET + 1))  # right node key, other mesh
    # flip a bit in the etag and recompute the hop tag, as a forwarder with the mesh key could
    f = protocol.decode(telemetry(1, 7))
    f.etag = bytes([f.etag[0] ^ 1]) + f.etag[1:]
    tampered = protocol.encode(f, MESH)
    good = telemetry(1, 8)
    res = ing.on_message(UP, envelope([forged, foreign, tampered, good]))
    assert res["frames"] == 1 and res["rejects"] == {"bad_tag": 2, "bad_hop_tag": 1}
    ing.flush()
    assert seqs(store, 1) == [8]
    assert {c: r["count"] for c, r in store.rejects().items()} == {"bad_tag": 2, "bad_hop_tag": 1}


def test_bad_input_counted_by_cause_nothing_valid_lost(store):
    ing = make_ingest(store)
    beacon = protocol.encode(protocol.Beacon(src=1, bseq=1, cost=10, depth=1, time_s=T0, flags=0), MESH)
    unknown = protocol.encode(protocol.Telemetry(origin=999, seq=0, time_s=T0, readings=[reading()]), MESH, nkey(999))
    truncated = telemetry(2, 0)[:-3]
    bad = [
        ("redmesh/2/up/100", envelope([telemetry(1, 0)])),  # another network
        ("something/else", b"x"),
        ("redmesh/1/up/notanumber", envelope([telemetry(1, 0)])),
        ("redmesh/1/down/100", b"\x83\x01\x11\x80"),
        (UP, os.urandom(300)),
        (UP, b""),
        (UP, b"\xff" * (protocol.MAX_ENVELOPE + 1)),
        (UP, telemetry(1, 0)),  # a bare air frame, not an envelope
        (UP2, envelope([telemetry(1, 0)], gw=GW)),  # envelope of gateway 100 on gateway 200's topic
        (UP, envelope([unknown, truncated, beacon])),
        (f"redmesh/{NET}/state/{GW}", b"\x00\x01garbage"),
    ]
    expected_total = 0
    for i, (topic, payload) in enumerate(bad):
        ing.on_message(topic, payload)
        ing.on_message(UP, envelope([telemetry(3, i)]))  # valid traffic interleaved
        expected_total += 1
    ing.flush()
    assert seqs(store, 3) == list(range(expected_total))
    counts = {c: r["count"] for c, r in store.rejects().items()}
    assert counts == {"wrong_topic": 4, "garbage": 3, "oversize": 1, "gateway_mismatch": 1, "unknown_node": 1,
                      "malformed_frame": 1, "unexpected_type": 1, "bad_state": 1}
    assert ing.snapshot()["rejects_by_cause"] == counts
    assert seqs(store, 1) == [] and seqs(store, 999) == []


def test_random_bytes_never_raise(store):
    ing = make_ingest(store)
    import random

    rnd = random.Random(7)
    good = telemetry(1, 0)
    for _ in range(300):
        n = rnd.randrange(0, 400)
        blob = bytes(rnd.randrange(256) for _ in range(n))
        ing.on_message(UP, blob)
        # also corrupt one byte of a valid envelope: must be rejected or (rarely) still valid
        env = bytearray(envelope([good]))
        env[rnd.randrange(len(env))] ^= 1 << rnd.randrange(8)
        ing.on_message(UP, bytes(env))
    ing.on_message(UP, envelope([telemetry(1, 1)]))
    ing.flush()
    assert 1 in seqs(store, 1)
    assert ing.snapshot()["rejects"] >= 300


def test_node_registered_after_start_is_accepted_after_recheck(store):
    clock = Clock()
    ing = make_ingest(store, clock)
    res = ing.on_message(UP, envelope([protocol.encode(
        protocol.Telemetry(origin=42, seq=0, time_s=T0, readings=[reading()]), MESH, nkey(42))]))
    assert res["rejects"] == {"unknown_node": 1}
    store.register_node(42)
    clock.t += 11  # the negative answer is cached for unknown_recheck_s
    res = ing.on_message(UP, envelope([protocol.encode(
        protocol.Telemetry(origin=42, seq=1, time_s=T0, readings=[reading()]), MESH, nkey(42))]))
    assert res == {"frames": 1, "readings": 1, "rejects": {}}


def test_store_failure_keeps_the_batch(tmp_path, store):
    if not isinstance(store, SQLiteStore):  # PostgreSQL: the server drops the collector's session
        import psycopg

        ing = make_ingest(store)
        ing.on_message(UP, envelope([telemetry(1, 0, k=2)]))
        with psycopg.connect(store._url, autocommit=True) as c:
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name = 'redmesh-fleet' AND pid <> pg_backend_pid()")
        assert ing.flush() == (0, 0)
        assert ing.pending_rows() == 2 and ing.snapshot()["flush_errors"] == 1
        assert ing.flush() == (2, 0)  # a new connection
        assert seqs(store, 1) == [0, 1]
        return

    class Flaky(SQLiteStore):
        fail = 1

        def add_readings(self, rows):
            if self.fail:
                self.fail -= 1
                raise sqlite3.OperationalError("database is locked")
            return super().add_readings(rows)

    flaky = Flaky(store.path)
    try:
        ing = make_ingest(flaky)
        ing.on_message(UP, envelope([telemetry(1, 0, k=2)]))
        assert ing.flush() == (0, 0)
        assert ing.pending_rows() == 2 and ing.snapshot()["flush_errors"] == 1
        assert ing.flush() == (2, 0)
        assert seqs(flaky, 1) == [0, 1]
    finally:
        flaky.close()


# ---- status and replies --------------------------------------------------------------------------


def test_status_updates_node_state_and_records_reboots(store):
    ing = make_ingest(store)
    ing.on_message(UP, envelope([status(1, 1, boot_count=4, parent=7, backlog=12, uptime_s=300)]))
    ing.flush()
    st = store.node_state(1)
    assert (st["fw_version"], st["fw_seq"], st["uptime_s"], st["heap_free"], st["backlog"], st["parent"],
            st["link_etx"], st["boot_count"], st["gateway"], st["hops"], st["rssi"]) == \
           ("1.2.0", 3, 300, 40000, 12, 7, 12, 4, GW, 1, -61)
    ing.on_message(UP2, envelope([status(1, 2, boot_count=5, parent=9, uptime_s=5)], gw=GW2))
    ing.flush()
    st = store.node_state(1)
    assert (st["boot_count"], st["parent"], st["gateway"]) == (5, 9, GW2)
    kinds = [e["kind"] for e in store.events(node=1)]
    assert "reboot" in kinds and "reparent" in kinds


def test_status_carries_heap_min_radio_drops_and_readings_lost(store):
    ing = make_ingest(store)
    ing.on_message(UP, envelope([status(1, 1, radio_drops=17, readings_lost=3)]))
    ing.flush()
    st = store.node_state(1)
    assert (st["heap_min"], st["radio_drops"], st["readings_lost"]) == (30000, 17, 3)
    # a node still on firmware 1.0 sends the 14-item body: stored, the new counters unknown
    body = protocol.StatusBody(fw_seq=1, fw_version="1.0.0", uptime_s=70, heap_free=40000, heap_min=29000,
                               parent=7, link_etx=12, path_cost=25, rssi=-70, boot_count=1,
                               radio_drops=None, readings_lost=None)
    old = protocol.encode(protocol.Status(origin=1, seq=2, time_s=T0, body=body, hops=1), MESH, nkey(1))
    res = ing.on_message(UP, envelope([old]))
    assert res["rejects"] == {}
    ing.flush()
    st = store.node_state(1)
    assert (st["fw_version"], st["heap_min"], st["radio_drops"], st["readings_lost"]) == ("1.0.0", 29000, None, None)


def test_replayed_status_rejected(store):
    ing = make_ingest(store)
    old = status(1, 3, backlog=99)
    ing.on_message(UP, envelope([status(1, 5, backlog=1)]))
    ing.on_message(UP, envelope([status(1, 6, backlog=2)]))
    res = ing.on_message(UP, envelope([status(1, 6, backlog=2)]))  # exact duplicate (QoS 1 / mesh)
    assert res["rejects"] == {} and ing.snapshot()["status_duplicates"] == 1
    res = ing.on_message(UP, envelope([old]))  # a captured older status replayed later
    assert res["rejects"] == {"replay": 1}
    ing.on_message(UP, envelope([status(1, 200, backlog=3)]))
    res = ing.on_message(UP, envelope([status(1, 7, backlog=4)]))  # far below the window
    assert res["rejects"] == {"replay": 1}
    ing.flush()
    assert store.node_state(1)["backlog"] == 3
    assert store.rejects()["replay"]["count"] == 2


def test_gateway_state_tracked_and_offline_gateway_bypassed(store):
    clock = Clock()
    ing = make_ingest(store, clock)
    ing.on_message(f"redmesh/{NET}/state/{GW}", b"online")
    ing.on_message(f"redmesh/{NET}/state/{GW}", b"online")  # retained copy on resubscribe: no new event
    ing.on_message(UP, envelope([telemetry(1, 0), telemetry(1, 5)]))
    ing.on_message(f"redmesh/{NET}/state/{GW}", b"offline")
    clock.t += 11
    out = ing.poll()
    assert [t for t, _ in out] == [downlink_topic(NET)]  # gateway 100 is offline: every gateway
    ing.flush()
    assert [e["kind"] for e in store.events(node=GW)] == ["gateway_online", "gateway_offline"]


# ---- gaps ----------------------------------------------------------------------------------------


def test_gap_filled_by_late_frame_leaves_no_trace(store):
    clock = Clock()
    ing = make_ingest(store, clock)
    ing.on_message(UP, envelope([telemetry(1, 0, k=5), telemetry(1, 8, k=2)]))
    assert ing.tracker.node_gaps(1) == [(5, 7, "open")]
    ing.flush()
    assert gap_rows(store) == [(1, 5, 7, "open", 0)]
    clock.t += 3
    ing.on_message(UP, envelope([telemetry(1, 6)]))  # splits the gap
    assert ing.tracker.node_gaps(1) == [(5, 5, "open"), (7, 7, "open")]
    ing.on_message(UP, envelope([telemetry(1, 5), telemetry(1, 7)]))
    assert ing.tracker.node_gaps(1) == []
    ing.flush()
    assert gap_rows(store) == []  # reordering is not a loss
    clock.t += 100
    assert ing.poll() == []
    assert seqs(store, 1) == list(range(10))
    assert ing.snapshot()["gaps_reordered"] == 2


def test_resend_after_grace_then_recovered(store):
    clock = Clock()
    ing = make_ingest(store, clock)
    store.next_cseq(1)  # the fleet already sent node 1 a command: counters continue from there
    ing.on_message(UP, envelope([telemetry(1, 0, k=5), telemetry(1, 10), telemetry(2, 0), telemetry(2, 3)]))
    clock.t += 9
    assert ing.poll() == []  # within the grace period
    clock.t += 2
    out = ing.poll()
    assert [t for t, _ in out] == [downlink_topic(NET, GW)]  # via the gateway that heard them
    (_, c1), = decode_commands(out, 1)
    (_, c2), = decode_commands(out, 2)
    assert (c1.target, c1.op, c1.args, c1.cseq) == (1, protocol.OP_RESEND, [5, 9], 2)
    assert (c2.target, c2.op, c2.args, c2.cseq) == (2, protocol.OP_RESEND, [1, 2], 1)
    with pytest.raises(protocol.ProtocolError):  # authenticated for node 1 only
        protocol.decode(protocol.decode(out[0][1]).frames[0], MESH, nkey(2))
    ing.flush()
    assert gap_rows(store) == [(1, 5, 9, "requested", 1), (2, 1, 2, "requested", 1)]
    # node 1 resends from its ring and replies
    ing.on_message(UP, envelope([telemetry(1, 5, k=5), reply(1, 1, c1.cseq, 0, [5, 9])]))
    ing.flush()
    assert seqs(store, 1) == list(range(11))
    assert gap_rows(store)[0] == (1, 5, 9, "recovered", 1)
    assert [e["kind"] for e in store.events(node=1)] == ["resend_request", "reply"]
    snap = ing.snapshot()
    assert (snap["gaps_recovered"], snap["gaps_pending"], snap["outstanding"]) == (1, 1, 1)


def test_gap_marked_lost_after_retries(store):
    clock = Clock()
    ing = make_ingest(store, clock, max_attempts=3)
    ing.on_message(UP, envelope([telemetry(1, 0), telemetry(1, 4)]))
    sent = []
    for _ in range(200):
        clock.t += 1
        for topic, c in decode_commands(ing.poll(), 1):
            sent.append((clock.t - T0, topic, c.cseq, c.args))
    assert [s[2] for s in sent] == [1, 2, 3]
    assert [s[3] for s in sent] == [[1, 3]] * 3
    assert [s[1] for s in sent] == [downlink_topic(NET, GW), downlink_topic(NET), downlink_topic(NET)]
    assert [s[0] for s in sent] == [10, 15, 25]  # grace, then retry_s doubling
    ing.flush()
    assert gap_rows(store) == [(1, 1, 3, "lost", 3)]
    lost = store.events(node=1, kind="gap_lost")
    assert len(lost) == 1 and '"readings": 3' in lost[0]["detail"]
    snap = ing.snapshot()
    assert (snap["gaps_lost"], snap["readings_lost"], snap["gaps_pending"]) == (1, 3, 0)
    assert store.summary()["gaps"]["lost"] == 1


def test_reply_partial_and_none_held(store):
    clock = Clock()
    ing = make_ingest(store, clock)
    ing.on_message(UP, envelope([telemetry(1, 0), telemetry(1, 10), telemetry(2, 0), telemetry(2, 10)]))
    clock.t += 11
    out = ing.poll()
    cmds = decode_commands(out, 1) + decode_commands(out, 2)
    c1 = next(c for _, c in cmds if c.target == 1)
    c2 = next(c for _, c in cmds if c.target == 2)
    # node 1 aged out 1..4: resends 5..9; node 2 holds nothing of 1..9
    ing.on_message(UP, envelope([reply(1, 1, c1.cseq, 0, [5, 9]), telemetry(1, 5, k=5),
                                 reply(2, 1, c2.cseq, 3, [1, 9])]))
    ing.flush()
    rows = gap_rows(store)
    assert (1, 1, 4, "lost", 0) in rows and (1, 5, 9, "recovered", 1) in rows
    assert (2, 1, 9, "lost", 1) in rows
    assert ing.snapshot()["readings_lost"] == 4 + 9
    res = ing.on_message(UP, envelope([reply(2, 1, c2.cseq, 3, [1, 9])]))  # duplicate reply: ignored
    assert res["rejects"] == {} and ing.snapshot()["reply_duplicates"] == 1


def test_bounded_resend_followed_up_for_the_rest(store):
    clock = Clock()
    ing = make_ingest(store, clock)
    ing.on_message(UP, envelope([telemetry(1, 0), telemetry(1, 101)]))
    clock.t += 11
    (_, c), = decode_commands(ing.poll(), 1)
    assert c.args == [1, 100]
    # the node sends at most 48 per request
    ing.on_message(UP, envelope([reply(1, 1, c.cseq, 0, [1, 48])] + [telemetry(1, s, k=12) for s in (1, 13, 25, 37)]))
    clock.t += 2
    (_, c2), = decode_commands(ing.poll(), 1)
    assert c2.args == [49, 100] and c2.cseq == c.cseq + 1


def test_outstanding_requests_capped(store):
    clock = Clock()
    store.register_nodes([{"node": n} for n in range(10, 30)])
    ing = make_ingest(store, clock, max_outstanding=3, max_outstanding_node=1)
    ing.on_message(UP, envelope([telemetry(n, 0) for n in range(10, 30)] + [telemetry(n, 5) for n in range(10, 30)]
                                + [telemetry(10, 9)]))
    clock.t += 11
    out = ing.poll()
    targets = [protocol.decode(fb).target for _, p in out for fb in protocol.decode(p).frames]
    assert len(targets) == 3 and len(set(targets)) == 3
    assert ing.snapshot()["outstanding"] == 3
    clock.t += 1
    assert ing.poll() == []  # slots still taken
    # a reply frees a slot
    t = targets[0]
    c = next(c for _, c in decode_commands(out, t))
    ing.on_message(UP, envelope([reply(t, 1, c.cseq, 3, c.args)]))
    clock.t += 1
    out2 = ing.poll()
    assert len([fb for _, p in out2 for fb in protocol.decode(p).frames]) == 1


def test_huge_jump_beyond_the_ring_is_lost_at_once(store):
    ing = make_ingest(store, ring_readings=100)
    ing.on_message(UP, envelope([telemetry(1, 0), telemetry(1, 1001)]))
    assert ing.tracker.node_gaps(1) == [(901, 1000, "open")]
    ing.flush()
    assert gap_rows(store) == [(1, 1, 900, "lost", 0), (1, 901, 1000, "open", 0)]


def test_restart_continues_counters_and_gaps(store):
    clock = Clock()
    ing = make_ingest(store, clock)
    ing.on_message(UP, envelope([telemetry(1, 0, k=3), telemetry(1, 7), telemetry(2, 0)]))
    ing.close()
    again = make_ingest(store, clock)  # a new collector on the same store
    assert again.tracker.node_gaps(1) == [(3, 6, "open")]
    again.on_message(UP, envelope([telemetry(2, 1), telemetry(1, 8)]))  # continuing: no new gap
    assert again.tracker.node_gaps(2) == [] and again.tracker.node_gaps(1) == [(3, 6, "open")]
    again.on_message(UP, envelope([telemetry(1, 3, k=4)]))
    again.close()
    assert gap_rows(store) == []
    assert seqs(store, 1) == list(range(9))


def test_real_keystore(tmp_path, store):
    from fleet.keys import Keystore

    ks = Keystore(str(tmp_path / "keys"), NET)
    ks.init()
    ing = Ingest(store, ks, NET)
    f = protocol.Telemetry(origin=1, seq=0, time_s=T0, readings=[reading()])
    fb = protocol.encode(f, ks.mesh_key(), ks.node_key(1))
    # the second frame was made with another fleet's keys: its hop tag fails first (not from
    # this mesh), before any node key is looked up
    assert ing.on_message(UP, envelope([fb, telemetry(1, 1)]))["rejects"] == {"bad_hop_tag": 1}


# ---- end to end through a lossy channel, with nodes answering resends ------------------------------


class FakeNode:
    """A node's ring and its answer to OP_RESEND, as firmware/node.py does it: resend at most 48
    held readings from a..b (frames of up to 12) and reply [first, last] sent, or code 3."""

    def __init__(self, node, ring_readings):
        self.node = node
        self.ring_readings = ring_readings
        self.next_seq = 0
        self.reply_seq = 0
        self.seen_cseq = 0

    def produce(self, k):
        fb = telemetry(self.node, self.next_seq, k=k)
        self.next_seq += k
        return [fb]

    def answer(self, cmd):
        if cmd.cseq <= self.seen_cseq:
            return []  # refused: replayed counter
        self.seen_cseq = cmd.cseq
        a, b = cmd.args
        oldest = max(0, self.next_seq - self.ring_readings)
        held = [s for s in range(max(a, oldest), min(b, self.next_seq - 1) + 1)][:48]
        self.reply_seq += 1
        if not held:
            return [reply(self.node, self.reply_seq, cmd.cseq, 3, [a, b])]
        frames = [telemetry(self.node, s, k=min(12, held[-1] - s + 1)) for s in range(held[0], held[-1] + 1, 12)]
        return frames + [reply(self.node, self.reply_seq, cmd.cseq, 0, [held[0], held[-1]])]


class LossyChannel:
    """The mesh both ways as these tests play it: every node makes 1-3 readings a second for
    150 s, then one more (the tail is seen); 25 % of uplink frames lost, 10 % duplicated, each
    late by 0-4 s, reordered; 20 % of commands lost; the nodes answer the rest (FakeNode)."""

    def __init__(self, rnd, clock, ring_readings):
        self.rnd, self.clock = rnd, clock
        self.nodes = {n: FakeNode(n, ring_readings) for n in NODES}
        self.in_flight = []  # (deliver_at, frame bytes)
        self.commands = 0
        for n in self.nodes.values():
            self.send(n.produce(1), reliable=True)  # first contact

    def send(self, frames, reliable=False):
        rnd = self.rnd
        for fb in frames:
            if not reliable and rnd.random() < 0.25:
                continue  # lost
            copies = 1 if reliable or rnd.random() > 0.1 else 2  # duplicated
            for _ in range(copies):
                self.in_flight.append((self.clock.t + rnd.choice((0, 0, 1, 2, 4)), fb))

    def tick(self, step):
        """Advance one second; return the envelopes the gateway publishes in it."""
        self.clock.t += 1
        if step < 150:
            for n in self.nodes.values():
                self.send(n.produce(self.rnd.randint(1, 3)))
        elif step == 150:
            for n in self.nodes.values():
                self.send(n.produce(1), reliable=True)  # the node keeps reporting: the tail is seen
        now = self.clock.t
        due = [fb for t, fb in self.in_flight if t <= now]
        self.in_flight = [(t, fb) for t, fb in self.in_flight if t > now]
        self.rnd.shuffle(due)
        return [envelope(due[i:i + 7]) for i in range(0, len(due), 7)]

    def answer(self, downlink):
        """The nodes take the commands of these downlink messages (each checks its auth tag)."""
        for _topic, payload in downlink:
            for fb in protocol.decode(payload).frames:
                cmd = protocol.decode(fb)
                protocol.decode(fb, MESH, nkey(cmd.target))
                self.commands += 1
                if self.rnd.random() < 0.2:
                    continue  # downlink lost
                self.send(self.nodes[cmd.target].answer(cmd))


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("ring_readings", [10000, 60])
def test_lossy_channel_every_reading_stored_once_or_counted_lost(store, seed, ring_readings):
    import random

    rnd = random.Random(seed)
    clock = Clock()
    ing = make_ingest(store, clock, grace_s=5, retry_s=3, retry_max_s=10, follow_s=1, max_attempts=8,
                      max_outstanding=4, max_outstanding_node=1)
    ch = LossyChannel(rnd, clock, ring_readings)
    nodes = ch.nodes
    for step in range(600):
        for payload in ch.tick(step):
            ing.on_message(UP, payload)
        ch.answer(ing.poll())
    ing.close()
    snap = ing.snapshot()
    assert snap["gaps_pending"] == 0, ing.tracker.nodes
    lost_rows = [r for r in gap_rows(store) if r[3] == "lost"]
    assert [r for r in gap_rows(store) if r[3] in ("open", "requested")] == []
    for n, fake in nodes.items():
        stored = seqs(store, n)
        assert stored == sorted(set(stored))
        lost = {s for r in lost_rows if r[0] == n for s in range(r[1], r[2] + 1)}
        assert not lost & set(stored)
        assert set(stored) | lost == set(range(fake.next_seq)), n
        if ring_readings >= fake.next_seq:
            assert not lost  # the ring still held everything: nothing may be lost
    assert snap["readings_lost"] == sum(r[2] - r[1] + 1 for r in lost_rows)


def test_nearby_gaps_share_one_request_and_first_contact_reordering(store):
    clock = Clock()
    ing = make_ingest(store, clock)
    # first contact reordered: 3 arrives before 0; then gaps 4..5 and 7..8 (and 1..2 below 3)
    ing.on_message(UP, envelope([telemetry(1, 3), telemetry(1, 0), telemetry(1, 6), telemetry(1, 9),
                                 telemetry(1, 200)]))
    assert ing.tracker.node_gaps(1) == [(1, 2, "open"), (4, 5, "open"), (7, 8, "open"), (10, 199, "open")]
    clock.t += 11
    out = ing.poll()
    assert [c.args for _, c in decode_commands(out, 1)] == [[1, 8]]  # merged up to 48 seqs wide
    assert [g[2] for g in ing.tracker.node_gaps(1)] == ["requested", "requested", "requested", "open"]


def test_first_contact_young_node_counts_from_zero_old_node_mid_life(store):
    ing = make_ingest(store)
    ing.on_message(UP, envelope([telemetry(1, 10), telemetry(2, 5000)]))
    assert ing.tracker.node_gaps(1) == [(0, 9, "open")]  # sent before we listened: ask for them
    assert ing.tracker.node_gaps(2) == []  # met mid-life (a new store for an old fleet)
    ing.on_message(UP, envelope([telemetry(2, 4990)]))  # but below what we heard: a gap
    assert ing.tracker.node_gaps(2) == [(4991, 4999, "open")]


# ---- the cbor2 fast path agrees with protocol.decode ---------------------------------------------


def _retag(covered, tail_mut):
    """A telemetry frame from raw CBOR pieces, with valid tags over exactly these bytes:
    covered = version..body items (after the array head), tail_mut = hops and cost items."""
    etag = auth.Hmac(nkey(1)).tag(covered, 8)  # node 1's key: the frames below claim origin 1
    body = b"\x8a" + covered + tail_mut + b"\x48" + etag + b"\x44"
    return body + auth.Hmac(MESH).tag(body, 4)


def _fast_vs_decode(fast_fn, ftype, fb):
    """(fast result, decoded frame) of `fb`: True/False/None as the callers return, or the pair
    to compare. The fast path refuses whatever protocol.decode refuses."""
    fast = fast_fn(fb, auth.Hmac(MESH), lambda o: auth.Hmac(nkey(o)) if o in NODES else None)
    try:
        f = protocol.decode(fb, MESH, lambda o: nkey(o) if o in NODES else None)
    except protocol.ProtocolError:
        assert fast is None, fb.hex()
        return False, None
    if fast is None:
        return f.type != ftype or None, None  # declining is allowed (the strict path runs)
    return fast, f


def _agree(fb):
    from fleet.collector import fast_telemetry

    fast, f = _fast_vs_decode(fast_telemetry, protocol.T_TELEMETRY, fb)
    if f is None:
        return fast
    origin, seq, time_s, readings, hops = fast
    assert (origin, seq, time_s, hops) == (f.origin, f.seq, f.time_s, f.hops)
    assert readings == [[getattr(r, k) for k in protocol.Reading.FIELDS] for r in f.readings]
    return True


def test_fast_path_accepts_what_protocol_decode_accepts():
    import random

    rnd = random.Random(5)
    for _ in range(300):
        k = rnd.randint(1, 12)
        # edge values of every field, and values around the CBOR head-size boundaries
        rs = [protocol.Reading(*(min(max(rnd.choice((lo, hi, rnd.randint(lo, hi), -25, -24, 23, 24, 255, 256)),
                                         lo), hi) for _, lo, hi in protocol.Reading.SPEC)) for _ in range(k)]
        f = protocol.Telemetry(origin=rnd.choice(NODES), seq=rnd.choice((0, 23, 24, 65535, 2**32 - 13)),
                               time_s=rnd.choice((0, 1, T0)), readings=rs, hops=rnd.randint(0, 255),
                               cost=rnd.choice((0, 23, 24, 255, 256, 65535)))
        try:
            fb = protocol.encode(f, MESH, nkey(f.origin))
        except protocol.ProtocolError:
            continue  # over 250 bytes
        assert _agree(fb) is True


def test_fast_path_declines_what_protocol_decode_rejects_even_with_valid_tags():
    import cbor2

    head = cbor2.dumps(1) + cbor2.dumps(2) + cbor2.dumps(1) + cbor2.dumps(100) + cbor2.dumps(T0)
    reading_ok = [5, 80, 123, 150, 55, 215, 30, 0]
    mut = cbor2.dumps(2) + cbor2.dumps(20)
    assert _agree(_retag(head + cbor2.dumps([reading_ok]), mut)) is True  # the control
    cases = {
        "rh out of range": head + cbor2.dumps([[5, 80, 123, 150, 101, 215, 30, 0]]),
        "temp below range": head + cbor2.dumps([[5, 80, 123, 150, 55, -401, 30, 0]]),
        "a bool for an int": head + b"\x81\x88" + b"".join(cbor2.dumps(v) for v in reading_ok[:7]) + b"\xf5",
        "a float": head + b"\x81\x88" + b"".join(cbor2.dumps(v) for v in reading_ok[:7]) + b"\xf9\x00\x00",
        "non-shortest int": head + b"\x81\x88\x18\x05" + b"".join(cbor2.dumps(v) for v in reading_ok[1:]),
        "indefinite array": head + b"\x81\x9f" + b"".join(cbor2.dumps(v) for v in reading_ok) + b"\xff",
        "nine fields": head + cbor2.dumps([reading_ok + [0]]),
        "no readings": head + cbor2.dumps([]),
        "13 readings": head + cbor2.dumps([reading_ok] * 13),
        "tagged int": head + b"\x81\x88\xc2\x41\x05" + b"".join(cbor2.dumps(v) for v in reading_ok[1:]),
        "seq overflow": (cbor2.dumps(1) + cbor2.dumps(2) + cbor2.dumps(1) + cbor2.dumps(2**32 - 1)
                         + cbor2.dumps(T0) + cbor2.dumps([reading_ok] * 2)),
        "unknown origin": (cbor2.dumps(1) + cbor2.dumps(2) + cbor2.dumps(77) + cbor2.dumps(100) + cbor2.dumps(T0)
                           + cbor2.dumps([reading_ok])),
    }
    for name, covered in cases.items():
        assert _agree(_retag(covered, mut)) is False, name
    for name, tail in {"non-shortest hops": b"\x18\x02" + cbor2.dumps(20), "hops > 255": cbor2.dumps(256) + b"\x14",
                       "negative cost": b"\x02\x20"}.items():
        assert _agree(_retag(head + cbor2.dumps([reading_ok]), tail)) is False, name


def test_fast_path_and_decoder_agree_on_mutated_frames():
    import random

    rnd = random.Random(11)
    base = [telemetry(1, rnd.randrange(1000), k=rnd.randint(1, 12), hops=rnd.randint(0, 23)) for _ in range(10)]
    accepted = declined = 0
    for _ in range(3000):
        fb = bytearray(rnd.choice(base))
        for _ in range(rnd.randint(1, 3)):
            i = rnd.randrange(1, len(fb) - 14)
            fb[i] = rnd.choice((fb[i] ^ (1 << rnd.randrange(8)), rnd.randrange(256)))
        covered = bytes(fb[1:len(fb) - 14 - 2])  # hops < 24, cost 20: one byte each
        fb = _retag(covered, bytes(fb[len(fb) - 16:len(fb) - 14]))  # valid tags over the mutation
        r = _agree(fb)
        accepted += r is True
        declined += r is None
    assert accepted > 100  # plenty of mutations stay valid frames (values changed)
    assert declined == 0  # and the fast path took every one of them


def _agree_status(fb):
    """fast_status against protocol.decode on `fb`: True both accept (and agree), False both
    reject, None the fast path declined a valid frame."""
    from fleet.collector import fast_status

    fast, f = _fast_vs_decode(fast_status, protocol.T_STATUS, fb)
    if f is None:
        return fast
    origin, seq, hops, body = fast
    assert (origin, seq, hops) == (f.origin, f.seq, f.hops)
    assert body == {k: getattr(f.body, k) for k in protocol.StatusBody.FIELDS}
    return True


def _status_body_items(rnd):
    vals = []
    for _name, lo, hi in protocol.StatusBody.SPEC:
        if lo is None:
            vals.append(rnd.choice(("", "1.2.0", "x" * 16, "é" * 8, "1.0.0-rc.10")))
        else:
            vals.append(min(max(rnd.choice((lo, hi, rnd.randint(lo, hi), -25, -24, 23, 24, 255, 256, 65536)), lo), hi))
    return vals


def test_status_fast_path_accepts_what_protocol_decode_accepts_old_firmware_too():
    import cbor2

    rnd = random_mod.Random(7)
    legacy = protocol.StatusBody.LEGACY_FIELDS
    for i in range(400):
        vals = _status_body_items(rnd)
        count = (legacy, legacy + 2, len(vals))[i % 3]  # firmware 1.0, 1.1 and now
        origin = rnd.choice(NODES)
        covered = (cbor2.dumps(1) + cbor2.dumps(protocol.T_STATUS) + cbor2.dumps(origin)
                   + cbor2.dumps(rnd.choice((0, 23, 24, 65535, 2**32 - 1))) + cbor2.dumps(rnd.choice((0, T0)))
                   + cbor2.dumps(vals[:count]))
        mut = cbor2.dumps(rnd.randint(0, 255)) + cbor2.dumps(rnd.choice((0, 23, 24, 255, 256, 65535)))
        etag = auth.Hmac(nkey(origin)).tag(covered, 8)
        body = b"\x8a" + covered + mut + b"\x48" + etag + b"\x44"
        fb = body + auth.Hmac(MESH).tag(body, 4)
        assert _agree_status(fb) is True, fb.hex()
    # and the encoder's own frames
    assert _agree_status(status(1, 5)) is True and _agree_status(status(2, 0, parent=0, backlog=70000)) is True


def test_status_fast_path_and_decoder_agree_on_mutated_frames():
    rnd = random_mod.Random(13)
    base = [status(rnd.choice(NODES), rnd.randrange(1000), boot_count=rnd.randrange(300), parent=rnd.randrange(70000),
                   uptime_s=rnd.randrange(2**32)) for _ in range(10)]
    accepted = declined = rejected = 0
    for _ in range(3000):
        fb = bytearray(rnd.choice(base))
        for _ in range(rnd.randint(1, 3)):
            i = rnd.randrange(1, len(fb) - 14)
            fb[i] = rnd.choice((fb[i] ^ (1 << rnd.randrange(8)), rnd.randrange(256)))
        origin = fb[3] if fb[3] < 24 else None  # the head of origin (status() nodes are < 24)
        covered = bytes(fb[1:len(fb) - 14 - 2])  # hops 1, cost < 24: one byte each
        etag = auth.Hmac(nkey(origin if origin in NODES else 1)).tag(covered, 8)
        body = b"\x8a" + covered + bytes(fb[len(fb) - 16:len(fb) - 14]) + b"\x48" + etag + b"\x44"
        r = _agree_status(body + auth.Hmac(MESH).tag(body, 4))
        accepted += r is True
        declined += r is None
        rejected += r is False
    assert accepted > 100 and rejected > 100  # both sides of the line were tried
    assert declined == 0  # the fast path took every valid one


def test_status_fast_path_declines_what_protocol_decode_rejects_even_with_valid_tags():
    import cbor2

    vals = _status_body_items(random_mod.Random(3))
    head = cbor2.dumps(1) + cbor2.dumps(protocol.T_STATUS) + cbor2.dumps(1) + cbor2.dumps(100) + cbor2.dumps(T0)
    mut = cbor2.dumps(2) + cbor2.dumps(20)

    def frame(covered, tail=mut):
        etag = auth.Hmac(nkey(1)).tag(covered, 8)
        body = b"\x8a" + covered + tail + b"\x48" + etag + b"\x44"
        return body + auth.Hmac(MESH).tag(body, 4)

    def items(vs):
        return bytes([0x80 + len(vs)]) + b"".join(cbor2.dumps(v) for v in vs)

    assert _agree_status(frame(head + items(vals))) is True  # the control
    i_ver, i_rssi, i_prog = (protocol.StatusBody.FIELDS.index(k) for k in ("fw_version", "rssi", "ota_progress"))
    cases = {
        "15 items": items(vals[:15]),
        "18 items": items(vals + [0]),
        "13 items": items(vals[:13]),
        "rssi above 0": items(vals[:i_rssi] + [1] + vals[i_rssi + 1:]),
        "progress 101": items(vals[:i_prog] + [101] + vals[i_prog + 1:]),
        "17-byte version": items(vals[:i_ver] + ["x" * 17] + vals[i_ver + 1:]),
        "bytes for the version": items(vals[:i_ver] + [b"1.0"] + vals[i_ver + 1:]),
        "an int for the version": items(vals[:i_ver] + [1] + vals[i_ver + 1:]),
        "a bool": bytes([0x80 + len(vals)]) + b"".join(cbor2.dumps(v) for v in vals[:-1]) + b"\xf5",
        "non-shortest int": bytes([0x80 + len(vals)]) + b"".join(cbor2.dumps(v) for v in vals[:-1]) + b"\x1a\x00\x00\x00\x01",
        "invalid UTF-8": (bytes([0x80 + len(vals)]) + b"".join(cbor2.dumps(v) for v in vals[:i_ver]) + b"\x62\xc3\x28"
                          + b"".join(cbor2.dumps(v) for v in vals[i_ver + 1:])),
    }
    for name, body in cases.items():
        assert _agree_status(frame(head + body)) is False, name
    unknown = cbor2.dumps(1) + cbor2.dumps(protocol.T_STATUS) + cbor2.dumps(77) + cbor2.dumps(100) + cbor2.dumps(T0)
    assert _agree_status(frame(unknown + items(vals))) is False
    assert _agree_status(frame(head + items(vals), b"\x18\x02\x14")) is False  # non-shortest hops


# ---- command line ----------------------------------------------------------------------------------


def test_collect_cli_errors_say_what_to_do(tmp_path):
    from click.testing import CliRunner

    from fleet.cli import group
    from fleet.collector_mqtt import parse_broker_url

    r = CliRunner().invoke(group, ["collect", "--home", str(tmp_path / "h"), "--broker", "mqtt://127.0.0.1:1"])
    assert r.exit_code == 1 and "fleet keys init" in r.output and isinstance(r.exception, (SystemExit, type(None)))  # a clean exit, not a crash
    assert not os.path.exists(tmp_path / "h" / "fleet.db")
    r = CliRunner().invoke(group, ["collect", "--home", str(tmp_path / "h"), "--broker", "ws://x"])
    assert r.exit_code == 1 and "mqtt://HOST:PORT" in r.output
    r = CliRunner().invoke(group, ["collect", "--home", str(tmp_path / "h"), "--share", "city/+"])
    assert r.exit_code == 2 and "a group name is" in r.output  # a topic filter's characters: usage
    assert parse_broker_url("mqtt://10.0.0.2:1884") == ("10.0.0.2", 1884)
    assert parse_broker_url("localhost") == ("localhost", 1883)
    assert parse_broker_url("tcp://h:1") == ("h", 1)


def _routed_or_flooded(out, node):
    """(topic, path or None, Command) for each command to `node` in downlink messages `out`: a
    Routed frame's hop tag checked and its inner command decoded with the node's key."""
    from protocol.routed import Routed  # noqa: F401 - the decoder loads it on demand
    got = []
    for topic, payload in out:
        for fb in protocol.decode(payload).frames:
            f = protocol.decode(fb, MESH)
            path, inner = (f.path, f.cmd) if f.type == protocol.T_ROUTED else (None, fb)
            c = protocol.decode(inner, MESH, nkey(node) if protocol.decode(inner).target == node else None)
            if c.target == node:
                got.append((topic, path, c))
    return got


def _retry(ing, clock, node):
    """Poll until the next request for `node` goes out (retries back off); its commands."""
    for _ in range(30):
        clock.t += 5
        got = _routed_or_flooded(ing.poll(), node)
        if got:
            return got
    raise AssertionError("no retry for node %d" % node)


def test_resend_goes_down_the_source_route_twice_then_a_retry_is_flooded(store):
    """Issue 15: the first request for a gap travels down the path compiled from the parents in
    the nodes' status reports (RPL non-storing), as a Routed frame to the gateway at its root,
    and so does the first retry (a hop or the reply lost, more often than a stale path); a later
    retry down the same path (it may be stale) and a node whose chain is unknown get a flood,
    counted. (Without the wait for a broken path's reports: route_wait_s=0, tested below.)"""
    clock = Clock()
    ing = make_ingest(store, clock, route_wait_s=0)
    # 3 -> 2 -> 1 -> gateway GW2 (heard on GW2's uplink); node 4 reports a parent nobody knows
    ing.on_message(UP2, envelope([status(1, 1, parent=GW2), status(2, 1, parent=1), status(3, 1, parent=2),
                                  status(4, 1, parent=99)], gw=GW2))
    ing.on_message(UP, envelope([telemetry(3, 0), telemetry(3, 4), telemetry(4, 0), telemetry(4, 2)]))
    clock.t += 11
    out = ing.poll()
    (topic, path, c3), = _routed_or_flooded(out, 3)
    assert (topic, path, c3.op, c3.args) == (downlink_topic(NET, GW2), [1, 2, 3], protocol.OP_RESEND, [1, 3])
    (topic, path, c4), = _routed_or_flooded(out, 4)
    assert (topic, path, c4.args) == (downlink_topic(NET, GW), None, [1, 1])  # no route: the old way
    snap = ing.snapshot()
    assert (snap["commands_routed"], snap["commands_flooded"], snap["route_fallbacks"]) == (1, 1, 1)
    clock.t += 5  # unanswered: the first retry goes down the same path
    (topic, path, c3b), = _routed_or_flooded(ing.poll(), 3)
    assert (topic, path, c3b.args) == (downlink_topic(NET, GW2), [1, 2, 3], [1, 3]) and c3b.cseq > c3.cseq
    got = _retry(ing, clock, 3)  # unanswered again: the next retry floods from every gateway
    (topic, path, c3c), = got
    assert (topic, path, c3c.args) == (downlink_topic(NET), None, [1, 3]) and c3c.cseq > c3b.cseq
    ing.flush()
    vias = [json.loads(e["detail"])["via"] for e in store.events(node=3, kind="resend_request")]
    assert vias == ["route", "route", "all"]


def test_a_retry_goes_down_a_new_path_when_status_reports_moved_it(store):
    """Routed requests unanswered twice (the second down the same path): when a node on the
    path has reported a new parent since, the next retry goes down the new path (counted
    route_retries_rerouted); down the same path it would be as stale as before, so it is
    flooded (scoped), as is the next retry if nothing moved."""
    clock = Clock()
    ing = make_ingest(store, clock, max_attempts=5)
    ing.on_message(UP2, envelope([status(1, 1, parent=GW2), status(2, 1, parent=GW2), status(3, 1, parent=1),
                                  telemetry(3, 0), telemetry(3, 4)], gw=GW2))
    clock.t += 11
    (_, path, c1), = _routed_or_flooded(ing.poll(), 3)
    assert path == [1, 3]
    (_, path, c2), = _retry(ing, clock, 3)
    assert path == [1, 3] and c2.cseq > c1.cseq
    ing.on_message(UP2, envelope([status(3, 2, parent=2)], gw=GW2))  # 3 moved to relay 2
    (topic, path, c3), = _retry(ing, clock, 3)
    assert (topic, path, c3.args) == (downlink_topic(NET, GW2), [2, 3], [1, 3]) and c3.cseq > c2.cseq
    (topic, path, c4), = _retry(ing, clock, 3)  # nothing moved since: the next retry floods
    assert path is None and c4.cseq > c3.cseq
    snap = ing.snapshot()
    assert (snap["commands_routed"], snap["commands_flooded"], snap["route_retries_rerouted"]) == (3, 1, 1)
    assert snap["route_fallbacks"] == 0
    ing.flush()
    assert [json.loads(e["detail"])["via"] for e in store.events(node=3, kind="resend_request")] == \
        ["route", "route", "route", "all"]


def test_no_route_through_an_offline_gateway_a_loop_or_with_routing_off(store):
    clock = Clock()
    ing = make_ingest(store, clock, route_wait_s=0)
    ing.on_message(UP2, envelope([status(1, 1, parent=GW2), status(2, 1, parent=3), status(3, 1, parent=2)],
                                 gw=GW2))
    ing.on_message(f"redmesh/{NET}/state/{GW2}", b"offline")
    ing.on_message(UP, envelope([telemetry(1, 0), telemetry(1, 2), telemetry(2, 0), telemetry(2, 2)]))
    clock.t += 11
    out = ing.poll()
    assert [p for _, p, _ in _routed_or_flooded(out, 1) + _routed_or_flooded(out, 2)] == [None, None]
    assert ing.snapshot()["route_fallbacks"] == 2
    off = Ingest(store, Keys(), NET, now_fn=clock, config=CollectorConfig(
        route_commands=False, repair=RepairConfig(grace_s=10)))
    off.on_message(UP2, envelope([status(5, 1, parent=GW2), telemetry(5, 0), telemetry(5, 2)], gw=GW2))
    clock.t += 11
    (_, path, _), = _routed_or_flooded(off.poll(), 5)
    assert path is None and off.snapshot()["commands_routed"] == 0


def test_a_broken_path_waits_for_the_reports_that_mend_it_then_floods(store):
    """Issue 15: after a gateway failure the parents reported up from a node lead to the dead
    gateway until the re-parented nodes report again (within ~1 minute). A gap's first request
    waits for that, up to route_wait_s, rather than flooding the mesh at once; a node whose
    chain is mended gets it down the new path, one whose chain stays broken a flood after the
    wait. A node that never reported a parent is not waited for."""
    clock = Clock()
    ing = make_ingest(store, clock, route_wait_s=40)
    # 2 -> 1 -> GW2 and 3 -> 1; GW2 then goes offline; node 4 never reported a parent
    ing.on_message(UP2, envelope([status(1, 1, parent=GW2), status(2, 1, parent=1), status(3, 1, parent=1)],
                                 gw=GW2))
    ing.on_message(f"redmesh/{NET}/state/{GW2}", b"offline")
    ing.on_message(UP, envelope([telemetry(n, s) for n in (2, 3, 4) for s in (0, 2)]))
    clock.t += 11
    out = ing.poll()
    assert _routed_or_flooded(out, 2) == [] and _routed_or_flooded(out, 3) == []  # waiting
    (_, path, _), = _routed_or_flooded(out, 4)  # nothing to wait for: flooded at once
    assert path is None
    waits = ing.snapshot()["route_waits"]
    assert waits == 2
    clock.t += 5
    ing.on_message(UP, envelope([status(1, 2, parent=GW)]))  # relay 1 re-parented to GW
    clock.t += 5
    out = ing.poll()
    (topic, path, _), = _routed_or_flooded(out, 2)
    assert (topic, path) == (downlink_topic(NET, GW), [1, 2])  # down the mended path
    (topic, path, _), = _routed_or_flooded(out, 3)
    assert (topic, path) == (downlink_topic(NET, GW), [1, 3])
    snap = ing.snapshot()
    assert snap["route_fallbacks"] == 1 and snap["commands_routed"] == 2  # only node 4's flood
    # a chain that stays broken: flooded once the wait is over, not before
    ing.on_message(UP, envelope([status(5, 1, parent=77), telemetry(5, 0), telemetry(5, 2)]))
    due = clock.t + 10
    sent_at = None
    for _ in range(30):
        clock.t += 5
        if _routed_or_flooded(ing.poll(), 5):
            sent_at = clock.t
            break
    assert sent_at is not None and sent_at >= due + 40 and ing.snapshot()["route_waits"] > waits


def test_a_report_that_mends_the_path_sends_the_waiting_request_at_once(store):
    """A gap waiting for a broken path is looked at again when a node reports another parent
    (fleet.repair.GapTracker.routes_changed), not at its next re-check (route_wait_s / 5 = 30 s
    here): in a gateway failure most repairs wait for exactly that report. A report of the same
    parent changes nothing."""
    clock = Clock()
    ing = make_ingest(store, clock, route_wait_s=150)
    ing.on_message(UP2, envelope([status(1, 1, parent=GW2), status(2, 1, parent=1)], gw=GW2))
    ing.on_message(f"redmesh/{NET}/state/{GW2}", b"offline")
    ing.on_message(UP, envelope([telemetry(2, s) for s in (0, 2)]))
    clock.t += 11
    assert _routed_or_flooded(ing.poll(), 2) == [] and ing.snapshot()["route_waits"] == 1
    clock.t += 1
    ing.on_message(UP, envelope([status(2, 2, parent=1)]))  # the same parent: still broken
    assert _routed_or_flooded(ing.poll(), 2) == [] and ing.snapshot()["route_waits"] == 1
    clock.t += 1
    ing.on_message(UP, envelope([status(1, 2, parent=GW)]))  # relay 1 re-parented to GW
    (topic, path, _), = _routed_or_flooded(ing.poll(), 2)
    assert (topic, path) == (downlink_topic(NET, GW), [1, 2])  # 2 s after the wait began, not 30


def test_a_gateways_own_gap_is_asked_on_its_own_topic_never_flooded(store):
    """A gateway makes readings too; it takes a command for itself off its MQTT topic and
    consumes it (firmware/mesh.py _rx_cmd floods only commands for others): no route is needed,
    and its retries go the same way."""
    clock = Clock()
    ing = make_ingest(store, clock)
    ing.on_message(UP, envelope([telemetry(GW, 0), telemetry(GW, 3)]))
    for attempt in range(2):
        clock.t += 11 if attempt == 0 else 5
        (topic, path, c), = _routed_or_flooded(ing.poll(), GW)
        assert (topic, path, c.args) == (downlink_topic(NET, GW), None, [1, 2])
    snap = ing.snapshot()
    assert (snap["commands_routed"], snap["commands_flooded"], snap["route_fallbacks"]) == (2, 0, 0)


def test_a_flooded_request_is_scoped_to_a_few_hops_beyond_the_node_then_widened(store):
    """No route known: the request is flooded, but it starts with a hop count that has relays
    stop rebroadcasting it 2 hops beyond the node's last distance (fleet/repair.py
    flood_start_hops); later attempts widen it (6 hops), then the whole mesh (hops 0)."""
    from firmware.mesh_params import DEFAULTS

    clock = Clock()
    ing = make_ingest(store, clock, max_attempts=5)
    ing.on_message(UP, envelope([telemetry(1, 0, hops=5), telemetry(1, 3, hops=5)]))
    starts = []
    for _ in range(200):
        clock.t += 1
        starts += [c.hops for _, path, c in _routed_or_flooded(ing.poll(), 1)]
    ttl = DEFAULTS["max_hops"]
    assert starts == [ttl - 7, ttl - 7, ttl - 11, 0, 0]
    assert ing.snapshot()["commands_scoped"] == 3
    ing.flush()
    scopes = [json.loads(e["detail"]).get("scope") for e in store.events(node=1, kind="resend_request")]
    assert scopes == [7, 7, 11, None, None]
    # a mesh still on firmware with a TTL of 32 (`[collector] mesh_ttl`): a flood that started at
    # 48 - 7 would not pass its first relay
    old = Ingest(store, Keys(), NET, now_fn=clock, config=CollectorConfig(
        batch_rows=1000, mesh_ttl=32, repair=RepairConfig(grace_s=10, retry_s=5, retry_max_s=20, max_attempts=2)))
    old.on_message(UP, envelope([telemetry(2, 0, hops=5), telemetry(2, 3, hops=5)]))
    starts = []
    for _ in range(200):
        clock.t += 1
        starts += [c.hops for _, path, c in _routed_or_flooded(old.poll(), 2)]
    assert starts == [32 - 7, 32 - 7]


def test_a_route_longer_than_one_frame_carries_is_flooded_and_counted(store):
    """Source routes run up to MAX_ROUTE (48) hops, the routers' TTL: after a gateway failure at
    5,000 nodes real paths ran to 35 hops. 44 node ids below 65,536 (3 bytes each) go down the
    route; 44 ids of 5 bytes do not fit one frame (250 bytes), so that request is flooded,
    scoped, and counted route_fallbacks - nothing raised."""
    from protocol.routed import MAX_ROUTE

    chains = [[base + i for i in range(44)] for base in (1000, 0x10000000)]
    store.register_nodes([{"node": n} for chain in chains for n in chain])
    clock = Clock()
    ing = make_ingest(store, clock, route_wait_s=0)
    tails = []
    for chain in chains:
        frames = [status(chain[0], 1, parent=GW)] + [status(n, 1, parent=chain[i]) for i, n in enumerate(chain[1:])]
        ing.on_message(UP, envelope(frames + [telemetry(chain[-1], 0), telemetry(chain[-1], 2)]))
        tails.append(chain[-1])
    clock.t += 11
    out = ing.poll()
    (topic, path, c), = _routed_or_flooded(out, tails[0])
    assert 32 < len(path) <= MAX_ROUTE and path == chains[0] and c.args == [1, 1]
    (topic, path, c), = _routed_or_flooded(out, tails[1])
    assert path is None and topic == downlink_topic(NET, GW) and c.args == [1, 1] and c.hops > 0
    snap = ing.snapshot()
    assert (snap["commands_routed"], snap["commands_flooded"], snap["route_fallbacks"]) == (1, 1, 1)


def test_a_retry_for_a_node_whose_path_broke_waits_for_a_whole_path_too(store):
    """The parents reported up from a node loop (or the path runs longer than the TTL): its
    frames die on the way, and so would a flood's answer. Its gap's retry, like a first request,
    waits up to route_wait_s for a report that mends the path, then goes down that path - not a
    flood of the whole mesh."""
    clock = Clock()
    ing = make_ingest(store, clock, route_wait_s=150)
    ing.on_message(UP, envelope([status(1, 1, parent=GW), status(2, 1, parent=1), telemetry(2, 0), telemetry(2, 2)]))
    first = None
    for _ in range(60):
        clock.t += 1
        got = _routed_or_flooded(ing.poll(), 2)
        if got:
            first = got
            break
    (_, path, _), = first
    assert path == [1, 2]  # the first request went down the path; unanswered
    ing.on_message(UP, envelope([status(1, 2, parent=3), status(3, 1, parent=2)]))  # 2 -> 1 -> 3 -> 2
    waits = ing.snapshot()["route_waits"]
    sent = []
    for _ in range(120):
        clock.t += 1
        sent += _routed_or_flooded(ing.poll(), 2)
    assert sent == [] and ing.snapshot()["route_waits"] > waits  # the retries fell due and waited
    ing.on_message(UP, envelope([status(3, 2, parent=GW)]))  # the loop breaks: 2 -> 1 -> 3 -> GW
    (topic, path, _), = _routed_or_flooded(ing.poll(), 2)
    assert (topic, path) == (downlink_topic(NET, GW), [3, 1, 2])
    assert ing.snapshot()["commands_flooded"] == 0


def _old_readings(store, ing):
    """Node 1: seqs 0, 1 from 90 days ago, 2, 3 from 60 (two months to prune at 30 days), 4 now."""
    ing.on_message(UP, envelope([telemetry(1, 0, time_s=T0 - 90 * 86400), telemetry(1, 1, time_s=T0 - 89 * 86400),
                                 telemetry(1, 2, time_s=T0 - 60 * 86400), telemetry(1, 3, time_s=T0 - 59 * 86400),
                                 telemetry(1, 4)]))
    assert ing.flush() == (5, 0)


def test_the_collector_prunes_on_its_own_thread_while_batches_commit_and_close_stops_it(store, monkeypatch):
    """The prune runs on the pruner's thread with its own connection, in bounded steps: between
    them batches commit (what MQTT acknowledges); close() stops it after the step in hand, and
    the next collector's prune resumes it."""
    import fleet.store.postgres
    import fleet.store.sqlite

    monkeypatch.setattr(fleet.store.postgres, "PRUNE_ROWS", 1)
    monkeypatch.setattr(fleet.store.sqlite, "PRUNE_ROWS", 1)
    clock = Clock()
    cfg = CollectorConfig(retention_days=30)
    ing = Ingest(store, Keys(), NET, now_fn=clock, config=cfg)
    _old_readings(store, ing)
    paused, steps = threading.Event(), []

    def hold(what):  # a long step: it ends when the collector asks the prune to stop
        steps.append(what)
        paused.set()
        assert ing.pruner.stop_requested.wait(30)

    ing.pruner.on_step = hold
    ing.poll()
    assert paused.wait(30) and ing.pruner.running()
    ing.on_message(UP, envelope([telemetry(1, 5), telemetry(2, 0)]))
    assert ing.flush() == (2, 0) and not ing.has_pending()  # committed while the prune is part way
    ing.poll()  # no second prune while one runs
    ing.close()
    assert not ing.pruner.running() and len(steps) == 1
    assert seqs(store, 1)[0] < 4  # stopped part way
    ing2 = Ingest(store, Keys(), NET, now_fn=clock, config=cfg)
    ing2.poll()
    assert ing2.pruner.join(30)
    assert seqs(store, 1) == [4, 5]
    ing2.close()
    assert sum(json.loads(e["detail"])["readings"] for e in store.events(kind="pruned")) == 4


def test_close_waits_for_a_prune_step_at_most_prune_stop_s(store):
    clock = Clock()
    ing = Ingest(store, Keys(), NET, now_fn=clock, config=CollectorConfig(retention_days=30, prune_stop_s=0.05))
    _old_readings(store, ing)
    paused, release = threading.Event(), threading.Event()

    def hold(what):  # a step that does not end before close() returns
        paused.set()
        assert release.wait(30)

    ing.pruner.on_step = hold
    ing.poll()
    assert paused.wait(30)
    ing.close()
    assert ing.pruner.running()
    release.set()
    assert ing.pruner.join(30)


def test_the_collector_prunes_raw_readings_older_than_the_retention(store):
    clock = Clock()
    ing = Ingest(store, Keys(), NET, now_fn=clock, config=CollectorConfig(retention_days=30, prune_every_s=3600))
    ing.on_message(UP, envelope([telemetry(1, 0, time_s=T0 - 90 * 86400), telemetry(1, 1)]))
    ing.flush()
    assert seqs(store, 1) == [0, 1]
    ing.poll()  # starts the prune on the pruner's thread
    assert ing.pruner.join(30)
    assert seqs(store, 1) == [1]  # 90 days old: gone; the hourly sums keep it
    assert [m["n"] for m in store.means(1, "1d", since=T0 - 91 * 86400)] == [1, 1]
    ing.poll()  # takes its result
    ing.flush()
    (ev,) = store.events(kind="pruned")
    assert json.loads(ev["detail"])["readings"] == 1


def test_an_overdue_reading_is_asked_for_down_the_route_once_never_flooded(store):
    """Issue 15: a lost reading showed only with the next one, a report interval later, and was
    asked for after the grace (repair p50 ~420 s in the DES). The collector learns a node's
    interval from its readings' times; when the next reading is overdue_s late it asks once,
    down the node's source route, for everything after the newest (a node that is merely late
    or gone costs one routed command; one without a known route costs nothing - never a
    flood). A reply that holds none loses nothing."""
    clock = Clock()
    ing = make_ingest(store, clock, overdue_s=60)
    ing.on_message(UP2, envelope([status(1, 1, parent=GW2), status(2, 1, parent=1), status(3, 1, parent=2),
                                  status(4, 1, parent=99)], gw=GW2))
    for i in range(2):  # readings 0 and 1 of nodes 3 and 4, 300 s apart, each 0.5 s on its way
        clock.t = T0 + 300 * i + 0.5
        ing.on_message(UP, envelope([telemetry(3, i, time_s=T0 + 300 * i), telemetry(4, i, time_s=T0 + 300 * i)],
                                    rx_ms=(T0 + 300 * i) * 1000 + 500))
        assert ing.poll() == []
    clock.t = T0 + 600 + 0.5 + 59  # reading 2 is 59 s late: not yet
    assert ing.poll() == []
    clock.t += 2
    got = _routed_or_flooded(ing.poll(), 3)
    (topic, path, c3), = got
    assert (topic, path, c3.op, c3.args) == (downlink_topic(NET, GW2), [1, 2, 3], protocol.OP_RESEND, [2, 49])
    snap = ing.snapshot()
    assert (snap["probes_sent"], snap["commands_flooded"], snap["route_fallbacks"]) == (1, 0, 0)
    ing.on_message(UP2, envelope([reply(3, 2, c3.cseq, 3, [])], gw=GW2))  # it holds none (made none)
    for _ in range(30):  # never again, neither for 3 nor for 4, and nothing is counted lost
        clock.t += 10
        assert _routed_or_flooded(ing.poll(), 3) == [] and _routed_or_flooded(ing.poll(), 4) == []
    snap = ing.snapshot()
    assert (snap["gaps_lost"], snap["gaps_opened"], snap["outstanding"]) == (0, 0, 0)
    # reading 2 was lost after all: 3 comes, a gap opens and is repaired as before
    ing.on_message(UP, envelope([telemetry(3, 3, time_s=T0 + 900)], rx_ms=int(clock.t * 1000)))
    assert ing.snapshot()["gaps_opened"] == 1
    # a probe answered with readings fills them as any reading; the next probe follows them
    ing.on_message(UP, envelope([telemetry(3, 2, time_s=T0 + 600)], rx_ms=int(clock.t * 1000)))
    ing.flush()
    assert seqs(store, 3) == [0, 1, 2, 3]
