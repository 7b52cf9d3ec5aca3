"""A deterministic discrete-event fake radio for mesh Routers (CPython; tests and benches).

One event heap, virtual milliseconds, one seeded random.Random: the same inputs give the
same run. What it models (and what it does not):
- Links are directed pairs with a loss probability and an RSSI; `link()` makes both
  directions. No collisions, no capture effect, no interference: loss is per frame, per link,
  independent.
- A transmission takes air_ms; frames a node sends go out one after another.
- Broadcast: each linked, alive neighbour hears it unless lost; no ACK (the sender's
  on_send_done(token, True) follows anyway, like ESP-NOW's send callback).
- Unicast: up to 1 + mac_retries air attempts; an attempt reaches the receiver unless lost,
  then its ACK comes back unless lost on the reverse link. The receiver gets the frame once
  (the MAC drops its own retransmissions); the sender learns ok = an ACK arrived.
  Destinations that are unknown, unlinked or dead fail after the attempts.
- Each node uses a firmware.mesh.PeerTable like the shell does (the 20-peer ESP-NOW limit).
- Ticks: after every input a node's router.next_deadline_ms is read and a tick scheduled.
- A node's application (SensorApp, optional) is the firmware's own core (firmware/app.py
  NodeApp) over a real reading ring: readings every interval, uplinked as node.py polls.

The harness never looks inside a router: it makes the calls the node shell makes (tick, on_recv,
on_send_done, poll_tx, poll_event, next_deadline_ms), and the app makes the core's.
(The city-size simulator, fleet/sim/des.py, has its own cheaper medium and event loop.)
"""
import heapq
import math
import os
import random
import sys

from firmware.app import NodeApp
from firmware.counters import Counters
from firmware.mesh import BROADCAST, PeerTable
from firmware.node import UPLINK_POLL_MS
from firmware.ring import ReadingRing
from protocol.auth import ReplayWindow

_DEVICE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "device")
if _DEVICE not in sys.path:
    sys.path.append(_DEVICE)
from ota_fixtures import MemFS  # noqa: E402

_TICK = 0
_RX = 1
_DONE = 2
_CALL = 3
_NEVER = float("inf")


def mac_of(node_id):
    """A locally administered MAC for a node id."""
    return b"\x02\x00" + node_id.to_bytes(4, "big")


def rssi_for_distance(d_m):
    """A plausible ESP-NOW RSSI (dBm) at d_m metres (log-distance model, clamped)."""
    r = int(-40 - 27 * math.log10(max(d_m, 1.0)))
    return max(-100, min(-20, r))


class Node:
    """One radio station: its router, liveness, peer table, events seen and counters."""

    __slots__ = ("node_id", "mac", "router", "alive", "links", "sched", "tx_free_ms", "peers", "events",
                 "app")

    def __init__(self, router):
        self.node_id = router.node_id
        self.mac = router.mac
        self.router = router
        self.alive = True
        self.links = {}  # dst Node -> [loss, rssi]
        self.sched = _NEVER  # time of the tick event we have queued
        self.tx_free_ms = 0
        self.peers = PeerTable()
        self.events = []  # (now_ms, event) when the radio keeps events
        self.app = None


class FakeRadio:
    """The medium and the event loop. Typical use:

        radio = FakeRadio(seed=1)
        for r in routers: radio.add(r)
        radio.link(1, 2, loss=0.1)
        radio.run(3_600_000)
    """

    def __init__(self, seed=1, air_ms=2, mac_retries=0, keep_events=True, on_event=None):
        self.rng = random.Random(seed)
        self.air_ms = air_ms
        self.mac_retries = mac_retries
        self.keep_events = keep_events
        self.on_event = on_event  # fn(radio, node, event) called for every router event
        self.now_ms = 0
        self.nodes = {}  # node_id -> Node
        self.by_mac = {}
        self._heap = []
        self._seq = 0
        self.counters = {"tx_broadcast": 0, "tx_unicast": 0, "air_attempts": 0, "rx": 0, "lost": 0,
                         "unicast_fail": 0, "peer_adds": 0, "peer_dels": 0, "ticks": 0}
        self.sniffer = None  # fn(now_ms, src_node, dst_mac, data) for every transmission

    # ---- topology ------------------------------------------------------------------------

    def add(self, router):
        """Add a router as a node; returns its Node. It gets its first tick now."""
        node = Node(router)
        self.nodes[node.node_id] = node
        self.by_mac[node.mac] = node
        self._schedule_tick(node, self.now_ms)
        return node

    def link(self, a, b, loss=0.0, rssi=-60, loss_back=None):
        """Connect node ids a and b both ways (loss_back: the b -> a loss, default the same)."""
        na, nb = self.nodes[a], self.nodes[b]
        na.links[nb] = [loss, rssi]
        nb.links[na] = [loss if loss_back is None else loss_back, rssi]

    def unlink(self, a, b):
        """Cut the link between a and b (both ways)."""
        na, nb = self.nodes[a], self.nodes[b]
        na.links.pop(nb, None)
        nb.links.pop(na, None)

    def set_loss(self, a, b, loss):
        """Change the loss of the a -> b direction."""
        self.nodes[a].links[self.nodes[b]][0] = loss

    def kill(self, node_id):
        """Power the node off: it neither sends, receives nor ticks."""
        self.nodes[node_id].alive = False

    def revive(self, node_id, router):
        """Power the node back on with a fresh router (a reboot)."""
        node = self.nodes[node_id]
        node.router = router
        node.alive = True
        node.sched = _NEVER
        node.peers = PeerTable()
        if node.app is not None:
            node.app.app_init()  # its frames in flight went with the old router
        self._schedule_tick(node, self.now_ms)

    # ---- scheduling ----------------------------------------------------------------------

    def _push(self, t, kind, a, b=None, c=None, d=None):
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, a, b, c, d))

    def at(self, t_ms, fn):
        """Call fn(radio) at virtual time t_ms. Touch routers through radio.call()."""
        self._push(t_ms, _CALL, fn)

    def every(self, period_ms, fn, start_ms=None):
        """Call fn(radio) every period_ms from start_ms (default: one period from now)."""
        def again(radio):
            fn(radio)
            radio.at(radio.now_ms + period_ms, again)
        self.at(self.now_ms + period_ms if start_ms is None else start_ms, again)

    def call(self, node_id, fn):
        """Run fn(router, now_ms) on a live node now, then send what it produced."""
        node = self.nodes[node_id]
        if node.alive:
            fn(node.router, self.now_ms)
            self.service(node)

    def _schedule_tick(self, node, t):
        if t < node.sched:
            node.sched = t
            self._push(t, _TICK, node)

    def run(self, until_ms):
        """Process events up to and including until_ms; now_ms ends at until_ms."""
        heap = self._heap
        while heap and heap[0][0] <= until_ms:
            t, _, kind, a, b, c, d = heapq.heappop(heap)
            self.now_ms = t
            if kind == _TICK:
                if not a.alive or t != a.sched:
                    continue
                a.sched = _NEVER
                self.counters["ticks"] += 1
                a.router.tick(t)
                self.service(a, ticked=True)
            elif kind == _RX:
                if a.alive:
                    self.counters["rx"] += 1
                    a.router.on_recv(b, c, d, t)
                    self.service(a)
            elif kind == _DONE:
                if a.alive and a.router is d:
                    a.router.on_send_done(b, c, t)
                    self.service(a)
            else:
                a(self)
        self.now_ms = until_ms

    # ---- the node side -------------------------------------------------------------------

    def service(self, node, ticked=False):
        """Drain the router's frames and events, then schedule its next tick."""
        r = node.router
        now = self.now_ms
        while True:
            busy = False
            tx = r.poll_tx()
            while tx is not None:
                busy = True
                self._transmit(node, tx[0], tx[1], tx[2])
                tx = r.poll_tx()
            ev = r.poll_event()
            while ev is not None:
                busy = True
                if self.keep_events:
                    node.events.append((now, ev))
                if node.app is not None:
                    node.app.on_event(self, node, ev)
                if self.on_event is not None:
                    self.on_event(self, node, ev)
                ev = r.poll_event()
            if not busy:
                break
        d = r.next_deadline_ms
        if d <= now:
            # a router asking for a tick it just had would spin: give it a millisecond
            d = now + 1 if ticked else now
        self._schedule_tick(node, d)

    def _transmit(self, node, token, dst, data):
        now = self.now_ms
        start = node.tx_free_ms if node.tx_free_ms > now else now
        air = self.air_ms
        rng = self.rng
        c = self.counters
        if self.sniffer is not None:
            self.sniffer(now, node, dst, data)
        if dst == BROADCAST:
            end = start + air
            node.tx_free_ms = end
            c["tx_broadcast"] += 1
            c["air_attempts"] += 1
            for nb, (loss, rssi) in node.links.items():
                if nb.alive and (loss <= 0.0 or rng.random() >= loss):
                    self._push(end, _RX, nb, node.mac, data, rssi)
                else:
                    c["lost"] += 1
            self._push(end, _DONE, node, token, True, node.router)
            return
        add, evicted = node.peers.use(dst)
        if evicted is not None:
            c["peer_dels"] += 1
        if add:
            c["peer_adds"] += 1
        c["tx_unicast"] += 1
        nb = self.by_mac.get(dst)
        link = node.links.get(nb) if nb is not None else None
        back = nb.links.get(node) if nb is not None else None
        delivered = acked = False
        tries = 0
        for _ in range(1 + self.mac_retries):
            tries += 1
            c["air_attempts"] += 1
            if link is None or not nb.alive or (link[0] > 0.0 and rng.random() < link[0]):
                c["lost"] += 1
                continue
            delivered = True
            if back is not None and (back[0] <= 0.0 or rng.random() >= back[0]):
                acked = True
                break
        end = start + air * tries
        node.tx_free_ms = end
        if delivered:
            self._push(end, _RX, nb, node.mac, data, link[1])
        if not acked:
            c["unicast_fail"] += 1
        self._push(end, _DONE, node, token, acked, node.router)


# ---- topologies ----------------------------------------------------------------------------

def link_line(radio, ids, loss=0.0, rssi=-60, skip_loss=None, skip_rssi=-80):
    """Neighbours in a line; with skip_loss also every second node (poles 2 apart)."""
    for i in range(len(ids) - 1):
        radio.link(ids[i], ids[i + 1], loss=loss, rssi=rssi)
        if skip_loss is not None and i + 2 < len(ids):
            radio.link(ids[i], ids[i + 2], loss=skip_loss, rssi=skip_rssi)


def link_grid(radio, ids, width, loss=0.0, rssi=-60, diag_loss=None, diag_rssi=-75):
    """ids in row-major order on a grid `width` wide: 4-neighbour links (and diagonals)."""
    for i, a in enumerate(ids):
        x = i % width
        if x + 1 < width and i + 1 < len(ids):
            radio.link(a, ids[i + 1], loss=loss, rssi=rssi)
        if i + width < len(ids):
            radio.link(a, ids[i + width], loss=loss, rssi=rssi)
        if diag_loss is not None and i + width < len(ids):
            if x + 1 < width and i + width + 1 < len(ids):
                radio.link(a, ids[i + width + 1], loss=diag_loss, rssi=diag_rssi)
            if x > 0:
                radio.link(a, ids[i + width - 1], loss=diag_loss, rssi=diag_rssi)
    return ids


def link_star(radio, center, leaves, loss=0.0, rssi=-60):
    """Every leaf linked to the centre only."""
    for leaf in leaves:
        radio.link(center, leaf, loss=loss, rssi=rssi)


def link_by_distance(radio, positions, loss_fn, max_range_m):
    """positions: node_id -> (x_m, y_m). Link every pair closer than max_range_m with
    loss_fn(d_m) and a distance-based RSSI."""
    items = sorted(positions.items())
    for i, (a, (xa, ya)) in enumerate(items):
        for b, (xb, yb) in items[i + 1:]:
            d = math.hypot(xa - xb, ya - yb)
            if d <= max_range_m:
                radio.link(a, b, loss=loss_fn(d), rssi=rssi_for_distance(d))


# ---- a sensor app ------------------------------------------------------------------------

class SensorApp(NodeApp):
    """A node's application on the fake radio: the firmware's own core (firmware/app.py NodeApp:
    the uplink of the ring's readings, at most MAX_IN_FLIGHT frames in flight, "sent" outcomes)
    over a real firmware.ring.ReadingRing and firmware.counters.Counters on an in-memory flash
    (tests/device/ota_fixtures.py MemFS). A reading is made every interval_ms and goes into the
    ring; node.py's uplink poll (every UPLINK_POLL_MS) decides what goes out, so a frame carries
    up to MAX_READINGS readings after a backlog. The poll runs at the next poll boundary after
    something it could act on (a reading, a "sent" outcome, a route gained), as the DES does.
    Wall time is the router's (a gateway's beacons), else an RTC set to epoch_s at time 0 (node.py
    falls back on the board's RTC the same way). `made`: the seqs of the readings made, in order."""

    def __init__(self, node_key, mesh_key, interval_ms=300_000, epoch_s=1_700_000_000):
        fs = MemFS()
        self.counters = Counters(fs, "counters.bin")
        self.ring = ReadingRing(fs, "ring", counters=self.counters)
        self.node_hmac = node_key
        self.mesh_hmac = mesh_key
        self.fleet_pub = None  # the tests send no fleet-signed command to an app
        self.cmd_window = ReplayWindow(32)
        self.interval_ms = interval_ms
        self.epoch_s = epoch_s
        self.made = []
        self.radio = self.node = None
        self.node_id = 0
        self._poll_at = -1
        self.app_init()

    @property
    def router(self):
        return self.node.router  # revive() gives the node a fresh one

    def now_ms(self):
        return self.radio.now_ms

    def wall_s(self, now_ms=None):
        now = self.radio.now_ms if now_ms is None else now_ms
        return self.router.wall_time_s(now) or self.epoch_s + now // 1000

    def attach(self, radio, node, first_ms=None):
        """Make `node` run this app, its first reading at first_ms (default: a random phase)."""
        self.radio = radio
        self.node = node
        self.node_id = node.node_id
        node.app = self
        first = first_ms if first_ms is not None else radio.now_ms + radio.rng.randrange(self.interval_ms)
        radio.every(self.interval_ms, lambda radio: radio.call(self.node_id, self.sample), start_ms=first)

    def sample(self, router, now_ms):
        """Store one reading in the ring (made-up values, pm25 varying), then ask for a poll."""
        n = len(self.made)
        self.made.append(self.ring.append(self.wall_s(now_ms), _Reading(120 + n % 50)))
        self._kick()

    def on_event(self, radio, node, ev):
        """React to a router event (called by FakeRadio.service)."""
        if ev[0] == "sent":
            if self.on_sent(ev[1], ev[2]) is not None:
                self._kick()
        elif ev[0] == "route" and ev[1]:
            self._kick()

    def _kick(self):
        now = self.radio.now_ms
        t = (now // UPLINK_POLL_MS + 1) * UPLINK_POLL_MS
        if now < self._poll_at <= t:
            return  # one poll is due by then already
        self._poll_at = t
        self.radio.at(t, self._poll)

    def _poll(self, radio):
        if radio.now_ms == self._poll_at:
            self._poll_at = -1
            radio.call(self.node_id, self._uplink)

    def _uplink(self, router, now_ms):
        if self.poll_uplink(now_ms) is not None:
            self._kick()  # node.py polls again: more readings may wait


class _Reading:
    """A sampler report (firmware.sampler.Aggregate's fields the ring stores)."""

    def __init__(self, pm25):
        self.pm1, self.pm25, self.pm10, self.rh, self.temp, self.n, self.flags = 50, pm25, 200, 60, 215, 60, 0
