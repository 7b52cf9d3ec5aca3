"""Gap detection and repair for the collector, sans-IO: which reading counters of each node are
missing, when to ask the node to resend them, and when to give up.

Rules (a gap is a range [first, last] of reading seqs of one node, below the highest seq seen)
- Per node: `max_seq` and `min_seq` (highest and lowest reading seq received) and the pending
  gaps, disjoint and sorted. A node's reading counter starts at 0 (firmware/counters.py): when the
  first readings ever heard from a node (none in the store) start at or below
  `first_contact_max`, the seqs before them are a gap (e.g. sent before the collector first
  subscribed). Above it the node is met mid-life (a new store for an old fleet) and nothing
  before is known; a later reading below min_seq then opens the gap up to min_seq.
- Readings above max_seq + 1 open the gap [max_seq + 1, first - 1]. The part of it older than a
  node's ring can hold (`ring_readings`) is lost on arrival and recorded as a lost gap.
- Readings inside a gap shrink, split or close it. A gap closed before any resend request was
  mere reordering (late frames): it leaves no trace ('gone'). Closed after a request: 'recovered'.
- A gap is due `grace_s` after it opens (late frames fill most gaps). When due, the node is asked
  `OP_RESEND [first, last]`; the node resends what its ring holds, at most ~48 readings at a time,
  and replies code 0 with [first_sent, last_sent] (no reply when that is all of it: below), or
  code 3 when it holds none of the range.
  Later pending gaps of the same node join the request while the whole range spans at most
  `merge_span` seqs: one flooded command instead of several (resent duplicates are cheap).
- Reply code 0: seqs below first_sent in the range are lost (the ring evicts oldest first);
  when last_sent is below the range end, the rest is asked for again after `follow_s`.
  Reply code 3: the whole range is lost. Any other code: retried.
- No progress after a request: ask again after `retry_s`, doubling up to `retry_max_s`; after
  `max_attempts` requests without progress the gap is lost. Progress (any seq of the gap
  received) resets the attempt count. The first attempt goes through the gateway that last
  heard the node; later ones are flooded through every gateway (the node may have moved).
- A gap's request waits, up to `route_wait_s` after it fell due, while the node's path is
  broken (`path_broken(node)`: the node reported a parent, but the parents reported up from it
  loop, stop at a node that reported none, or end at an offline gateway - a gateway failure's
  re-parenting, reports still on their way). A node that changed parents reports the new one
  within ~1 minute (firmware/node.py parent_report_ms), and the alternative - a flood through
  the whole mesh, ~one transmission per node - is what a gateway failure's hundreds of gaps must
  not cost (issue 15). It is looked at again when a node reports another parent
  (`routes_changed`: the report that mends the path sends it at once), else every
  route_wait_s / 5. Counted `route_waits` (each re-check); after the wait, or for a node that
  never reported a parent, the caller floods as before. A retry waits too: a flood
  cannot do better than the path. After a gateway failure a far node's path to the next gateway
  can be longer than the TTL (DES, 2,000 nodes at 20 % loss: node 786's real path ran 35 hops;
  its frames and a flood's answer died at hop 32, the TTL then; it is 48 now), and two whole-mesh floods for its one gap
  were all of that run's floods (repair transmissions per gap hop 3.5; 2.3 once retries waited).
- Overdue probes (`overdue_s`, 0: none): a lost reading otherwise shows only when the next one
  arrives, a report interval later, and is then asked for after the grace (~420 s at the
  default 300 s interval). When readings carry the node's time (`made_s`), the tracker learns
  each node's interval and its clock's offset (the least arrival - made seen, rising slowly),
  and when the reading after the newest is `overdue_s` late it asks the node once for
  [newest + 1, newest + merge_span] (a Request without a gap; `due_probes`). The caller sends
  it only down a known source route - never a flood: a node that is merely late or gone costs
  one routed command - and while the path is broken the probe waits (looked at again as a gap
  is: on a report of another parent, or in 30 s), up to the time the reading after it is due
  (then the gap shows as before). What comes back is an ordinary reading, and it answers the
  probe; a reply that holds none loses nothing (nothing was known missing). An unanswered probe
  is let go after `retry_s`; it is not retried.
- A node resends without a Reply when the readings are the whole answer (firmware/node_cmd.py
  `answered`: all of [first, last] it holds, up to its newest): the gaps close, and the probe is
  answered, on the readings themselves; a Reply comes when it says more (some no longer held,
  the rest to ask for again, none held). Lost readings on the way up: the retry, as before.
- At most `max_outstanding_node` requests per node and `max_outstanding` in all are in flight
  (unanswered, not expired); due gaps wait for a free slot. At most `max_gaps_node` pending gaps
  per node; beyond it the oldest is marked lost (a counter jumping around is a node bug).
- Lost gaps are kept (state 'lost'), counted and shown by `fleet status`; nothing is dropped
  silently.

The tracker only keeps state and decides. The caller (fleet/collector.py) persists the gaps
`take_dirty()` hands out, allocates command counters and sends the requests.
"""
import heapq

OPEN = "open"
REQUESTED = "requested"
RECOVERED = "recovered"
LOST = "lost"
GONE = "gone"  # closed before any request: reordering, not a loss; no row is kept

PENDING = (OPEN, REQUESTED)

# Why a gap was lost: older than any ring holds on arrival; the node's ring had dropped the
# range (reply code 0 starting later / code 3); no answer after max_attempts; too many gaps.
LOST_REASONS = ("beyond_ring", "aged_out", "not_held", "no_answer", "too_many_gaps")

RESEND_OK = 0
RESEND_NONE_HELD = 3


# Scoped floods (issue 15): a resend request that cannot go down a source route is flooded, but
# only as far as the node can be: it starts with a hop count that makes relays stop
# rebroadcasting it SCOPE_MARGIN[attempt] hops beyond the node's last known distance from a
# gateway (firmware/mesh.py rebroadcasts a command only while its hops < max_hops). Later
# attempts widen the scope; past the table, and for a node never heard, the whole mesh.
SCOPE_MARGIN = {1: 2, 2: 2, 3: 6}


def flood_start_hops(last_hops, attempt, max_hops):
    """The hops value to send a flooded command with (0: the whole mesh). last_hops: the hop
    count of the node's newest frame at its gateway (None: unknown); attempt: 1 for the gap's
    first request; max_hops: the nodes' TTL (firmware/mesh_params.py)."""
    margin = SCOPE_MARGIN.get(attempt)
    if last_hops is None or margin is None:
        return 0
    return max(0, max_hops - (last_hops + margin))


class SourceRoutes:
    """Downward routes at the fleet (RPL non-storing mode; issue 15): the parent each node's
    newest status reported, and the rule for sending a command for one node down them, used by
    the collector (fleet/collector.py; the simulator runs that same collector).

    choose(node, gateways, online, retry) returns ((gateway, path), why) with why None, or
    (None, why): why is "fallback" when no usable path is known (unknown or looping parents, too
    long, its gateway offline: the caller floods and counts it), "rerouted" for a retry routed
    down a path reports moved since the last attempt, "same" for a retry down the path already
    tried (the caller floods, not counted as a fallback)."""

    def __init__(self):
        self.parents = {}  # node -> parent (absent: unknown or none)
        self.tried = {}  # node -> (gateway, path) of its last routed command

    def report(self, node, parent):
        """`node` reported `parent` (0: none). Returns True when that is another than it had."""
        if parent:
            old = self.parents.get(node)
            self.parents[node] = parent
            return old != parent
        return self.parents.pop(node, None) is not None

    def broken(self, node, gateways, online):
        """True when `node` reported a parent but no usable path down to it compiles (see
        fleet/repair.py route_wait_s); False when one does, or when the node reported none."""
        return node in self.parents and self.path(node, gateways, online) is None

    def choose(self, node, gateways, online, retry=False):
        r = self.path(node, gateways, online)
        if r is None:
            return None, (None if retry else "fallback")
        why = None
        if retry:
            if self.tried.get(node) == r:
                return None, "same"
            why = "rerouted"
        self.tried[node] = r
        return r, why

    def path(self, node, gateways, online):
        """(gateway, path) compiled from the reported parents, or None: none compiles, or its
        gateway is offline."""
        from protocol.routed import compile_path

        r = compile_path(self.parents, node, gateways)
        if r is None or not online(r[0]):
            return None
        return r[0], list(r[1])


class RepairConfig:
    """Gap repair settings (seconds, counts). See the module docstring for their meaning."""

    FIELDS = ("grace_s", "retry_s", "retry_max_s", "follow_s", "max_attempts", "max_outstanding",
              "max_outstanding_node", "max_gaps_node", "ring_readings", "defer_s", "merge_span",
              "first_contact_max", "route_wait_s", "overdue_s")

    def __init__(self, grace_s=120.0, retry_s=60.0, retry_max_s=900.0, follow_s=3.0, max_attempts=5,
                 max_outstanding=64, max_outstanding_node=1, max_gaps_node=256, ring_readings=20000,
                 defer_s=1.0, merge_span=48, first_contact_max=1000, route_wait_s=150.0, overdue_s=60.0):
        self.grace_s = float(grace_s)
        self.retry_s = float(retry_s)
        self.retry_max_s = float(retry_max_s)
        self.follow_s = float(follow_s)
        self.max_attempts = int(max_attempts)
        self.max_outstanding = int(max_outstanding)
        self.max_outstanding_node = int(max_outstanding_node)
        self.max_gaps_node = int(max_gaps_node)
        self.ring_readings = int(ring_readings)
        self.defer_s = float(defer_s)
        self.merge_span = int(merge_span)
        self.first_contact_max = int(first_contact_max)
        self.route_wait_s = float(route_wait_s)
        self.overdue_s = float(overdue_s)
        for f in self.FIELDS:
            v = getattr(self, f)
            if v < 0 or (v == 0 and f not in ("first_contact_max", "route_wait_s", "overdue_s")):  # these may be 0
                raise ValueError(f"repair setting {f} must be positive, got {v!r}")

    def __repr__(self):
        return "RepairConfig(%s)" % ", ".join(f"{f}={getattr(self, f)!r}" for f in self.FIELDS)


class Gap:
    """One range of missing seqs of a node. `id` is the store row id (None until written);
    `requests` counts every request ever sent, `attempts` those since the last progress."""

    __slots__ = ("id", "node", "first", "last", "state", "requests", "attempts", "created_s", "due_s", "req",
                 "dirty", "reason", "wait_s")

    def __init__(self, node, first, last, state, created_s, due_s, requests=0, gap_id=None):
        self.id = gap_id
        self.node = node
        self.first = first
        self.last = last
        self.state = state
        self.requests = requests
        self.attempts = 0
        self.created_s = created_s
        self.due_s = due_s
        self.req = None
        self.dirty = False
        self.reason = None  # why a lost gap was lost (LOST_REASONS)
        self.wait_s = None  # when its request began to wait for a whole path (route_wait_s)

    @property
    def size(self):
        return self.last - self.first + 1

    def row(self):
        """Plain data for the store: (id, node, first_seq, last_seq, state, requests, created_s)."""
        return (self.id, self.node, self.first, self.last, self.state, self.requests, self.created_s)

    def __repr__(self):
        return (f"Gap(id={self.id}, node={self.node}, {self.first}..{self.last}, {self.state}, "
                f"requests={self.requests}, attempts={self.attempts})")


class Request:
    """A resend request in flight: OP_RESEND [a, b] to `node` with command counter `cseq`;
    `via_all` says it goes to every gateway rather than the one that last heard the node."""

    __slots__ = ("cseq", "node", "gap", "a", "b", "sent_s", "via_all", "gateway")

    def __init__(self, cseq, node, gap, a, b, sent_s, via_all, gateway):
        self.cseq = cseq
        self.node = node
        self.gap = gap
        self.a = a
        self.b = b
        self.sent_s = sent_s
        self.via_all = via_all
        self.gateway = gateway

    def __repr__(self):
        return f"Request(cseq={self.cseq}, node={self.node}, {self.a}..{self.b}, via_all={self.via_all})"


class _Node:
    __slots__ = ("max_seq", "min_seq", "gaps", "gateway", "outstanding", "made_s", "every_s", "offset_s",
                 "probe_s")

    def __init__(self, max_seq, min_seq=None):
        self.max_seq = max_seq
        self.min_seq = max_seq if min_seq is None else min_seq
        self.gaps = []  # pending Gap objects, sorted by first, disjoint
        self.gateway = None  # gateway that last heard the node
        self.outstanding = 0
        self.made_s = None  # the node's time of reading max_seq (overdue probes)
        self.every_s = None  # its report interval, learnt
        self.offset_s = None  # our clock - the node's, plus the quickest delivery
        self.probe_s = None  # a probe is due then (None: none)


class GapTracker:
    """Per-node reading counters, gaps and resend requests (see the module docstring).

    Counters (plain ints): opened, reordered (closed before a request), recovered, lost,
    readings_lost, readings_filled, requests_sent, replies, pending (gaps open or requested)."""

    def __init__(self, config=None):
        self.cfg = config or RepairConfig()
        self.nodes = {}
        self.outstanding = {}  # (node, cseq) -> Request (command counters are per node)
        self._heap = []  # (due_s, tiebreak, Gap); stale entries skipped when popped
        self._tick = 0
        self._dirty = []
        self.opened = 0
        self.reordered = 0
        self.recovered = 0
        self.lost = 0
        self.readings_lost = 0
        self.readings_filled = 0
        self.requests_sent = 0
        self.replies = 0
        self.pending = 0
        self.route_waits = 0
        self.probes_sent = 0
        self._probes = []  # (due_s, tiebreak, node); stale when the node's probe_s moved
        self._probe_reqs = []  # probe Requests in flight
        # gaps and nodes (a probe) waiting for a whole path (route_wait_s), looked at again on a
        # parent report; dicts as ordered sets (the order requests go out in stays reproducible)
        self._route_gaps = {}
        self._route_nodes = {}

    # ---- loading what the store knows ---------------------------------------------------------

    def load_node(self, node, max_seq, min_seq=None):
        """Seed `node`'s highest and lowest stored seqs (None = never heard) from the store."""
        nt = self.nodes.get(node)
        if nt is None:
            self.nodes[node] = _Node(max_seq, min_seq)
            return
        if max_seq is not None and (nt.max_seq is None or max_seq > nt.max_seq):
            nt.max_seq = max_seq
        low = max_seq if min_seq is None else min_seq
        if low is not None and (nt.min_seq is None or low < nt.min_seq):
            nt.min_seq = low

    def load_gap(self, gap_id, node, first, last, state, requests, created_s, now_s):
        """Seed a pending gap from the store (after a restart); it becomes due after grace_s."""
        nt = self._node(node)
        g = Gap(node, first, last, OPEN if requests == 0 else REQUESTED, created_s, now_s + self.cfg.grace_s,
                requests, gap_id)
        if nt.max_seq is None or nt.max_seq <= last:  # a gap implies readings around it
            nt.max_seq = last + 1
        if nt.min_seq is None or nt.min_seq >= first:
            nt.min_seq = first - 1
        self._insert_sorted(nt, g)
        self.pending += 1
        self._schedule(g)
        return g

    def _node(self, node):
        nt = self.nodes.get(node)
        if nt is None:
            nt = self.nodes[node] = _Node(None)
        return nt

    # ---- readings ---------------------------------------------------------------------------

    def on_readings(self, node, first, last, now_s, gateway=None, made_s=None):
        """Record that `node`'s readings first..last arrived (through `gateway`); `made_s`: the
        node's time of reading `last` (0/None: unknown), for overdue probes."""
        nt = self._node(node)
        if gateway is not None:
            nt.gateway = gateway
        if nt.outstanding and self._probe_reqs:  # readings answer a probe (no Reply comes with them)
            for req in self._probe_reqs:
                if req.node == node and first <= req.b and last >= req.a:
                    self._drop_request(req)
        m = nt.max_seq
        if made_s and self.cfg.overdue_s and (m is None or last > m):
            self._expect(nt, node, m, last, now_s, made_s)
        if m is None:
            if not 0 < first <= self.cfg.first_contact_max:
                nt.max_seq, nt.min_seq = last, first  # met mid-life: nothing before is known
                return
            m = nt.max_seq = -1  # a young node's readings start at 0
            nt.min_seq = 0
        if first < nt.min_seq:
            if last < nt.min_seq - 1:  # below everything heard so far: the seqs between are missing
                self._open(nt, node, last + 1, nt.min_seq - 1, now_s)
            nt.min_seq = first
        if last <= m:
            if nt.gaps:
                self._carve(nt, first, last, now_s, lost=None)
            return
        if first > m + 1:
            self._open(nt, node, m + 1, first - 1, now_s)
        elif first <= m and nt.gaps:
            self._carve(nt, first, m, now_s, lost=None)
        nt.max_seq = last

    def _expect(self, nt, node, m, last, now_s, made_s):
        """Reading `last`, made at the node's `made_s`, is the newest: when the one after it is due."""
        off = now_s - made_s
        if nt.offset_s is None or off < nt.offset_s:
            nt.offset_s = off
        else:  # rises slowly: a late reading says little, a clock set forward says it again
            nt.offset_s += (off - nt.offset_s) / 8
        if nt.made_s is not None and m is not None and made_s > nt.made_s:
            nt.every_s = (made_s - nt.made_s) / (last - m)
        nt.made_s = made_s
        nt.probe_s = None
        if nt.every_s:
            self._probe_at(nt, node, made_s + nt.offset_s + nt.every_s + self.cfg.overdue_s)

    def _probe_at(self, nt, node, due_s):
        nt.probe_s = due_s
        self._tick += 1
        heapq.heappush(self._probes, (due_s, self._tick, node))

    def due_probes(self, now_s, cseq_fn, routable):
        """Overdue probes to send now (module docstring): Requests without a gap, registered as
        outstanding. `routable(node)`: a source route down to it is known and whole now."""
        cfg = self.cfg
        keep = []
        for req in self._probe_reqs:  # answered: gone; unanswered in time: let go (not retried)
            if (req.node, req.cseq) not in self.outstanding:
                continue
            if now_s - req.sent_s >= cfg.retry_s:
                self._drop_request(req)
            else:
                keep.append(req)
        self._probe_reqs = keep
        out = []
        heap = self._probes
        while heap and heap[0][0] <= now_s:
            due_s, _, node = heapq.heappop(heap)
            nt = self.nodes.get(node)
            if nt is None or nt.probe_s != due_s:
                continue
            nt.probe_s = None
            if now_s > nt.made_s + nt.offset_s + 2 * nt.every_s:
                continue  # the reading after it is due too: a gap shows as before
            blocked = len(self.outstanding) >= cfg.max_outstanding or nt.outstanding >= cfg.max_outstanding_node
            if blocked or not routable(node):  # no path: again on a parent report (routes_changed), or in 30 s
                self._probe_at(nt, node, now_s + max(cfg.defer_s, min(cfg.route_wait_s / 5, 30.0)))
                if not blocked:
                    self._route_nodes[node] = None
                continue
            cseq = cseq_fn(node)
            if cseq is None:  # no command counter now (store busy): shortly
                self._probe_at(nt, node, now_s + cfg.defer_s)
                continue
            req = Request(cseq, node, None, nt.max_seq + 1, nt.max_seq + cfg.merge_span, now_s, False, nt.gateway)
            self.outstanding[(node, cseq)] = req
            nt.outstanding += 1
            self._probe_reqs.append(req)
            self.probes_sent += 1
            out.append(req)
        return out

    def routes_changed(self, now_s):
        """A node reported another parent: the gaps and probes waiting for a whole path are due
        now (poll() looks again), not at their next re-check up to 30 s later - in a gateway
        failure's storm most repairs wait for a re-parented node's report."""
        for g in self._route_gaps:
            if g.state in PENDING and g.req is None:
                self._due(g, now_s)
        for node in self._route_nodes:
            nt = self.nodes.get(node)
            if nt is not None and nt.probe_s is not None and nt.probe_s > now_s:
                self._probe_at(nt, node, now_s)
        self._route_gaps = {}
        self._route_nodes = {}

    def next_probe_s(self):
        """The earliest time a probe may be due or let go, or None."""
        heap = self._probes
        while heap:
            due_s, _, node = heap[0]
            nt = self.nodes.get(node)
            if nt is not None and nt.probe_s == due_s:
                break
            heapq.heappop(heap)
        t = heap[0][0] if heap else None
        for req in self._probe_reqs:
            x = req.sent_s + self.cfg.retry_s
            if t is None or x < t:
                t = x
        return t

    def _open(self, nt, node, a, b, now_s):
        cut = b - self.cfg.ring_readings
        if cut >= a:  # older than any ring holds: lost on arrival
            self._record_lost(node, a, cut, now_s, "beyond_ring")
            a = cut + 1
        g = Gap(node, a, b, OPEN, now_s, now_s + self.cfg.grace_s)
        if nt.gaps and nt.gaps[-1].first > a:
            self._insert_sorted(nt, g)  # below min_seq (first contact reordered)
        else:
            nt.gaps.append(g)
        self.opened += 1
        self.pending += 1
        self._mark(g)
        self._schedule(g)
        if len(nt.gaps) > self.cfg.max_gaps_node:
            old = nt.gaps[0]
            self._carve(nt, old.first, old.last, now_s, lost="too_many_gaps")

    def _carve(self, nt, a, b, now_s, lost):
        """Remove [a, b] from nt's pending gaps: filled by readings (lost=None), or given up
        (lost = one of LOST_REASONS)."""
        gaps = nt.gaps
        if not gaps or gaps[-1].last < a or gaps[0].first > b:
            return
        keep = []
        for g in gaps:
            if g.last < a or g.first > b:
                keep.append(g)
                continue
            lo, hi = max(a, g.first), min(b, g.last)
            if not lost:
                self.readings_filled += hi - lo + 1
                g.attempts = 0  # progress
            whole = g.first >= a and g.last <= b
            if whole:
                g.reason = lost
                self._close(g, LOST if lost else (RECOVERED if g.requests else GONE))
                continue
            if lost:
                self._record_lost(g.node, lo, hi, now_s, lost)
            if g.first < a and g.last > b:  # split: the upper part becomes a new gap
                upper = Gap(g.node, b + 1, g.last, g.state, g.created_s, g.due_s, g.requests)
                upper.attempts = g.attempts
                g.last = a - 1
                keep.append(g)
                keep.append(upper)
                self.pending += 1
                self._mark(upper)
                self._schedule(upper)
            elif g.first < a:
                g.last = a - 1
                keep.append(g)
            else:
                g.first = b + 1
                keep.append(g)
                # the part a request asked for has arrived: ask for the rest soon
                if not lost and g.req is not None and g.first > g.req.b:
                    self._drop_request(g.req)
                    self._due(g, now_s + self.cfg.follow_s)
            self._mark(g)
        nt.gaps = keep

    def _close(self, g, state):
        g.state = state
        self.pending -= 1
        if state == LOST:
            self.lost += 1
            self.readings_lost += g.size
        elif state == RECOVERED:
            self.recovered += 1
        else:
            self.reordered += 1
        if g.req is not None:
            self._drop_request(g.req)
        self._mark(g)

    def _record_lost(self, node, a, b, now_s, reason):
        g = Gap(node, a, b, LOST, now_s, now_s)
        g.reason = reason
        self.lost += 1
        self.readings_lost += b - a + 1
        self._mark(g)

    def _insert_sorted(self, nt, g):
        gaps = nt.gaps
        i = len(gaps)
        while i > 0 and gaps[i - 1].first > g.first:
            i -= 1
        gaps.insert(i, g)

    # ---- scheduling ---------------------------------------------------------------------------

    def _schedule(self, g):
        self._tick += 1
        heapq.heappush(self._heap, (g.due_s, self._tick, g))

    def _due(self, g, due_s):
        if due_s < g.due_s:
            g.due_s = due_s
            self._schedule(g)

    def _mark(self, g):
        if not g.dirty:
            g.dirty = True
            self._dirty.append(g)

    def _drop_request(self, req):
        if self.outstanding.pop((req.node, req.cseq), None) is not None:
            nt = self.nodes.get(req.node)
            if nt is not None:
                nt.outstanding -= 1
        if req.gap is not None and req.gap.req is req:
            req.gap.req = None

    def next_due_s(self):
        """The earliest time a gap may need action, or None."""
        while self._heap:
            due_s, _, g = self._heap[0]
            if g.state in PENDING and g.due_s == due_s:
                return due_s
            heapq.heappop(self._heap)
        return None

    def due_requests(self, now_s, cseq_fn, gateway_online=None, path_broken=None):
        """Decide what to do with gaps due by `now_s`: give up on those out of attempts, and
        return the resend Requests to send now (registered as outstanding). `cseq_fn(node)`
        returns the command counter to use (None: cannot now, the gap waits defer_s);
        `gateway_online(gw)` says whether a gateway is believed up (None = assume so);
        `path_broken(node)` whether its reported path is broken for now (None: no routing, no
        wait; see route_wait_s)."""
        cfg = self.cfg
        out = []
        deferred = []
        heap = self._heap
        while heap and heap[0][0] <= now_s:
            due_s, _, g = heapq.heappop(heap)
            if g.state not in PENDING or g.due_s != due_s:
                continue
            if g.req is not None:  # unanswered in time: the slot is free again
                self._drop_request(g.req)
            if g.attempts >= cfg.max_attempts:
                nt = self.nodes[g.node]
                self._carve(nt, g.first, g.last, now_s, lost="no_answer")
                continue
            nt = self.nodes[g.node]
            if len(self.outstanding) >= cfg.max_outstanding or nt.outstanding >= cfg.max_outstanding_node:
                g.due_s = now_s + cfg.defer_s
                deferred.append(g)
                if len(self.outstanding) >= cfg.max_outstanding:
                    break
                continue
            if path_broken is not None and cfg.route_wait_s and path_broken(g.node):
                if g.wait_s is None:  # the first request waits from when it fell due, a retry from now
                    g.wait_s = now_s if g.requests else g.created_s + cfg.grace_s
                waited = now_s - g.wait_s
                if waited < cfg.route_wait_s:  # no path yet: wait for a parent report (routes_changed)
                    g.due_s = now_s + min(cfg.route_wait_s - waited, cfg.route_wait_s / 5)
                    deferred.append(g)
                    waiting = self._route_gaps
                    if len(waiting) >= 4096:  # no report for long (a quiet mesh): forget the closed
                        self._route_gaps = waiting = {h: None for h in waiting if h.state in PENDING}
                    waiting[g] = None
                    self.route_waits += 1
                    continue
            cseq = cseq_fn(g.node)
            if cseq is None:  # no command counter now (store busy): try again shortly
                g.due_s = now_s + cfg.defer_s
                deferred.append(g)
                continue
            gw = nt.gateway
            via_all = g.attempts >= 1 or gw is None or (gateway_online is not None and not gateway_online(gw))
            covered = [g]
            for h in nt.gaps:  # later gaps close enough to share the request
                if h.first > g.last:
                    if h.last - g.first >= cfg.merge_span:
                        break
                    covered.append(h)
            g.wait_s = None
            req = Request(cseq, g.node, g, g.first, covered[-1].last, now_s, via_all, gw)
            self.outstanding[(req.node, req.cseq)] = req
            nt.outstanding += 1
            g.req = req
            for h in covered:
                h.attempts += 1
                h.requests += 1
                h.state = REQUESTED
                h.due_s = now_s + min(cfg.retry_max_s, cfg.retry_s * (2 ** (h.attempts - 1)))
                self._mark(h)
                self._schedule(h)
            self.requests_sent += 1
            out.append(req)
        for g in deferred:
            self._schedule(g)
        return out

    # ---- replies -----------------------------------------------------------------------------

    def on_reply(self, node, cseq, code, result, now_s):
        """Apply a node's reply to resend request `cseq`. Returns the Request it answered, or
        None when it matches no outstanding request (late, or another tool's command)."""
        req = self.outstanding.get((node, cseq))
        if req is None:
            return None
        self.replies += 1
        self._drop_request(req)
        nt = self.nodes[node]
        if code == RESEND_OK:
            first = last = None
            if len(result) == 2 and all(isinstance(x, int) for x in result):
                first, last = result
            if first is None or not (req.a <= first <= last <= req.b):
                return req  # a malformed answer: the retry timer stands
            if first > req.a:
                self._carve(nt, req.a, first - 1, now_s, lost="aged_out")
            if last < req.b:  # the node sends a bounded number per request: ask for the rest
                for g in nt.gaps:
                    if g.last > last and g.first <= req.b:
                        self._due(g, now_s + self.cfg.follow_s)
        elif code == RESEND_NONE_HELD:
            self._carve(nt, req.a, req.b, now_s, lost="not_held")
        return req

    # ---- persistence hand-off -------------------------------------------------------------------

    def take_dirty(self):
        """Return (and forget) the gaps changed since the last call, for the store."""
        out, self._dirty = self._dirty, []
        for g in out:
            g.dirty = False
        return out

    def has_dirty(self):
        """True when gaps changed since the last take_dirty() (not yet in the store)."""
        return bool(self._dirty)

    def restore_dirty(self, gaps):
        """Put back gaps whose store write failed (they will be written by the next flush)."""
        for g in gaps:
            self._mark(g)

    # ---- views ----------------------------------------------------------------------------------

    def node_gaps(self, node):
        """The pending gaps of `node` as (first, last, state) tuples."""
        nt = self.nodes.get(node)
        return [(g.first, g.last, g.state) for g in nt.gaps] if nt else []

    def max_seq(self, node):
        nt = self.nodes.get(node)
        return nt.max_seq if nt else None

    def seq_bounds(self, node):
        """(max_seq, min_seq) tracked for `node` ((None, None) when never heard)."""
        nt = self.nodes.get(node)
        return (nt.max_seq, nt.min_seq) if nt else (None, None)

    def gateway_of(self, node):
        nt = self.nodes.get(node)
        return nt.gateway if nt else None
