"""Several collectors on one store (fleet collect --share GROUP; issue 11): each stores what the
broker deals it and journals what gap repair must see; one at a time - the holder of the group's
lease - repairs from the journal. Real stores (SQLite and PostgreSQL), frames made by
protocol.encode; the broker's dealing is played by the test (each message to one collector)."""
import json
import random

import pytest
from test_collector import (
    GW,
    MESH,
    NET,
    NODES,
    UP,
    Clock,
    Keys,
    LossyChannel,
    envelope,
    gap_rows,
    nkey,
    reply,
    seqs,
    status,
    telemetry,
)

import protocol
from fleet.collector import CollectorConfig, Ingest
from fleet.repair import RepairConfig
from fleet.store import SQLiteStore, open_url


@pytest.fixture(params=["sqlite", "postgresql"])
def opener(request, tmp_path):
    """opener() -> a new connection to one store (each collector has its own), nodes registered."""
    if request.param == "sqlite":
        path = str(tmp_path / "fleet.db")

        def open_one():
            return SQLiteStore(path)
    else:
        url = request.getfixturevalue("pg_url")

        def open_one():
            return open_url(url)
    opened = []

    def opener():
        s = open_one()
        opened.append(s)
        return s

    s = opener()
    s.register_nodes([{"node": n} for n in NODES] + [{"node": GW, "role": "gateway"}])
    yield opener
    for s in opened:
        s.close()


def member(store, clock, group="g", **repair):
    rc = RepairConfig(**{"grace_s": 10, "retry_s": 5, "retry_max_s": 20, "follow_s": 1, "max_attempts": 3,
                         **repair})
    cfg = CollectorConfig(batch_rows=1000, repair=rc, share=group, lead_retry_s=2.0, lead_check_s=1.0)
    return Ingest(store, Keys(), NET, now_fn=clock, config=cfg)


def crash(ing):
    """The process dies: its batch (received, unacknowledged) is gone, its lease freed."""
    ing._rows, ing._status, ing._runs, ing._jrows, ing._events = [], {}, {}, [], []
    if ing._lease is not None:
        ing._lease.release()
        ing._lease = None


def test_one_leader_at_a_time_and_another_takes_over_when_it_goes(opener):
    clock = Clock()
    a, b = member(opener(), clock), member(opener(), clock)
    a.poll()
    b.poll()
    assert a.leading and not b.leading  # the first to ask got the lease
    clock.t += 5
    a.poll()
    b.poll()
    assert a.leading and not b.leading  # and keeps it; the other keeps asking
    crash(a)
    clock.t += 3
    b.poll()
    assert b.leading
    assert not member(opener(), clock).leading  # a newcomer waits for its turn
    other = member(opener(), clock, group="h")
    other.poll()
    assert other.leading  # another group has its own leader


def test_a_gap_seen_across_collectors_is_asked_for_once_by_the_leader(opener):
    clock = Clock()
    a, b = member(opener(), clock), member(opener(), clock)
    a.poll()
    b.poll()
    assert a.leading
    # the broker deals node 1's readings 0..4 to a and 8..9 to b; 5..7 were lost
    a.on_message(UP, envelope([telemetry(1, 0, k=5)]))
    b.on_message(UP, envelope([telemetry(1, 8, k=2)]))
    for ing in (a, b):
        ing.flush()
    clock.t += 1
    assert a.poll() == [] and b.poll() == []
    # not a gap of its own on either: b never saw 0..4, a never saw 8..9, and neither opened one
    assert gap_rows(a.store) == [(1, 5, 7, "open", 0)]
    clock.t += 11
    out_b, out_a = b.poll(), a.poll()
    assert out_b == []  # not the leader: never sends
    cmds = [protocol.decode(fb, MESH, nkey(1)) for _, p in out_a for fb in protocol.decode(p).frames]
    assert [(c.op, c.args) for c in cmds] == [(protocol.OP_RESEND, [5, 7])]
    # the node's resend and reply go to b; the leader learns from the journal
    b.on_message(UP, envelope([telemetry(1, 5, k=3), reply(1, 1, cmds[0].cseq, 0, [5, 7])]))
    b.flush()
    clock.t += 1
    a.poll()
    assert seqs(a.store, 1) == list(range(10))
    assert gap_rows(a.store) == [(1, 5, 7, "recovered", 1)]
    kinds = [e["kind"] for e in a.store.events(node=1)]
    assert kinds.count("resend_request") == 1 and kinds.count("reply") == 1, kinds


def test_status_events_once_whichever_collector_gets_each_report(opener):
    clock = Clock()
    a, b = member(opener(), clock), member(opener(), clock)
    a.poll()
    b.poll()
    a.on_message(UP, envelope([status(2, 1, boot_count=1, parent=7)]))
    b.on_message(UP, envelope([status(2, 2, boot_count=2, parent=8)]))  # rebooted, new parent
    a.on_message(UP, envelope([status(2, 2, boot_count=2, parent=8)]))  # the same report, again, to a
    b.on_message(UP, envelope([status(2, 1, boot_count=1, parent=7)]))  # an old one, late, to b
    for ing in (a, b):
        ing.flush()
    clock.t += 1
    a.poll()
    b.poll()
    kinds = sorted(e["kind"] for e in a.store.events(node=2))
    assert kinds == ["reboot", "reparent"], kinds
    (row,) = a.store.status_rows(nodes=[2], fields=("node", "parent", "boot_count"))
    assert (row["parent"], row["boot_count"]) == (8, 2)  # the late old report never overwrote it


def test_the_journal_is_taken_only_once_committed_and_only_once(opener):
    s1, s2 = opener(), opener()
    with s1.transaction():
        s1.add_journal([("r", 1, 1.0, GW, 0, 4, 2, None)])
        assert s2.query("SELECT count(*) FROM journal") == [(0,)]  # not committed: not visible
        if not isinstance(s2, SQLiteStore):  # (SQLite: one writer at a time, the taker would wait)
            with s2.transaction():
                assert s2.take_journal() == []  # nor taken
    with s2.transaction():
        (row,) = s2.take_journal()
    assert row[1:] == ("r", 1, 1.0, GW, 0, 4, 2, None)
    with s1.transaction():
        assert s1.take_journal() == []  # taken once
    try:
        with s1.transaction():
            s1.add_journal([("r", 2, 2.0, GW, 5, 5, 1, None)])
            raise RuntimeError("rolled back")
    except RuntimeError:
        pass
    with s2.transaction():
        assert s2.take_journal() == []


def test_a_new_leader_continues_from_where_the_last_one_stopped(opener):
    clock = Clock()
    a, b = member(opener(), clock), member(opener(), clock)
    a.poll()
    b.poll()
    a.on_message(UP, envelope([telemetry(3, 0, k=4), status(3, 1, boot_count=1, parent=7)]))
    a.flush()
    clock.t += 1
    a.poll()  # the leader applied 0..3 and the status
    # b stores 6..7 (4..5 lost) and the leader dies before it takes that journal row
    b.on_message(UP, envelope([telemetry(3, 6, k=2), status(3, 2, boot_count=1, parent=7)]))
    b.flush()
    crash(a)
    clock.t += 3
    b.poll()
    assert b.leading
    # b took over from the view a left (max seq 3), so the journal's 6..7 opened 4..5 - though
    # node_state already said last_seq 7 - and the repeated status raised no reparent/reboot event
    assert b.tracker.node_gaps(3) == [(4, 5, "open")]
    assert gap_rows(b.store) == [(3, 4, 5, "open", 0)]
    assert [e["kind"] for e in b.store.events(node=3)] == []


@pytest.mark.parametrize("seed", [1, 2])
def test_three_collectors_lossy_channel_leader_killed_every_reading_stored_once(opener, seed):
    """Messages dealt at random to three collectors; 25 % of frames lost, 10 % duplicated,
    reordered; the leader is killed (its batch lost) twice. Every reading the nodes made is stored
    once (their rings hold everything: nothing may be lost), and the resend requests stay within
    the real gaps and their retries."""
    rnd = random.Random(seed)
    clock = Clock()
    members = [member(opener(), clock, grace_s=5, retry_s=3, retry_max_s=10, follow_s=1, max_attempts=8,
                      max_outstanding=4, max_outstanding_node=1) for _ in range(3)]
    ch = LossyChannel(rnd, clock, 10000)
    kills = {120: 0, 260: 0}
    for step in range(700):
        envelopes = ch.tick(step)
        if step in kills:
            leader = next(m for m in members if m.leading)
            crash(leader)
            members[members.index(leader)] = member(opener(), clock, grace_s=5, retry_s=3, retry_max_s=10,
                                                    follow_s=1, max_attempts=8, max_outstanding=4,
                                                    max_outstanding_node=1)
            kills[step] = 1
        for payload in envelopes:
            rnd.choice(members).on_message(UP, payload)  # the broker deals each to one member
        for m in members:
            out = m.poll()
            assert not out or m.leading
            ch.answer(out)
    for m in members:
        m.close()
    store = members[0].store
    assert all(kills.values())
    assert [r for r in gap_rows(store) if r[3] != "recovered"] == []
    for n, fake in ch.nodes.items():
        stored = seqs(store, n)
        assert stored == list(range(fake.next_seq)), n  # every one, once
    gaps = gap_rows(store)
    retries = sum(r[4] for r in gaps)
    events = store.events(kind="resend_request", limit=100000)
    print(f"seed {seed}: {len(gaps)} gaps, {retries} requests recorded on them, {ch.commands} sent, "
          f"{len(events)} resend_request events")
    assert gaps, "no frame was lost: the test proves nothing"
    # every request is recorded, but those of a killed leader not yet committed (its batch died
    # with it: at most its outstanding requests), and each asked for a real gap: one the gap rows
    # hold (no collector took another's readings for a gap)
    assert ch.commands - len(kills) * 4 <= len(events) <= ch.commands
    for ev in events:
        d = json.loads(ev["detail"])
        assert any(r[0] == ev["node"] and r[1] <= d["last"] and d["first"] <= r[2] for r in gaps), ev


def test_a_reply_replayed_to_another_collector_is_applied_once(opener):
    clock = Clock()
    a, b = member(opener(), clock), member(opener(), clock)
    a.poll()
    b.poll()
    fb = reply(4, 7, 3, 0, [1, 2])
    a.on_message(UP, envelope([fb]))
    b.on_message(UP, envelope([fb], eseq=2))  # the same frame, replayed, dealt to the other member
    for ing in (a, b):
        ing.flush()
    clock.t += 1
    a.poll()
    assert [e["kind"] for e in a.store.events(node=4)] == ["reply"]


def test_the_reply_replay_window_survives_a_change_of_leader(opener):
    """The group's replay window over a node's reply counter lives in the store (repair_nodes):
    after the leader dies, a replay of an applied reply dealt to a member whose own window never
    saw it is still refused by the next leader (a duplicate: not applied twice), and a reply far
    below the window is counted as a replay reject, once, by the leader."""
    clock = Clock()
    a, b, c = member(opener(), clock), member(opener(), clock), member(opener(), clock)
    for ing in (a, b, c):
        ing.poll()
    assert a.leading
    a.on_message(UP, envelope([reply(4, 70, 3, 0, [1, 2])]))  # reply seq 70 of node 4
    a.flush()
    clock.t += 1
    a.poll()  # the leader applied it and saved its window
    crash(a)
    clock.t += 3
    b.poll()
    assert b.leading
    # the same frame again, to c, and an old reply to b: each passes its member's own window
    # (neither saw node 4's replies), the group's window is the judge
    c.on_message(UP, envelope([reply(4, 70, 3, 0, [1, 2])], eseq=5))
    b.on_message(UP, envelope([reply(4, 2, 1, 0, [])], eseq=6))
    for ing in (b, c):
        ing.flush()
    assert b.stats.rejects == c.stats.rejects == 0
    clock.t += 1
    b.poll()
    assert [e["kind"] for e in b.store.events(node=4)] == ["reply"]  # applied once, by a
    assert b.stats.reply_duplicates == 1 and b.stats.rejects_by_cause.get("replay") == 1
    assert b.store.rejects()["replay"]["count"] == 1
    (row,) = [v for n, v in b.store.repair_nodes().items() if n == 4]
    assert row["reply_top"] == 70 and row["reply_bits"] & 1
