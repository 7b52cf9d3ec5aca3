"""Issue 11 on the virtual rig: city scale - mosquitto, PostgreSQL and three `fleet collect --share`
processes sharing the load of a 20-node grid of real MicroPython nodes, through the faults a
city deployment meets: a collector SIGKILLed, then the repair leader, then the database down for
30 s. Every reading the nodes made is stored exactly once, every gap repaired, every resend request
asked for a real gap; nothing the broker delivered while the database was down is acknowledged
before it is committed (so none of it needs a resend)."""
import json
import os
import signal
import sys
import time

import pytest

from fleet.sim import topology as topo_mod
from fleet.sim.broker import mosquitto_path
from fleet.sim.verify import delivery_report, made_by_node

sys.path.insert(1, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from pg import PgCluster, PgUnavailable  # noqa: E402 - tests/pg.py: a throwaway PostgreSQL cluster

LEADING = "leading gap repair"


def _log(cp):
    with open(cp.log_path, errors="replace") as f:
        return f.read()


def _leaders(rig):
    """The collector processes alive whose log says they lead now (the last lease line is a gain)."""
    out = []
    for cp in rig.rig.collectors:
        text = _log(cp)
        if cp.alive() and text.rfind(LEADING) > text.rfind("no longer leading"):
            out.append(cp)
    return out


def _hang_then_kill(cp, hang_s=4.0):
    """The process hangs (SIGSTOP: the broker goes on dealing it messages it never takes), then
    dies (SIGKILL): what it held unacknowledged dies with its clean session."""
    os.kill(cp.pid, signal.SIGSTOP)
    time.sleep(hang_s)
    cp.kill()


@pytest.fixture
def pg(tmp_path):
    cluster = PgCluster()
    try:
        cluster.start()
    except (PgUnavailable, OSError) as e:
        pytest.skip(f"PostgreSQL unavailable: {e}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.timeout(600)
def test_three_collectors_on_postgresql_through_kills_and_a_database_outage(rig_kind, tmp_path, pg):
    from fleet.home import FleetHome
    from fleet.sim.handle import RigHandle
    from fleet.sim.rig import RigOptions

    if rig_kind != "sim":
        pytest.skip("needs the virtual rig (it kills collectors and stops the database)")
    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto): shared subscriptions need it")
    home = FleetHome.resolve(str(tmp_path / "home")).with_overrides({"store.url": pg.url()})
    topo = topo_mod.grid(4, 5, n_gateways=1, seed=11)
    logs = []
    rig = RigHandle(home, topo, RigOptions(broker_kind="mosquitto", collector=False, collector_procs=3,
                                           offered_interval_s=3, offered_for_s=75, seed=11,
                                           repair={"grace_s": 20.0, "retry_s": 15.0}), log=logs.append)
    try:
        t0 = time.time()
        rig.start()
        members = rig.rig.collectors
        rig.wait_until(lambda: len(_leaders(rig)) == 1, 30, "one collector to lead gap repair")
        time.sleep(10)
        victim = next(c for c in members if c not in _leaders(rig))
        _hang_then_kill(victim)
        time.sleep(4)
        (leader,) = _leaders(rig)
        _hang_then_kill(leader)
        t_kill = time.monotonic()
        rig.wait_until(lambda: len(_leaders(rig)) == 1, 30, "another collector to take over gap repair")
        failover_s = time.monotonic() - t_kill
        victim.start()  # a member rejoins (a new process: its own client id)
        time.sleep(5)
        pause_at = time.time()
        pg.pause()
        time.sleep(30)
        pg.resume()
        resume_at = time.time()
        rig.wait_until(lambda: len(_leaders(rig)) == 1, 30, "a collector to lead again after the outage")
        # the offered load ends ~75 s after boot; then every reading the nodes made must be stored
        time.sleep(max(0.0, t0 + 85 - time.time()))
        made = made_by_node({n: p.log_path for n, p in rig.rig.nodes.items()})

        def settled():
            rep = delivery_report(rig.home, made=made)
            ok = rep["holes"] == 0 and rep["gaps_open"] == 0 and not rep["missing"] and rep["min_per_node"] >= 15
            return rep if ok else (False, rep)

        rep = rig.wait_until(settled, 180, "every reading the nodes made stored, every gap repaired")
        print(rep)
        gaps = rig.query("SELECT node, first_seq, last_seq, state, requests FROM gaps")
        requests = [(n, json.loads(d)) for n, d in rig.query(
            "SELECT node, detail FROM events WHERE kind = 'resend_request'")]
        # readings the nodes made while the database was down (by their own clocks, a margin
        # each side): the broker held what the collectors could not commit, unacknowledged
        held = rig.query("SELECT node, seq FROM readings WHERE ts BETWEEN ? AND ?", int(pause_at) + 3,
                         int(resume_at) - 3)
        held_in_gaps = [(n, s) for n, s in held
                        if any(g[0] == n and g[1] <= s <= g[2] for g in gaps)]
        taken = sum(_log(c).count(LEADING) for c in members)
        print(f"3 collectors: one SIGKILLed, then the leader (failover {failover_s:.1f} s), database down 30 s; "
              f"{len(gaps)} real gaps ({sum(g[4] for g in gaps)} requests on them), {len(requests)} resend "
              f"requests sent; leases taken {taken}; readings made while the database was down {len(held)}, "
              f"of them needing a resend {len(held_in_gaps)}")
        assert rep["issued_source"] == "node consoles"
        assert rep["missing"] == 0 and rep["unexplained"] == 0 and rep["lost"] == 0
        assert rep["duplicates_stored"] == 0  # exactly once
        assert gaps, "the kills opened no gap: the test proves nothing"
        assert all(g[3] == "recovered" for g in gaps), gaps
        for node, d in requests:  # each asked for a real gap
            assert any(g[0] == node and g[1] <= d["last"] and d["first"] <= g[2] for g in gaps), (node, d)
        assert held, "no reading was made while the database was down: the test proves little"
        assert held_in_gaps == [], held_in_gaps
        assert failover_s <= 15
    finally:
        rig.stop()
        if logs:
            print("\n".join(logs[-20:]))
