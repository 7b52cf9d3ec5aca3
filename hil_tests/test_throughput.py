"""Issue 4 HIL tests on the virtual rig: every reading stored exactly once, through faults."""
import collections
import json
import time

import pytest

from fleet.sim import topology as topo_mod
from fleet.sim.verify import delivery_report, made_by_node
from protocol.envelope import uplink_topic


def _made(rig, skip=()):
    """What each node says it made so far (its console lines): the count the store is held to,
    independent of the store (fleet/sim/verify.py)."""
    return made_by_node({n: p.log_path for n, p in rig.rig.nodes.items() if n not in skip})


def _settled(rig, min_per_node, made=None):
    """Done when every node has >= min_per_node readings stored, with no holes and no gaps
    still open, and (given `made`, a snapshot of what the nodes made) every reading made is
    stored; returns the report (or a falsy tuple with the report, to show on timeout)."""
    rep = delivery_report(rig.home, made=made)
    ok = (rep["nodes_reporting"] == rep["nodes"] and rep["holes"] == 0 and rep["gaps_open"] == 0
          and rep["min_per_node"] >= min_per_node and not rep["missing"])
    return rep if ok else (False, rep)


@pytest.mark.timeout(400)
def test_20_node_grid_every_reading_stored_once(make_rig):
    topo = topo_mod.grid(4, 5, n_gateways=1, seed=3)
    rig = make_rig(topo, offered_interval_s=3, offered_for_s=60, seed=3)
    time.sleep(60)
    # the offered load is over (sensor readings go on): each reading the nodes made by now must
    # reach the store, counted from the nodes' own console lines, not from the store
    made = _made(rig)
    rep = rig.wait_until(lambda: _settled(rig, 15, made), 150,
                         "every reading the nodes made stored, without holes")
    print(rep)
    assert rep["issued_source"] == "node consoles"
    assert rep["made"] >= 20 * 15, "the nodes made fewer readings than the load offers: the test proves little"
    # exactly once: every reading a node made is stored (the store's UNIQUE(node, seq) keeps the
    # duplicates that QoS 1 and the mesh deliver - rep["duplicates_received"] - out), and
    # nothing is stored that no node made
    assert rep["missing"] == 0, rep["missing_by_node"]
    assert rep["unexplained"] == 0
    assert rep["holes"] == 0 and rep["lost"] == 0


@pytest.mark.timeout(400)
def test_gateway_killed_nodes_reparent_nothing_lost(make_rig, needs_virtual_rig):
    topo = topo_mod.grid(4, 5, n_gateways=2, seed=4)
    gws = list(topo.gateways())
    # a changed parent is reported once held 10-20 s (a board: 30-60 s, the config's default):
    # the same report, sooner
    rig = make_rig(topo, offered_interval_s=4, offered_for_s=75, seed=4,
                   node_config={"parent_report_delay_ms": 10000})
    time.sleep(25)
    victim = gws[0]

    def placed():  # a status with a parent from every node (the first comes 20 s after boot)
        parents = {n: p for (n, p) in rig.query("SELECT node, parent FROM node_state") if n not in gws}
        return parents if len(parents) == len(topo.nodes) - len(gws) and all(parents.values()) else (False, parents)

    children = sorted(n for n, p in rig.wait_until(placed, 60, "a parent from every node").items() if p == victim)
    assert children, "no node reported the victim as its parent: the re-parenting check would prove nothing"
    killed_at = time.time()
    t_kill = int(killed_at)
    rig.kill_node(victim)  # the process dies and the medium stops carrying its frames
    time.sleep(50)
    made = _made(rig, skip={victim})
    rep = rig.wait_until(lambda: _settled_except(rig, {victim}, made), 180,
                         "the surviving nodes' readings stored without holes after the gateway died")
    print(rep)
    # the nodes the victim carried before the kill re-parented: each was heard through the other
    # gateway afterwards
    served = {n for (n,) in rig.query("SELECT DISTINCT node FROM readings WHERE gateway = ? AND node != ? "
                                      "AND rx_ts < ?", victim, victim, t_kill)}
    after = {n for (n,) in rig.query("SELECT DISTINCT node FROM readings WHERE gateway = ? AND rx_ts > ?",
                                     gws[1], t_kill + 1)}
    print("served by the victim before the kill:", sorted(served), "heard via the other gateway after:", sorted(after))
    assert served, "the killed gateway carried no node's readings: the test proves nothing"
    assert served <= after, served - after
    assert rep["holes"] == 0 and rep["lost"] == 0 and rep["missing"] == 0, rep["missing_by_node"]
    # the nodes that had the victim as parent reported their new parent (firmware/node.py
    # parent_report_ms: once it has held the config's parent_report_delay_ms plus a random part
    # of it), not only at their next 300 s status: the source routes of the fleet's commands are
    # compiled from these
    def reported():
        state = {n: (p, at) for (n, p, at) in rig.query("SELECT node, parent, status_at FROM node_state")}
        left = {n: state[n] for n in children if state[n][0] in (victim, 0, None) or state[n][1] <= killed_at}
        return (not left) or (False, left)

    print("children of the victim:", children)
    rig.wait_until(reported, 150, "the re-parented nodes to report their new parents")


def _uplinks_published(rig, gw, n, timeout_s):
    """Watch the rig's broker until gateway `gw` has published n uplink messages, or timeout_s
    passed; returns how many it saw (a subscriber of our own: no session, nothing acknowledged
    for the collector)."""
    import asyncio

    import aiomqtt

    async def watch():
        host, port = rig.rig.broker_url.split("://")[1].split(":")
        got = 0
        try:
            async with asyncio.timeout(timeout_s):
                async with aiomqtt.Client(host, int(port), identifier="hil-uplink-watch") as c:
                    await c.subscribe(uplink_topic(rig.home.net_id, gw), qos=0)
                    async for _ in c.messages:
                        got += 1
                        if got >= n:
                            break
        except TimeoutError:
            pass
        return got

    return asyncio.run(watch())


def _settled_except(rig, skip, made):
    rep = delivery_report(rig.home, exclude=skip, made=made)
    ok = rep["holes"] == 0 and rep["gaps_open"] == 0 and rep["min_per_node"] >= 10 and rep["missing"] == 0
    return rep if ok else (False, rep)


@pytest.mark.timeout(600)
def test_25_node_grid_at_20pc_loss_broker_sigkill_repaired_down_source_routes(make_rig, needs_virtual_rig):
    """Issue 4: the broker dies (SIGKILL: what it acknowledged but had not delivered is gone) and
    gap repair recovers every reading. Issue 15 item 6: on a 25-node grid with 20 % extra loss on
    the medium, and every first resend request goes down the source route compiled from the
    parents the nodes reported (a retry after an unanswered routed attempt is flooded, scoped)."""
    topo = topo_mod.grid(5, 5, n_gateways=1, seed=5)
    # Repair timed as production's against the relays' 60 s duplicate memory (firmware/mesh.py):
    # a resend reuses the readings' seq numbers, and a copy of (origin, seq) seen with the same hop
    # count within dup_memory_ms is taken for a lost ACK's retransmission and dropped. Production
    # asks 120 s after a gap, then every >= 60 s; the rig's usual 20 s / 15 s had the relays that
    # carried the lost originals swallow the routed attempt's readings (its reply got through).
    rig = make_rig(topo, offered_interval_s=2, offered_for_s=70, seed=5, repair={"grace_s": 65.0, "retry_s": 60.0})
    rig.medium({"op": "loss", "p": 0.2})
    rig.wait_until(lambda: delivery_report(rig.home)["nodes_reporting"] == 25, 90, "readings from all 25 nodes")
    # What a broker restart loses, made certain: the broker keeps no session across a SIGKILL,
    # so what the gateway publishes to the new broker before the collector has subscribed again
    # is acknowledged and dropped. (Left to the race between their reconnections, the gateway
    # sometimes lost it, and the test proved nothing.) The collector is stopped before the kill
    # and started again once the gateway has published to the new broker: readings made after
    # the restart.
    # Readings made after the restart were not enough: on a busy CI machine the gateway could
    # still be reconnecting when the collector came back, and nothing was lost (the test proved
    # nothing). So the test watches the new broker itself until the gateway has published there.
    rig.stop_collector()
    try:
        rig.kill_broker()
        time.sleep(5)
        rig.restart_broker()
        seen = _uplinks_published(rig, topo.gateways()[0], 3, 90)
        assert seen >= 3, f"the gateway published {seen} uplinks to the restarted broker in 90 s"
    finally:
        rig.start_collector()
    time.sleep(40)
    made = _made(rig)
    rep = rig.wait_until(lambda: _settled(rig, 20, made), 300, "gap repair to recover every reading after the broker died")
    print(rep)
    assert rep["holes"] == 0 and rep["lost"] == 0 and rep["missing"] == 0, rep["missing_by_node"]
    assert rep["unexplained"] == 0
    dropped = rig.medium({"op": "stats"})["stats"]["dropped"]
    requests = [json.loads(d) for (d,) in rig.query("SELECT detail FROM events WHERE kind = 'resend_request'")]
    hops = [len(r["path"]) for r in requests if r["via"] == "route"]
    print(f"medium drops {dropped}; {len(requests)} resend requests, by way: "
          f"{collections.Counter(r['via'] for r in requests)}; route lengths {collections.Counter(hops)}")
    assert dropped.get("extra_loss", 0) > 100, "the medium lost nothing extra: the test proves little"
    assert requests, "the broker's death opened no gap: the test proves nothing"
    # Every first request goes down a source route ("gateway": a gap in a gateway's own readings,
    # asked on its own topic; it floods no command for itself). A retry - the routed attempt went
    # unanswered - is flooded, scoped: at 20 % extra loss a hop can fail all its sends (one in
    # about 25 requests in CI runs: a link that was failing, the node re-parented soon after), so
    # the retries are printed and counted, not forbidden.
    first = [r for r in requests if r["cseq"] == 1]
    assert all(r["via"] in ("route", "gateway") for r in first), "a first resend request was flooded"
    retried = [r for r in requests if r["via"] not in ("route", "gateway")]
    print(f"routed first requests {len(first)}, retried by flood {len(retried)}")
    assert all(r.get("scope") for r in retried if r["via"] == "all"), "a retry flooded the whole mesh"


@pytest.mark.timeout(400)
def test_garbage_and_forged_frames_counted_nothing_lost(make_rig, needs_virtual_rig):
    import asyncio

    import protocol

    topo = topo_mod.grid(3, 4, n_gateways=1, seed=6)
    rig = make_rig(topo, offered_interval_s=3, offered_for_s=60, seed=6)
    time.sleep(15)
    src = [n.id for n in topo.nodes if not n.is_gateway][0]
    # 1. radio: garbage bytes and a frame with a wrong hop tag, broadcast by a node's position
    bad_mesh = bytes(32)
    forged = protocol.encode(protocol.Telemetry(origin=src, seq=999999, time_s=int(time.time()),
                                                readings=[protocol.Reading(0, 1, 2, 3, 4, 5, 6, 0)]),
                             bad_mesh, bytes(32))
    for i in range(50):
        rig.medium({"op": "inject", "src": src, "hex": (bytes([i]) * 40).hex()})
        rig.medium({"op": "inject", "src": src, "hex": forged.hex()})
    # 2. broker: garbage, an envelope with a forged end-to-end tag, an oversize message
    ks = rig.home.keys()
    mesh = ks.mesh_key()
    forged_e2e = protocol.encode(protocol.Telemetry(origin=src, seq=888888, time_s=int(time.time()),
                                                    readings=[protocol.Reading(0, 1, 2, 3, 4, 5, 6, 0)]),
                                 mesh, bytes(32))
    env = protocol.encode(protocol.Envelope(gateway=topo.gateways()[0], eseq=1, items=[(1, -50, forged_e2e)]))
    net = rig.home.net_id
    msgs = [(uplink_topic(net, topo.gateways()[0]), b"\x00garbage"),
            (uplink_topic(net, topo.gateways()[0]), env),
            (uplink_topic(net, topo.gateways()[0]), b"\x85" + bytes(300000))]

    async def publish():
        import aiomqtt

        host, port = rig.rig.broker_url.split("://")[1].split(":")
        async with aiomqtt.Client(host, int(port), identifier="hil-attacker") as c:
            for topic, payload in msgs:
                await c.publish(topic, payload, qos=1)

    asyncio.run(publish())
    time.sleep(45)
    made = _made(rig)
    rep = rig.wait_until(lambda: _settled(rig, 15, made), 150, "valid readings all stored despite the junk")
    print(rep)
    assert all(n.alive() for n in rig.rig.nodes.values()), "a node died on junk input"
    # each kind of junk sent to the broker was counted under its cause
    for cause in ("garbage", "bad_tag", "oversize"):
        assert rep["rejects"].get(cause, 0) >= 1, (cause, rep["rejects"])
    seqs = rig.query("SELECT count(*) FROM readings WHERE seq IN (999999, 888888)")
    assert seqs[0][0] == 0, "a forged reading was stored"
    assert rep["holes"] == 0 and rep["missing"] == 0 and rep["unexplained"] == 0, rep
