"""Mesh router: a collection tree toward the nearest gateway on ESP-NOW (sans-IO).

Inputs:  on_recv(src_mac, data, rssi, now_ms) · on_send_done(token, ok, now_ms) · tick(now_ms)
         originate(frame_bytes, now_ms, app_token) · broadcast_own(frame_bytes)
         inject_downlink(frame_bytes, now_ms) (gateway)
         set_time(unix_s, now_ms)
Outputs: poll_tx() -> (token, dst_mac, data) | None · poll_event() -> tuple | None
         next_deadline_ms (call tick() then) · has_route() · wall_time_s(now_ms) · stats
`now_ms` is a monotonic millisecond count that never wraps (the shell unwraps ticks). Nothing
here reads a clock, sleeps or touches the radio; every method returns quickly.

Theory of operation (CTP / RPL ideas, simplified)
- Cost: path ETX to a gateway in tenths (10 = one perfect hop). Gateways advertise 0 (anycast:
  every node joins the cheapest gateway). cost(node) = ETX(link to parent) + cost(parent).
- Beacons (broadcast) on a Trickle timer (firmware/trickle.py) carry cost, depth, wall clock,
  flags, and the root gateway of the sender's path with that gateway's sequence number (rseq;
  a gateway's goes up by one every root_seq_ms and travels down in beacons, no faster than they
  go). The timer resets (fast beacons) on: route gained or lost, a PULL beacon heard while we
  have a route, loop evidence, a data frame from a sender whose cost is not above ours,
  wall-clock time first known (so time reaches a settled mesh in seconds, not an Imax per hop:
  nodes hold readings until then), and own cost rising by >= cost_reset_delta under a parent
  of earlier firmware (no root: the rank rule below needs the descendants to hear it). A parent
  change and a cost moving by >= cost_wake_delta (1 ETX) are news, not inconsistencies: one
  beacon soon (Trickle wake), the interval kept; a smaller move goes out with the next beacon.
  At 20 % loss a path's cost wanders by whole ETX and each wake goes down the whole subtree
  (every child's cost moves with ours): 54,000 of 130,000 beacons in the 2,000-node storm of
  issue 15. 2 ETX there: control 5.3 -> 4.1 per reading, parent changes 6.0 -> 4.8 (DES, seeds
  1-8); but on clean links parent changes rose 0.163 -> 0.187 per node-hour (2,000 nodes, seeds
  1-5; 1.5 ETX: 0.196) and 0.129 -> 0.185 (5,000, seed 1) - news held back keeps a forming
  tree on interim parents - so 1 ETX stays the default. Measured and not kept: a PULL heard
  answered by a wake instead of a reset (the storm's costliest beacons: a route loss sent
  every neighbour back to Imin) - control 5.32 -> 5.05 but first pass 0.9957 -> 0.9947 and
  parent changes 6.0 -> 6.7 (seeds 1-8), and more changes without a failure; and with it a
  sender below our cost answered by a wake too - control 4.04, but loops lasted longer: 5,000
  nodes, seed 3, frames at the TTL 593 -> 1,021 and stale routes flooded, and the 8 x 8 grid
  of tests/test_mesh.py lost readings when its gateway died. A node without a route sets
  BF_NO_ROUTE | BF_PULL and advertises COST_INFINITE, and no root - or, after its gateway
  stopped answering, that root and rseq: a poison (feasibility, below).
- Link ETX per neighbour = etx_b * etx_d. etx_b = 1 / prr**2 from the beacon reception ratio
  prr, an integer EWMA (alpha 0.9, per mille) of one sample every BEACON_WINDOW expected beacons
  (bseq gaps), squared because the ACK needs the reverse direction and beacons measure one (the
  first windows weigh 1/2; before them a guess from the RSSI: ETX_INIT, or ETX_INIT_WEAK below
  weak_rssi_dbm). Averaging the ratio, not ETX samples, matters on a lossy street: a 3-beacon
  window at a PRR of 0.8 gives ETX samples of 1, 2.25 or 9, whose mean is biased up and swings
  path costs by whole ETX. etx_d (hundredths) from unicast outcomes - every DATA_WINDOW sends a
  sample sent / acked, +ETX_PENALTY after tries_per_parent consecutive failures, dead
  (ETX_MAX) after twice that; it fades back toward 1.0 with every beacon window. With
  ESP-NOW's MAC retries a working link's sends nearly all succeed and etx_b rules.
- Parent choice, re-run on every beacon and estimate change:
    keep the parent while it is usable (finite cost, not dead, heard within
    neighbor_timeout_ms, not on loop hold); switch only to a candidate whose path cost beats
    the current one by switch_margin + switch_pct % of its own, whose link ETX <=
    max_link_etx, heard min_heard times with at least one estimate window (hysteresis: a
    street of poles must not flap; estimate noise adds up along a path, so a deep node needs
    more than a fixed margin, as MRHOF's and CTP's experience says). The relative part is
    dropped once the current path is worse than the best it has been through this parent by
    more than switch_margin + worse_pct % (its path really changed: a gateway died; the subtree
    must move at once), and all margin when the parent's link is beyond max_link_etx (kept
    only because it beats no route). The two percentages are apart because they pull apart:
    at 20 % loss a path's cost wanders 2-5 ETX around its best, and switch_pct 30 halves
    parent changes without a failure (DES, 2,000 nodes: 1.5 -> 0.7-1.2 per node-hour), but
    in a gateway failure at 5,000 nodes it made more loops (seeds 1 and 3: 1,272 and 3,788
    frames at the TTL against 416-589) - kept at 10 until that is understood. worse_pct 30
    alone (switch_pct 10) failed the same way: mixed in the 2,000-node storm below (seeds
    1-6, means: parent changes 5.7 -> 5.1, control 5.06 -> 5.21), and at 5,000 nodes seed 3
    flooded stale source routes (repair transmissions per gap hop 3.4 against 2.3) and ended
    with readings not yet repaired (after repair 0.9999); without a failure seed 1 changed
    parents more (1.48 -> 1.85 per node-hour). And a neighbour's newer rseq taken only while
    its entry is under 30 s old (a neighbour that went back to an older rseq after its beacon
    could be our descendant by then) changed neither the loops nor the figures (2,000 nodes,
    seeds 1-8: loops closed 122 -> 116 per hour, first pass 0.9957 -> 0.9951).
    Feasibility (Babel's and DSDV's rule, so that a candidate cannot be one of our
    descendants): a descendant's root, rseq and cost derive from what we advertised, so its
    rseq is one we advertised and its cost is above the lowest we had while advertising that
    rseq. A node therefore keeps, per rseq of its root it advertised, that lowest cost:
    _ref_cost for the rseq it advertises now, and _fdt for the last _FDT earlier ones (an rseq
    goes back when we take a parent whose rseq lags: rseqs travel at the beacons' pace). A
    candidate of our root qualifies when it advertises less than the lowest cost we had with
    its rseq, or its rseq is newer than any we advertised (_rseq_hi), or - an rseq we no longer
    remember - less than the lowest cost of them all. A candidate on another root qualifies,
    checked against the last three roots we left, with the newest rseq and lowest cost we had
    with each (a stale descendant may still advertise one): the same rseq and a lower cost, or
    a newer rseq. A single _ref_cost that started afresh whenever the parent's rseq changed,
    backwards too, let a descendant's older claim through: 1,790 loops in an hour of the
    2,000-node storm below, and frames going round them until the TTL were most of the lost
    readings. After a gateway died, its subtree cannot count up among its own stale costs (its
    rseq stands still): it detaches, and re-attaches from the nodes that hear another root.
    Feasibility does not stop it hunting first: every node below the dead gateway still
    advertises its old cost with the old rseq, and a node whose parent moved (or whose path
    got worse) took whichever of them was lower - the next one to fall. In the 2,000-node storm
    that was 2,690 of 5,630 parent changes in the 5 minutes after the gateway died, and 569
    nodes on a live gateway moved into the dying subtree.
    So, with poison_ms > 0 (off by default), a node whose parent was a gateway that stopped
    answering (dead by the data path, or not heard for neighbor_timeout_ms) says so: its
    no-route beacons carry that root and the newest rseq of it it had heard (a poison; a
    no-route beacon carries no root otherwise). Whoever hears one - from its parent or any
    neighbour - takes no parent of that root with that rseq or an older one for poison_ms,
    until a newer rseq of it is heard, or the gateway's own beacon shows it alive; and none on
    that gateway itself until it beacons again. It keeps a parent that works. So the subtree
    falls down its own branches and re-attaches from the other roots. In the storm (2,000
    nodes, seeds 1-8, poison_ms 40 min) first pass 0.996 -> 0.9991-0.9998, parent changes 6.0
    -> 4.8, repair p50 115-132 -> 61-110 s. Not the default because a poison can be false: a
    gateway's child whose sends to a live gateway failed 6 times poisons it, and rseqs cannot
    tell: they travel at the beacons' pace, minutes behind the gateway in a quiet tree, so its
    region carries older ones than the poison names. In the 20 % loss run without a failure
    (seed 2) one such poison left 126 nodes without a route for 4 minutes (first pass 1.0 ->
    0.9964); held 60 s instead, the storm hunted again after the hold; asking the gateway
    (PULL) for 8 s before poisoning let the subtree hunt meanwhile (and one storm seed of two
    went to a repair p50 of 420 s). The next step is to confirm the death without that.
    Under a parent of earlier firmware (root 0) the older rank rule applies: _ref_cost relaxes
    2 x Imin after a higher beacon told the descendants. With no route at all, a candidate that
    beaconed fresh_wait_ms after our own no-route beacon went out also qualifies (our former
    descendants have heard that we have none by then: a relay died and only our own root is in
    reach). No usable candidate: route lost (advertise infinite cost: the descendants re-route
    or lose theirs).
- Data path (telemetry, status, reply): unicast to the parent, one frame in flight. On failure
  retry after a small backoff (the link estimate above re-chooses the parent as failures
  mount); after max_tries sends the frame is dropped (tx_fail). The transmitter writes
  hops = radio hops the frame has made once received (the origin sends 1) and its own cost.
  A forwarder drops frames whose hops >= max_hops (TTL, 48: one gateway of five down at 5,000
  nodes left paths of 33-35 hops, cut off at the old 32); a gateway accepts them.
- Loop evidence: a data frame from our own parent (a certain 2-loop) puts the parent on hold
  for loop_hold_ms, resets Trickle and re-chooses. A frame whose sender cost is not above
  ours is an inconsistency (stale costs or a loop): Trickle reset so the sender hears our
  cost soon (cost_inconsistent). Frames on a loop are still forwarded: TTL bounds them.
- Duplicates: a bounded cache (origin, seq, type) -> (hops, time). Same hops: a link-layer
  retransmission (lost ACK), dropped. Other hops: looping, or a copy that went another way
  after a lost ACK - forwarded (dup_other_hops), TTL bounds it. At a gateway any copy is a
  duplicate. Entries older than dup_memory_ms are forgotten (a collector's "resend readings"
  reuses seq numbers).
- Forwarding queue: queue_len entries (default 16 frames of <= 250 bytes: ~4 KB worst case
  on an ESP32). Full: drop the oldest forwarded frame (queue_drops). Forwarded frames wait
  while there is no route. Originated frames do not: no route -> ("sent", token, False) at
  once; route lost while queued -> the same. The app keeps readings in its ring and calls
  originate() again when has_route() (event ("route", True)).
- Downlink: Commands are flooded. Each (target, cseq) is rebroadcast once (flood_repeats)
  after a random 1..flood_delay_ms delay with hops + 1, unless hops >= max_hops or the target
  is this node; delivered as ("command", Command) when the target is this node or 0 (the app
  checks the auth). (target, cseq) is remembered flood_memory_ms: a re-sent command needs a
  new cseq unless that time has passed.
- A node's own frame comes as the bytes its origin encoded once (protocol.encode at_origin: the
  end-to-end tag set, hops and cost at their largest); the router splices hops, cost and the
  hop tag in, as it does for a frame it forwards - no frame is encoded twice.
- Gateways: cost 0, never forward upward; every data frame received, and every frame they
  originate, becomes ("uplink", bytes, rssi, hops) (originated: rssi 0, hops 0), once per
  (origin, seq, type).
- ESP-NOW peers: the router only names destination MACs. The shell keeps a PeerTable (below)
  and calls add_peer/del_peer as it says before each send (ESP-NOW holds at most 20 peers).
- Bad input (undecodable bytes, wrong hop tag, out-of-range fields) is counted in
  stats["bad_frames"] and dropped; on_recv never raises for peer data.

Events (poll_event):
  ("uplink", data, rssi, hops)  gateway: a data frame for MQTT (bytes as received)
  ("command", Command)          a downlink command for this node or for all
  ("sent", app_token, ok)       outcome of an originated frame's first hop
  ("parent", node_id)           parent changed (0: none)
  ("route", has_route)          route gained / lost
"""
from firmware.compat import const, unload
from firmware.trickle import Trickle, Xorshift32
from protocol.auth import HOP_TAG_LEN, Hmac, ct_equal
from protocol.cbor import uint_head
from protocol.errors import ProtocolError
from protocol.frames import (
    BF_GATEWAY,
    BF_NO_ROUTE,
    BF_PULL,
    COST_INFINITE,
    MAX_FRAME,
    T_BEACON,
    T_COMMAND,
    T_REPLY,
    T_ROUTED,
    T_STATUS,
    T_TELEMETRY,
    Beacon,
    decode,
    encode,
    scan_beacon,
    scan_command,
    scan_uplink,
)

BROADCAST = b"\xff\xff\xff\xff\xff\xff"

ETX_ONE = const(10)  # a perfect link, in tenths
ETX_INIT = const(20)  # a neighbour's link before its first estimate window...
ETX_INIT_WEAK = const(50)  # ...when its first frame came in weaker than weak_rssi_dbm
ETX_MAX = const(250)  # the worst a link estimate goes (and a dead link's)
ETX_PENALTY = const(10)  # added to etx_d after tries_per_parent consecutive failures
# The two estimates are kept in hundredths (EWMA steps of a tenth would stall a tenth off)
_E1 = const(100)
_EMAX = const(2500)
_WALL_DELAY_MS = const(200)  # a beacon's time is this late at most (air, queues, the loop)
_ALPHA = const(9)  # EWMA weight of the old estimate, in tenths
_WARMUP_WINDOWS = const(4)  # the first beacon windows weigh 1/2 (an estimate from the guess)
_PRR_INIT = const(707)  # beacon reception (per mille) of a new neighbour: ETX_INIT = 1 / 0.707**2
_PRR_INIT_WEAK = const(447)  # ... ETX_INIT_WEAK
_PRR_MIN2 = const(40000)  # prr**2 at or below this (PRR 0.2): etx_b is _EMAX
BEACON_WINDOW = const(3)  # expected beacons per beacon-ratio sample
DATA_WINDOW = const(5)  # unicast sends per ACK-ratio sample
_MAX_GAP_MISSES = const(6)  # a longer bseq gap (reboot, long fade) counts as this many misses
_MAX_EVENTS = const(64)
_MAX_TXQ = const(16)  # frames waiting for poll_tx (a shell that stops polling loses the oldest)
_MAX_FLOODS = const(8)  # pending rebroadcasts
_FDT = const(8)  # earlier rseqs of our root whose lowest cost is kept
_ALIEN_GAP_MS = const(10000)  # a relay passes on one key request (a status in another key phase) per this
DEPTH_NONE = const(255)

# Tunables: firmware/mesh_params.py (DEFAULTS), read by Router() once and unloaded after.

STAT_KEYS = (
    "beacons_tx", "beacons_rx", "data_rx", "data_tx", "originated", "forwarded", "uplinks",
    "dup_dropped", "dup_other_hops", "loops_detected", "cost_inconsistent", "ttl_dropped", "no_route_drops",
    "queue_drops", "parent_changes", "route_losses", "retries", "tx_fail", "send_timeouts",
    "bad_frames", "commands", "floods_tx", "flood_dup", "nbr_evicted", "nbr_full",
    "events_dropped", "txq_drops", "queue_len", "routed_fwd", "routed_nbr_miss", "routed_retries",
    "routed_fail", "routed_dup", "alien_rx", "alien_fwd",
)

class PeerTable:
    """ESP-NOW peer bookkeeping for the shell: ESP-NOW needs add_peer(mac) before a unicast
    and holds at most max_peers peers (20 on an ESP32), broadcast included. Least recently
    used unicast peers make room; the broadcast peer stays.

        add, evicted = peers.use(mac)
        if evicted: espnow.del_peer(evicted)
        if add: espnow.add_peer(mac)
    """

    def __init__(self, max_peers=20):
        if max_peers < 2:
            raise ValueError("max_peers must be >= 2 (broadcast + one unicast), got %d" % max_peers)
        self.max_peers = max_peers
        self.macs = [BROADCAST]  # LRU order after index 0, most recent last

    def use(self, mac):
        """Note a send to `mac`; return (add, evicted): add is True when `mac` is not a peer
        yet, evicted is the MAC to delete first (or None)."""
        macs = self.macs
        if mac in macs:
            if mac != BROADCAST and macs[-1] != mac:
                macs.remove(mac)
                macs.append(mac)
            return False, None
        evicted = None
        if len(macs) >= self.max_peers:
            evicted = macs.pop(1)
        macs.append(bytes(mac))
        return True, evicted

    def remove(self, mac):
        """Forget `mac` (the shell deleted the peer); True when it was known."""
        if mac != BROADCAST and mac in self.macs:
            self.macs.remove(mac)
            return True
        return False

    def __len__(self):
        return len(self.macs)


class Neighbor:
    """One neighbour's advertised route and our estimate of the link to it."""

    __slots__ = ("node_id", "mac", "cost", "depth", "flags", "bseq", "b_rcv", "b_miss", "d_tx",
                 "d_ack", "fails", "prr", "etx_b", "etx_d", "etx", "windows", "rssi", "heard", "last_ms",
                 "hold_ms", "child_ms", "phase", "root", "rseq")

    def __init__(self, node_id, mac, rssi, now_ms, etx):
        self.node_id = node_id
        self.mac = mac
        self.cost = COST_INFINITE
        self.depth = DEPTH_NONE
        self.flags = 0
        self.bseq = -1
        self.b_rcv = 0
        self.b_miss = 0
        self.d_tx = 0
        self.d_ack = 0
        self.fails = 0  # consecutive unicast failures
        self.prr = _PRR_INIT if etx <= ETX_INIT else _PRR_INIT_WEAK  # beacon reception, per mille
        self.etx_b = etx * 10  # per air attempt, from prr (first: a guess from the RSSI)
        self.etx_d = _E1  # per unicast send, from ACK outcomes
        self.etx = etx  # the link's cost in tenths: etx_b * etx_d
        self.windows = 0  # beacon windows folded in (0: etx_b is the initial guess)
        self.rssi = rssi
        self.heard = 0  # beacons heard (saturates at 255)
        self.last_ms = now_ms  # last beacon
        self.hold_ms = 0  # not a parent candidate before this time
        self.child_ms = -1  # last frame it originated through us (a child: the next hop of its source routes)
        self.phase = 0  # key phase bit (0x10) of its last beacon (firmware/rekey.py forgets a retired one)
        self.root = 0  # the root gateway and its sequence number its last beacon said (0: none said)
        self.rseq = 0

    def path_cost(self):
        """Advertised cost + link ETX (COST_INFINITE when the neighbour has no route)."""
        c = self.cost
        return COST_INFINITE if c >= COST_INFINITE else c + self.etx


def _newer(a, b):
    """Root sequence number a is newer than b (modulo 2**16)."""
    return 0 < ((a - b) & 0xFFFF) < 0x8000


def _ewma(old, sample):
    return (_ALPHA * old + (10 - _ALPHA) * sample + 5) // 10


def _link_cost(nb):
    """A link's ETX: air attempts per frame (beacons) times sends per success (ACKs). With
    MAC-level retries a working link's sends nearly all succeed (etx_d ~ 10) and the beacon
    estimate rules; failures scale it up."""
    e = (nb.etx_b * nb.etx_d + 500) // 1000
    nb.etx = e if e < ETX_MAX else ETX_MAX


class _Seen:
    """Bounded map (a, b, c) -> (t, x), forgetting the oldest insertion first: duplicates
    (origin, seq, type) -> (time_ms, hops) and floods (target, cseq, 0) -> (time_ms, 0).
    Preallocated parallel lists: an entry allocates nothing while its numbers are small ints,
    where a dict keyed by a packed (origin << 32 | seq) << 3 | type long int cost ~75 bytes an
    entry on a 32-bit board (small ints stop at 2**30)."""

    def __init__(self, size):
        self.a = [None] * size
        self.b = [0] * size
        self.c = bytearray(size)
        self.t = [0] * size
        self.x = bytearray(size)
        self.i = 0

    def find(self, a, b, c):
        """Index of the entry (a, b, c), or -1."""
        ka = self.a
        n = ka.count(a)  # a scan in C; most lookups are misses
        j = -1
        while n:
            j = ka.index(a, j + 1)
            if self.b[j] == b and self.c[j] == c:
                return j
            n -= 1
        return -1

    def put(self, a, b, c, t, x, j=-2):
        """Remember (a, b, c) -> (t, x). j: what find(a, b, c) just said, when the caller asked
        (saves a second scan); -2: not asked."""
        if j == -2:
            j = self.find(a, b, c)
        if j < 0:
            j = self.i
            self.a[j] = a
            self.b[j] = b
            self.c[j] = c
            self.i = (j + 1) % len(self.a)
        self.t[j] = t
        self.x[j] = x

    def recent(self, a, b, c, now, memory_ms):
        """True when (a, b, c) was remembered within memory_ms before now (a copy: drop it);
        else remember it at now."""
        j = self.find(a, b, c)
        if j >= 0 and now - self.t[j] < memory_ms:
            return True
        self.put(a, b, c, now, 0, j)
        return False


class _Entry:
    """A queued data frame: raw bytes as received (or encoded), where its mutable fields sit,
    the hops it goes out with, and whose it is."""

    __slots__ = ("raw", "p_hops", "p_etag", "hops", "own", "app_token", "tries", "data", "data_cost")

    def __init__(self, raw, p_hops, p_etag, hops, own, app_token):
        self.raw = raw
        self.p_hops = p_hops
        self.p_etag = p_etag
        self.hops = hops
        self.own = own
        self.app_token = app_token
        self.tries = 0
        self.data = b""  # encoded for data_cost (kept for retries while the cost holds)
        self.data_cost = -1


class Router:
    """The mesh router of one node. See the module docstring for the rules and events.

    node_id: this node's id (1..2**32-1); mac: its 6-byte radio address; is_gateway: the root
    role; mesh_key: bytes or a protocol.auth.Hmac (pass the node's one shared instance);
    seed: PRNG seed (default: from node_id, so runs are reproducible); params: dict of
    overrides of firmware/mesh_params.py DEFAULTS. Raises ValueError on an unknown or bad parameter."""

    # set by firmware/mesh_params.py configure() (annotations only: no code, no heap)
    trickle: Trickle
    cost_reset_delta: int
    cost_wake_delta: int
    dup_memory_ms: int
    flood_delay_ms: int
    flood_memory_ms: int
    flood_repeats: int
    fresh_wait_ms: int
    imin_ms: int
    loop_hold_ms: int
    max_hops: int
    max_link_etx: int
    max_neighbors: int
    max_path_cost: int
    max_tries: int
    min_heard: int
    neighbor_timeout_ms: int
    poison_ms: int
    queue_len: int
    root_seq_ms: int
    retry_backoff_ms: int
    send_timeout_ms: int
    switch_margin: int
    switch_pct: int
    tries_per_parent: int
    worse_pct: int
    weak_rssi_dbm: int

    def __init__(self, node_id, mac, is_gateway, mesh_key, seed=None, params=None):
        self.node_id = node_id
        self.mac = bytes(mac)
        self.is_gateway = bool(is_gateway)
        self._hmac = mesh_key if isinstance(mesh_key, Hmac) else Hmac(mesh_key)
        # key epochs (issue 14; set by firmware/rekey.py set_keys): the key phase this node sends
        # in, the version item it writes (1, or 17 in an odd epoch), mesh keys by key phase
        self._phase = 0
        self._vb = b"\x01"
        self._keys = [self._hmac, None]
        self._alien_ms = None  # last status frame in a key phase we hold no key for passed on (_rx_up)
        self.rng = Xorshift32(seed if seed is not None else (node_id * 2654435761 + 12345))
        from firmware import mesh_params  # the tunables and their checks: read once (~2 KB of heap)

        p = mesh_params.configure(self, params)
        mesh_params = None
        unload("firmware.mesh_params")

        self.stats = {}
        for k in STAT_KEYS:
            self.stats[k] = 0
        self._nbrs = {}  # node_id -> Neighbor
        self._par = None  # parent Neighbor
        self._par_low = COST_INFINITE
        self.cost = 0 if self.is_gateway else COST_INFINITE
        self.depth = 0 if self.is_gateway else DEPTH_NONE
        # feasibility (module docstring): our root, the sequence number we advertise, and
        # _ref_cost, the lowest cost we had with them - our descendants' costs are above it. It
        # drops with our cost at once and rises only with another sequence number, or (a parent
        # of earlier firmware, root 0) 2 x Imin after a beacon told them (then to _ref_pending).
        self.root = node_id if self.is_gateway else 0
        self.rseq = 0
        self._rseq_hi = 0  # the newest rseq of our root we have advertised
        self._fdt = []  # rseq, lowest cost, ...: earlier rseqs of our root we advertised, newest first
        self._rseq0 = self.rng.below(0x10000)  # a gateway's sequence numbers start anywhere
        self._fds = []  # [root, rseq, cost] of the last roots we left (at most 3)
        self._ref_cost = COST_INFINITE
        self._ref_pending = COST_INFINITE
        self._ref_at_ms = 0
        self._fresh_after_ms = 0  # no route: candidates heard at/after this count (None: not yet)
        self._lost = 0  # a root whose paths are gone up to rseq _lost_rseq, until _lost_until
        self._lost_rseq = 0
        self._lost_until = 0
        # _evaluate() scans every neighbour only when another than the one just heard may have
        # become a better parent: see _evaluate()
        self._cur_scanned = -1  # parent path cost at which no other neighbour qualified
        self._rescan_at_ms = 0  # a hold expires then: scan again
        self._rescan = False  # a non-parent's link estimate changed: scan again
        self._q = []  # _Entry, head first
        self._txq = []  # (token, mac, data) ready for the radio
        self._ev = []
        self._dup = _Seen(p["dup_cache"])
        self._flood = _Seen(p["flood_cache"])
        self._floods = []  # [due_ms, data] pending rebroadcasts
        self._inflight = None  # _Entry being sent
        self._inflight_token = -1
        self._inflight_nb = None
        self._inflight_deadline = 0
        self._retry_ms = 0
        self._tok = 0
        self._routed = None  # token -> (mac, frame, sends): routed frames awaiting their ACK (downroute.py)
        self._bseq = self.rng.below(256)
        self._wall_s = 0
        self._wall_ms = 0
        self._started = False

    # ---- public: state -------------------------------------------------------------------

    def has_route(self):
        """True when data can go up now (always at a gateway)."""
        return self.is_gateway or self._par is not None

    @property
    def parent(self):
        """Parent node id, 0 when none."""
        return self._par.node_id if self._par is not None else 0

    @property
    def parent_mac(self):
        """Parent's MAC, None when none."""
        return self._par.mac if self._par is not None else None

    @property
    def parent_etx(self):
        """Link ETX to the parent in tenths (0 when none)."""
        return self._par.etx if self._par is not None else 0

    @property
    def parent_rssi(self):
        """Smoothed RSSI (dBm) of the parent's beacons (0 when none)."""
        return self._par.rssi if self._par is not None else 0

    def neighbors(self):
        """List of (node_id, mac, cost, link_etx, rssi, heard, last_ms) for diagnostics."""
        return [(n.node_id, n.mac, n.cost, n.etx, n.rssi, n.heard, n.last_ms) for n in self._nbrs.values()]

    def wall_time_s(self, now_ms):
        """Unix seconds learned from set_time() or a gateway's beacons; 0 if unknown."""
        if not self._wall_s:
            return 0
        return self._wall_s + (now_ms - self._wall_ms) // 1000

    def wall_time_ms(self, now_ms):
        """Unix milliseconds by the same clock as wall_time_s; 0 if unknown."""
        if not self._wall_s:
            return 0
        return self._wall_s * 1000 + now_ms - self._wall_ms

    def set_time(self, unix_s, now_ms):
        """The wall clock is known (gateway: NTP/MQTT). Beacons carry it from now on."""
        first = not self._wall_s
        self._wall_s = unix_s
        self._wall_ms = now_ms
        if first and unix_s and self._started:
            self.trickle.reset(now_ms)

    @property
    def next_deadline_ms(self):
        """The latest time tick() must be called (0: now, before the first call)."""
        if not self._started:
            return 0
        d = self.trickle.next_fire_ms
        if self._inflight is not None:
            if self._inflight_deadline < d:
                d = self._inflight_deadline
        elif self._q and self._par is not None and self._retry_ms < d:
            d = self._retry_ms
        for f in self._floods:
            if f[0] < d:
                d = f[0]
        return d

    # ---- public: outputs -----------------------------------------------------------------

    def poll_tx(self):
        """Next frame for the radio: (token, dst_mac, data) or None. dst_mac is BROADCAST
        for beacons and floods. Report every unicast with on_send_done(token, ...)."""
        if self._txq:
            return self._txq.pop(0)
        return None

    def has_output(self):
        """True when poll_tx() or poll_event() has something (a shell may skip both otherwise)."""
        return bool(self._txq or self._ev)

    def poll_event(self):
        """Next event tuple (see module docstring) or None."""
        if self._ev:
            return self._ev.pop(0)
        return None

    # ---- public: inputs ------------------------------------------------------------------

    def tick(self, now_ms):
        """Run timers due by now_ms (beacon, retry, send timeout, flood rebroadcasts)."""
        if not self._started:
            self._start(now_ms)
        if self.trickle.poll(now_ms):
            self._send_beacon(now_ms)
        if self._inflight is not None and now_ms >= self._inflight_deadline:
            self.stats["send_timeouts"] += 1
            self.on_send_done(self._inflight_token, False, now_ms)
        if self._floods:
            keep = []
            for f in self._floods:
                if f[0] <= now_ms:
                    self._out((self._token(), BROADCAST, f[1]))
                    self.stats["floods_tx"] += 1
                else:
                    keep.append(f)
            self._floods = keep
        self._pump(now_ms)

    def on_recv(self, src_mac, data, rssi, now_ms):
        """A frame heard on the radio. Returns False when it is not a mesh frame (OTA frames:
        the shell hands those to the OTA core), True otherwise (handled or dropped)."""
        if not self._started:
            self._start(now_ms)
        if type(data) is not bytes:
            data = bytes(data)
        n = len(data)
        if n < 8 or n > MAX_FRAME or data[1] & 0xEF != 1:
            self.stats["bad_frames"] += 1
            return True
        t = data[2]
        if t == T_BEACON:
            self._rx_beacon(src_mac, data, rssi, now_ms)
        elif t == T_TELEMETRY or t == T_STATUS or t == T_REPLY:
            self._rx_up(src_mac, data, rssi, now_ms, t)
        elif t == T_COMMAND:
            self._rx_cmd(data, now_ms)
        elif t == T_ROUTED:  # the down-route code is loaded the first time it is needed
            from firmware.downroute import rx_routed
            rx_routed(self, data, now_ms, False)
        else:
            return False
        self._pump(now_ms)
        return True

    def on_send_done(self, token, ok, now_ms):
        """Outcome of a unicast poll_tx() gave (ok: the MAC-level ACK came). Other tokens
        (broadcasts, late reports) are ignored."""
        rt = self._routed
        if rt is not None and token in rt:  # a routed frame's hop: sent again on a failure
            from firmware.downroute import routed_done

            routed_done(self, rt.pop(token), ok)
            return
        e = self._inflight
        if e is None or token != self._inflight_token:
            return
        nb = self._inflight_nb
        self._inflight = None
        self._inflight_token = -1
        self._inflight_nb = None
        st = self.stats
        if ok:
            self._q.remove(e)
            e.data = b""
            self._retry_ms = 0
            if e.own:
                self._event(("sent", e.app_token, True))
            else:
                st["forwarded"] += 1
        else:
            st["retries"] += 1
            e.tries += 1
            if e.tries >= self.max_tries:
                self._q.remove(e)
                st["tx_fail"] += 1
                if e.own:
                    self._event(("sent", e.app_token, False))
            t = e.tries if e.tries < 4 else 4
            self._retry_ms = now_ms + self.retry_backoff_ms * t + self.rng.below(self.retry_backoff_ms + 1)
        self._link_outcome(nb, ok, now_ms)
        st["queue_len"] = len(self._q)
        self._pump(now_ms)

    def originate(self, data, now_ms, app_token=None):
        """Send an uplink frame this node made: `data`, the bytes of a Telemetry/Status/Reply
        encoded once with its end-to-end tag (protocol.encode with the node key; any hops, cost
        and hop tag: the router writes its own, as it does for a frame it forwards). The outcome
        comes as ("sent", app_token, ok) - at once with ok False when there is no route. Raises
        ValueError when `data` is not such a frame (a caller bug)."""
        if not self._started:
            self._start(now_ms)
        try:
            origin, seq, _, _, p_hops, p_etag = scan_uplink(data)
        except (ProtocolError, IndexError):  # not an uplink frame's layout, or cut short
            raise ValueError("originate: not an uplink frame")
        t = data[2]
        st = self.stats
        if self.is_gateway:
            data = self._splice(data, p_hops, p_etag, 0, 0)
            self._dup.put(origin, seq, t, now_ms, 0)
            st["originated"] += 1
            st["uplinks"] += 1
            self._event(("uplink", data, 0, 0))
            self._event(("sent", app_token, True))
            return
        if self._par is None:
            st["no_route_drops"] += 1
            self._event(("sent", app_token, False))
            return
        # spliced now and kept as the entry's raw bytes too: one copy per queued frame
        c = self.cost
        data = self._splice(data, p_hops, p_etag, 1, c)
        e = _Entry(data, p_hops, p_hops + 1 + len(uint_head(c)), 1, True, app_token)
        e.data = data
        e.data_cost = c
        self._dup.put(origin, seq, t, now_ms, 1)
        if self._enqueue(e):
            st["originated"] += 1
        self._pump(now_ms)

    def broadcast_own(self, data):
        """Send an uplink frame this node made (as for originate) to every neighbour at once, as
        a first transmitter (hops 1, our cost), untracked: a key request (firmware/node.py)."""
        _, _, _, _, p_hops, p_etag = scan_uplink(data)
        self._out((self._token(), BROADCAST, self._splice(data, p_hops, p_etag, 1, self.cost)))

    def _splice(self, raw, p_hops, p_etag, hops, cost):
        """`raw` (an uplink frame) with our key phase, `hops` and `cost` written in and a fresh hop tag."""
        body = raw[:1] + self._vb + raw[2:p_hops] + uint_head(hops) + uint_head(cost) + raw[p_etag:len(raw) - HOP_TAG_LEN]
        return body + self._hmac.tag(body, HOP_TAG_LEN)

    def inject_downlink(self, frame_bytes, now_ms):
        """Gateway: a Command frame from MQTT to flood into the mesh (hop tag by the fleet's
        mesh key). Returns True when accepted (False: not a valid command, or seen before)."""
        if not self._started:
            self._start(now_ms)
        if type(frame_bytes) is not bytes:
            frame_bytes = bytes(frame_bytes)
        n = len(frame_bytes)
        if n < 8 or n > MAX_FRAME or frame_bytes[1] & 0xEF != 1 or frame_bytes[2] != T_COMMAND:
            self.stats["bad_frames"] += 1
            return False
        return self._rx_cmd(frame_bytes, now_ms)

    # ---- receive paths -------------------------------------------------------------------

    def _tag_ok(self, data):
        """Whether the hop tag verifies with the key of the frame's key phase. A well-formed frame
        that fails is of another key epoch (a node that missed a rotation, or one ahead of us -
        two epochs apart share a key phase) or forged: stats["alien_rx"] counts such beacons,
        and firmware/node.py asks the fleet for the key when they outnumber the ones it can
        check or it has no parent."""
        n = len(data)
        k = self._keys[1 if data[1] & 0x10 else 0]
        return k is not None and ct_equal(k.tag(data[:n - HOP_TAG_LEN], HOP_TAG_LEN), data[n - HOP_TAG_LEN:])

    def _rx_beacon(self, src_mac, data, rssi, now):
        st = self.stats
        try:
            src, bseq, cost, depth, time_s, flags, root, rseq = scan_beacon(data)
        except Exception:  # noqa: BLE001 - any malformation is just a bad frame
            st["bad_frames"] += 1
            return
        if not self._tag_ok(data):
            st["alien_rx"] += 1
            return
        if src == self.node_id:
            return
        st["beacons_rx"] += 1
        nb = self._nbrs.get(src)
        if nb is None:
            nb = self._admit(src, src_mac, cost, rssi, now)
            if nb is None:
                return
        elif nb.mac != src_mac:
            nb.mac = bytes(src_mac)  # the node's radio was replaced
        nb.phase = data[1] & 0x10
        # beacon reception ratio: windows of BEACON_WINDOW expected beacons
        if nb.bseq >= 0:
            gap = (bseq - nb.bseq) & 255
            if gap == 0:
                return  # the same beacon twice
            miss = gap - 1
            nb.b_miss += miss if miss < _MAX_GAP_MISSES else _MAX_GAP_MISSES
        if src == self._lost:
            self._lost = 0  # the gateway we thought gone is talking: it lives
            self._rescan = True
        if nb.fails >= 2 * self.tries_per_parent:
            # declared dead by the data path, and it is talking again: learn it afresh
            nb.fails = 0
            nb.etx = self._etx_guess(rssi)
            nb.prr = _PRR_INIT if nb.etx <= ETX_INIT else _PRR_INIT_WEAK
            nb.etx_b = nb.etx * 10
            nb.etx_d = _E1
            nb.windows = 0
            nb.heard = 0
            nb.b_rcv = 0
            nb.b_miss = 0
        nb.bseq = bseq
        nb.b_rcv += 1
        tot = nb.b_rcv + nb.b_miss
        if tot >= BEACON_WINDOW:
            # the EWMA is of the reception ratio, not of ETX samples: (tot / rcv)**2 from a
            # 3-beacon window is 1, 2.25 or 9 at a PRR of 0.8, and averaging those swings path
            # costs by whole ETX on a lossy street (parents flap)
            e = (1000 * nb.b_rcv + (tot >> 1)) // tot
            if nb.windows < _WARMUP_WINDOWS:
                nb.prr = (nb.prr + e + 1) >> 1  # warm-up from the guess, alpha 0.5
            else:
                nb.prr = _ewma(nb.prr, e)
            # both directions matter (frame out, ACK back) and beacons measure one: assume a
            # symmetric link, ETX = 1 / PRR**2
            r2 = nb.prr * nb.prr
            nb.etx_b = (_E1 * 1000000 + (r2 >> 1)) // r2 if r2 > _PRR_MIN2 else _EMAX
            # ACK failures fade as the neighbour keeps talking: a link we stopped using
            # must not stay condemned by a bad spell
            nb.etx_d = _ewma(nb.etx_d, _E1)
            if nb.windows < 255:
                nb.windows += 1
            _link_cost(nb)
            nb.b_rcv = 0
            nb.b_miss = 0
        nb.rssi = (3 * nb.rssi + rssi) >> 2
        if nb.heard < 255:
            nb.heard += 1
        nb.last_ms = now
        if flags & BF_NO_ROUTE:
            cost = COST_INFINITE
            if root:
                self._lose_root(root, rseq, now, True)
        nb.cost = cost
        nb.depth = depth
        nb.flags = flags
        nb.root = root
        nb.rseq = rseq
        if time_s and not self.is_gateway and (nb is self._par or not self._wall_s):
            self._sync_wall(time_s, now)
        if flags & BF_PULL:
            if self.has_route():
                self.trickle.reset(now)
        elif cost != COST_INFINITE:
            self.trickle.heard_consistent()
        self._evaluate(now, nb)

    def _sync_wall(self, time_s, now):
        """A beacon says the sender's clock reads time_s (whole seconds, floored) as we hear it:
        its exact time lies in [time_s, time_s + 1 s + air delay). Jump to the middle of that
        second when unknown or far off; otherwise only move into it (up when behind, down when
        ahead). Beacons land at random phases of the second, so the clock closes in on the
        parent's instead of losing up to a second to the floor at every hop."""
        if not self._wall_s:
            self._wall_s = time_s
            self._wall_ms = now - 500
            self.trickle.reset(now)  # time first known: pass it on quickly
            return
        rel = (self._wall_s - time_s) * 1000 + (now - self._wall_ms)  # our clock - time_s, ms
        if rel < -2000 or rel > 3000:
            self._wall_s = time_s
            self._wall_ms = now - 500
        elif rel < 0:
            self._wall_ms += rel
        elif rel > 1000 + _WALL_DELAY_MS:
            self._wall_ms += rel - 1000 - _WALL_DELAY_MS

    def _rx_up(self, src_mac, data, rssi, now, t):
        st = self.stats
        try:
            origin, seq, hops, cost, p_hops, p_etag = scan_uplink(data)
        except Exception:  # noqa: BLE001
            st["bad_frames"] += 1
            return
        ok = self._tag_ok(data)
        if not ok:
            # A status frame whose hop tag fails: a node that missed a key rotation asking for
            # the key (its status says its epoch; the fleet checks the end-to-end tag and answers
            # only a node that is not revoked). Passed on re-tagged in our epoch, one every
            # _ALIEN_GAP_MS at most (a stolen pole or anyone may send them too); anything else
            # is dropped.
            a = self._alien_ms
            if t != T_STATUS or (a is not None and now - a < _ALIEN_GAP_MS) \
                    or not (self.is_gateway or self._par is not None):
                st["bad_frames"] += 1
                return
            self._alien_ms = now
            st["alien_fwd"] += 1
            n = len(data) - HOP_TAG_LEN
            b = data[:1] + self._vb + data[2:n]
            data = b + self._hmac.tag(b, HOP_TAG_LEN)
        st["data_rx"] += 1
        if hops == 1:  # originated by the sender (it counts itself): a child, kept for routed frames
            nb = self._nbrs.get(origin)
            if nb is None:
                self._admit_child(origin, src_mac, rssi, now)
            elif nb.mac == src_mac:
                nb.child_ms = now
        dup = self._dup
        j = dup.find(origin, seq, t)
        if j >= 0 and now - dup.t[j] < self.dup_memory_ms:
            if self.is_gateway or dup.x[j] == hops:
                st["dup_dropped"] += 1
                return
            # seen with another hop count: looping, or a copy that took another path after
            # a lost ACK. Not a retransmission: forward it, TTL bounds a loop.
            st["dup_other_hops"] += 1
        if self.is_gateway:
            dup.put(origin, seq, t, now, 0, j)
            st["uplinks"] += 1
            self._event(("uplink", data, rssi, hops))
            return
        dup.put(origin, seq, t, now, hops, j)
        if hops >= self.max_hops:
            st["ttl_dropped"] += 1
            return
        par = self._par
        if not ok:
            pass  # its cost is of an epoch we cannot see: no evidence about our tree
        elif par is not None and src_mac == par.mac:
            self._loop_evidence(now)
        elif cost <= self.cost:
            st["cost_inconsistent"] += 1
            self.trickle.reset(now)
        self._enqueue(_Entry(data, p_hops, p_etag, hops + 1, False, None))

    def _rx_cmd(self, data, now):
        st = self.stats
        try:
            target, cseq, hops, p_hops, p_auth = scan_command(data)
        except Exception:  # noqa: BLE001
            st["bad_frames"] += 1
            return False
        # a command to this node whose hop tag fails: the fleet's answer to its key request, in an
        # epoch it holds no key for (OP_REKEY, authenticated end to end with its node key, which
        # the command path checks, with its replay window); it is taken, never forwarded, and
        # not remembered (a forged copy must not shadow the fleet's)
        ok = self._tag_ok(data)
        if not ok and target != self.node_id:
            st["bad_frames"] += 1
            return False
        if ok and self._flood.recent(target, cseq, 0, now, self.flood_memory_ms):
            st["flood_dup"] += 1
            return False
        if target == self.node_id or target == 0:
            try:
                cmd = decode(data)
            except ProtocolError:
                st["bad_frames"] += 1
                return False
            st["commands"] += 1
            self._event(("command", cmd))
        if target != self.node_id:
            if hops >= self.max_hops:
                st["ttl_dropped"] += 1
            elif len(self._floods) + self.flood_repeats <= _MAX_FLOODS:
                body = data[:1] + self._vb + data[2:p_hops] + uint_head(hops + 1) + data[p_auth:len(data) - HOP_TAG_LEN]
                out = body + self._hmac.tag(body, HOP_TAG_LEN)
                due = now
                for _ in range(self.flood_repeats):
                    due += 1 + self.rng.below(self.flood_delay_ms)
                    self._floods.append([due, out])
        return True

    # ---- link estimation -----------------------------------------------------------------

    def _link_outcome(self, nb, ok, now):
        nb.d_tx += 1
        if ok:
            nb.d_ack += 1
            nb.fails = 0
        else:
            nb.fails += 1
        changed = False
        if nb.d_tx >= DATA_WINDOW:
            e = (_E1 * nb.d_tx) // nb.d_ack if nb.d_ack else _EMAX
            nb.etx_d = _ewma(nb.etx_d, e if e < _EMAX else _EMAX)
            nb.d_tx = 0
            nb.d_ack = 0
            changed = True
        if not ok:
            tpp = self.tries_per_parent
            if nb.fails >= 2 * tpp:
                nb.etx_d = _EMAX  # dead: unusable until it beacons again
                changed = True
            elif nb.fails % tpp == 0:
                e = nb.etx_d + ETX_PENALTY * 10
                nb.etx_d = e if e < _EMAX else _EMAX
                changed = True
        if changed:
            _link_cost(nb)
            if nb is self._par:
                self._evaluate(now)
            else:
                self._rescan = True

    # ---- neighbour table -----------------------------------------------------------------

    def _admit(self, node_id, mac, cost, rssi, now):
        nbrs = self._nbrs
        if len(nbrs) >= self.max_neighbors:
            # make room: a neighbour not heard for the timeout, else the one with the worst
            # path when the newcomer's (with an initial link guess) would be better. A newcomer
            # without a route could not be a parent: refused without a scan (stale entries
            # go at our next beacon, _housekeep); it is admitted once it beacons a route.
            if cost >= COST_INFINITE:
                self.stats["nbr_full"] += 1
                return None
            victim, worst = self._victim(now, False)
            if victim is None or worst <= cost + self._etx_guess(rssi):
                self.stats["nbr_full"] += 1
                return None
            del nbrs[victim.node_id]
            self.stats["nbr_evicted"] += 1
        nb = Neighbor(node_id, bytes(mac), rssi, now, self._etx_guess(rssi))
        nbrs[node_id] = nb
        return nb

    def _admit_child(self, node_id, mac, rssi, now):
        """A child (it originated a frame through us) not in the table: admitted for the routed
        frames that go down through us to it (firmware/downroute.py), in place of the non-child
        with the worst path (never the parent). Not a parent candidate until it beacons a route."""
        nbrs = self._nbrs
        if len(nbrs) >= self.max_neighbors:
            victim, _ = self._victim(now, True)
            if victim is None:
                self.stats["nbr_full"] += 1
                return
            del nbrs[victim.node_id]
            self.stats["nbr_evicted"] += 1
        nb = Neighbor(node_id, bytes(mac), rssi, now, self._etx_guess(rssi))
        nb.child_ms = now
        nbrs[node_id] = nb

    def _victim(self, now, spare_children):
        """(neighbour, its path cost) to drop for a newcomer: one not heard for the timeout, else
        the one with the worst path. Never the parent or the neighbour a send is in flight to;
        children (they originated frames through us within the timeout) only when no other is
        left, never with spare_children: the deepest neighbours, those with the worst paths, are
        the children, and a routed frame reaches a child through this table."""
        victim = None
        worst = -1
        child = None
        child_worst = -1
        timeout = self.neighbor_timeout_ms
        par = self._par
        busy = self._inflight_nb
        for nb in self._nbrs.values():
            if nb is par or nb is busy:
                continue
            if now - nb.last_ms > timeout:
                return nb, COST_INFINITE + 1
            pc = nb.cost
            if pc < COST_INFINITE:  # nb.path_cost(), inline: this loop runs per beacon heard
                pc += nb.etx
            if nb.child_ms >= 0 and now - nb.child_ms <= timeout:
                if pc > child_worst:
                    child = nb
                    child_worst = pc
            elif pc > worst:
                victim = nb
                worst = pc
        if victim is None and not spare_children:
            return child, child_worst
        return victim, worst

    def _etx_guess(self, rssi):
        """Link ETX to assume before any estimate window: a weak signal is a poor link more
        often than not (the 4-bit estimator's "white bit" idea), and an optimistic guess
        would make a new node grab a distant parent it then has to leave."""
        return ETX_INIT if rssi >= self.weak_rssi_dbm else ETX_INIT_WEAK

    def _housekeep(self, now):
        """Forget neighbours not heard for neighbor_timeout_ms (never the parent: the data
        path and _usable() judge it)."""
        timeout = self.neighbor_timeout_ms
        stale = [k for k, nb in self._nbrs.items()
                 if now - nb.last_ms > timeout and nb is not self._par and nb is not self._inflight_nb]
        for k in stale:
            del self._nbrs[k]

    # ---- parent selection ----------------------------------------------------------------

    def _lose_root(self, r, v, now, heard=False):
        """Root r's paths as of its rseq v are gone (it stopped answering us, or a neighbour
        said so: heard): take no parent on them for poison_ms or until a newer rseq of r is
        heard, and none on gateway r itself until it beacons again."""
        if self.is_gateway or not self.poison_ms:
            return
        g = self._nbrs.get(r)
        if heard and g is not None and g is not self._par and g.flags & BF_GATEWAY and g.etx_d < _EMAX:
            g.fails = 2 * self.tries_per_parent  # as if our data path had found it dead
            g.etx_d = _EMAX
            _link_cost(g)
        if r == self._lost and now < self._lost_until and not _newer(v, self._lost_rseq):
            return
        self._lost = r
        self._lost_rseq = v
        self._lost_until = now + self.poison_ms

    def _usable(self, nb, now, max_etx):
        """Can nb carry our data? A new parent needs a link ETX <= max_link_etx; the current
        one is kept up to ETX_MAX - 1 (a bad link beats no route; a dead one is ETX_MAX)."""
        return (nb.cost < COST_INFINITE and nb.hold_ms <= now and nb.etx <= max_etx
                and nb.cost + nb.etx <= self.max_path_cost and nb.depth < self.max_hops
                and now - nb.last_ms <= self.neighbor_timeout_ms)

    def _evaluate(self, now, heard=None):
        """Re-choose the parent (rules in the module docstring); update cost and depth.

        heard: the neighbour whose beacon called this. Every neighbour is scanned unless the
        parent stands and nothing changed for the others since the last scan that found none of
        them better: the parent's path cost has not risen above the one they were judged
        against, no hold expired, the reference cost did not rise, no other link estimate
        changed. Then only `heard` can have become better, and only it is looked at: the same
        choice as a full scan, without a scan per beacon (a node hears dozens of neighbours)."""
        if self.is_gateway:
            return
        par = self._par
        cur = COST_INFINITE
        if par is not None and self._usable(par, now, ETX_MAX - 1):
            cur = par.cost + par.etx
        elif par is not None and par.flags & BF_GATEWAY and self.poison_ms:
            # our gateway stopped answering: its other paths are as dead as ours, as far as we know
            v = par.rseq
            for nb in self._nbrs.values():
                if nb.root == par.root and nb.cost < COST_INFINITE and _newer(nb.rseq, v):
                    v = nb.rseq
            self._lose_root(par.root, v, now)
        lost = self._lost
        if lost and now >= self._lost_until:
            self._lost = lost = 0
            self._rescan = True
        lost_rseq = self._lost_rseq
        scan = heard is None or cur >= COST_INFINITE or cur > self._cur_scanned or self._rescan
        if self._ref_at_ms and now >= self._ref_at_ms:
            self._ref_cost = self._ref_pending
            self._ref_at_ms = 0
            scan = True
        if self._rescan_at_ms and now >= self._rescan_at_ms:
            self._rescan_at_ms = 0
            for nb in self._nbrs.values():  # the next hold to expire (holds are rare)
                if nb.hold_ms > now and (not self._rescan_at_ms or nb.hold_ms < self._rescan_at_ms):
                    self._rescan_at_ms = nb.hold_ms
            scan = True
        fresh = None if par is not None or self._fresh_after_ms is None else self._fresh_after_ms + self.fresh_wait_ms
        margin = self.switch_margin
        pct = self.switch_pct
        if par is not None:
            low = self._par_low
            if cur < low:
                self._par_low = low = cur
            if par.etx > self.max_link_etx:
                margin = pct = 0  # a link kept only because it beats no route: any better one
            elif cur > low + margin + (low * self.worse_pct) // 100:
                pct = 0  # the path got worse than noise: no relative margin (a gateway died?)
        min_heard = self.min_heard
        max_etx = self.max_link_etx
        best = None
        best_pc = cur
        for nb in (self._nbrs.values() if scan else (heard,)):
            if nb is par or nb.cost >= COST_INFINITE:
                continue
            pc = nb.cost + nb.etx
            if pc >= best_pc or not self._usable(nb, now, max_etx):
                continue
            if lost and nb.root == lost and not _newer(nb.rseq, lost_rseq):
                continue  # its path leads to a root that is gone
            if cur < COST_INFINITE and (pc + margin + (pc * pct) // 100 > cur or nb.heard < min_heard
                                        or not nb.windows):
                continue
            if (fresh is None or nb.last_ms < fresh) and not self._feasible(nb):
                continue  # might be our descendant
            best = nb
            best_pc = pc
        if scan:
            self._rescan = False
            self._cur_scanned = best_pc
        elif best_pc < self._cur_scanned:
            self._cur_scanned = best_pc
        if best is not None:
            self._set_parent(best, now)
        elif cur >= COST_INFINITE and par is not None:
            self._set_parent(None, now)
        par = self._par
        if par is not None:
            c = par.cost + par.etx
            if c > self.max_path_cost:
                c = self.max_path_cost
            # Under a parent of earlier firmware (no root) a rise of one perfect link's cost is
            # beaconed at once and repeatedly (Trickle reset): the old rank rule counts on
            # descendants advertising at least our cost + 1 ETX (tried: a loop on a lossy street).
            # With a root the lowest cost holds until a newer rseq, so a rise is news like a
            # fall: one beacon soon (Trickle wake). A reset per fall was ~90 % of all beacons at
            # 20 % loss (DES, 1,000 nodes); resets per rise made 4.42 beacons per reading at 20 %
            # loss (DES, 2,000 nodes), 3.20 as news (cost_wake_delta: module docstring).
            d = self.cost - c
            if -d >= self.cost_reset_delta and not par.root:
                self.trickle.reset(now)
            elif abs(d) >= self.cost_wake_delta:
                self.trickle.wake(now)
            self.cost = c
            # another root or rseq: feasibility goes on from our cost now, or from the lowest we
            # had when we advertised that rseq before (what our descendants derive is above it)
            r = par.root
            if r != self.root or par.rseq != self.rseq:
                self._new_rseq(r, par.rseq, c)
            elif c < self._ref_cost:
                self._ref_cost = c
                self._ref_at_ms = 0
            self.depth = par.depth + 1 if par.depth < DEPTH_NONE - 1 else DEPTH_NONE - 1

    def _new_rseq(self, r, v, c):
        """Our parent brings root r with rseq v (another root, or another rseq of ours) and our
        cost is now c: the lowest cost we had with what we advertised is kept per rseq (what a
        descendant may still carry, derived from our cost then)."""
        fdt = self._fdt
        if r != self.root:
            fds = self._fds
            for f in fds:
                if f[0] == r:
                    fds.remove(f)
                    break
            if self.root:
                fds.insert(0, [self.root, self._rseq_hi, self._fd_min()])
                del fds[3:]
            del fdt[:]
            self.root = r
            self._rseq_hi = v
            ref = c
        else:
            ref = c
            for i in range(0, len(fdt), 2):
                if fdt[i] == v:  # back to an rseq we advertised: its lowest cost holds
                    if fdt[i + 1] < c:
                        ref = fdt[i + 1]
                    del fdt[i:i + 2]
                    break
            fdt.insert(0, self._ref_cost)
            fdt.insert(0, self.rseq)
            del fdt[2 * _FDT:]
            if _newer(v, self._rseq_hi):
                self._rseq_hi = v
        self.rseq = v
        self._ref_cost = ref
        self._ref_at_ms = 0
        self._rescan = True

    def _fd_min(self):
        m = self._ref_cost
        fdt = self._fdt
        for i in range(1, len(fdt), 2):
            if fdt[i] < m:
                m = fdt[i]
        return m

    def _feasible(self, nb):
        """True when nb cannot be our descendant by what it advertises (module docstring): the
        lowest cost we had with its root and rseq is above its cost, or its rseq is newer than any
        we had, or its root is one we never had (or left before the last three). An rseq of our
        root we no longer remember: below the lowest cost of those we do. A root we left: only
        its newest rseq we had, or a newer one - taking any rseq let the subtree of a dead
        gateway go back to its stale costs (DES, 2,000 nodes at 20 % loss with a gateway failure,
        seeds 1-4: first pass 0.974 against 0.978). Babel's rule for our own root (only our
        rseq, or newer) left a node whose parent died without a candidate, because neighbours'
        rseqs lag each other by minutes (a lossy street of 20 poles: 52 parent changes and 16
        route losses in an hour, against 15 and 0); an rseq we advertised before is as safe,
        with the cost we had then. A neighbour of earlier firmware (root 0): the cost rule
        alone."""
        r = nb.root
        if not r:
            return nb.cost < self._ref_cost
        if r == self.root:
            v = nb.rseq
            if v == self.rseq:
                return nb.cost < self._ref_cost
            fdt = self._fdt
            for i in range(0, len(fdt), 2):
                if fdt[i] == v:
                    return nb.cost < fdt[i + 1]
            # newer than any we advertised: not from a descendant; else one we no longer remember
            return _newer(v, self._rseq_hi) or nb.cost < self._fd_min()
        for f in self._fds:
            if f[0] == r:
                return (nb.rseq == f[1] and nb.cost < f[2]) or _newer(nb.rseq, f[1])
        return True

    def _set_parent(self, nb, now):
        old = self._par
        self._par = nb
        self._par_low = COST_INFINITE  # the lowest path cost seen through this parent
        st = self.stats
        st["parent_changes"] += 1
        if nb is None or old is None:
            self.trickle.reset(now)  # route lost or gained
        else:
            self.trickle.wake(now)
        if nb is None:
            st["route_losses"] += 1
            if self.cost < self._ref_cost:
                self._ref_cost = self.cost
            self._ref_at_ms = 0
            self._fresh_after_ms = None  # set when our no-route beacon goes out
            self.cost = COST_INFINITE
            self.depth = DEPTH_NONE
            self._event(("parent", 0))
            self._event(("route", False))
            # the app keeps its readings; it re-originates on ("route", True)
            keep = []
            for e in self._q:
                if e.own and e is not self._inflight:
                    self._event(("sent", e.app_token, False))
                    st["no_route_drops"] += 1
                else:
                    keep.append(e)
            self._q = keep
            st["queue_len"] = len(keep)
        else:
            self._event(("parent", nb.node_id))
            if old is None:
                self._event(("route", True))

    def _loop_evidence(self, now):
        self.stats["loops_detected"] += 1
        self.trickle.reset(now)
        par = self._par
        if par is not None:
            par.hold_ms = now + self.loop_hold_ms
            if not self._rescan_at_ms or par.hold_ms < self._rescan_at_ms:
                self._rescan_at_ms = par.hold_ms
            self._evaluate(now)

    # ---- transmit paths ------------------------------------------------------------------

    def _token(self):
        self._tok = (self._tok + 1) & 0x3FFFFFFF
        return self._tok

    def _out(self, tx):
        if len(self._txq) >= _MAX_TXQ:
            self._txq.pop(0)  # a dropped unicast ends in the send timeout, then a retry
            self.stats["txq_drops"] += 1
        self._txq.append(tx)

    def _event(self, ev):
        if len(self._ev) >= _MAX_EVENTS:
            self._ev.pop(0)
            self.stats["events_dropped"] += 1
        self._ev.append(ev)

    def _start(self, now):
        self._started = True
        self.trickle.start(now)

    def _send_beacon(self, now):
        bseq = self._bseq
        self._bseq = (bseq + 1) & 255
        if self.is_gateway:
            cost, depth, flags = 0, 0, BF_GATEWAY
            # by the wall clock when known, so that a rebooted gateway goes on from where it was
            w = self.wall_time_s(now)
            self.rseq = (w // (self.root_seq_ms // 1000) if w else self._rseq0 + now // self.root_seq_ms) & 0xFFFF
        elif self._par is None:
            cost, depth, flags = COST_INFINITE, DEPTH_NONE, BF_NO_ROUTE | BF_PULL
            if self._fresh_after_ms is None:
                self._fresh_after_ms = now
        else:
            cost, depth, flags = self.cost, self.depth, 0
            if cost > self._ref_cost and not self._ref_at_ms and not self.root:
                self._ref_pending = cost
                self._ref_at_ms = now + 2 * self.imin_ms
        if cost < COST_INFINITE:
            root, rseq = self.root, self.rseq
        elif self._lost and now < self._lost_until:
            root, rseq = self._lost, self._lost_rseq  # say which root we lost: a poison
        else:
            root = rseq = 0
        b = Beacon(self.node_id, bseq, cost, depth, self.wall_time_s(now), flags, root, rseq if root else 0)
        self._out((self._token(), BROADCAST, encode(b, self._hmac, None, self._phase)))
        self.stats["beacons_tx"] += 1
        self._housekeep(now)

    def _enqueue(self, e):
        q = self._q
        st = self.stats
        if len(q) >= self.queue_len:
            victim = None
            for x in q:
                if not x.own and x is not self._inflight:
                    victim = x
                    break
            if victim is None:
                st["queue_drops"] += 1
                if e.own:
                    self._event(("sent", e.app_token, False))
                return False
            q.remove(victim)
            st["queue_drops"] += 1
        q.append(e)
        st["queue_len"] = len(q)
        return True

    def _pump(self, now):
        """Put the head of the queue on the air when nothing is in flight."""
        if self._inflight is not None or not self._q:
            return
        par = self._par
        if par is None or now < self._retry_ms:
            return
        e = self._q[0]
        cost = self.cost
        if not e.data or e.data_cost != cost:
            e.data = self._splice(e.raw, e.p_hops, e.p_etag, e.hops, cost)
            e.data_cost = cost
        tok = self._token()
        self._inflight = e
        self._inflight_token = tok
        self._inflight_nb = par
        self._inflight_deadline = now + self.send_timeout_ms
        self.stats["data_tx"] += 1
        self._out((tok, par.mac, e.data))
