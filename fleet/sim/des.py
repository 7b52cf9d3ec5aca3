"""Discrete-event simulation of a whole Red Mesh network under CPython (`fleet sim des`).

Every node runs the firmware's own sans-IO cores - a firmware.mesh.Router (and, with OTA, a
firmware.ota.OtaEngine over an in-memory page store) - driven through their public API exactly
as firmware/node.py drives them; the app layer around them (ring, uplink, commands) is in
fleet/sim/_des_app.py, and so is the fleet side: the real collector core, fleet.collector.Ingest
over an in-memory store on the virtual clock, fed by the gateways, its resend requests delivered
to them (FleetLink), and the measurements (Measure). Virtual time is an int count of
microseconds; one heap holds every event; one seeded random.Random draws every radio outcome,
so the same options and seed give the same figures.

    from fleet.sim.des import DesOptions, run_des
    results = run_des(DesOptions(nodes=5000, topology="district", minutes=60))

Radio model (ESP-NOW on 802.11b at 1 Mbit/s; consistent with fleet/sim/medium.py)
- Who hears whom, PRR and RSSI per directed link come from fleet/sim/topology.py; `loss` scales
  every PRR by (1 - loss). The RSSI a receiver reports is the link's mean +-2 dB (as the medium).
- ESP-NOW: payloads of 1..250 bytes (larger ones are refused: send outcome False). Broadcast: one
  transmission, no ACK. Unicast: up to MAC_ATTEMPTS (4) attempts; an attempt reaches the
  receiver with the link's PRR unless it collided there, and its ACK comes back with the reverse
  link's PRR. The receiver gets the frame once (the MAC drops its own retransmissions); a lost
  ACK means the sender reports failure for a frame that arrived (the mesh copes with the
  duplicate). Each node sends one frame at a time, as node.py awaits every send.
- Airtime: PREAMBLE_US + 8 us per byte of (payload + 30 bytes of 802.11/ESP-NOW overhead), as
  the medium; a unicast attempt also holds the channel for SIFS + ACK (314 us).
- CSMA/CA: before every attempt a node waits DIFS + a random backoff of 0..CW slots (CW 31,
  doubling per retry up to 1023). If it senses the channel busy then (any neighbour in the
  topology transmitting, sensed CCA_US after that transmission began), it defers to the end of
  the busy period plus a new DIFS + backoff (the backoff is redrawn rather than frozen).
- Collisions: a transmission occupies the channel at every node that hears it (its link set)
  for its whole airtime. A receiver already busy with one frame loses the new one; the earlier
  frame survives only if it is at least CAPTURE_DB stronger than the newcomer (capture), else
  both are lost there. A node transmitting hears nothing (half duplex); a node that starts to
  transmit within CCA_US of a frame's start loses that frame. Collisions therefore come from
  nodes picking the same backoff slot and from hidden terminals. ACK frames are not modelled
  as separate transmissions (their airtime is charged to the sender; they can be lost, not
  collide). Not modelled: interference summing, frames heard below a link's 1 % PRR, the
  20-peer ESP-NOW table (bookkeeping only), frame length in PRR (the topology's PRR is for
  100-byte frames, as the medium uses it for every length).

Nodes and keys
- All nodes power on at virtual time 0 (a lighting circuit switching on: the worst case for
  convergence); as node.py does, each samples on its own grid from a random phase (its first
  report 90 s - warm-up and window - plus a random 0..interval after boot, firmware/sampler.py
  phase_ms: a fixed phase from boot synchronised a whole circuit's poles for as long as they
  ran) and sends its first status 20 s after boot, the next ones from a random phase, and one
  when a changed parent has held (node.py parent_report_ms; counted parent_reports). Gateways know
  the wall clock (Router.set_time); the others learn it from beacons, as on the street.
- Keys are derived as the fleet derives them (protocol.auth.derive_mesh_key/derive_node_key)
  from a fleet secret made from the seed: one mesh key, and one key per node, derived once at
  build time (a few microseconds each); the collector is handed the same keys (DesKeys) and
  makes its own Hmac objects, as it does from a keystore. The mesh key's Hmac on the nodes
  remembers recent hop tags (MemoHmac below).
- Scenarios: gateway failure (the busiest gateway dies at T/3 for good), power cut (the middle
  third of the street with the most nodes goes dark at T/3 for an hour, or T/3 if shorter, then
  reboots: fresh routers and RAM, flash kept), extra loss, OTA (see fleet/sim/_des_ota.py).

Figures: `Simulation.results()`; the keys are listed in fleet/cli/sim/des.py. Delivery counts
the readings made before `measured_until_s` (the end minus a tail long enough for a reading to
be sent, a gap to be noticed and repaired); parent changes are counted after a warm-up (the
first 5 minutes, or a quarter of the run) and the boot's churn is given apart.
"""
import gc
import hashlib
import random
import resource
import time
from array import array
from heapq import heapify, heappop, heappush

import firmware.mesh as mesh_mod
from firmware.mesh import BROADCAST, Router
from firmware.node import PARENT_REPORT_DELAY_MS, STATUS_INTERVAL_S, parent_report_ms
from fleet.errors import FleetError
from fleet.repair import RepairConfig
from fleet.sim import topology as topo_mod
from fleet.sim._des_app import DesApp, DesKeys, FleetLink
from fleet.sim.medium import MAC_ATTEMPTS, MAX_PAYLOAD, PREAMBLE_US, US_PER_BYTE
from protocol import (
    T_BEACON,
    T_COMMAND,
    T_OTA_ADV,
    T_OTA_DATA,
    T_OTA_REQ,
    T_REPLY,
    T_ROUTED,
    T_STATUS,
    T_TELEMETRY,
)
from protocol.auth import HOP_TAG_LEN, Hmac, derive_mesh_key, derive_node_key
from protocol.cbor import uint_at

FRAME_OVERHEAD_BYTES = 30  # as fleet/sim/medium.py charges per frame
ACK_US = 10 + 304  # SIFS + an 802.11b ACK (long preamble) at 1 Mbit/s
DIFS_US = 50
SLOT_US = 20
CW_MIN = 31
CW_MAX = 1023
CCA_US = 15
CAPTURE_DB = 6
WALL_START_S = 1_760_000_000  # the gateways' clock at virtual time 0
NET_ID = 1
_INF = 1 << 62
BUCKET_SHIFT = 17  # the timers' calendar: windows of 2**17 us (131 ms; see Simulation._enq)
_IDLE = (0, 0, None, None)

K_TICK = 0
K_MAC = 1
K_END = 2
K_READ = 3
K_KICK = 4
K_CALL = 5
K_STATUS = 6
K_PARENT_REPORT = 7
READ_FIRST_US = 90_000_000  # firmware/sampler.py: a report 30 s warm-up + 60 s window after its cycle starts
STATUS_FIRST_US = 20_000_000  # node.py: the first status report 20 s after boot (the next at a random phase)...
BOOT_JITTER_US = 2_000_000  # ...give or take how long each board takes to boot

_TYPES = {T_BEACON: "beacon", T_TELEMETRY: "telemetry", T_STATUS: "status", T_COMMAND: "command",
          T_REPLY: "reply", T_OTA_ADV: "ota_adv", T_OTA_REQ: "ota_req", T_OTA_DATA: "ota_data",
          T_ROUTED: "routed"}

# Gap repair, both real at every size (a resend request is a command frame the routers carry):
# route - down the source route compiled from the parents in status reports (RPL non-storing
# mode), a flood when no path is known (counted as a fallback) or on a retry; flood - every
# request flooded. Floods are scoped by the hop count they start with (fleet/repair.py).
REPAIR_MODES = ("route", "flood")


class DesOptions:
    """Options of one run (see `fleet sim des --help`). Raises FleetError on a bad value."""

    FIELDS = ("nodes", "topology", "gateways", "minutes", "loss", "seed", "report_interval_s",
              "status_interval_s", "gateway_failure", "power_cut_street", "ota_bytes", "repair", "mesh_params", "tail_s",
              "gap_grace_s")

    def __init__(self, nodes=1000, topology="district", gateways=None, minutes=60.0, loss=0.0, seed=1,
                 report_interval_s=300, status_interval_s=STATUS_INTERVAL_S, gateway_failure=False, power_cut_street=False,
                 ota_bytes=0, repair="route", mesh_params=None, tail_s=None, gap_grace_s=None):
        self.nodes = int(nodes)
        self.topology = topology
        self.gateways = int(gateways) if gateways is not None else max(1, self.nodes // 1000)
        self.minutes = float(minutes)
        self.loss = float(loss)
        self.seed = int(seed)
        self.report_interval_s = int(report_interval_s)
        self.status_interval_s = STATUS_INTERVAL_S if status_interval_s is None else int(status_interval_s or 0)
        self.gateway_failure = bool(gateway_failure)
        self.power_cut_street = bool(power_cut_street)
        self.ota_bytes = int(ota_bytes or 0)
        self.repair = repair
        self.mesh_params = dict(mesh_params or {})
        self.tail_s = tail_s
        # the collector's wait before a gap's first request (fleet/repair.py RepairConfig grace_s;
        # `fleet collect --gap-grace-s`); None: the fleet's default
        self.gap_grace_s = None if gap_grace_s is None else float(gap_grace_s)
        if self.gap_grace_s is not None and not 0 < self.gap_grace_s <= 3600:
            raise FleetError(f"--gap-grace-s must be in (0, 3600], got {self.gap_grace_s}")
        if self.nodes < 2:
            raise FleetError("--nodes must be at least 2")
        if not 1 <= self.gateways < self.nodes:
            raise FleetError(f"--gateways must be 1..{self.nodes - 1}, got {self.gateways}")
        if self.gateway_failure and self.gateways < 2:
            raise FleetError("--gateway-failure needs at least 2 gateways (--gateways 2 or more)")
        if self.minutes <= 0:
            raise FleetError("--minutes must be positive")
        if not 0.0 <= self.loss < 1.0:
            raise FleetError(f"--loss must be in [0, 1), got {self.loss}")
        if self.report_interval_s < 1:
            raise FleetError("--report-interval must be at least 1 s")
        if self.status_interval_s < 0:
            raise FleetError("--status-interval must be 0 (off) or a number of seconds")
        if self.ota_bytes < 0:
            raise FleetError("--ota BYTES must be positive")
        if repair not in REPAIR_MODES:
            raise FleetError(f"--repair must be one of {', '.join(REPAIR_MODES)}, got {repair!r}")
        if self.mesh_params:
            try:
                Router(1, b"\x02\x00\x00\x00\x00\x01", False, b"k", params=self.mesh_params)
            except ValueError as e:
                raise FleetError(f"mesh parameters: {e}") from None

    def to_dict(self):
        return {k: getattr(self, k) for k in self.FIELDS}


class SimNode:
    """One station: its cores, its neighbourhood (who hears its frames) and radio state."""

    __slots__ = ("id", "mac", "is_gateway", "alive", "router", "ota", "store", "app", "nb", "nidx", "tick_at", "tx", "ch", "hear", "boot",
                 "parent_events", "joined", "ota_done_us", "topo")

    def __init__(self, tnode):
        self.id = tnode.id
        self.mac = tnode.mac
        self.is_gateway = tnode.is_gateway
        self.topo = tnode
        self.alive = True
        self.router = None
        self.ota = None
        self.store = None
        self.app = None
        self.nb = []  # (node, prr, rssi): who hears this node's frames, how often (loss applied), how loud
        self.nidx = {}  # node id -> index in nb
        self.tick_at = _INF
        self.tx = None  # the frame the MAC is sending (_Tx)
        self.ch = None  # the channel here (_Chan)
        self.hear = ()  # the _Chan of every node in nb, in nb's order
        self.boot = 0
        self.parent_events = 0
        self.joined = False
        self.ota_done_us = None


class _Chan:
    """The channel at one node, kept apart from its SimNode: every MAC attempt reads and writes
    the _Chan of each of the sender's ~30 neighbours, and 5,000 of these small objects made one
    after the other (Simulation.__init__) lie together in memory and stay in the CPU's cache,
    where the SimNodes, among their routers' objects, miss it (with tx_end reset to 0 at the
    frame's end, _loop: an attempt 6.4 -> 5.0 us at 5,000 nodes)."""

    __slots__ = ("rx", "tx_end", "node")

    def __init__(self, node):
        # (busy until, sensed from, the frame ending last, its RSSI here or None: look it up)
        self.rx = _IDLE
        self.tx_end = 0  # when the node's own transmission ends (half duplex)
        self.node = node


class _Tx:
    """A frame in the MAC: one broadcast transmission, or unicast attempts."""

    __slots__ = ("src", "token", "dst", "dnode", "data", "air", "attempt", "cw", "delivered", "bad", "frame", "bcast")

    def __init__(self, src, token, dst, dnode, data, air, bcast, frame):
        self.src = src
        self.token = token
        self.dst = dst
        self.dnode = dnode
        self.data = data
        self.air = air
        self.bcast = bcast
        self.attempt = 0
        self.cw = CW_MIN
        self.delivered = False
        self.bad = None  # receivers where this attempt collided
        self.frame = frame  # decoded OTA frame (decoded once for all receivers)


class MemoHmac(Hmac):
    """The mesh key's Hmac with a memory of recent hop tags. Every receiver of a broadcast checks
    the tag of the same bytes (30 neighbours: 30 identical HMACs); HMAC is a pure function, so
    remembering the last few thousand tags changes no result, only the time."""

    def __init__(self, key, size=8192):
        super().__init__(key)
        self._memo = {}
        self._size = size

    def tag(self, data, n):
        if n != HOP_TAG_LEN or type(data) is not bytes:
            return Hmac.tag(self, data, n)
        memo = self._memo
        t = memo.get(data)
        if t is None:
            if len(memo) >= self._size:
                memo.clear()
            t = memo[data] = self.digest(data)[:n]
        return t


class _IndexedSeen(mesh_mod._Seen):
    """firmware.mesh._Seen (the routers' duplicate and flood caches) with a dict from key to
    index beside its lists. The firmware's find() scans the key list (list.count, then index):
    on a board its small ints sit in the list itself, but in CPython each is an object of its
    own, and 5,000 routers' lists of them miss the CPU's cache on every lookup - and on every
    store, which drops the old object. Here the numbers are kept in arrays (a: -1 for none)
    and the dict's key is one int, a << 40 | b << 8 | c (a and b are read as CBOR uints of at
    most 32 bits, c is a byte). Keys are unique in the lists (put() inserts only what find()
    did not find), so an index that still holds its key is the one the scan gives. An
    overwritten entry's key is not deleted: find() checks the slot still holds the key, and the
    dict is rebuilt from the arrays when it has four times as many keys. t and x, which the
    router reads, keep their values and indices."""

    def __init__(self, size):
        super().__init__(size)
        self.a = array("q", [-1]) * size
        self.b = array("q", [0]) * size
        self.t = array("q", [0]) * size
        self.idx = {}
        self.cap = 4 * size

    def find(self, a, b, c):
        j = self.idx.get(a << 40 | b << 8 | c, -1)
        if j >= 0 and (self.b[j] != b or self.c[j] != c or self.a[j] != a):
            return -1  # overwritten since
        return j

    def put(self, a, b, c, t, x, j=-2):
        if j == -2:
            j = self.find(a, b, c)
        if j < 0:
            j = self.i
            ka = self.a
            ka[j] = a
            self.b[j] = b
            self.c[j] = c
            idx = self.idx
            if len(idx) >= self.cap:
                kb = self.b
                kc = self.c
                idx.clear()
                for i in range(len(ka)):
                    if ka[i] >= 0:
                        idx[ka[i] << 40 | kb[i] << 8 | kc[i]] = i
            else:
                idx[a << 40 | b << 8 | c] = j
            self.i = (j + 1) % len(ka)
        self.t[j] = t
        self.x[j] = x


def _memo_scan(scan, size=8192):
    """`scan` (protocol.frames.scan_beacon) remembering its recent answers. Every neighbour of a
    beaconing node reads the same bytes (~30 receivers: 30 identical scans); the scan is a pure
    function of the bytes, so answering from memory changes no result. Frames it refuses (an
    exception) are not remembered: scanned again, they raise again."""
    memo = {}
    get = memo.get

    def memo_scan(b):
        r = get(b)
        if r is None:
            if len(memo) >= size:
                memo.clear()
            r = memo[b] = scan(b)
        return r

    return memo_scan


def _memo_tag_ok(tag_ok, size=8192):
    """Router._tag_ok (the hop tag check) remembering its answers for beacons: every neighbour
    of a beaconing node checks the same bytes object (~30 receivers: 30 slices, lookups and
    comparisons); the answer is a pure function of the bytes and the key object, which is
    remembered with it and must be the one the receiver would use. Other frames reach one
    receiver each: checked as the firmware checks them."""
    memo = {}
    get = memo.get

    def memo_tag_ok(self, data):
        if type(data) is not bytes or data[2] != T_BEACON:
            return tag_ok(self, data)
        k = self._keys[1 if data[1] & 0x10 else 0]
        hit = get(data)
        if hit is not None and hit[0] is k:
            return hit[1]
        ok = tag_ok(self, data)
        if len(memo) >= size:
            memo.clear()
        memo[data] = (k, ok)
        return ok

    return memo_tag_ok


def _percentile(sorted_vals, q):
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, int(round(q * (len(sorted_vals) - 1)))))
    return sorted_vals[k]


class Simulation:
    """One run. `Simulation(options).run()` returns the results dict (see `results()`)."""

    def __init__(self, options, topology=None, progress=None):
        self.opt = options
        self.progress = progress
        self.rng = random.Random(options.seed)
        self.rnd = self.rng.random
        # Events in time order (t, seq, kind, node, arg) - seq unique, so the order is total:
        # heap: those before `edge`; buckets: the later ones, a list per window of 2**BUCKET_SHIFT
        # us (keys: their windows, a heap of ints), moved into `heap` when it runs dry. A heap of
        # every node's timers (~30,000) missed the CPU's cache at each level of every pop; the
        # window holds a few dozen.
        self.heap = []
        self.edge = 0
        self.buckets = {}
        self.bucket_keys = []
        # the MAC's events (K_MAC, K_END: one at most per node, due within milliseconds) in a heap
        # of their own: a few dozen entries, where the other heap holds ~30,000 (every node's
        # timers); _loop takes the earlier head of the two, so the order is the one heap's
        self.radio = []
        self.seq = 0
        self.now_us = 0
        self.events = 0
        self.made = 0
        self.counters = {"deferrals": 0, "collided": 0, "receptions": 0, "oversize": 0, "mac_attempts": 0,
                         "unicast_fail": 0, "resent_frames": 0, "replies_sent": 0, "cmd_refused": 0,
                         "cmd_replayed": 0, "repair_telemetry_tx": 0, "unstamped_dropped": 0, "status_sent": 0,
                         "parent_reports": 0}
        self.tx_by_type = {name: 0 for name in _TYPES.values()}
        self.tx_by_type["other"] = 0
        self.scenario = {}
        t0 = time.perf_counter()
        self.topo = topology if topology is not None else self._topology()
        secret = hashlib.sha256(b"redmesh des fleet secret %d" % options.seed).digest()
        mesh_key = derive_mesh_key(secret, NET_ID)
        self.mesh_hmac = MemoHmac(mesh_key)
        self.net_id = NET_ID
        self.nodes = [SimNode(n) for n in self.topo.nodes]
        self.by_id = {n.id: n for n in self.nodes}
        self.by_mac = {n.mac: n for n in self.nodes}
        self.gateways = [n for n in self.nodes if n.is_gateway]
        keep = 1.0 - options.loss
        for n in self.nodes:
            for b_id, link in sorted(self.topo.links_from(n.id).items()):
                n.nidx[b_id] = len(n.nb)
                n.nb.append((self.by_id[b_id], link.prr * keep, int(round(link.rssi_dbm))))
        for n in self.nodes:  # together, in one pass (see _Chan)
            n.ch = _Chan(n)
        for n in self.nodes:
            n.hear = tuple(r.ch for r, _, _ in n.nb)
        self.repair_mode = options.repair
        self.apps = {}
        node_keys = {}
        for n in self.nodes:
            key = node_keys[n.id] = derive_node_key(secret, NET_ID, n.id)
            n.app = DesApp(self, n, Hmac(key))
            self.apps[n.id] = n.app
        # the fleet side: the real collector (fleet.collector.Ingest) over an in-memory store,
        # and the measurements it feeds (fleet/sim/_des_app.py FleetLink, Measure)
        self.fleet = FleetLink(self, DesKeys(mesh_key, node_keys), options.repair,
                               None if options.gap_grace_s is None else RepairConfig(grace_s=options.gap_grace_s))
        self.ingest = self.fleet.ingest
        self.store = self.fleet.store
        self.measure = self.fleet.measure
        self.end_us = int(options.minutes * 60e6)
        tail = options.tail_s
        if tail is None:
            tail = min(self.end_us / 3e6, options.report_interval_s + self.ingest.tracker.cfg.grace_s + 180)
        self.measure_until_us = self.end_us - int(tail * 1e6)
        self.ota = None
        if options.ota_bytes:
            from fleet.sim import _des_ota
            self.ota = _des_ota.OtaSetup(options.ota_bytes, options.seed)
        self.build_s = time.perf_counter() - t0
        self._boot_all()
        self.fleet.start()
        self._scenarios()

    # ---- construction ---------------------------------------------------------------------

    def _topology(self):
        o = self.opt
        try:
            return topo_mod.generate(o.topology, o.nodes, o.gateways, o.seed)
        except FleetError:
            raise
        except ValueError as e:
            raise FleetError(f"cannot build a {o.topology} topology of {o.nodes} nodes: {e}") from None

    def _router(self, n):
        seed = ((n.id ^ (n.boot << 16)) + self.opt.seed * 1_000_003) & 0xFFFFFFFF
        r = Router(n.id, n.mac, n.is_gateway, self.mesh_hmac, seed=seed or 1, params=self.opt.mesh_params or None)
        r._dup = _IndexedSeen(len(r._dup.a))  # the same caches, empty, looked up by dict (see _IndexedSeen)
        r._flood = _IndexedSeen(len(r._flood.a))
        if n.is_gateway:
            r.set_time(WALL_START_S + self.now_us // 1_000_000, self.now_us // 1000)
        return r

    def _boot(self, n):
        n.router = self._router(n)
        n.joined = False
        n.tx = None
        n.ch.tx_end = 0
        n.ch.rx = _IDLE
        n.tick_at = _INF
        if self.ota is not None:
            n.ota = self.ota.engine(n, self.now_us // 1000)
        self._schedule_tick(n, self.now_us)

    def _boot_all(self):
        interval_us = self.opt.report_interval_s * 1_000_000
        first = min(READ_FIRST_US, interval_us)
        for n in self.nodes:
            self._boot(n)
            # firmware/sampler.py: the first window longer by a random phase (0..interval)
            self.push(first + self.rng.randrange(interval_us), K_READ, n, None)
        self._status_phased = set()  # nodes past their first status
        if self.opt.status_interval_s:
            for n in self.nodes:
                self.push(STATUS_FIRST_US + self.rng.randrange(BOOT_JITTER_US), K_STATUS, n, None)

    def _scenarios(self):
        o = self.opt
        if o.gateway_failure:
            self.at(self.end_us // 3, self._fail_gateway)
        if o.power_cut_street:
            seg = self._street_segment()
            start = self.end_us // 3
            dur = min(3_600_000_000, self.end_us // 3)
            self.scenario["power_cut"] = {"nodes": len(seg), "street": self._street_name,
                                          "start_s": start / 1e6, "end_s": (start + dur) / 1e6}
            self._cut_nodes = seg
            self.at(start, lambda t: self._power(seg, False, t))
            self.at(start + dur, lambda t: self._power(seg, True, t))
        # parent changes are counted after the boot's convergence churn (every node choosing,
        # re-choosing as estimates settle); the churn itself is reported apart
        self.warmup_us = min(300_000_000, self.end_us // 4)
        self._boot_changes = None
        self.at(self.warmup_us, self._end_warmup)
        if self.ota is not None:
            self.at(60_000_000, self._ota_check)
        if self.progress is not None:
            step = max(60_000_000, self.end_us // 20)
            self._progress_step = step
            self.at(step, self._report_progress)

    def _street_segment(self):
        """The middle third (at least 3 poles) of the street with the most nodes, gateways kept on."""
        streets = {}
        for n in self.nodes:
            name = n.topo.street or "y=%d" % round(n.topo.y_m)
            streets.setdefault(name, []).append(n)
        name = max(sorted(streets), key=lambda s: len(streets[s]))
        self._street_name = name
        members = streets[name]
        xs = [m.topo.x_m for m in members]
        ys = [m.topo.y_m for m in members]
        along_x = max(xs) - min(xs) >= max(ys) - min(ys)
        members.sort(key=lambda m: (m.topo.x_m, m.topo.y_m) if along_x else (m.topo.y_m, m.topo.x_m))
        k = max(3, len(members) // 3)
        i0 = max(0, (len(members) - k) // 2)
        return [m for m in members[i0:i0 + k] if not m.is_gateway]

    # ---- scheduling -----------------------------------------------------------------------

    def push(self, t, kind, node, arg):
        self.seq += 1
        self._enq((t, self.seq, kind, node, arg))

    def push_kick(self, t, node):
        self.seq += 1
        self._enq((t, self.seq, K_KICK, node, t))

    def at(self, t, fn):
        """Call fn(now_us) at virtual time t (us)."""
        self.seq += 1
        self._enq((t, self.seq, K_CALL, None, fn))

    def _enq(self, e):
        """Schedule event e: into the heap when before the edge, else into its window's bucket."""
        t = e[0]
        if t < self.edge:
            heappush(self.heap, e)
            return
        k = t >> BUCKET_SHIFT
        b = self.buckets.get(k)
        if b is None:
            self.buckets[k] = [e]
            heappush(self.bucket_keys, k)
        else:
            b.append(e)

    def _schedule_tick(self, n, t):
        if t < n.tick_at:
            n.tick_at = t
            self.seq += 1
            self._enq((t, self.seq, K_TICK, n, None))

    # ---- the node shell -----------------------------------------------------------------

    def service(self, n, now_us, ticked=False):
        """What node.py's pump does after any input: handle the router's events, give the MAC
        its next frame when idle, handle OTA events, and sleep until the cores' next deadline."""
        if not n.alive:
            return
        r = n.router
        ota = n.ota
        # has_output() False: poll_event() and poll_tx() would both give None (most calls: a
        # tick that sent nothing, a frame heard that changed no route), so one call, not three
        if r.has_output():
            ev = r.poll_event()
            while ev is not None:
                self._on_event(n, ev, now_us)
                ev = r.poll_event()
            if n.tx is None:
                self._mac_next(n, now_us)
        elif ota is not None and n.tx is None:
            self._mac_next(n, now_us)
        now_ms = now_us // 1000
        d = r.next_deadline_ms
        if ota is not None:
            ev = ota.poll_event()
            while ev is not None:
                if ev[0] == "complete" and n.ota_done_us is None:
                    n.ota_done_us = now_us
                    self.ota.done += 1
                ev = ota.poll_event()
            od = ota.next_deadline_ms
            if od < d:
                d = od
        if d <= now_ms:
            d = now_ms + 1 if ticked else now_ms
        t = d * 1000
        if t < now_us:
            t = now_us
        if t < n.tick_at:
            n.tick_at = t
            self.seq += 1
            self._enq((t, self.seq, K_TICK, n, None))

    def _on_event(self, n, ev, now_us):
        kind = ev[0]
        if kind == "sent":
            n.app.on_sent(ev[1], ev[2], now_us)
        elif kind == "uplink":
            self.fleet.on_uplink(n, ev[1], ev[2], now_us)
        elif kind == "parent":
            if n.joined:
                n.parent_events += 1
            elif ev[1]:
                n.joined = True
            if ev[1] and self.opt.status_interval_s:  # node.py reports a new parent early
                app = n.app
                app.parent_report_ms = ms = parent_report_ms(now_us // 1000, app.last_status_ms,
                                                             n.router.rng.below(PARENT_REPORT_DELAY_MS))
                t = ms * 1000
                self.seq += 1
                self._enq((t, self.seq, K_PARENT_REPORT, n, None))
        elif kind == "route":
            if ev[1]:
                n.app.stamp(now_us)
                n.app.kick(now_us)
        elif kind == "command":
            n.app.on_command(ev[1], now_us)

    # ---- the MAC -------------------------------------------------------------------------------

    def _mac_next(self, n, now_us):
        out = n.router.poll_tx()
        if out is None:
            ota = n.ota
            if ota is None:
                return
            ota.tick(now_us // 1000)
            f = ota.poll_tx()
            if f is None:
                return
            out = self.ota.air(f, self.mesh_hmac)
        token, dst, data = out
        size = len(data)
        if not 1 <= size <= MAX_PAYLOAD:
            self.counters["oversize"] += 1
            if token is not None:
                n.router.on_send_done(token, False, now_us // 1000)
            return
        t = data[2] if size > 2 else 0
        name = _TYPES.get(t, "other")
        self.tx_by_type[name] += 1
        if t == T_TELEMETRY and self.measure.resent:
            origin, p = uint_at(data, 3)  # the nodes' own frames: valid by construction
            rs = self.measure.resent.get(origin)
            if rs is not None and uint_at(data, p)[0] in rs:
                self.counters["repair_telemetry_tx"] += 1
        air = PREAMBLE_US + US_PER_BYTE * (size + FRAME_OVERHEAD_BYTES)
        if dst == BROADCAST:
            tx = _Tx(n, token, dst, None, data, air, True, None)
        else:
            tx = _Tx(n, token, dst, self.by_mac.get(bytes(dst)), data, air + ACK_US, False, None)
        n.tx = tx
        self.seq += 1
        heappush(self.radio, (now_us + DIFS_US + int(self.rnd() * (CW_MIN + 1)) * SLOT_US,
                                   self.seq, K_MAC, n, tx))

    def _mac_attempt(self, n, tx, t):
        if n.tx is not tx:
            return
        rx = n.ch.rx
        if rx[0] > t and rx[1] <= t:
            self.counters["deferrals"] += 1
            self.seq += 1
            heappush(self.radio, (rx[0] + DIFS_US + int(self.rnd() * (tx.cw + 1)) * SLOT_US, self.seq, K_MAC, n, tx))
            return
        self.counters["mac_attempts"] += 1
        end = t + tx.air
        n.ch.tx_end = end
        if rx[0] > t:  # began to send before sensing a frame that had just started: lost here
            c = rx[2]
            if c.bad is None:
                c.bad = {n}
            else:
                c.bad.add(n)
        # One state tuple for every receiver that was idle: (busy until, sensed from, frame,
        # its RSSI here or None = look it up). Busy receivers: a collision (see the docstring).
        info = (end, t + CCA_US, tx, None)
        for ch in n.hear:
            if ch.rx[0] > t:  # (rx read again here: the idle path, most receivers, reads it once)
                rx = ch.rx
                r = ch.node
                rs = n.nb[n.nidx[r.id]][2]
                c = rx[2]
                rc = rx[3]
                if rc is None:
                    src = c.src
                    rc = src.nb[src.nidx[r.id]][2]
                if rc < rs + CAPTURE_DB:
                    if c.bad is None:
                        c.bad = {r}
                    else:
                        c.bad.add(r)
                if tx.bad is None:
                    tx.bad = {r}
                else:
                    tx.bad.add(r)
                if end > rx[0]:
                    ch.rx = (end, rx[1], tx, rs)
            else:
                ch.rx = info
                if ch.tx_end > t:
                    if tx.bad is None:
                        tx.bad = {ch.node}
                    else:
                        tx.bad.add(ch.node)
        self.seq += 1
        heappush(self.radio, (end, self.seq, K_END, n, tx))

    def _tx_end(self, n, tx, t):
        if n.tx is not tx:
            return
        now_ms = t // 1000
        bad = tx.bad
        data = tx.data
        rnd = self.rnd
        src = n.mac
        if tx.bcast:
            frame = tx.frame
            collided = heard = 0
            for r, p, rs in n.nb:
                if not r.alive:
                    continue
                if bad is not None and r in bad:
                    collided += 1
                    continue
                if rnd() < p:
                    heard += 1
                    rr = r.router
                    if rr.on_recv(src, data, rs + int(rnd() * 5) - 2, now_ms) is False and r.ota is not None:
                        if frame is None:
                            frame = tx.frame = self.ota.decode(data, self.mesh_hmac)
                        if frame is not None:
                            r.ota.on_frame(frame, src, now_ms)
                    # service() is a no-op unless the router has output, its deadline moved
                    # earlier or OTA runs (most beacons heard change none of these)
                    if r.ota is not None or rr.has_output() or rr.next_deadline_ms * 1000 < r.tick_at:
                        self.service(r, t)
            if collided:
                self.counters["collided"] += collided
            self.counters["receptions"] += heard
            n.tx = None
            if tx.token is not None:
                n.router.on_send_done(tx.token, True, now_ms)
            self.service(n, t)
            return
        d = tx.dnode
        got = False
        if d is not None and d.alive:
            i = n.nidx.get(d.id)
            if i is not None:
                if bad is not None and d in bad:
                    self.counters["collided"] += 1
                elif rnd() < n.nb[i][1]:
                    got = True
        acked = False
        if got:
            if not tx.delivered:
                tx.delivered = True
                self.counters["receptions"] += 1
                d.router.on_recv(src, data, n.nb[i][2] + int(rnd() * 5) - 2, now_ms)
                self.service(d, t)
            j = d.nidx.get(n.id)
            acked = j is not None and rnd() < d.nb[j][1]
        if acked or tx.attempt + 1 >= MAC_ATTEMPTS:
            if not acked:
                self.counters["unicast_fail"] += 1
            n.tx = None
            n.router.on_send_done(tx.token, acked, now_ms)
            self.service(n, t)
            return
        tx.attempt += 1
        cw = tx.cw * 2 + 1
        tx.cw = cw if cw < CW_MAX else CW_MAX
        tx.bad = None
        self.seq += 1
        heappush(self.radio, (t + DIFS_US + int(rnd() * (tx.cw + 1)) * SLOT_US, self.seq, K_MAC, n, tx))

    # ---- the loop ------------------------------------------------------------------------------

    def run(self):
        """Run to the end of virtual time; return results()."""
        gc_was = gc.isenabled()
        gc.disable()  # millions of short-lived tuples, few cycles: the collector only costs time
        # the routers' beacon scan, memoised for the run (see _memo_scan); put back after
        scan_beacon = mesh_mod.scan_beacon
        mesh_mod.scan_beacon = _memo_scan(scan_beacon)
        tag_ok = Router._tag_ok  # and their beacons' hop tag checks (see _memo_tag_ok)
        Router._tag_ok = _memo_tag_ok(tag_ok)
        t0 = time.perf_counter()
        try:
            ctx = self.ota.verification_cache() if self.ota is not None else None
            if ctx is not None:
                with ctx:
                    self._loop(self.end_us)
            else:
                self._loop(self.end_us)
            self.fleet.finish(self.end_us)
        finally:
            mesh_mod.scan_beacon = scan_beacon
            Router._tag_ok = tag_ok
            if gc_was:
                gc.enable()
        self.wall_s = time.perf_counter() - t0
        return self.results()

    def _loop(self, until_us):
        heap = self.heap
        radio = self.radio
        buckets = self.buckets
        keys = self.bucket_keys
        pop = heappop
        interval_us = self.opt.report_interval_s * 1_000_000
        events = 0
        while True:
            # The earliest event ((t, seq): unique, so the order of one heap of them all): the
            # earlier of the two heads when the heap has one (every bucket is after the edge),
            # else the radio's when it is before the edge, else the next bucket's events
            if heap:
                h = radio if radio and radio[0] < heap[0] else heap
            elif radio and radio[0][0] < self.edge:
                h = radio
            elif keys:
                k = pop(keys)
                heap.extend(buckets.pop(k))
                heapify(heap)
                self.edge = (k + 1) << BUCKET_SHIFT
                continue
            elif radio:
                h = radio
            else:
                break
            if h[0][0] > until_us:
                break
            t, _, kind, n, arg = pop(h)
            self.now_us = t
            events += 1
            if kind == K_END:
                ch = n.ch
                if ch.tx_end <= t:  # off the air: 0 reads the same from now on, and is never a cold int
                    ch.tx_end = 0
                self._tx_end(n, arg, t)
            elif kind == K_MAC:
                self._mac_attempt(n, arg, t)
            elif kind == K_TICK:
                if t != n.tick_at or not n.alive:
                    continue
                n.tick_at = _INF
                ms = t // 1000
                r = n.router
                if n.ota is None:
                    d = r.next_deadline_ms
                    if d > ms and not r.has_output():
                        # Woken for a deadline that has moved later (most wake-ups: a send's
                        # timeout, the ACK came first). Nothing is due, so tick() would change
                        # nothing (the trickle timer, the send timeout, floods and the queue's
                        # retry all wait for next_deadline_ms) and service() would only sleep
                        # again until d: done here, as service() does it.
                        d *= 1000
                        n.tick_at = d
                        self.seq += 1
                        self._enq((d, self.seq, K_TICK, n, None))
                        continue
                r.tick(ms)
                if n.ota is not None:
                    n.ota.tick(ms)
                self.service(n, t, True)
            elif kind == K_KICK:
                if n.alive and n.app.kick_at == arg:
                    n.app.uplink(t)
                    self.service(n, t)
            elif kind == K_READ:
                if n.alive:
                    n.app.sample(t)
                    self.service(n, t)
                self.seq += 1
                self._enq((t + interval_us, self.seq, K_READ, n, None))
            elif kind == K_STATUS:
                if n.alive:
                    n.app.send_status(t)
                    self.service(n, t)
                self.seq += 1
                nxt = self.opt.status_interval_s * 1_000_000
                if n.id not in self._status_phased:  # node.py: the second one at a random phase
                    self._status_phased.add(n.id)
                    nxt = self.rng.randrange(nxt)
                self._enq((t + nxt, self.seq, K_STATUS, n, None))
            elif kind == K_PARENT_REPORT:
                if n.alive and n.app.parent_report_ms is not None and n.app.parent_report_ms * 1000 == t:
                    self.counters["parent_reports"] += 1
                    n.app.send_status(t)
                    self.service(n, t)
            else:
                self.events += events
                events = 0
                arg(t)
        self.events += events
        self.now_us = until_us

    # ---- scenarios -------------------------------------------------------------------------

    def _power(self, nodes, on, t):
        for n in nodes:
            if on:
                n.alive = True
                n.boot += 1
                n.app.power_on()
                self._boot(n)
            else:
                n.alive = False
                n.tx = None
                n.tick_at = _INF
                n.app.power_off()
        if on:
            self.scenario["power_cut"]["backlog_at_return"] = self.backlog(t)
            self.at(t + 5_000_000, self._drain_check)

    def backlog(self, t):
        """Readings held unsent by every live node (made before t)."""
        total = 0
        for n in self.nodes:
            if n.alive:
                app = n.app
                for s in app.unsent:
                    if app.created[s] <= t:
                        total += 1
        return total

    def _drain_check(self, t):
        pc = self.scenario["power_cut"]
        ret_us = int(pc["end_s"] * 1e6)
        left = self.backlog(ret_us)
        if left == 0:
            pc["drained_s"] = round((t - ret_us) / 1e6, 1)
            return
        self.at(t + 5_000_000, self._drain_check)

    def _fail_gateway(self, t):
        counts = {}
        for gw in self.measure.via.values():
            counts[gw] = counts.get(gw, 0) + 1
        alive = [g for g in self.gateways if g.alive]
        victim = max(alive, key=lambda g: (counts.get(g.id, 0), -g.id))
        victim.alive = False
        victim.tx = None
        victim.tick_at = _INF
        self.fleet.gateway_state(victim, False, t)  # its MQTT last will
        served = sorted(nid for nid, gw in self.measure.via.items() if gw == victim.id and nid != victim.id)
        self.scenario["gateway_failure"] = {"gateway": victim.id, "at_s": t / 1e6, "nodes_served": len(served)}
        self._failed_gw = (victim.id, t, set(served))

    def _ota_check(self, t):
        if self.ota.seeded_us is not None:
            return
        unrouted = sum(1 for n in self.nodes if n.alive and not n.router.has_route())
        if unrouted == 0 or t >= 600_000_000:
            self.ota.seed(self, t)
            return
        self.at(t + 10_000_000, self._ota_check)

    def _end_warmup(self, t):
        self._boot_changes = sum(n.parent_events for n in self.nodes)

    def _report_progress(self, t):
        self.progress(t / 1e6, self.end_us / 1e6, self.events)
        if t + self._progress_step <= self.end_us:
            self.at(t + self._progress_step, self._report_progress)

    # ---- figures -------------------------------------------------------------------------------

    def results(self):
        """Plain data: the figures of the run (keys documented in fleet/cli/sim/des.py)."""
        o = self.opt
        col = self.measure
        ing = self.ingest
        tr = ing.tracker
        st = ing.stats
        link = self.fleet
        non_gw = [n for n in self.nodes if not n.is_gateway]
        made, fp, after = col.delivery(self.apps, self.measure_until_us)
        lat = sorted(col.latency_us)
        age = sorted(col.age_us)
        rep = sorted(col.repair_latency_us)
        stats = {}
        for n in self.nodes:
            for k, v in n.router.stats.items():
                stats[k] = stats.get(k, 0) + v
        delivered_total = sum(sum(1 for x in g if x) for g in col.got.values())
        floods = self.tx_by_type["command"]  # resend requests are the only commands here
        kinds = {"beacons": self.tx_by_type["beacon"], "status": self.tx_by_type["status"],
                 "routed": self.tx_by_type["routed"],
                 "flooded": floods if self.repair_mode == "flood" else 0,
                 "fallback": floods if self.repair_mode == "route" else 0,
                 "replies": self.tx_by_type["reply"], "resent_telemetry": self.counters["repair_telemetry_tx"]}
        repair_tx = kinds["routed"] + floods + kinds["replies"] + kinds["resent_telemetry"]
        beacons = kinds["beacons"]
        hops_total = sum(col.hops.values())
        req_hops = col.request_hops()
        boot_changes = self._boot_changes if self._boot_changes is not None else 0
        steady_hours = max(self.end_us - self.warmup_us, 1) / 3.6e9
        out = {
            "nodes": len(self.nodes),
            "gateways": len(self.gateways),
            "topology": o.topology,
            "minutes": o.minutes,
            "seed": o.seed,
            "loss": o.loss,
            "report_interval_s": o.report_interval_s,
            "status_interval_s": o.status_interval_s,
            "repair_mode": self.repair_mode,
            "gap_grace_s": tr.cfg.grace_s,
            "measured_until_s": round(self.measure_until_us / 1e6, 1),
            "readings_made": made,
            "delivery_first_pass": round(fp / made, 5) if made else None,
            "delivery_after_repair": round(after / made, 5) if made else None,
            "latency_p50_s": round(_percentile(lat, 0.5) / 1e6, 4) if lat else None,
            "latency_p99_s": round(_percentile(lat, 0.99) / 1e6, 4) if lat else None,
            "latency_max_s": round(lat[-1] / 1e6, 3) if lat else None,
            "age_p50_s": round(_percentile(age, 0.5) / 1e6, 3) if age else None,
            "age_p99_s": round(_percentile(age, 0.99) / 1e6, 3) if age else None,
            "repair_latency_p50_s": round(_percentile(rep, 0.5) / 1e6, 1) if rep else None,
            "repair_latency_p99_s": round(_percentile(rep, 0.99) / 1e6, 1) if rep else None,
            "hops": {str(h): c for h, c in sorted(col.hops.items())},
            "hops_mean": round(sum(h * c for h, c in col.hops.items()) / hops_total, 2) if hops_total else None,
            "control_overhead": round((beacons + repair_tx) / delivered_total, 3) if delivered_total else None,
            "control_tx": dict(kinds, repair=repair_tx),
            "control_per_reading": {k: round(v / delivered_total, 4) if delivered_total else None
                                    for k, v in kinds.items()},
            # made and delivered over the same window (readings made up to measured_until_s)
            "readings_delivered": after,
            "readings_delivered_total": delivered_total,
            "parent_changes_per_node_hour": round((sum(n.parent_events for n in non_gw) - boot_changes)
                                                  / (len(non_gw) * steady_hours), 4),
            "parent_changes_boot": boot_changes,
            "warmup_s": round(self.warmup_us / 1e6, 1),
            "route_losses": stats.get("route_losses", 0),
            # what the collector (fleet.collector.Ingest) decided, from its tracker and counters,
            # and what its downlink messages carried (FleetLink)
            "repair": {"gaps_opened": tr.opened, "requests": tr.requests_sent,
                       "routed_requests": link.routed, "route_fallbacks": st.route_fallbacks,
                       "route_retries_flooded": link.flooded_all if self.repair_mode == "route" else 0,
                       "route_retries_rerouted": st.route_retries_rerouted, "flood_scoped": st.commands_scoped,
                       "route_waits": tr.route_waits, "probes": st.probes_sent,
                       "recovered": tr.recovered, "gaps_lost": tr.lost,
                       # repair transmissions (requests down, replies and resent readings up, retries
                       # and floods) per hop of the gaps' nodes: 3 is one request down, one
                       # resent frame and one reply up, each over the node's hop count (that of
                       # the path the repair took: Measure.first_request_hops)
                       "tx_per_gap_hop": round(repair_tx / req_hops, 2) if req_hops else None,
                       "readings_lost": tr.readings_lost, "readings_filled": tr.readings_filled},
            "radio": {"frames_by_type": dict(self.tx_by_type), "mac_attempts": self.counters["mac_attempts"],
                      "deferrals": self.counters["deferrals"], "receptions": self.counters["receptions"],
                      "collided_receptions": self.counters["collided"],
                      "unicast_failures": self.counters["unicast_fail"]},
            "router": {k: stats.get(k, 0) for k in ("data_tx", "forwarded", "retries", "tx_fail", "queue_drops",
                                                    "ttl_dropped", "loops_detected", "dup_dropped",
                                                    "no_route_drops", "nbr_evicted", "floods_tx")},
            # Ingest's own counters (frames: accepted, of every type; stored / duplicates: readings)
            "collector": {"frames": st.frames, "readings": st.readings, "stored": st.stored,
                          "duplicates": st.duplicates, "rejects": st.rejects,
                          "status_frames": st.status + st.status_duplicates, "replies": st.replies,
                          "commands": st.commands, "downlink_messages": link.messages_down,
                          "status_sent": self.counters["status_sent"],
                          "parent_reports": self.counters["parent_reports"],
                          "unstamped_dropped": self.counters["unstamped_dropped"]},
            "build_s": round(self.build_s, 2),
            "wall_s": round(getattr(self, "wall_s", 0.0), 2),
            "events": self.events,
            "events_per_s": round(self.events / self.wall_s) if getattr(self, "wall_s", 0) else None,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        if "power_cut" in self.scenario:
            pc = dict(self.scenario["power_cut"])
            ids = {n.id for n in self._cut_nodes}
            m2, fp2, a2 = col.delivery(self.apps, self.measure_until_us, ids)
            pc["delivery_first_pass"] = round(fp2 / m2, 5) if m2 else None
            pc["delivery_after_repair"] = round(a2 / m2, 5) if m2 else None
            pc["unsent_lost_in_ram"] = sum(n.app.lost_at_cut for n in self._cut_nodes)
            pc.setdefault("drained_s", None)
            out["power_cut"] = pc
        if "gateway_failure" in self.scenario:
            gf = dict(self.scenario["gateway_failure"])
            gw_id, t_fail, served = self._failed_gw
            moved = [nid for nid in served if col.via.get(nid) != gw_id]
            gf["nodes_rerouted"] = len(moved)
            last = 0
            for nid in moved:
                got = col.got.get(nid, [])
                after_fail = [x for x in got if x > t_fail]
                if after_fail:
                    last = max(last, min(after_fail) - t_fail)
            gf["reroute_s"] = round(last / 1e6, 1) if moved else None
            out["gateway_failure"] = gf
        if self.ota is not None:
            out.update(self.ota.results(self))
        return out


def run_des(options, topology=None, progress=None):
    """Build and run one simulation; return its results dict. Raises FleetError on bad options."""
    return Simulation(options, topology, progress).run()
