"""The discrete-event simulator (fleet/sim/des.py, `fleet sim des`) on small networks: 25-100 nodes,
a few virtual minutes each, the firmware's own routers (and OTA engines) in every node."""
import json

import pytest
from click.testing import CliRunner

from fleet.cli.sim.des import cli as des_cli
from fleet.errors import FleetError
from fleet.sim.des import DesOptions, Simulation, run_des

TIMING_KEYS = ("wall_s", "build_s", "events_per_s", "peak_rss_mb")


def _strip(r):
    return {k: v for k, v in r.items() if k not in TIMING_KEYS}


def test_same_seed_same_results_and_another_seed_differs():
    opts = dict(nodes=49, topology="grid", gateways=1, minutes=8, report_interval_s=60)
    a = run_des(DesOptions(seed=3, **opts))
    b = run_des(DesOptions(seed=3, **opts))
    c = run_des(DesOptions(seed=4, **opts))
    assert _strip(a) == _strip(b)
    assert a["events"] == b["events"] and a["radio"] == b["radio"]
    assert a["radio"] != c["radio"]


def test_clean_grid_delivers_everything_with_few_hops():
    r = run_des(DesOptions(nodes=100, topology="grid", gateways=2, minutes=12, report_interval_s=60))
    # the first reading 60 s after boot, the second 60-120 s later (the grid's random phase),
    # then one a minute until the measured window ends: ~7 a node
    assert r["readings_made"] >= 100 * 6
    assert r["delivery_first_pass"] >= 0.99
    assert r["delivery_after_repair"] >= 0.99
    assert 0 < r["latency_p50_s"] <= r["latency_p99_s"] < 5
    assert sum(r["hops"].values()) >= r["readings_made"] // 2
    assert r["control_tx"]["beacons"] > 0 and r["control_overhead"] > 0
    # the radio model did real work: MAC attempts, carrier sense, some collisions
    assert r["radio"]["mac_attempts"] >= r["router"]["data_tx"]
    assert r["radio"]["deferrals"] > 0


def test_gateway_failure_nodes_reparent_and_nothing_is_lost():
    r = run_des(DesOptions(nodes=100, topology="grid", gateways=2, minutes=24, report_interval_s=60,
                           gateway_failure=True))
    g = r["gateway_failure"]
    assert g["nodes_served"] > 10
    assert g["nodes_rerouted"] == g["nodes_served"]
    assert g["reroute_s"] is not None and g["reroute_s"] < 180
    assert r["delivery_after_repair"] >= 0.98


def test_a_changed_parent_is_reported_before_the_next_periodic_status():
    """node.py reports a parent once it has held PARENT_REPORT_DELAY_MS (+ a random part),
    at most once per PARENT_REPORT_GAP_MS: after a gateway dies, the fleet's parent map (what
    source routes are compiled from) names the new parents long before the 300 s status."""
    from firmware.node import PARENT_REPORT_DELAY_MS, PARENT_REPORT_GAP_MS, parent_report_ms

    assert parent_report_ms(1000, None, 7) == 1000 + PARENT_REPORT_DELAY_MS + 7
    assert parent_report_ms(10**7, 0, 7) == 10**7 + PARENT_REPORT_DELAY_MS + 7
    assert parent_report_ms(1000, 1000 + PARENT_REPORT_GAP_MS, 0) == 1000 + 2 * PARENT_REPORT_GAP_MS  # not so soon
    sim = Simulation(DesOptions(nodes=100, topology="grid", gateways=2, minutes=16, report_interval_s=60,
                                gateway_failure=True))
    checks = []

    def check(t):  # 3 minutes after the failure: before most nodes' periodic status (300 s)
        parents = sim.ingest.routes.parents
        checks.append([n.id for n in sim.nodes if n.alive and not n.is_gateway
                       and n.router.parent and parents.get(n.id) != n.router.parent])

    sim.at(sim.end_us // 3 + 180_000_000, check)
    r = sim.run()
    assert checks and r["collector"]["parent_reports"] > 10
    served = r["gateway_failure"]["nodes_served"]
    assert served > 10
    # every node that had moved by then and held its parent is known at its new parent (a
    # few may still be moving, or waiting for the gap since their last report)
    assert len(checks[0]) <= served // 5, (checks[0], served)


def test_power_cut_street_backlog_drains_after_power_returns():
    # a 30-pole street with its gateway at one end: cutting its middle third cuts off the far end
    sim = Simulation(DesOptions(nodes=30, topology="line", gateways=1, minutes=30, report_interval_s=60,
                                power_cut_street=True))
    r = sim.run()
    p = r["power_cut"]
    assert p["nodes"] == 10 and p["start_s"] == 600 and p["end_s"] == 1200
    assert p["backlog_at_return"] >= 10 * 5  # the far end kept ~10 minutes of readings
    assert p["drained_s"] is not None and p["drained_s"] < 120
    assert sim.backlog(sim.end_us) <= len(sim.nodes)  # only fresh readings left unsent
    # all readings are delivered but those still in a cut node's RAM block at the cut
    made = r["readings_made"]
    assert r["delivery_after_repair"] >= (made - p["unsent_lost_in_ram"]) / made - 0.005
    # the reboot skipped reading counters: the collector asked, the nodes answered (code 3)
    assert r["repair"]["requests"] > 0 and r["control_tx"]["replies"] > 0


def test_a_lost_reading_is_recovered_by_a_flooded_resend():
    sim = Simulation(DesOptions(nodes=49, topology="grid", gateways=1, minutes=12, report_interval_s=60,
                                repair="flood"))
    dropped = _lose_one_reading(sim, 40, 180_000_000)
    r = sim.run()
    assert dropped
    got = sim.measure.got[40]
    assert got[dropped[0]] > 0  # arrived in the end...
    assert not sim.measure.first_pass[40][dropped[0]]  # ...through the repair path
    assert r["repair"]["recovered"] >= 1
    assert r["control_tx"]["flooded"] > 10 and r["control_tx"]["fallback"] == 0  # flooded by the routers
    assert r["delivery_after_repair"] > r["delivery_first_pass"]


def test_ota_on_a_small_grid_completes_while_telemetry_flows():
    sim = Simulation(DesOptions(nodes=25, topology="grid", gateways=1, minutes=10, report_interval_s=60,
                                ota_bytes=8000))
    r = sim.run()
    assert r["ota_seeded_s"] is not None
    assert r["ota_complete_s"] is not None and r["ota_nodes_complete"] == 25
    assert r["ota_tx_per_node"] > 0
    assert r["ota_delivery_during"] is None or r["ota_delivery_during"] >= 0.95
    pages = sim.ota.pages
    for n in sim.nodes:
        assert n.store.manifest() == sim.ota.bundle.signed_manifest
        assert [n.store.get_page(i) for i in range(len(pages))] == pages
    assert r["radio"]["frames_by_type"]["ota_data"] > 0


def test_status_frames_go_up_with_the_telemetry():
    r = run_des(DesOptions(nodes=49, topology="grid", gateways=1, minutes=6, report_interval_s=60,
                           status_interval_s=60))
    assert r["collector"]["status_sent"] >= 49 * 5
    assert r["collector"]["status_frames"] >= 0.95 * r["collector"]["status_sent"]
    assert r["radio"]["frames_by_type"]["status"] > 0
    assert r["delivery_first_pass"] >= 0.99


def test_extra_loss_costs_retries_not_readings():
    clean = run_des(DesOptions(nodes=49, topology="grid", gateways=1, minutes=10, report_interval_s=60))
    lossy = run_des(DesOptions(nodes=49, topology="grid", gateways=1, minutes=10, report_interval_s=60, loss=0.2))

    def attempts_per_unicast(r):  # MAC attempts of data frames (a beacon is one attempt)
        rd = r["radio"]
        return (rd["mac_attempts"] - rd["frames_by_type"]["beacon"]) / rd["frames_by_type"]["telemetry"]

    # (whole sends that fail after the MAC's 4 attempts need not rise: the link estimate then
    # prefers the better links. Seed 1: 1.95 clean, 2.71 at 20 % loss; over seeds 1-4 clean is
    # 1.66-2.00, 10 % loss 2.06-2.11 - too close to hold across firmware changes - and 20 %
    # 2.42-2.73)
    assert attempts_per_unicast(lossy) > attempts_per_unicast(clean)
    assert lossy["delivery_after_repair"] >= 0.98


def _lose_one_reading(sim, node_id, at_us):
    """The newest reading of node_id vanishes after at_us, as if acknowledged and then lost upstream."""
    victim = sim.by_id[node_id]
    dropped = []

    def at_reading(t):
        if victim.app.unsent:
            seq = next(reversed(victim.app.unsent))
            del victim.app.unsent[seq]
            dropped.append(seq)
        else:
            sim.at(t + 100_000, at_reading)

    sim.at(at_us, at_reading)
    return dropped


def test_the_gap_grace_is_the_wait_before_the_first_request():
    lat = {}
    for grace in (None, 20.0):
        sim = Simulation(DesOptions(nodes=49, topology="grid", gateways=1, minutes=12, report_interval_s=60,
                                    gap_grace_s=grace))
        dropped = _lose_one_reading(sim, 40, 180_000_000)
        r = sim.run()
        assert dropped and sim.measure.got[40][dropped[0]] > 0
        assert r["gap_grace_s"] == (120.0 if grace is None else grace)
        lat[grace] = r["repair_latency_p50_s"]
    # repaired after the next reading shows the gap (60 s later), the grace and the round trip: the
    # two runs differ by the grace alone (virtual time: deterministic)
    assert 120 <= lat[None] < 120 + 90 and abs((lat[None] - lat[20.0]) - 100) < 1, lat
    with pytest.raises(FleetError, match="gap-grace"):
        DesOptions(gap_grace_s=0)


def test_bad_options_are_fleet_errors():
    with pytest.raises(FleetError):
        DesOptions(nodes=10, gateways=10)
    with pytest.raises(FleetError):
        DesOptions(nodes=10, gateways=1, gateway_failure=True)
    with pytest.raises(FleetError):
        DesOptions(loss=1.5)


def test_cli_json_has_the_documented_keys():
    res = CliRunner().invoke(des_cli, ["--nodes", "25", "--topology", "grid", "--minutes", "6",
                                       "--report-interval", "60", "--ota", "4000", "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    for k in ("nodes", "delivery_first_pass", "delivery_after_repair", "latency_p50_s", "latency_p99_s",
              "control_overhead", "parent_changes_per_node_hour", "ota_complete_s", "ota_tx_per_node", "repair_latency_p99_s",
              "hops", "wall_s", "events_per_s"):
        assert k in r, k
    assert r["nodes"] == 25


def test_cli_table_and_errors():
    runner = CliRunner()
    res = runner.invoke(des_cli, ["--nodes", "30", "--topology", "line", "--minutes", "5",
                                  "--report-interval", "60", "--gateways", "2"])
    assert res.exit_code == 0, res.output
    assert "delivery, first pass" in res.output and "latency p50 / p99" in res.output
    res = runner.invoke(des_cli, ["--nodes", "31", "--topology", "grid", "--minutes", "1"])
    assert res.exit_code == 1
    assert "Error:" in res.output and "grid" in res.output
    res = runner.invoke(des_cli, ["--nodes", "30", "--gateway-failure", "--gateways", "1"])
    assert res.exit_code == 1 and "--gateway-failure" in res.output


# ---- the radio model, frame by frame ------------------------------------------------------------

def _three_in_a_row():
    """Nodes 1-2-3, 35 m apart, each hearing only the next (no shadowing): 1 and 3 are hidden
    from each other."""
    from fleet.sim import topology as topo_mod

    radio = topo_mod.RadioModel(max_range_m=50, shadowing_sigma_db=0, asym_sigma_db=0)
    topo = topo_mod.line(3, spacing_m=35.0, n_gateways=1, radio=radio)
    sim = Simulation(DesOptions(nodes=3, topology="line", gateways=1, minutes=1, report_interval_s=3600),
                     topology=topo)
    sim._loop(0)  # the boot ticks
    return sim


def _inject(sim, node_id, t_us, data=b"\x00" * 40):
    """Put a broadcast of `data` (garbage to a router: counted in bad_frames) on node's MAC at t."""
    from fleet.sim.des import _Tx

    n = sim.by_id[node_id]
    tx = _Tx(n, None, b"\xff" * 6, None, data, 200 + 8 * (len(data) + 30), True, None)
    n.tx = tx
    sim._mac_attempt(n, tx, t_us)


def _heard(sim):
    return {n.id: n.router.stats["bad_frames"] for n in sim.nodes}


def test_hidden_terminals_collide_at_the_node_between_them():
    sim = _three_in_a_row()
    _inject(sim, 1, 1000)
    _inject(sim, 3, 1000)
    sim._loop(20_000)
    assert _heard(sim) == {1: 0, 2: 0, 3: 0}
    assert sim.counters["collided"] == 2


def test_carrier_sense_defers_a_neighbour_and_both_frames_arrive():
    sim = _three_in_a_row()
    _inject(sim, 1, 1000)
    _inject(sim, 2, 1100)  # hears 1 on the air: waits for it
    sim._loop(20_000)
    assert sim.counters["deferrals"] == 1
    assert _heard(sim) == {1: 1, 2: 1, 3: 1}
    assert sim.counters["collided"] == 0


def test_starting_within_the_cca_time_is_a_collision_half_duplex():
    sim = _three_in_a_row()
    _inject(sim, 1, 1000)
    _inject(sim, 2, 1010)  # 10 us later: not sensed yet, both on the air
    sim._loop(20_000)
    assert sim.counters["deferrals"] == 0
    # 1 and 2 each lose the other's frame (sending while it arrived); 3 hears 2 alone
    assert _heard(sim) == {1: 0, 2: 0, 3: 1}


def test_oversize_payloads_are_refused_like_espnow():
    sim = _three_in_a_row()
    n = sim.by_id[2]
    before = sim.counters["oversize"]
    # a router never makes one; the MAC check sits where ESP-NOW's would
    frames = [(None, b"\xff" * 6, b"\x00" * 251)]
    n.router.poll_tx = lambda: frames.pop() if frames else None
    sim._mac_next(n, 2000)
    assert sim.counters["oversize"] == before + 1 and n.tx is None


def test_mesh_parameters_are_checked():
    with pytest.raises(FleetError, match="mesh parameters"):
        DesOptions(mesh_params={"no_such_knob": 1})


def test_a_lost_reading_is_recovered_down_a_source_route_without_a_flood():
    sim = Simulation(DesOptions(nodes=49, topology="grid", gateways=1, minutes=12, report_interval_s=60,
                                status_interval_s=60, repair="route"))
    victim = sim.by_id[40]
    dropped = []

    def at_reading(t):
        if victim.app.unsent and t > 240_000_000:  # after a status report told the collector its parent
            seq = next(reversed(victim.app.unsent))
            del victim.app.unsent[seq]
            dropped.append(seq)
        else:
            sim.at(t + 100_000, at_reading)

    sim.at(180_000_000, at_reading)
    r = sim.run()
    assert dropped
    assert sim.measure.got[40][dropped[0]] > 0 and not sim.measure.first_pass[40][dropped[0]]
    assert r["repair"]["routed_requests"] >= 1 and r["repair"]["route_fallbacks"] == 0
    assert r["control_tx"]["fallback"] == 0 and r["control_tx"]["flooded"] == 0  # nothing flooded
    hops = sim.by_id[40].router.depth
    assert 1 <= r["control_tx"]["routed"] <= 3 * hops * r["repair"]["routed_requests"]
    # request down and resent reading up, each over the node's hops - no reply: the reading is
    # the answer (firmware/node_cmd.py answered) - 2 per hop of the gap, a little more with a
    # hop's retry (the goal: at most 3 x the hop count)
    assert sim.measure.request_hops() == r["repair"]["requests"] * sim.measure.last_hops[40]
    assert r["control_tx"]["replies"] == 0 and sim.counters["replies_sent"] == 0
    assert 1.5 <= r["repair"]["tx_per_gap_hop"] <= 3, r["repair"]


def test_the_des_repairs_through_the_real_collector_and_stores_each_reading_once():
    """The fleet side of the DES is fleet.collector.Ingest over an in-memory store: a reading lost
    on the way is asked for by a resend request Ingest issued (its event in the store, its counters),
    the resent reading comes back through it, and the reading is stored once."""
    import json as json_mod

    from fleet.collector import Ingest

    sim = Simulation(DesOptions(nodes=49, topology="grid", gateways=1, minutes=12, report_interval_s=60,
                                status_interval_s=60))
    assert isinstance(sim.ingest, Ingest)
    dropped = _lose_one_reading(sim, 40, 240_000_000)
    r = sim.run()
    assert dropped
    seq = dropped[0]
    store, ing = sim.store, sim.ingest
    # Ingest issued the request that covers it...
    asked = [json_mod.loads(e["detail"]) for e in store.events(node=40, kind="resend_request")]
    assert any(d["first"] <= seq <= d["last"] for d in asked), asked
    assert ing.stats.commands >= 1 and ing.tracker.recovered >= 1 and r["repair"]["requests"] == ing.tracker.requests_sent
    # ...the node answered it with the reading alone (all it was asked for: no reply), through
    # Ingest, which closed the gap on it and holds nothing outstanding; the reading is stored once
    assert store.events(node=40, kind="reply") == [] and ing.tracker.replies == 0
    assert not ing.tracker.outstanding and not ing.tracker.nodes[40].gaps
    assert store.query("SELECT count(*) FROM readings WHERE node = ? AND seq = ?", 40, seq) == [(1,)]
    assert sim.measure.got[40][seq] > 0 and not sim.measure.first_pass[40][seq]  # measured as repaired
    # everything the DES measured as arrived is in the store, once per (node, seq)
    arrived = sum(1 for got in sim.measure.got.values() for t in got if t)
    assert store.query("SELECT count(*) FROM readings") == [(arrived,)] == [(r["readings_delivered_total"],)]
    assert r["collector"]["stored"] == arrived and r["collector"]["rejects"] == 0


def test_a_repair_is_counted_over_the_hops_of_the_path_it_took():
    """tx_per_gap_hop's denominator: a request counts the hop count of its node's first frame
    after it (the path the request and the resent readings travel), not that of the frame before
    the gap - after a gateway dies the path is longer; a node that sends nothing more counts its
    last hop count."""
    from types import SimpleNamespace

    from fleet.repair import Request
    from fleet.sim._des_app import Measure

    app = SimpleNamespace(created=[0] * 10, first_orig=[0] * 10)
    sim = SimpleNamespace(now_us=1_000_000, apps={7: app, 8: app})
    m = Measure(sim)
    m.on_readings(7, 0, 0, 1, 3, 1.0)  # 3 hops before the gap
    m.on_readings(8, 0, 0, 1, 2, 1.0)
    m.on_requests([Request(1, 7, None, 1, 48, 2.0, False, 1), Request(2, 8, None, 1, 48, 2.0, False, 1)])
    assert m.request_hops() == 3 + 2  # nothing arrived since: the last hop counts
    m.on_readings(7, 1, 2, 2, 5, 3.0)  # re-routed: 5 hops
    assert m.first_request_hops == 5 and m.request_hops() == 5 + 2
    m.on_readings(7, 3, 3, 2, 6, 4.0)  # a later frame changes nothing
    assert m.request_hops() == 5 + 2


@pytest.mark.parametrize("size", [1, 2, 5, 32])
def test_the_simulators_indexed_caches_answer_as_the_firmwares(size):
    """fleet.sim.des._IndexedSeen stands in for firmware.mesh._Seen in every simulated router
    (a dict beside the lists, for speed): the same answers to the same operations, over keys
    that collide in part (same origin, other seq or type) and wrap the ring many times."""
    import random

    from firmware.mesh import _Seen
    from fleet.sim.des import _IndexedSeen

    rng = random.Random(size)
    fw, sim = _Seen(size), _IndexedSeen(size)
    for step in range(20_000):
        a, b, c = rng.randrange(6), rng.randrange(2 ** 32) if rng.random() < 0.1 else rng.randrange(8), rng.randrange(3)
        op = rng.random()
        if op < 0.4:
            assert fw.find(a, b, c) == sim.find(a, b, c), step
        elif op < 0.7:
            assert fw.recent(a, b, c, step, 50) == sim.recent(a, b, c, step, 50), step
        else:
            j = fw.find(a, b, c) if op < 0.85 else -2
            fw.put(a, b, c, step, step & 255, j)
            sim.put(a, b, c, step, step & 255, j)
        k = fw.find(a, b, c)
        assert k == sim.find(a, b, c)
        if k >= 0:
            assert (fw.t[k], fw.x[k]) == (sim.t[k], sim.x[k])
    assert fw.i == sim.i
