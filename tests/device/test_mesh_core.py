# Mesh core smoke run, the same file under MicroPython (tests/mp_run.py) and CPython (pytest):
# a 3-node line through a tiny lossless radio; checks routes, hop counts, tags and the PRNG.
import gc

from firmware.mesh import BROADCAST, Router
from firmware.trickle import Trickle, Xorshift32
from protocol import Reading, Telemetry, decode, encode
from protocol.auth import Hmac

MESH = Hmac(b"m" * 32)
NODE3 = Hmac(b"n" * 32)


def mac(i):
    return bytes((2, 0, 0, 0, 0, i))


class TinyRadio:
    """Node at index i hears i - 1 and i + 1; every frame arrives 1 ms after it is sent."""

    def __init__(self, routers):
        self.r = routers
        self.now = 0
        self.pending = []  # (due_ms, kind, index, a, b): kind 0 receive, 1 send done
        self.events = [[] for _ in routers]

    def _near(self, i):
        return [j for j in (i - 1, i + 1) if 0 <= j < len(self.r)]

    def pump(self, i):
        r = self.r[i]
        tx = r.poll_tx()
        while tx is not None:
            tok, dst, data = tx
            hit = False
            for j in self._near(i):
                if dst == BROADCAST or dst == self.r[j].mac:
                    self.pending.append((self.now + 1, 0, j, r.mac, data))
                    hit = True
            if dst != BROADCAST:
                self.pending.append((self.now + 1, 1, i, tok, hit))
            tx = r.poll_tx()
        ev = r.poll_event()
        while ev is not None:
            self.events[i].append(ev)
            ev = r.poll_event()

    def run(self, until_ms):
        for _ in range(100000):  # bounded: a stuck router fails the test instead of hanging
            t = until_ms
            for p in self.pending:
                if p[0] < t:
                    t = p[0]
            for r in self.r:
                d = r.next_deadline_ms
                if d < t:
                    t = d
            if t > self.now:
                self.now = t
            due = [p for p in self.pending if p[0] <= self.now]
            self.pending = [p for p in self.pending if p[0] > self.now]
            for p in due:
                if p[1] == 0:
                    self.r[p[2]].on_recv(p[3], p[4], -60, self.now)
                else:
                    self.r[p[2]].on_send_done(p[3], p[4], self.now)
                self.pump(p[2])
            ticked = False
            for i in range(len(self.r)):
                if self.r[i].next_deadline_ms <= self.now:
                    self.r[i].tick(self.now)
                    self.pump(i)
                    ticked = True
            if self.now >= until_ms and not due:
                return
            if not due and not ticked:
                self.now += 1
        raise AssertionError("radio loop did not finish")


def line():
    return TinyRadio([Router(i, mac(i), i == 1, MESH) for i in (1, 2, 3)])


def test_line_of_three_converges_and_delivers_two_hops():
    radio = line()
    radio.run(20000)
    gw, mid, far = radio.r
    assert mid.parent == 1 and far.parent == 2 and far.depth == 2
    f = Telemetry(origin=3, seq=9, time_s=1700000000, readings=[Reading(0, 10, 125, 200, 50, 215, 60, 0)])
    far.originate(encode(f, MESH, NODE3, at_origin=True), radio.now, 77)
    radio.pump(2)
    radio.run(radio.now + 2000)
    ups = [e for e in radio.events[0] if e[0] == "uplink"]
    assert len(ups) == 1 and ups[0][3] == 2
    got = decode(ups[0][1], MESH, NODE3)
    assert got.origin == 3 and got.seq == 9 and got.readings == f.readings
    assert ("sent", 77, True) in radio.events[2]
    assert mid.stats["forwarded"] == 1 and gw.stats["uplinks"] == 1


def test_prng_matches_cpython():
    r = Xorshift32(12345)
    assert [r.next() for _ in range(4)] == [3336926330, 1697253807, 2816511904, 1955480042]
    assert [r.below(1000) for _ in range(4)] == [167, 764, 997, 857]


def test_trickle_wake_fires_once_and_keeps_the_interval():
    t = Trickle(100, 4, 0, 5)
    t.start(0)
    for now in range(0, 1600):
        t.poll(now)
    regular = t.next_fire_ms
    t.wake(1600)
    nudged = t.next_fire_ms
    assert 1650 <= nudged < 1700, nudged
    assert [n for n in range(1600, 1700) if t.poll(n)] == [nudged]
    assert t.interval_ms == 1600 and t.next_fire_ms == regular


def test_router_heap_is_small():
    if not hasattr(gc, "mem_free"):
        return  # CPython: nothing to measure here
    gc.collect()
    free0 = gc.mem_free()
    r = Router(5, mac(5), False, MESH)
    for i in range(16):  # a full neighbour table
        r.on_recv(mac(10 + i), encode(_beacon(10 + i), MESH), -60, i)
    gc.collect()
    used = free0 - gc.mem_free()
    assert used < 24000, used  # 64-bit unix port; an ESP32 needs roughly 0.6x


def _beacon(src):
    from protocol import Beacon
    return Beacon(src, 1, 30, 2, 0, 0)


def _rooted(r, src, cost, bseq, now, rseq=5, root=1):
    from protocol import Beacon
    r.on_recv(mac(src), encode(Beacon(src, bseq, cost, 1, 0, 0, root, rseq), MESH), -50, now)
    while r.poll_tx() is not None:
        pass


def test_feasibility_waits_for_a_newer_root_sequence_number():
    # node 10 on relay 2 (root 1, rseq 5); relay 2's path rises. Node 11 advertises more than
    # 10's lowest cost with the same rseq: it may be 10's own child - not taken. With a newer
    # rseq it cannot be: taken, and 10 carries rseq 6 from then on. Another root (7) is
    # feasible at once; root 1 is remembered with the newest rseq and the lowest cost we had.
    r = Router(10, mac(10), False, MESH)
    now = 0
    for b in range(4):
        now += 10000
        _rooted(r, 2, 30, b, now)
    assert r.parent == 2 and r.root == 1 and r.rseq == 5
    low = r.cost
    for b in range(4, 12):
        now += 10000
        _rooted(r, 11, low + 5, b, now)
        _rooted(r, 2, 190, b, now)
    assert r.parent == 2 and r._ref_cost == low
    now += 10000
    _rooted(r, 11, low + 5, 12, now, rseq=6)
    assert r.parent == 11 and r.rseq == 6
    low6 = r._ref_cost
    for b in range(13, 21):
        now += 10000
        _rooted(r, 11, 400, b, now, rseq=6)
        _rooted(r, 3, 100, b, now, rseq=900, root=7)
    assert low < low6 and r.parent == 3 and r.root == 7 and r._fds == [[1, 6, low]]  # its lowest of any rseq


def test_an_rseq_advertised_before_keeps_the_lowest_cost_we_had_with_it():
    # node 10 advertised rseq 6 on relay 2, then took relay 3 whose rseq lags (5). Node 11
    # carries 6 with a little more than 10's lowest cost with 6 (maybe 10's own child): not
    # taken, though its 6 is newer than the 5 10 advertises now. Node 13's 7 is newer than any
    # 10 advertised: taken.
    r = Router(10, mac(10), False, MESH)
    now = 0
    for b in range(4):
        now += 10000
        _rooted(r, 2, 30, b, now, rseq=6)
    low6 = r._ref_cost
    for b in range(4, 12):
        now += 10000
        _rooted(r, 2, 200, b, now, rseq=6)
        _rooted(r, 3, 5, b, now)
    assert r.parent == 3 and r.rseq == 5 and r._rseq_hi == 6 and r._fdt == [6, low6]
    for b in range(12, 24):
        now += 10000
        _rooted(r, 3, 300, b, now)
        _rooted(r, 11, low6 + 5, b, now, rseq=6)
    assert r.parent == 3 and r.cost > 300
    for b in range(24, 28):
        now += 10000
        _rooted(r, 3, 300, b, now)
        _rooted(r, 13, 250, b, now, rseq=7)
    assert r.parent == 13 and r.rseq == 7 and r._fdt[:2] == [5, r._fdt[1]]


def test_a_relay_passes_on_a_routed_command_once():
    # the hop before re-sends a routed frame whose ACK it lost (the frame had come): the relay
    # passes it on once, the target gets the command once
    from firmware.downroute import inject_routed
    from protocol import Command
    from protocol.frames import OP_PING
    from protocol.routed import Routed

    radio = line()
    radio.run(20000)
    gw, mid, far = radio.r
    assert far.parent == 2
    cmd = encode(Command(3, 21, OP_PING, [1], 0, NODE3.tag(b"x", 8)), MESH)
    frame = encode(Routed(path=[2, 3], at=0, cmd=cmd), MESH)
    assert inject_routed(gw, frame, radio.now) and inject_routed(gw, frame, radio.now)
    radio.pump(0)
    radio.run(radio.now + 2000)
    assert gw.stats["routed_fwd"] == 2
    assert mid.stats["routed_fwd"] == 1 and mid.stats["routed_dup"] == 1
    assert [e[1].cseq for e in radio.events[2] if e[0] == "command"] == [21]


def test_a_poison_from_the_parent_stops_the_hunt_and_goes_on_down():
    # node 10 on relay 2 (root 1, rseq 5), hearing relay 3 of the same root and rseq a little
    # cheaper. Relay 2's gateway stopped answering: its no-route beacon names root 1, rseq 5.
    # 10 does not move to relay 3 (the same dead gateway's old path), says so in its own
    # no-route beacon, and takes relay 3 once a newer rseq shows gateway 1 alive.
    from protocol import BF_NO_ROUTE, BF_PULL, COST_INFINITE, Beacon

    r = Router(10, mac(10), False, MESH, params={"poison_ms": 2400000})
    now = 0
    for b in range(6):
        now += 10000
        _rooted(r, 2, 30, b, now)
        _rooted(r, 3, 24, b, now)
    assert r.parent == 2
    now += 1000
    r.on_recv(mac(2), encode(Beacon(2, 6, COST_INFINITE, 255, 0, BF_NO_ROUTE | BF_PULL, 1, 5), MESH), -50, now)
    assert not r.has_route()
    now += 5000
    r.tick(now)
    sent = []
    tx = r.poll_tx()
    while tx is not None:
        if tx[1] == BROADCAST:
            sent.append(decode(tx[2], MESH))
        tx = r.poll_tx()
    assert sent and sent[-1].flags & BF_NO_ROUTE and sent[-1].root == 1 and sent[-1].rseq == 5
    now += 1000
    _rooted(r, 3, 24, 7, now)
    assert not r.has_route()
    now += 1000
    _rooted(r, 3, 24, 8, now, rseq=6)
    assert r.parent == 3 and r.rseq == 6
