"""Mesh router (firmware/mesh.py) and Trickle (firmware/trickle.py) under CPython, through the
fake radio (tests/fake_radio.py): convergence, loops, TTL, lossy links, gateway death, backlog,
downlink flooding, bad input. Every run is seeded and deterministic."""
import os
import random

import pytest
from fake_radio import (
    FakeRadio,
    SensorApp,
    link_grid,
    link_line,
    link_star,
    mac_of,
)

from firmware.downroute import inject_routed
from firmware.mesh import BROADCAST, PeerTable, Router
from firmware.mesh_params import DEFAULTS
from firmware.trickle import Trickle, Xorshift32
from protocol import (
    BF_GATEWAY,
    BF_NO_ROUTE,
    BF_PULL,
    OP_PING,
    Beacon,
    Command,
    OtaAdvert,
    Reading,
    Reply,
    Status,
    StatusBody,
    Telemetry,
    decode,
    encode,
)
from protocol.auth import Hmac
from protocol.frames import scan_uplink as _parse_up

MESH = Hmac(bytes(range(32)))
MIN = 60_000
HOUR = 3_600_000
_KEYS = {}


def node_key(i):
    if i not in _KEYS:
        _KEYS[i] = Hmac(bytes([i & 255, (i >> 8) & 255, 7, 9]) * 8)
    return _KEYS[i]


def make_net(ids, gateways, seed=1, params=None, mac_retries=0):
    radio = FakeRadio(seed=seed, mac_retries=mac_retries)
    for i in ids:
        radio.add(Router(i, mac_of(i), i in gateways, MESH, params=params))
    return radio


def add_apps(radio, ids, interval_ms=MIN):
    apps = {}
    for i in ids:
        apps[i] = SensorApp(node_key(i), MESH, interval_ms=interval_ms)
        apps[i].attach(radio, radio.nodes[i])
    return apps


def uplinks(radio, gateways):
    """(gateway, Telemetry, hops) for every uplink event, end-to-end tags verified."""
    out = []
    for g in gateways:
        for _, ev in radio.nodes[g].events:
            if ev[0] == "uplink":
                f = decode(ev[1], MESH, node_key=node_key)
                assert f.hops == ev[3]
                out.append((g, f, ev[3]))
    return out


def readings(f):
    """(origin, seq) of each reading a Telemetry frame carries (its seq is its first reading's)."""
    return [(f.origin, f.seq + k) for k in range(len(f.readings))]


def delivered(radio, gateways):
    """(origin, seq) of every reading that reached a gateway."""
    return {r for _, f, _ in uplinks(radio, gateways) for r in readings(f)}


def arrivals(radio, gateways):
    """Readings that reached a gateway, every copy counted."""
    return sum(len(f.readings) for _, f, _ in uplinks(radio, gateways))


def made(apps):
    """(node, seq) of every reading the apps made."""
    return {(i, s) for i, a in apps.items() for s in a.made}


def newest(apps):
    """Each app's newest reading: it may still be on its way when a run ends."""
    return {(i, a.made[-1]) for i, a in apps.items() if a.made}


def assert_tree(radio, gateways):
    """Every live node's parent chain ends at a gateway without revisiting a node."""
    for i, node in radio.nodes.items():
        if i in gateways or not node.alive:
            continue
        seen = set()
        cur = i
        while cur not in gateways:
            assert cur not in seen, f"loop through {cur} starting at {i}"
            seen.add(cur)
            cur = radio.nodes[cur].router.parent
            assert cur != 0, f"node {i}: no route at {sorted(seen)}"


def parent_changes(radio):
    return {i: n.router.stats["parent_changes"] for i, n in radio.nodes.items()}


def total(radio, key):
    return sum(n.router.stats[key] for n in radio.nodes.values())


def beacon_bytes(src, cost, bseq, depth=1, flags=0, key=MESH, time_s=0, root=0, rseq=0):
    return encode(Beacon(src, bseq, cost, depth, time_s, flags, root, rseq), key)


def telemetry(origin, seq, hops=1, cost=50):
    f = Telemetry(origin=origin, seq=seq, time_s=1_700_000_000,
                  readings=[Reading(0, 10, 120, 200, 55, 215, 60, 0)])
    f.etag = decode(encode(f, MESH, node_key(origin)), MESH).etag  # as its origin tagged it
    f.hops = hops
    f.cost = cost
    return f


def _until_none(poll):
    out = []
    x = poll()
    while x is not None:
        out.append(x)
        x = poll()
    return out


def drain(router):
    return _until_none(router.poll_tx)


def events(router):
    return _until_none(router.poll_event)


# ---- Trickle and PRNG ------------------------------------------------------------------------

def test_xorshift_reference_values():
    r = Xorshift32(12345)
    assert [r.next() for _ in range(4)] == [3336926330, 1697253807, 2816511904, 1955480042]
    assert [r.below(1000) for _ in range(4)] == [167, 764, 997, 857]
    assert Xorshift32(0).next() != 0


def test_trickle_fires_once_per_interval_in_second_half_and_doubles():
    t = Trickle(100, 3, 0, 7)
    t.start(1000)
    fires = [now for now in range(1000, 3300) if t.poll(now)]
    # intervals 100, 200, 400, 800 (Imax), 800: one fire in [start + I/2, start + I)
    starts = [1000, 1100, 1300, 1700, 2500]
    sizes = [100, 200, 400, 800, 800]
    assert len(fires) == len(starts)
    for f, s, i in zip(fires, starts, sizes, strict=True):
        assert s + i // 2 <= f < s + i
    assert t.interval_ms == 800


def test_trickle_reset_and_suppression():
    t = Trickle(100, 4, 1, 3)
    t.start(0)
    for now in range(0, 1000):
        t.poll(now)
    assert t.interval_ms > 100
    t.reset(1000)
    assert t.interval_ms == 100 and 1050 <= t.next_fire_ms < 1100
    t.reset(1010)  # already at Imin: nothing changes (RFC 6206 rule 6)
    assert 1050 <= t.next_fire_ms < 1100
    t.heard_consistent()  # c = 1 = k: this interval's transmission is suppressed
    assert not any(t.poll(now) for now in range(1010, 1100))
    assert any(t.poll(now) for now in range(1100, 1300))  # c restarts each interval


def test_trickle_late_poll_fires_at_most_once():
    t = Trickle(100, 2, 0, 1)
    t.start(0)
    assert t.poll(10_000) is True
    assert t.poll(10_000) is False
    assert t.interval_ms == 400 and t.next_fire_ms > 10_000


def test_trickle_wake_sends_once_soon_and_keeps_the_interval():
    t = Trickle(100, 4, 0, 5)
    t.start(0)
    for now in range(0, 1600):
        t.poll(now)
    assert t.interval_ms == 1600
    regular = t.next_fire_ms
    assert regular > 1700  # the next interval's fire is far off
    t.wake(1600)
    assert 1650 <= t.next_fire_ms < 1700
    t.wake(1610)  # one pending wake is enough: not moved, not doubled
    nudged = t.next_fire_ms
    assert 1650 <= nudged < 1700
    fires = [now for now in range(1600, 1700) if t.poll(now)]
    assert fires == [nudged]
    assert t.interval_ms == 1600 and t.next_fire_ms == regular  # the steady rate is unchanged
    # a wake when the timer fires within Imin anyway adds nothing
    t2 = Trickle(100, 4, 0, 5)
    t2.start(0)
    due = t2.next_fire_ms
    t2.wake(0)
    assert t2.next_fire_ms == due and [n for n in range(0, 100) if t2.poll(n)] == [due]
    t3 = Trickle(100, 4, 0, 5)
    t3.wake(500)  # not started: starts it
    assert t3.started and t3.interval_ms == 100


def test_good_news_nudges_bad_news_resets():
    """A parent change and a falling cost are told with one beacon (Trickle wake); a rising
    cost resets Trickle: the rank rule needs descendants to hear it. A reset per change was ~90 %
    of all beacons at 20 % loss (DES, 1,000 nodes: 5.8 beacons per delivered reading, 2.5 with
    nudges)."""
    r = Router(10, mac_of(10), False, MESH, params={"beacon_imin_ms": 1000})
    now = _hear(r, ((2, 30), (3, 60)), rounds=4)
    assert r.parent == 2
    for t in range(now, now + 200_000, 500):  # the timer settles at a long interval
        r.tick(t)
        drain(r)
    now += 200_000
    assert r.trickle.interval_ms >= 64_000
    # better news: node 3 now advertises a far better path -> switch, one beacon, I kept
    interval = r.trickle.interval_ms
    for b in range(4, 10):
        now += 1000
        r.on_recv(mac_of(3), beacon_bytes(3, 0, b, depth=0, flags=BF_GATEWAY), -50, now)
        r.on_recv(mac_of(2), beacon_bytes(2, 30, b), -50, now)
        if r.parent == 3:
            break
    assert r.parent == 3
    assert r.trickle.interval_ms == interval and r.trickle.next_fire_ms <= now + 1000
    # bad news: the parent's path rises by more than one perfect link -> reset to Imin
    now += 1000
    r.on_recv(mac_of(3), beacon_bytes(3, 15, 10, depth=1), -50, now)
    assert r.cost >= 25 and r.trickle.interval_ms == 1000


def test_with_a_root_a_rising_cost_is_news_not_a_reset():
    """Under a parent that names its root, a rise cannot make a loop (feasibility holds the
    lowest cost until a newer rseq): one beacon soon, the interval kept - at 20 % loss the
    resets for rises were most beacons (DES, 2,000 nodes: 4.42 beacons per reading, 3.20 with
    this)."""
    r = Router(10, mac_of(10), False, MESH, params={"beacon_imin_ms": 1000})
    now = 0
    for bseq in range(4):
        now += 10_000
        r.on_recv(mac_of(2), beacon_bytes(2, 30, bseq, root=1, rseq=5), -50, now)
        drain(r)
    assert r.parent == 2 and (r.root, r.rseq) == (1, 5)
    for t in range(now, now + 200_000, 500):
        r.tick(t)
        drain(r)
    now += 200_000
    interval = r.trickle.interval_ms
    assert interval >= 64_000
    r.on_recv(mac_of(2), beacon_bytes(2, 60, 4, root=1, rseq=5), -50, now)
    assert r.cost >= 70 and r.trickle.interval_ms == interval and r.trickle.next_fire_ms <= now + 1000


def _settled_quiet(params):
    """A router under parent 2 (cost 30, root 1) whose Trickle has settled at a long interval
    and just fired: its next beacon is > 30 s away. Returns (router, now)."""
    r = Router(10, mac_of(10), False, MESH, params=dict(params, beacon_imin_ms=1000))
    now = 0
    for bseq in range(4):
        now += 10_000
        r.on_recv(mac_of(2), beacon_bytes(2, 30, bseq, root=1, rseq=5), -50, now)
        drain(r)
    for t in range(now, now + 400_000, 500):
        now = t
        r.tick(now)
        drain(r)
        if now > 200_000 and r.trickle.next_fire_ms > now + 30_000:
            break
    assert r.parent == 2 and r.trickle.next_fire_ms > now + 30_000
    return r, now


def test_a_cost_move_below_cost_wake_delta_waits_for_the_next_beacon():
    """A move of our cost by less than cost_wake_delta is no news: it goes out with the next
    beacon. A move of cost_wake_delta or more: one beacon soon (Trickle wake). 1 ETX by default;
    2 ETX measured in the DES (README, issue 15)."""
    for delta, wakes_at_15 in ((20, False), (10, True)):
        r, now = _settled_quiet({"cost_wake_delta": delta})
        cost, fire = r.cost, r.trickle.next_fire_ms
        r.on_recv(mac_of(2), beacon_bytes(2, 45, 4, root=1, rseq=5), -50, now)  # +1.5 ETX
        assert r.cost == cost + 15
        assert (r.trickle.next_fire_ms <= now + 1000) == wakes_at_15, delta
        if not wakes_at_15:
            assert r.trickle.next_fire_ms == fire
            r.on_recv(mac_of(2), beacon_bytes(2, 70, 5, root=1, rseq=5), -50, now + 10)  # +2.5 ETX
            assert r.cost - (cost + 15) >= 20 and r.trickle.next_fire_ms <= now + 1010


# ---- feasibility (root gateway and sequence number) -------------------------------------------


def _rooted(r, src, cost, bseq, now, root=1, rseq=5, rssi=-50):
    r.on_recv(mac_of(src), beacon_bytes(src, cost, bseq, root=root, rseq=rseq), rssi, now)
    drain(r)


def _settled_on(r, src, cost, rounds=4, **kw):
    now = 0
    for bseq in range(rounds):
        now += 10_000
        _rooted(r, src, cost, bseq, now, **kw)
    assert r.parent == src
    return now


def test_a_descendant_with_a_stale_lower_cost_is_not_taken_until_a_newer_rseq():
    """Node 10 (path ~40 via relay 2, root 1 rseq 5) loses relay 2's path: it rises by 160.
    Node 11 advertises a little more than 10's lowest cost - with rseq 5 it may be 10's own
    child counting on it (the gateway-failure storm of issue 15 was this, the old rank rule
    relaxing 2 s after each rise). 10 keeps relay 2. A newer rseq of root 1 cannot come from a
    descendant: 11 with rseq 6 is taken."""
    r = Router(10, mac_of(10), False, MESH)
    now = _settled_on(r, 2, 30)
    low = r.cost
    assert 40 <= low < 50 and (r.root, r.rseq) == (1, 5)
    for bseq in range(4, 12):
        now += 10_000
        _rooted(r, 11, low + 5, bseq, now)
        _rooted(r, 2, 190, bseq, now)
    assert r.parent == 2 and r.cost > 190 and r._ref_cost == low
    now += 10_000
    _rooted(r, 11, low + 5, 12, now, rseq=6)
    assert r.parent == 11 and (r.root, r.rseq) == (1, 6) and r._ref_cost == r.cost < low + 30


def test_a_lower_cost_of_the_same_rseq_or_another_root_is_feasible():
    r = Router(10, mac_of(10), False, MESH)
    now = _settled_on(r, 2, 60)
    low = r.cost
    # below the lowest cost we had with root 1: not a descendant (whatever its rseq: rseqs lag
    # each other by minutes, see Router._feasible)
    for bseq in range(4, 12):
        now += 10_000
        _rooted(r, 3, low - 50, bseq, now, rseq=4)
        _rooted(r, 2, 60, bseq, now)
    # it advertises its parent's rseq, and keeps the newest it had (5: a descendant may carry it)
    assert r.parent == 3 and (r.root, r.rseq, r._rseq_hi) == (1, 4, 5)
    low1 = r._ref_cost
    assert low1 == r.cost < low
    # another root (gateway 7) is feasible at any cost that wins by the margin; root 1 is
    # remembered with the lowest cost we had with it
    for bseq in range(12, 20):
        now += 10_000
        _rooted(r, 2, 600, bseq, now, rseq=4)
        _rooted(r, 3, 300, bseq, now, rseq=4)
        _rooted(r, 4, 100, bseq, now, root=7, rseq=900)
    assert r.parent == 4 and (r.root, r.rseq) == (7, 900)
    assert r._fds == [[1, 5, low1]]
    # a stale root-1 neighbour at or above that cost is no candidate, however much better; nor,
    # for a root we left, one below it with an older rseq (a dead gateway's subtree must not go
    # back to its stale costs)
    for bseq in range(20, 28):
        now += 10_000
        _rooted(r, 5, low1, bseq, now, rseq=4)
        _rooted(r, 6, low1 - 20, bseq, now, rseq=3)
        _rooted(r, 4, 400, bseq, now, root=7, rseq=900)
    assert r.parent == 4
    now += 10_000
    _rooted(r, 5, low1, 28, now, rseq=5)  # the newest rseq we had: no newer, not feasible
    assert r.parent == 4
    now += 10_000
    _rooted(r, 5, low1, 29, now, rseq=6)  # a newer rseq of root 1: feasible again
    assert r.parent == 5 and (r.root, r.rseq) == (1, 6) and r._fds[0][0] == 7


def test_an_rseq_we_advertised_before_is_judged_by_the_lowest_cost_we_had_with_it():
    """Node 10 advertised rseq 6 on relay 2, then took relay 3, whose rseq lags (5): it
    advertises 5 now, and keeps the lowest cost it had with 6. Node 11 carries 6 with a little
    more than that cost: it may be 10's own child counting on 10's old claim (a single reference
    cost that started afresh with rseq 5 took it: most of the loops of the gateway-failure
    storm). Node 12 carries 5 above the lowest cost 10 had with 5: no more. Node 13 carries 7,
    newer than any 10 advertised: taken."""
    r = Router(10, mac_of(10), False, MESH)
    now = _settled_on(r, 2, 30, rseq=6)
    low6 = r._ref_cost
    assert low6 == r.cost and (r.rseq, r._rseq_hi) == (6, 6)
    for bseq in range(4, 12):
        now += 10_000
        _rooted(r, 2, 200, bseq, now, rseq=6)
        _rooted(r, 3, 5, bseq, now, rseq=5)
    assert r.parent == 3 and (r.rseq, r._rseq_hi) == (5, 6) and r._fdt == [6, low6]
    low5 = r._ref_cost
    assert low5 == r.cost < low6
    for bseq in range(12, 24):
        now += 10_000
        _rooted(r, 3, 300, bseq, now, rseq=5)
        _rooted(r, 11, low6 + 5, bseq, now, rseq=6)
        _rooted(r, 12, low5 + 5, bseq, now, rseq=5)
    assert r.parent == 3 and r.cost > 300 and r._ref_cost == low5 and r._fdt == [6, low6]
    for bseq in range(24, 28):
        now += 10_000
        _rooted(r, 3, 300, bseq, now, rseq=5)
        _rooted(r, 13, 250, bseq, now, rseq=7)
    assert r.parent == 13 and (r.rseq, r._rseq_hi) == (7, 7)
    assert r._fdt[:4] == [5, low5, 6, low6]
    # back to an rseq we advertised (a parent with it and a lower cost), its lowest cost holds
    r2 = Router(10, mac_of(10), False, MESH)
    now = _settled_on(r2, 2, 30, rseq=6)
    for bseq in range(4, 12):
        now += 10_000
        _rooted(r2, 2, 200, bseq, now, rseq=6)
        _rooted(r2, 3, 5, bseq, now, rseq=5)
    assert r2.parent == 3 and r2.rseq == 5
    for bseq in range(12, 20):
        now += 10_000
        _rooted(r2, 3, 300, bseq, now, rseq=5)
        _rooted(r2, 2, low6 - 5, bseq, now, rseq=6)  # below what we had with 6: feasible
    assert r2.parent == 2 and r2.rseq == 6 and r2._ref_cost == low6 < r2.cost


def test_a_gateway_counts_its_rseq_up_with_time_and_its_children_carry_it():
    radio = make_net([1, 2, 3], {1}, params={"root_seq_ms": 10_000})
    link_line(radio, [1, 2, 3])
    seen = []
    radio.sniffer = lambda now, node, dst, data: seen.append(decode(data, MESH)) if data[2] == 1 else None
    radio.run(120_000)
    g, a, b = (radio.nodes[i].router for i in (1, 2, 3))
    assert b.parent == 2 and a.parent == 1 and a.root == b.root == 1
    gw = [f.rseq for f in seen if f.src == 1]
    assert all(f.root == 1 for f in seen if f.src == 1) and len(set(gw)) >= 3, gw
    assert all((y - x) & 0xFFFF < 0x8000 for x, y in zip(gw, gw[1:], strict=False)), gw  # never back
    # a relay's beacons carry its root and an rseq the gateway sent (never one ahead of it)
    relay = [f for f in seen if f.src == 2 and f.cost < 0xFFFF]
    assert relay and all(f.root == 1 and f.rseq in gw for f in relay)


# ---- convergence -----------------------------------------------------------------------------

def test_line_of_eight_converges_with_right_hop_counts():
    ids = list(range(1, 9))
    radio = make_net(ids, {1})
    link_line(radio, ids)
    apps = add_apps(radio, ids[1:])
    radio.run(30_000)
    for i in ids[1:]:
        r = radio.nodes[i].router
        assert r.parent == i - 1 and r.depth == i - 1 and r.has_route()
        # lossless links: ETX 1.0 per hop, once the initial guess (2.0) has been measured away
        assert 10 * (i - 1) <= r.cost <= 15 * (i - 1)
    radio.run(11 * MIN)
    ups = uplinks(radio, {1})
    assert delivered(radio, {1}) == made(apps)
    for _, f, hops in ups:
        assert hops == f.origin - 1  # node 8 is 7 radio hops from the gateway
    assert max(h for _, _, h in ups) == 7
    assert arrivals(radio, {1}) == len(made(apps))  # no reading reached the gateway twice
    assert total(radio, "loops_detected") == 0 and total(radio, "bad_frames") == 0


def test_grid_5x5_converges_to_shortest_paths():
    ids = list(range(1, 26))
    radio = make_net(ids, {1})
    link_grid(radio, ids, 5)
    apps = add_apps(radio, ids[1:])
    radio.run(10 * MIN)
    assert_tree(radio, {1})
    for i in ids[1:]:
        x, y = (i - 1) % 5, (i - 1) // 5
        assert radio.nodes[i].router.depth == x + y
    assert delivered(radio, {1}) >= made(apps) - newest(apps)
    assert arrivals(radio, {1}) == len(delivered(radio, {1}))


def test_star_relays_through_the_hub():
    hub, gw = 1, 2
    leaves = list(range(3, 13))
    radio = make_net([hub, gw] + leaves, {gw})
    link_star(radio, hub, [gw] + leaves)
    apps = add_apps(radio, leaves + [hub])
    radio.run(6 * MIN)
    assert radio.nodes[hub].router.parent == gw
    for leaf in leaves:
        r = radio.nodes[leaf].router
        assert r.parent == hub and r.depth == 2
    ups = uplinks(radio, {gw})
    assert delivered(radio, {gw}) >= made(apps) - newest(apps)
    assert all(h == 2 for _, f, h in ups if f.origin != hub)


def test_two_gateways_split_a_line_by_distance():
    ids = list(range(1, 11))
    radio = make_net(ids, {1, 10})
    link_line(radio, ids)
    radio.run(MIN)
    for i in range(2, 6):
        assert radio.nodes[i].router.depth == i - 1
    for i in range(6, 10):
        assert radio.nodes[i].router.depth == 10 - i


# ---- loops and TTL ---------------------------------------------------------------------------

def test_forced_two_node_loop_is_detected_and_repaired():
    ids = list(range(1, 7))
    radio = make_net(ids, {1})
    link_line(radio, ids)
    apps = add_apps(radio, ids[1:], interval_ms=20_000)
    radio.run(5 * MIN)
    assert radio.nodes[5].router.parent == 4 and radio.nodes[6].router.parent == 5
    # A forged beacon makes node 5 believe node 6 is next to a gateway: 5 -> 6 -> 5.
    def forge(r, now):
        nxt = (r._nbrs[6].bseq + 1) & 255  # in sequence, so the link estimate stays good
        r.on_recv(mac_of(6), beacon_bytes(6, 0, nxt, depth=0), -50, now)
    radio.call(5, forge)
    assert radio.nodes[5].router.parent == 6 and radio.nodes[6].router.parent == 5
    radio.run(radio.now_ms + 2 * MIN)
    assert total(radio, "loops_detected") >= 1
    assert_tree(radio, {1})
    radio.run(radio.now_ms + 3 * MIN)
    assert_tree(radio, {1})
    # readings made before and after the repair all arrive; every frame was sent a bounded number
    # of times
    assert made(apps) - delivered(radio, {1}) <= newest(apps)
    assert total(radio, "queue_len") == 0


def test_three_node_loop_without_gateway_is_bounded_by_ttl():
    ids = [11, 12, 13]
    radio = make_net(ids, set(), params={"max_hops": 8})
    radio.link(11, 12)
    radio.link(12, 13)
    radio.link(13, 11)
    forged = {11: 12, 12: 13, 13: 11}  # each believes the next one is 1 hop from a gateway
    bseq = [100]

    def forge(radio):
        bseq[0] = (bseq[0] + 1) & 255
        for i, nxt in forged.items():
            radio.call(i, lambda r, now, nxt=nxt: r.on_recv(mac_of(nxt), beacon_bytes(nxt, 10, bseq[0]), -50, now))
    radio.every(500, forge, start_ms=0)
    radio.run(3000)
    assert [radio.nodes[i].router.parent for i in ids] == [12, 13, 11]
    sent = []
    radio.sniffer = lambda now, node, dst, data: sent.append(data) if dst != BROADCAST else None
    radio.call(11, lambda r, now: r.originate(encode(telemetry(11, 1), MESH), now, "t1"))
    radio.run(10_000)
    copies = [d for d in sent if _parse_up(d)[:2] == (11, 1)]
    hops = sorted(_parse_up(d)[2] for d in copies)
    assert hops == list(range(1, 9))  # one send per hop count 1..8, then dropped
    assert total(radio, "ttl_dropped") == 1
    assert total(radio, "dup_other_hops") >= 1  # told apart from retransmissions
    assert total(radio, "dup_dropped") == 0


def test_ttl_boundary():
    r = Router(5, mac_of(5), False, MESH)
    r.tick(0)
    r.on_recv(mac_of(1), beacon_bytes(1, 0, 1, depth=0, flags=BF_GATEWAY), -50, 10)
    assert r.parent == 1
    drain(r)
    last = DEFAULTS["max_hops"]
    r.on_recv(mac_of(9), encode(telemetry(9, 1, hops=last - 1, cost=200), MESH), -60, 20)
    tx = drain(r)
    assert len(tx) == 1 and _parse_up(tx[0][2])[2] == last
    r.on_send_done(tx[0][0], True, 21)
    r.on_recv(mac_of(9), encode(telemetry(9, 2, hops=last, cost=200), MESH), -60, 30)
    assert drain(r) == [] and r.stats["ttl_dropped"] == 1
    g = Router(1, mac_of(1), True, MESH)
    g.on_recv(mac_of(5), tx[0][2], -60, 40)
    assert events(g) == [("uplink", tx[0][2], -60, last)]


def test_duplicates_retransmission_vs_other_hops():
    r = Router(5, mac_of(5), False, MESH)
    r.on_recv(mac_of(1), beacon_bytes(1, 0, 1, depth=0, flags=BF_GATEWAY), -50, 0)
    drain(r)
    b = encode(telemetry(9, 1, hops=2, cost=200), MESH)
    r.on_recv(mac_of(9), b, -60, 10)
    r.on_recv(mac_of(9), b, -60, 11)  # same hops: a retransmission whose ACK was lost
    assert r.stats["dup_dropped"] == 1
    r.on_recv(mac_of(8), encode(telemetry(9, 1, hops=5, cost=200), MESH), -60, 12)
    assert r.stats["dup_other_hops"] == 1 and r.stats["queue_len"] == 2
    r.on_recv(mac_of(8), b, -60, 10 + DEFAULTS["dup_memory_ms"] + 100)  # long after: new
    assert r.stats["dup_dropped"] == 1


# ---- lossy links -----------------------------------------------------------------------------

def street(n, seed, mac_retries, app_interval_ms=5 * MIN):
    """A street of n poles 35 m apart, gateway on pole 1: neighbours 10-20 % loss, two poles
    apart 50 %, three apart 85 % (RSSI falls with distance)."""
    ids = list(range(1, n + 1))
    radio = make_net(ids, {1}, seed=seed, mac_retries=mac_retries)
    rng = random.Random(seed)
    for a in ids:
        for b in ids:
            if a < b <= a + 3:
                d = b - a
                loss = rng.uniform(0.10, 0.20) if d == 1 else (0.5 if d == 2 else 0.85)
                radio.link(a, b, loss=loss, rssi=(-65, -78, -88)[d - 1])
    apps = add_apps(radio, ids[1:], interval_ms=app_interval_ms)
    return radio, apps


def test_parent_stability_on_a_lossy_street():
    radio, apps = street(20, seed=5, mac_retries=2)
    radio.run(15 * MIN)
    before = parent_changes(radio)
    radio.run(15 * MIN + HOUR)
    changes = {i: parent_changes(radio)[i] - before[i] for i in before}
    # 19 nodes for an hour on links losing 10-20 %, ESP-NOW-like MAC retries: 30 changes with
    # this seed, 1-87 over seeds 1-48 (mean 22.5; 17.8 before the lowest cost was kept per
    # rseq, the price of no loops: many are a route lost and found again within 25 s when
    # a parent's link dies and no neighbour is feasible). Flapping would be hundreds.
    assert sum(changes.values()) <= 30, changes
    assert max(changes.values()) <= 4, changes
    assert delivered(radio, {1}) >= made(apps) - newest(apps)
    assert_tree(radio, {1})


def test_lossy_street_without_mac_retries_still_delivers():
    radio, apps = street(12, seed=3, mac_retries=0, app_interval_ms=2 * MIN)
    radio.run(HOUR)
    want = made(apps) - newest(apps)
    got = delivered(radio, {1})
    assert len(want - got) <= len(want) // 100, sorted(want - got)
    assert total(radio, "retries") > 0


# ---- failures --------------------------------------------------------------------------------

def test_gateway_death_reroutes_to_the_other_gateway():
    ids = list(range(1, 11))
    radio = make_net(ids, {1, 10})
    link_line(radio, ids)
    apps = add_apps(radio, list(range(2, 10)))
    radio.run(5 * MIN)
    assert radio.nodes[3].router.depth == 2
    kill_ms = radio.now_ms
    radio.kill(1)
    radio.run(kill_ms + 15 * MIN)
    assert_tree(radio, {10})
    for i in range(2, 10):
        assert radio.nodes[i].router.depth == 10 - i
    # the backlog (readings whose frames were reported not sent, or made without a route)
    # drained too: nothing made before the end is lost except what GW 1 took with it (ACKed by
    # the gateway, then killed before MQTT)
    got = delivered(radio, {1, 10})
    assert made(apps) - got <= newest(apps)
    assert total(radio, "route_losses") >= 1


# ---- a gateway that stops answering: the poison -----------------------------------------------

def _beacons(r, now, hears):
    """r hears one beacon from each (src, cost, root, rseq[, rssi]) in `hears` (cost 0: a
    gateway's), each neighbour's bseq one on from its last; returns what r sent."""
    for src, cost, root, rseq, *rssi in hears:
        bseq = r._nbrs[src].bseq + 1 if src in r._nbrs else 0
        flags = BF_GATEWAY if cost == 0 else 0
        r.on_recv(mac_of(src), beacon_bytes(src, cost, bseq & 255, depth=0 if cost == 0 else 2, flags=flags,
                                            root=root, rseq=rseq), rssi[0] if rssi else -50, now)
    return drain(r)


def _poison(src, root, rseq, bseq=200):
    return beacon_bytes(src, 0xFFFF, bseq, depth=255, flags=BF_NO_ROUTE | BF_PULL, root=root, rseq=rseq)


def _last_beacon(txs):
    bs = [decode(d, MESH) for _, mac, d in txs if mac == BROADCAST]
    return bs[-1] if bs else None


POISON = {"poison_ms": 2_400_000}  # off by default (firmware/mesh.py: a false poison)


def test_a_node_whose_gateway_stops_answering_poisons_that_root_in_its_no_route_beacons():
    r = Router(5, mac_of(5), False, MESH, params=POISON)
    now = 0
    for _ in range(4):
        now += 10_000
        _beacons(r, now, [(1, 0, 1, 7)])
    assert r.parent == 1 and (r.root, r.rseq) == (1, 7)
    r.originate(encode(telemetry(5, 1), MESH), now, "a")
    for _ in range(200):  # every send to the gateway fails
        for tok, mac, _d in drain(r):
            if mac == mac_of(1):
                r.on_send_done(tok, False, now)
        if not r.has_route():
            break
        now += 50
        r.tick(now)
    assert not r.has_route() and r.stats["route_losses"] == 1
    now += 5_000
    r.tick(now)
    b = _last_beacon(drain(r))
    assert b is not None and b.flags & BF_NO_ROUTE
    assert (b.root, b.rseq) == (1, 7)  # the gateway that stopped answering, as of its last rseq


def _settled_on_relay(params=POISON):
    """Router 10 on relay 2 (root 1, rseq 7, cost 30), hearing relay 3 of the same root and
    rseq at cost 24 - feasible, but not better by the margin."""
    r = Router(10, mac_of(10), False, MESH, params=params)
    now = 0
    for _ in range(6):
        now += 10_000
        _beacons(r, now, [(2, 30, 1, 7), (3, 24, 1, 7)])
    assert r.parent == 2
    return r, now


def test_a_poisoned_roots_old_paths_are_not_taken_until_a_newer_rseq_shows_it_alive():
    # relay 2's gateway stopped answering: its no-route beacon names root 1, rseq 7. Without
    # the poison 10 would move to relay 3 - whose path goes to the same dead gateway. Relay 3
    # is taken when it shows rseq 8: gateway 1 lives after all
    r, now = _settled_on_relay()
    changes = r.stats["parent_changes"]
    now += 1000
    r.on_recv(mac_of(2), _poison(2, 1, 7), -50, now)
    assert not r.has_route() and r.stats["parent_changes"] == changes + 1
    now += 5_000
    r.tick(now)
    b = _last_beacon(drain(r))
    assert b.flags & BF_NO_ROUTE and (b.root, b.rseq) == (1, 7)  # passed on down the subtree
    for _ in range(30):
        now += 10_000
        _beacons(r, now, [(3, 24, 1, 7)])
        assert not r.has_route()
    now += 1000
    _beacons(r, now, [(3, 24, 1, 8)])
    assert r.parent == 3 and (r.root, r.rseq) == (1, 8)


def test_a_poisoned_node_takes_another_root_and_a_neighbours_poison_keeps_a_working_parent():
    r, now = _settled_on_relay()
    for _ in range(4):
        now += 10_000
        _beacons(r, now, [(2, 30, 1, 7), (3, 24, 1, 7), (6, 26, 1, 7), (4, 60, 9, 3)])
    assert r.parent == 2
    changes = r.stats["parent_changes"]
    now += 1000
    r.on_recv(mac_of(3), _poison(3, 1, 7), -50, now)  # a neighbour lost gateway 1
    drain(r)
    now += 1000
    _beacons(r, now, [(2, 30, 1, 7)])
    assert r.parent == 2 and r.stats["parent_changes"] == changes  # our path still works
    now += 1000
    r.on_recv(mac_of(2), _poison(2, 1, 7), -50, now)
    # relay 6, cheaper but on gateway 1's old paths, is passed over for gateway 9's
    assert r.parent == 4 and r.root == 9 and r.stats["parent_changes"] == changes + 1


def test_a_poison_holds_for_poison_ms_and_poison_ms_0_turns_it_off():
    # relay 3, not heard since the poison, stays passed over for poison_ms (here 60 s)
    r, now = _settled_on_relay({"poison_ms": 60_000})
    now += 1000
    t0 = now
    r.on_recv(mac_of(2), _poison(2, 1, 7), -50, now)
    for t in (30_000, 59_000, 60_000):
        now = t0 + t
        r.on_recv(mac_of(7), beacon_bytes(7, 0xFFFF, t // 1000, depth=255, flags=BF_NO_ROUTE | BF_PULL),
                  -50, now)  # a beacon: evaluate
        drain(r)
        assert r.has_route() == (t >= 60_000)
    assert r.parent == 3
    r = Router(10, mac_of(10), False, MESH, params={"poison_ms": 0})
    now = 0
    for _ in range(6):
        now += 10_000
        _beacons(r, now, [(2, 30, 1, 7), (3, 24, 1, 7)])
    assert r.parent == 2
    now += 1000
    r.on_recv(mac_of(2), _poison(2, 1, 7), -50, now)
    assert r.parent == 3  # off: the old behaviour, on to the next path of the same root


def test_a_beacon_from_the_poisoned_gateway_itself_lifts_the_poison():
    # a poison can be false (a link to a live gateway died): the gateway's own beacon, with the
    # same rseq, shows it alive - relay 3 on its old paths is a parent again
    r, now = _settled_on_relay()
    now += 1000
    r.on_recv(mac_of(2), _poison(2, 1, 7), -50, now)
    now += 5000
    _beacons(r, now, [(3, 24, 1, 7)])
    assert not r.has_route()
    now += 1000
    _beacons(r, now, [(1, 0, 1, 7, -95)])
    now += 5000
    _beacons(r, now, [(3, 24, 1, 7)])
    assert r.has_route() and (r.root, r.rseq) == (1, 7)


def test_a_gateway_named_in_a_poison_is_not_taken_until_it_beacons_again():
    # router 10 hears gateway 1 directly on a weak link (its parent is relay 2, cheaper); a
    # neighbour's poison says gateway 1 stopped answering: when relay 2 falls, 10 must not go
    # to gateway 1, whose last beacon is all it knows
    r = Router(10, mac_of(10), False, MESH, params={"poison_ms": 1000})  # only the gateway rule
    now = 0
    for _ in range(6):
        now += 10_000
        _beacons(r, now, [(2, 10, 1, 7), (1, 0, 1, 7, -85)])
    assert r.parent == 2 and 1 in r._nbrs
    now += 1000
    r.on_recv(mac_of(3), _poison(3, 1, 7), -50, now)
    now += 5000
    r.on_recv(mac_of(2), beacon_bytes(2, 0xFFFF, r._nbrs[2].bseq + 1, depth=255,
                                      flags=BF_NO_ROUTE | BF_PULL), -50, now)
    assert not r.has_route()  # the hold is over; gateway 1 is not a candidate
    now += 1000
    _beacons(r, now, [(1, 0, 1, 8, -85)])
    assert r.parent == 1  # it beaconed: alive after all


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_dead_gateways_subtree_falls_down_its_branches_instead_of_hunting(seed):
    """An 8 x 8 grid on 15 % loss with gateways at two corners; gateway 1 dies. Without the
    poison its subtree hunts: nodes move to neighbours still advertising gateway 1's old
    costs, which fall next (22-27 such moves, seeds 1-3). With it a node takes a parent on the
    dead root only before the news reaches it (0-4)."""
    hunts = {}
    for params in (None, POISON):
        hunt = []
        gone = []

        def on_event(radio, node, ev, hunt=hunt, gone=gone):
            if gone and ev[0] == "parent" and ev[1] and radio.nodes[ev[1]].router.root == 1:
                hunt.append((node.router.node_id, ev[1]))

        ids = list(range(1, 65))
        radio = FakeRadio(seed=seed, mac_retries=2, on_event=on_event)
        for i in ids:
            radio.add(Router(i, mac_of(i), i in (1, 64), MESH, params=params))
        link_grid(radio, ids, 8, loss=0.15, diag_loss=0.4)
        apps = add_apps(radio, ids[1:-1])
        radio.run(20 * MIN)
        under = [i for i in ids[1:-1] if radio.nodes[i].router.root == 1]
        assert len(under) >= 20
        kill_ms = radio.now_ms
        radio.kill(1)
        gone.append(kill_ms)
        radio.run(kill_ms + 20 * MIN)
        assert_tree(radio, {64})
        assert made(apps) - delivered(radio, {1, 64}) <= newest(apps)
        hunts[params is not None] = len(hunt)
    assert hunts[False] >= 15 and hunts[True] <= 5, hunts


def test_backlog_drains_when_a_gateway_appears():
    ids = list(range(1, 6))
    radio = make_net(ids, {1})
    link_line(radio, ids)
    radio.kill(1)
    apps = add_apps(radio, ids[1:])
    radio.run(10 * MIN)
    for i in ids[1:]:
        assert not radio.nodes[i].router.has_route()
        # every reading waits in the ring: without a route none is handed to the router
        assert len(apps[i].made) >= 9 and apps[i].ring.backlog() == len(apps[i].made)
        st = radio.nodes[i].router.stats
        assert st["originated"] == 0 and st["no_route_drops"] == 0
    backlog = {i: len(apps[i].made) for i in ids[1:]}
    radio.revive(1, Router(1, mac_of(1), True, MESH))
    radio.run(20 * MIN)
    assert all(a.ring.backlog() == 0 for a in apps.values())
    assert made(apps) - delivered(radio, {1}) <= newest(apps)
    assert arrivals(radio, {1}) == len(delivered(radio, {1}))
    # each node's backlog (fewer than MAX_READINGS) left in its first frame
    first = {f.origin: len(f.readings) for _, f, _ in uplinks(radio, {1}) if f.seq == 0}
    assert all(first[i] >= backlog[i] for i in ids[1:]), (first, backlog)
    route_events = [ev for _, ev in radio.nodes[5].events if ev[0] == "route"]
    assert route_events[-1] == ("route", True)


def test_failed_parent_link_retries_then_reroutes():
    radio = make_net([1, 2, 3, 4], {1})
    radio.link(1, 2)
    radio.link(1, 3)
    radio.link(2, 4)
    radio.link(3, 4)
    radio.run(MIN)
    first = radio.nodes[4].router.parent
    other = 5 - first
    radio.unlink(4, first)
    outcome = []
    radio.on_event = lambda radio, node, ev: outcome.append(ev) if ev[0] == "sent" else None
    radio.call(4, lambda r, now: r.originate(encode(telemetry(4, 1), MESH), now, "x"))
    radio.run(radio.now_ms + 10_000)
    r = radio.nodes[4].router
    assert outcome == [("sent", "x", True)]
    assert r.parent == other and r.stats["retries"] >= DEFAULTS["tries_per_parent"]
    assert (4, 1) in delivered(radio, {1})


def test_send_timeout_counts_as_failure():
    r = Router(5, mac_of(5), False, MESH)
    r.on_recv(mac_of(1), beacon_bytes(1, 0, 1, depth=0, flags=BF_GATEWAY), -50, 0)
    drain(r)
    r.originate(encode(telemetry(5, 1), MESH), 100, "a")
    tx = drain(r)
    assert len(tx) == 1 and tx[0][1] == mac_of(1)
    assert r.next_deadline_ms <= 100 + DEFAULTS["send_timeout_ms"]
    r.tick(100 + DEFAULTS["send_timeout_ms"])
    assert r.stats["send_timeouts"] == 1 and r.stats["retries"] == 1
    r.on_send_done(tx[0][0], True, 5000)  # a late report of the abandoned attempt: ignored
    assert r.stats["queue_len"] == 1


def test_originate_without_route_and_at_a_gateway():
    r = Router(5, mac_of(5), False, MESH)
    r.originate(encode(telemetry(5, 1), MESH), 0, "a")
    assert ("sent", "a", False) in events(r) and r.stats["no_route_drops"] == 1
    assert r.wall_time_s(0) == 0
    g = Router(1, mac_of(1), True, MESH)
    f = telemetry(1, 7)
    g.originate(encode(f, MESH), 0, "b")
    ev = events(g)
    assert ev[0][0] == "uplink" and ev[0][2:] == (0, 0) and ev[1] == ("sent", "b", True)
    f.hops = f.cost = 0  # a gateway's own frame: uplinked as hop 0, cost 0
    assert decode(ev[0][1], MESH, node_key=node_key) == f
    # bytes that are not an uplink frame are the caller's bug: ValueError, nothing sent
    good = encode(f, MESH)
    for bad in (b"", b"\x8a\x01", good[:-6], encode(Beacon(1, 0, 0, 0, 0, 0), MESH)):
        with pytest.raises(ValueError):
            g.originate(bad, 0, "c")
    assert events(g) == []


def test_forwarding_queue_is_bounded_and_drops_oldest_forwarded():
    r = Router(5, mac_of(5), False, MESH, params={"queue_len": 4})
    for s in range(1, 8):  # no route: forwarded frames wait
        r.on_recv(mac_of(9), encode(telemetry(9, s, hops=1, cost=30), MESH), -60, s)
    assert r.stats["queue_len"] == 4 and r.stats["queue_drops"] == 3
    r.on_recv(mac_of(1), beacon_bytes(1, 0, 1, depth=0, flags=BF_GATEWAY), -50, 100)
    seqs = []
    now = 100
    while True:
        tx = [t for t in drain(r) if t[1] != BROADCAST]
        if not tx:
            break
        seqs.append(_parse_up(tx[0][2])[1])
        now += 5
        r.on_send_done(tx[0][0], True, now)
    assert seqs == [4, 5, 6, 7]


# ---- downlink --------------------------------------------------------------------------------

def command_bytes(target, cseq, hops=0):
    auth = bytes(64) if target == 0 else node_key(target).tag(b"x", 8)
    return encode(Command(target, cseq, OP_PING, [1], hops, auth), MESH)


def commands_seen(radio):
    return {i: [ev[1] for _, ev in n.events if ev[0] == "command"] for i, n in radio.nodes.items()}


def test_a_flood_started_with_a_hop_count_stops_that_many_hops_from_the_gateway():
    """The fleet scopes a flooded command (fleet/repair.py flood_start_hops) by the hop count it
    starts with: relays rebroadcast only while hops < max_hops, so a command started at
    max_hops - 3 reaches the nodes within 3 hops and no farther, and costs 3 transmissions
    on a line, not 7."""
    ids = list(range(1, 9))
    radio = make_net(ids, {1})
    link_line(radio, ids)
    radio.run(3 * MIN)
    before = total(radio, "floods_tx")
    radio.call(1, lambda r, now: r.inject_downlink(command_bytes(0, 51, hops=DEFAULTS["max_hops"] - 3), now))
    radio.run(radio.now_ms + 10_000)
    seen = commands_seen(radio)
    assert sorted(i for i in ids if seen[i]) == [1, 2, 3, 4]
    assert total(radio, "floods_tx") - before == 3  # the gateway, 2 and 3 rebroadcast; 4 is the edge


def test_downlink_flood_reaches_every_node_exactly_once():
    ids = list(range(1, 26))
    radio = make_net(ids, {1})
    link_grid(radio, ids, 5)
    radio.run(2 * MIN)
    accepted = []
    radio.call(1, lambda r, now: accepted.append(r.inject_downlink(command_bytes(0, 41), now)))
    radio.call(1, lambda r, now: accepted.append(r.inject_downlink(command_bytes(0, 41), now)))
    radio.run(radio.now_ms + 10_000)
    assert accepted == [True, False]
    seen = commands_seen(radio)
    for i in ids:
        assert len(seen[i]) == 1 and seen[i][0].cseq == 41 and seen[i][0].target == 0, i
    assert total(radio, "floods_tx") == 25  # each node, the gateway too, broadcast it once
    radio.call(1, lambda r, now: r.inject_downlink(command_bytes(13, 42), now))
    radio.run(radio.now_ms + 10_000)
    seen = commands_seen(radio)
    assert [c.cseq for c in seen[13]] == [41, 42]
    assert all(len(seen[i]) == 1 for i in ids if i != 13)


def test_downlink_flood_stops_at_ttl():
    ids = list(range(1, 9))
    radio = make_net(ids, {1}, params={"max_hops": 3})
    link_line(radio, ids)
    radio.run(MIN)
    radio.call(1, lambda r, now: r.inject_downlink(command_bytes(0, 5), now))
    radio.run(radio.now_ms + 10_000)
    seen = commands_seen(radio)
    assert [len(seen[i]) for i in ids] == [1, 1, 1, 1, 0, 0, 0, 0]
    assert radio.nodes[4].router.stats["ttl_dropped"] == 1


# ---- bad input -------------------------------------------------------------------------------

def test_bad_hop_tags_and_garbage_are_counted_and_dropped():
    r = Router(5, mac_of(5), False, MESH)
    other = Hmac(b"another mesh" * 3)
    r.on_recv(mac_of(1), beacon_bytes(1, 0, 1, key=other), -50, 0)
    r.on_recv(mac_of(9), encode(telemetry(9, 1), other), -50, 1)
    r.on_recv(mac_of(1), command_bytes(0, 1)[:-1] + b"\x00", -50, 2)
    # the beacon that fails its hop tag is counted apart (alien_rx: another key epoch, or forged)
    assert r.stats["bad_frames"] == 2 and r.stats["alien_rx"] == 1 and r.parent == 0 and r.stats["queue_len"] == 0
    assert r.on_recv(mac_of(1), encode(OtaAdvert(1, 2, 3, 4, 5, 6), MESH), -50, 3) is False
    rng = random.Random(1)
    good = [beacon_bytes(1, 0, 1), encode(telemetry(9, 2), MESH), command_bytes(0, 3), command_bytes(7, 4)]
    for n in range(4000):
        if n % 2:
            b = bytearray(rng.choice(good))
            for _ in range(rng.randint(1, 3)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            if rng.random() < 0.3:
                b = b[:rng.randrange(len(b))]
            b = bytes(b)
        else:
            b = bytes(rng.randrange(256) for _ in range(rng.randint(0, 60)))
        r.on_recv(mac_of(3), b, -70, 10 + n)  # must never raise
        r.tick(10 + n)
        r.inject_downlink(b, 10 + n)
    assert r.stats["bad_frames"] > 3000
    assert r.parent == 0


def test_forwarded_bytes_equal_a_fresh_encode():
    ids = [1, 2, 3]
    radio = make_net(ids, {1})
    link_line(radio, ids)
    radio.run(MIN)
    sent = []
    radio.sniffer = lambda now, node, dst, data: sent.append((node.node_id, data, node.router.cost)) \
        if dst != BROADCAST else None
    f = telemetry(3, 77)
    radio.call(3, lambda r, now: r.originate(encode(f, MESH), now, None))
    radio.run(radio.now_ms + 1000)
    by2 = [(d, c) for n, d, c in sent if n == 2]
    assert len(by2) == 1
    g = telemetry(3, 77, hops=2, cost=by2[0][1])  # node 2's cost when it sent (it may move after)
    assert by2[0][0] == encode(g, MESH)


def test_status_and_reply_frames_travel_like_telemetry():
    ids = [1, 2, 3]
    radio = make_net(ids, {1})
    link_line(radio, ids)
    radio.run(MIN)
    st = Status(origin=3, seq=4, time_s=5, body=StatusBody(fw_version="1.0", parent=2, rssi=-61))
    rp = Reply(origin=3, seq=6, time_s=7, cseq=41, code=0, result=[1, "ok"])
    for f in (st, rp):
        f.etag = decode(encode(f, MESH, node_key(3)), MESH).etag
        radio.call(3, lambda r, now, f=f: r.originate(encode(f, MESH, node_key(3)), now, f.type))
    costs = []  # node 2's cost at each unicast it sent (it may move after)
    radio.sniffer = lambda now, node, dst, data: costs.append(node.router.cost) \
        if node.node_id == 2 and dst != BROADCAST else None
    radio.run(radio.now_ms + 2000)
    got = [f for _, f, h in uplinks(radio, {1}) if h == 2]  # end-to-end tags checked
    assert len(costs) == 2
    for f, c in zip((st, rp), costs, strict=True):  # what node 2 forwarded: hops 2, its own cost
        f.hops = 2
        f.cost = c
    assert got == [st, rp]
    assert [ev for _, ev in radio.nodes[3].events if ev[0] == "sent"] == [("sent", st.type, True), ("sent", rp.type, True)]


def test_received_buffers_may_be_bytearray_or_memoryview():
    r = Router(5, mac_of(5), False, MESH)
    r.on_recv(mac_of(1), bytearray(beacon_bytes(1, 0, 1, depth=0, flags=BF_GATEWAY)), -50, 0)
    b = encode(telemetry(9, 1, hops=1, cost=30), MESH)
    r.on_recv(bytearray(mac_of(9)), memoryview(b), -60, 5)
    tx = [t for t in drain(r) if t[1] != BROADCAST]
    assert r.parent == 1 and len(tx) == 1 and isinstance(tx[0][2], bytes)


def test_a_shell_that_stops_polling_cannot_grow_the_tx_queue():
    g = Router(1, mac_of(1), True, MESH, params={"beacon_imin_ms": 10, "beacon_doublings": 0})
    for now in range(0, 10_000, 10):
        g.tick(now)
    assert len(drain(g)) == 16 and g.stats["txq_drops"] > 900


# ---- small parts -----------------------------------------------------------------------------

def test_peer_table_keeps_broadcast_and_evicts_least_recent():
    p = PeerTable(max_peers=4)
    macs = [mac_of(i) for i in range(1, 6)]
    assert p.use(BROADCAST) == (False, None)
    assert [p.use(m) for m in macs[:3]] == [(True, None)] * 3
    assert p.use(macs[0]) == (False, None)  # now the most recent
    assert p.use(macs[3]) == (True, macs[1])
    assert len(p) == 4 and BROADCAST in p.macs
    assert p.remove(macs[0]) and not p.remove(BROADCAST)


def test_wall_clock_travels_down_the_line():
    ids = list(range(1, 6))
    radio = make_net(ids, {1})
    link_line(radio, ids)
    radio.call(1, lambda r, now: r.set_time(1_700_000_000, now))
    radio.run(MIN)
    # within a second of the gateway's clock at every hop: the floor of a beacon's whole seconds
    # must not add up along the line
    for i in ids:
        w = radio.nodes[i].router.wall_time_ms(radio.now_ms)
        assert abs(w - 1_700_000_060_000) <= 1000, (i, w - 1_700_000_060_000)


def test_parameters_are_checked():
    with pytest.raises(ValueError, match="unknown mesh parameter"):
        Router(1, mac_of(1), False, MESH, params={"max_hop": 3})
    with pytest.raises(ValueError, match="max_hops"):
        Router(1, mac_of(1), False, MESH, params={"max_hops": 0})


_IO_MODULES = {"time", "utime", "asyncio", "uasyncio", "machine", "espnow", "aioespnow", "socket", "usocket",
               "network", "select", "esp32", "esp"}


def test_cores_stay_sans_io():
    """protocol/ and the firmware cores import no clock, radio, socket or event loop - anywhere
    in the file, function bodies included - and take only `const`, `verify_signature` (Ed25519
    imported for one check and unloaded) and `unload` (a cold module dropped after its call:
    memory, no I/O) from firmware.compat (its tick fallbacks are for the shell)."""
    import ast
    import glob

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cores = sorted(glob.glob(os.path.join(root, "protocol", "*.py")) + glob.glob(os.path.join(root, "firmware", "drivers", "*.py"))
                   + [os.path.join(root, "firmware", n) for n in ("mesh.py", "trickle.py", "ota.py", "sampler.py", "ring.py",
                                                                  "ring_check.py", "counters.py")])
    assert len(cores) >= 14
    for path in cores:
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
                if node.module == "firmware.compat":
                    assert {a.name for a in node.names} <= {"const", "verify_signature", "unload"}, (
                        path, [a.name for a in node.names])
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in _IO_MODULES, (os.path.relpath(path, root), name)
                assert not name.startswith("firmware.hal"), (os.path.relpath(path, root), name)


# ---- downward routes (issue 15) ---------------------------------------------------------------

def _routed(radio, gateways, target, cseq, drop=()):
    """A Routed frame for `target`, compiled from the parents the routers have now (as the
    fleet compiles it from the parents nodes report), with `drop` ids left out of the map."""
    from protocol.routed import Routed, compile_path
    parents = {i: n.router.parent for i, n in radio.nodes.items() if i not in drop}
    gw, path = compile_path(parents, target, gateways)
    return gw, path, encode(Routed(path=path, at=0, cmd=command_bytes(target, cseq)), MESH)


def test_routed_command_travels_only_down_its_path():
    ids = list(range(1, 26))
    radio = make_net(ids, {1})
    link_grid(radio, ids, 5)
    radio.run(3 * MIN)
    assert_tree(radio, {1})
    gw, path, frame = _routed(radio, {1}, 25, 77)
    assert gw == 1 and path[-1] == 25 and len(path) >= 4
    before = {i: dict(n.router.stats) for i, n in radio.nodes.items()}
    ok = []
    radio.call(1, lambda r, now: ok.append(inject_routed(r, frame, now)))
    radio.run(radio.now_ms + 10_000)
    assert ok == [True]
    seen = commands_seen(radio)
    assert [c.cseq for c in seen[25]] == [77]
    assert all(not seen[i] for i in ids if i != 25)
    fwd = {i: n.router.stats["routed_fwd"] - before[i]["routed_fwd"] for i, n in radio.nodes.items()}
    # one unicast per hop: the gateway and every relay on the path, nobody else, no flood
    assert sorted(i for i in ids if fwd[i]) == sorted([1] + path[:-1])
    assert all(v == 1 for v in fwd.values() if v)
    assert total(radio, "floods_tx") == sum(b["floods_tx"] for b in before.values())
    assert radio.nodes[25].router.stats["commands"] == 1


def _line_of_8_routed_to_5(cseq):
    """A settled line of 8 nodes (gateway 1) and a routed command `cseq` for node 5 down 2-3-4-5."""
    ids = list(range(1, 9))
    radio = make_net(ids, {1})
    link_line(radio, ids)
    radio.run(3 * MIN)
    _, path, frame = _routed(radio, {1}, 5, cseq)
    assert path == [2, 3, 4, 5]
    return radio, frame


def test_a_relay_passes_on_a_routed_command_once():
    """A hop re-sent after a lost ACK (the frame had come) reaches the relay twice: it goes on
    once, or every lost ACK forks the rest of the path."""
    radio, frame = _line_of_8_routed_to_5(12)
    before = {i: dict(n.router.stats) for i, n in radio.nodes.items()}
    radio.call(1, lambda r, now: (inject_routed(r, frame, now), inject_routed(r, frame, now)))
    radio.run(radio.now_ms + 10_000)
    fwd = {i: n.router.stats["routed_fwd"] - before[i]["routed_fwd"] for i, n in radio.nodes.items()}
    assert fwd == {1: 2, 2: 1, 3: 1, 4: 1, 5: 0, 6: 0, 7: 0, 8: 0}
    assert radio.nodes[2].router.stats["routed_dup"] == 1
    assert [c.cseq for c in commands_seen(radio)[5]] == [12]
    # the fleet's retry comes with a new cseq: passed on again
    _, _, again = _routed(radio, {1}, 5, 13)
    radio.call(1, lambda r, now: inject_routed(r, again, now))
    radio.run(radio.now_ms + 10_000)
    assert [c.cseq for c in commands_seen(radio)[5]] == [12, 13]
    assert radio.nodes[4].router.stats["routed_fwd"] - before[4]["routed_fwd"] == 2


def test_a_relay_in_the_next_epoch_re_tags_a_routed_command_in_its_own_key_phase():
    """During a key rotation's grace window a relay that already runs the next epoch forwards a
    routed command tagged with its own key and says so in the version item, so the next hop
    checks it with the right key (as floods are re-tagged)."""
    from firmware.rekey import set_keys
    from protocol.auth import Hmac

    radio, frame = _line_of_8_routed_to_5(11)
    k0, k1 = MESH, Hmac(b"next epoch mesh key, 32 bytes!!!")
    for i, n in radio.nodes.items():
        set_keys(n.router, k1, 1, k0) if i == 3 else set_keys(n.router, k0, 0, k1)
    radio.call(1, lambda r, now: inject_routed(r, frame, now))
    radio.run(radio.now_ms + 10_000)
    assert [c.cseq for c in commands_seen(radio)[5]] == [11]
    assert radio.nodes[4].router.stats["routed_fwd"] == 1


def test_routed_command_to_a_child_missing_from_the_neighbour_table_goes_one_hop_broadcast():
    ids = list(range(1, 9))
    radio = make_net(ids, {1})
    link_line(radio, ids)
    radio.run(3 * MIN)
    _, path, frame = _routed(radio, {1}, 5, 9)
    assert path == [2, 3, 4, 5]
    radio.nodes[4].router._nbrs.pop(5)  # the relay forgot its child (evicted, rebooted)
    radio.call(1, lambda r, now: inject_routed(r, frame, now))
    radio.run(radio.now_ms + 10_000)
    seen = commands_seen(radio)
    assert [c.cseq for c in seen[5]] == [9] and all(not seen[i] for i in ids if i != 5)
    assert radio.nodes[4].router.stats["routed_nbr_miss"] == 1
    assert total(radio, "floods_tx") == 0


def _hear(r, neighbours, rounds=3):
    """Router r hears `rounds` beacons, 10 s apart and on perfect links, from each neighbour
    (src, cost[, depth[, flags]]; depth 1, flags 0 by default), draining its output after each
    round. Returns the time of the last round."""
    now = 0
    for bseq in range(rounds):
        now += 10_000
        for nb in neighbours:
            src, cost, depth, flags = tuple(nb) + (1, 0)[len(nb) - 2:]
            r.on_recv(mac_of(src), beacon_bytes(src, cost, bseq, depth=depth, flags=flags), -50, now)
        drain(r)
    return now


def test_a_neighbour_still_in_the_retired_epoch_is_forgotten_when_the_grace_window_ends():
    """Issue 14: a stolen pole holds only the old epoch's mesh key. It advertises cost 0 and its
    radio ACKs every unicast (ESP-NOW's ACK is the radio's, not the mesh's): as a parent it
    swallows our frames. Activation resets the beacon timer (neighbours hear the new epoch
    soon); when the grace window ends, neighbours last heard in the retired key phase are
    forgotten, the parent too, and the stolen pole's later beacons fail the hop tag."""
    from firmware import rekey

    k0, k1 = b"\x10" * 32, b"\x11" * 32
    r = Router(10, mac_of(10), False, k0)
    rogue, honest = 7, 2
    now = 0
    for b in range(4):  # both heard in epoch 0; the rogue advertises a gateway's cost
        now += 10_000
        r.on_recv(mac_of(rogue), encode(Beacon(rogue, b, 0, 0, 0, 0), k0, None, 0), -50, now)
        r.on_recv(mac_of(honest), encode(Beacon(honest, b, 30, 1, 0, 0), k0, None, 0), -50, now)
        drain(r)
    assert r.parent == rogue
    rekey.apply(r, (0, k0, 1, k1), now)  # re-keyed: both keys, still sending in epoch 0
    for t in range(now, now + 600_000, 1000):
        r.tick(t)
        drain(r)
    now += 600_000
    assert r.trickle.interval_ms > 1000
    rekey.apply(r, (1, k1, 0, k0), now)  # activated: epoch 1, the grace window accepts both
    assert r.trickle.interval_ms == 1000 and r.parent == rogue
    for b in range(4, 7):  # the honest neighbour beacons in the new epoch, the rogue cannot
        now += 1000
        r.on_recv(mac_of(rogue), encode(Beacon(rogue, b, 0, 0, 0, 0), k0, None, 0), -50, now)
        r.on_recv(mac_of(honest), encode(Beacon(honest, b, 30, 1, 0, 0), k1, None, 1), -50, now)
        drain(r)
    assert r.parent == rogue  # in the grace window the old epoch still counts
    now += 1000
    rekey.apply(r, (1, k1, None, None), now)  # the grace window ends
    drain(r)
    assert rogue not in r._nbrs and honest in r._nbrs and r.stats["nbr_evicted"] == 1
    alien = r.stats["alien_rx"]
    # without a route, a neighbour no cheaper than we were is taken once it beaconed
    # fresh_wait_ms (20 s) after our no-route beacon: 30 rounds, 1 s apart
    for b in range(7, 37):
        now += 1000
        r.on_recv(mac_of(rogue), encode(Beacon(rogue, b, 0, 0, 0, 0), k0, None, 0), -50, now)
        r.on_recv(mac_of(honest), encode(Beacon(honest, b, 30, 1, 0, 0), k1, None, 1), -50, now)
        drain(r)
        r.tick(now)
    # counted as frames of a key phase it holds no key for (as many as the beacons it can check:
    # not enough for it to ask for a key, firmware/node.py)
    assert r.stats["alien_rx"] == alien + 30 and rogue not in r._nbrs
    assert r.parent == honest


def test_a_full_neighbour_table_keeps_the_children_routed_frames_go_down_to():
    """A relay's table (max_neighbors) fills with the best paths it hears, and its children are
    the deepest, worst-path neighbours: they were refused or evicted first, so a routed command
    for a child missed it at the last hop (DES, 1,000 nodes, 20 % loss + gateway failure: 198
    misses, 56 of 93 routed requests retried by flood). A node that originates a frame through
    the relay is admitted as a child in place of the worst non-child, and kept against better
    newcomers; children give way only to children when the table is children and parent."""
    r = Router(10, mac_of(10), False, MESH, params={"max_neighbors": 4})
    # a gateway (the parent) and three relays with routes, heard well
    now = _hear(r, ((1, 0, 0, BF_GATEWAY), (2, 20), (3, 25), (4, 30)))
    assert r.parent == 1 and sorted(r._nbrs) == [1, 2, 3, 4]
    child = encode(telemetry(50, 0, hops=1, cost=200), MESH)  # as node 50 originates it
    now += 1000
    r.on_recv(mac_of(50), child, -70, now)
    assert sorted(r._nbrs) == [1, 2, 3, 50]  # the worst relay (4) made room; 50 is not a candidate
    assert r.stats["nbr_evicted"] == 1 and r.parent == 1
    now += 1000
    r.on_recv(mac_of(5), beacon_bytes(5, 5, 0), -50, now)  # a better newcomer: evicts a relay
    assert 50 in r._nbrs and 5 in r._nbrs and r.stats["nbr_evicted"] == 2
    forwarded = encode(telemetry(60, 0, hops=3, cost=250), MESH)  # forwarded by 50: not a child
    r.on_recv(mac_of(50), forwarded, -70, now)
    assert 60 not in r._nbrs
    for c in (51, 52, 53):  # children fill the table: the parent stays, a child waits its turn
        now += 1000
        r.on_recv(mac_of(c), encode(telemetry(c, 0, hops=1, cost=200), MESH), -70, now)
    assert sorted(r._nbrs) == [1, 50, 51, 52] and r.stats["nbr_full"] >= 1
    assert r.parent == 1


def test_a_gateway_with_a_full_table_keeps_its_children_too():
    """A gateway is the first hop of every source route: its children must be in its table
    (a gateway takes uplinks before the relays' forwarding path, where children are noted)."""
    g = Router(1, mac_of(1), True, MESH, params={"max_neighbors": 2})
    now = _hear(g, ((2, 20), (3, 30)))
    assert sorted(g._nbrs) == [2, 3]
    g.on_recv(mac_of(50), encode(telemetry(50, 0, hops=1, cost=200), MESH), -70, now + 1000)
    assert sorted(g._nbrs) == [2, 50] and g._nbrs[50].child_ms == now + 1000


def test_a_routed_hop_that_fails_is_sent_again_then_given_up():
    """A routed frame has no queue entry: a hop lost after the MAC's own retries was gone, and the
    fleet's retry came as a flood (the 25-node HIL at 20 % extra loss, 2 of 24 in one CI run).
    Each hop is now sent up to ROUTED_SENDS times, counted."""
    from firmware.downroute import ROUTED_SENDS
    from protocol.routed import Routed

    r = Router(3, mac_of(3), False, MESH)
    now = _hear(r, ((1, 0, 0, BF_GATEWAY), (4, 30, 2)))
    frame = encode(Routed(path=[3, 4], at=0, cmd=command_bytes(4, 8)), MESH)
    assert r.on_recv(mac_of(1), frame, -50, now)
    sent = []
    for _ in range(ROUTED_SENDS + 1):
        out = [tx for tx in drain(r) if tx[1] == mac_of(4)]
        if not out:
            break
        (tok, mac, data), = out
        sent.append(data)
        r.on_send_done(tok, False, now)
    assert len(sent) == ROUTED_SENDS and len(set(sent)) == 1
    assert (r.stats["routed_retries"], r.stats["routed_fail"]) == (ROUTED_SENDS - 1, 1)
    # an ACK ends it at once
    assert r.on_recv(mac_of(1), encode(Routed(path=[3, 4], at=0, cmd=command_bytes(4, 9)), MESH), -50, now)
    (tok, _, _), = [tx for tx in drain(r) if tx[1] == mac_of(4)]
    r.on_send_done(tok, True, now)
    assert not [tx for tx in drain(r) if tx[1] == mac_of(4)] and not r._routed


def test_routed_frame_never_floods_a_command_for_another_node():
    from protocol.routed import Routed
    ids = list(range(1, 5))
    radio = make_net(ids, {1})
    link_line(radio, ids)
    radio.run(3 * MIN)
    # a route ending at 4 carrying a command for 3 (a compiler bug or a forgery with the mesh key)
    bad = encode(Routed(path=[2, 3, 4], at=0, cmd=command_bytes(3, 5)), MESH)
    radio.call(1, lambda r, now: inject_routed(r, bad, now))
    radio.run(radio.now_ms + 10_000)
    assert all(not v for v in commands_seen(radio).values())
    assert total(radio, "floods_tx") == 0 and radio.nodes[4].router.stats["bad_frames"] == 1
    r = Router(5, mac_of(5), False, MESH)
    mid = encode(Routed(path=[5, 6], at=0, cmd=command_bytes(6, 6)), MESH)
    assert r.on_recv(mac_of(1), mid[:-1] + bytes([mid[-1] ^ 1]), -50, 0) and r.stats["bad_frames"] == 1
    assert r.poll_tx() is None
    # on the last hop the outer tag is not what counts: the command inside has its own tags and
    # end-to-end auth (how a node that missed a key rotation gets the fleet's answer)
    good = encode(Routed(path=[5], at=0, cmd=command_bytes(5, 7)), MESH)
    assert r.on_recv(mac_of(1), good[:-1] + bytes([good[-1] ^ 1]), -50, 1) and r.stats["bad_frames"] == 1
    evs = []
    while (ev := r.poll_event()) is not None:
        evs.append(ev)
    assert [e[1].cseq for e in evs if e[0] == "command"] == [7]
    assert inject_routed(r, b"\x86\x01\x09" + bytes(10), 1) is False and r.stats["bad_frames"] == 2


# ---- link estimation and hysteresis on lossy links (issue 15, item 2) ------------------------

def _beacons_at_prr(r, src, cost, prr, n, seed, record, depth=1, flags=0, t0=0):
    """Feed router r n beacons of neighbour src, each heard with probability prr (the bseq
    counts every one sent); record(now) after each one heard. Returns the time after."""
    rng = random.Random(seed)
    now = t0
    for bseq in range(n):
        now += 10_000
        if rng.random() < prr:
            r.on_recv(mac_of(src), beacon_bytes(src, cost, bseq & 255, depth=depth, flags=flags), -50, now)
            drain(r)
            record(now)
    return now


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_link_estimate_of_a_lossy_link_holds_steady(seed):
    # a link that loses 20 % of frames each way costs 1 / 0.8**2 = 1.56 sends per delivery.
    # Averaging ETX samples of 3-beacon windows (1, 2.25, 9 or 25 at this PRR) made the estimate
    # jump by whole ETX; the EWMA of the reception ratio stays within a few tenths of the truth
    r = Router(5, mac_of(5), False, MESH)
    seen = []
    _beacons_at_prr(r, 1, 0, 0.8, 400, seed, lambda now: seen.append(r.parent_etx), depth=0, flags=BF_GATEWAY)
    assert r.parent == 1
    steady = seen[len(seen) // 4:]  # past the warm-up from the initial guess
    # seeds 1-3: means 15.9, 14.5, 14.7 tenths, ranges 12-20 (the ETX-sample EWMA: means 23.8,
    # 18.1, 19.7 - biased up - and ranges as wide as 14-38)
    assert 14 <= sum(steady) / len(steady) <= 17.5, steady
    assert max(steady) - min(steady) <= 9, (min(steady), max(steady))


def _two_parents(params=None):
    """Router 5 hearing gateway-side relays 1 (path 40 + link) and 2 (path 44 + link) on
    perfect links; returns (router, now) once it settled on 1."""
    r = Router(5, mac_of(5), False, MESH, params=params)
    now = _hear(r, ((1, 40), (2, 44)), rounds=40)
    assert r.parent == 1
    return r, now


@pytest.mark.parametrize("pct", [None, 0])
def test_a_parent_whose_path_wobbles_within_the_margin_is_kept(pct):
    # relay 1's path cost swings by 0.8 ETX on a 5-ETX path and relay 2 looks 1.8 ETX better at
    # the top of a swing: beyond the fixed 1.5 ETX margin (which alone switches), within the
    # relative one (noise on a lossy street moves deep paths by more than 1.5 ETX)
    r, now = _two_parents(None if pct is None else {"switch_pct": pct})
    changes = r.stats["parent_changes"]
    for bseq in range(40, 80):
        now += 10_000
        r.on_recv(mac_of(1), beacon_bytes(1, 40 + 8 * (bseq & 1), bseq), -50, now)
        r.on_recv(mac_of(2), beacon_bytes(2, 30, bseq), -50, now)
        drain(r)
    if pct is None:
        assert r.parent == 1 and r.stats["parent_changes"] == changes
    else:
        assert r.parent == 2


@pytest.mark.parametrize("pct", [30, None])
def test_a_candidate_must_beat_a_steady_parent_by_the_relative_margin(pct):
    # relay 2 comes to look 2 ETX better than relay 1's steady 5-ETX path: beyond 1.5 ETX + 10 %
    # (the default), within 1.5 ETX + 30 %
    r, now = _two_parents(None if pct is None else {"switch_pct": pct})
    changes = r.stats["parent_changes"]
    for bseq in range(40, 60):
        now += 10_000
        r.on_recv(mac_of(1), beacon_bytes(1, 40, bseq), -50, now)
        r.on_recv(mac_of(2), beacon_bytes(2, 20, bseq), -50, now)
        drain(r)
    if pct is None:
        assert r.parent == 2
    else:
        assert r.parent == 1 and r.stats["parent_changes"] == changes


@pytest.mark.parametrize("worse", [None, 50])
def test_a_path_worse_than_its_best_by_worse_pct_drops_the_relative_margin(worse):
    # with switch_pct 30, relay 1's path rising 40 -> 61 (cur 50 -> 71: beyond 1.5 ETX + 10 % of
    # its best, within + 50 %) lets relay 2, 2.1 ETX better at 50, in on the fixed margin alone
    params = {"switch_pct": 30}
    if worse is not None:
        params["worse_pct"] = worse
    r, now = _two_parents(params)
    for bseq in range(40, 60):
        now += 10_000
        r.on_recv(mac_of(1), beacon_bytes(1, 61, bseq), -50, now)
        r.on_recv(mac_of(2), beacon_bytes(2, 40, bseq), -50, now)
        drain(r)
    assert r.parent == (2 if worse is None else 1)


def test_a_parent_whose_path_really_worsens_is_left_at_once():
    r, now = _two_parents()
    now += 10_000
    r.on_recv(mac_of(1), beacon_bytes(1, 90, 40), -50, now)  # its path went bad (a gateway died?)
    assert r.parent == 2
