"""The application layer of the discrete-event simulator (fleet/sim/des.py): what firmware/node.py
does around the router, reduced to what the mesh sees, and the collector side at the gateways.

Node side (`DesApp`): the firmware's own application core, firmware/app.py `NodeApp` - the
uplink and its in-flight tracking, the command checks, the resend answer (firmware/node_cmd.py
`resend`), replies and status frames - on the simulator's clock and a ring of dicts:
- A reading every report interval, stamped once wall-clock time is known (router.wall_time_s; at
  most firmware.node.UNSTAMPED_MAX wait unstamped), numbered by a persistent counter that resumes
  at the next block of 64 after a power cut (firmware/counters.py), kept in a ring: a dict of
  held readings and an ordered dict of unsent ones, with the ReadingRing methods the core uses
  (pending, mark_sent, get_range, gaps). The firmware's RAM block is modelled: readings since
  the last spill (64 records, or 8 unsent ones) are lost at a power cut (firmware/ring.py).
- The uplink poll (NodeApp.poll_uplink) runs only when it can do something (a new reading, a
  "sent" outcome, a route gained), at the node's next 500 ms boundary: node.py polls every
  500 ms, so the latency it adds is the same without 7,200 idle polls per node-hour.
- node.py's status report every status_interval_s (node.py's 300 s by default; 0 = none), and
  its early report of a changed parent (fleet/sim/des.py schedules it with node.py's
  parent_report_ms): a real Status frame; the collector compiles source routes from the parents
  they name. Commands other than OP_RESEND are refused (code 2).
  Not modelled: the sampler and sensor (a reading simply appears every report interval), the
  watchdog, flash timing, OTA staging and trial boot (the engine's "complete" ends the story).

Collector side (`Collector`): every "uplink" a gateway's router emits is decoded once with
protocol.decode, its end-to-end tag checked with the origin's key; readings are recorded by
(origin, seq) and fed to the fleet's own gap tracker (fleet/repair.py GapTracker); due gaps
become OP_RESEND commands, tagged with the node key and injected at the gateway that last heard
the node (or every live gateway) with Router.inject_downlink — the flood then runs on the real
routers. In `route` repair mode (the default) the request goes down the source route compiled
from the parents in the nodes' status reports (firmware/downroute.py), and is flooded only when
no path is known or on a retry. A flood is scoped as fleet.collector scopes it (fleet/repair.py
flood_start_hops: the hop count it starts with stops it a few hops beyond the node). Both are
real at every size: no repair is estimated.
"""
from firmware import node_cmd
from firmware.app import MAX_IN_FLIGHT, NodeApp
from firmware.counters import DEFAULT_BLOCK
from firmware.downroute import inject_routed
from firmware.mesh_params import DEFAULTS as _MESH_DEFAULTS
from firmware.node import UNSTAMPED_MAX, UPLINK_POLL_MS
from firmware.ring import AHEAD, DEFAULT_RAM, DEFAULT_UNSENT_SPILL, LOST
from fleet.repair import GapTracker, RepairConfig, SourceRoutes, flood_start_hops
from protocol import (
    OP_RESEND,
    T_REPLY,
    T_STATUS,
    T_TELEMETRY,
    Command,
    ProtocolError,
    StatusBody,
    decode,
    encode,
)
from protocol.auth import ReplayWindow
from protocol.routed import Routed

POLL_US = UPLINK_POLL_MS * 1000  # node.py's uplink poll period


def _ceil_block(v):
    return -(-v // DEFAULT_BLOCK) * DEFAULT_BLOCK


class _Counters:
    """firmware/counters.py's interface over a dict: a reboot resumes each at its next block."""

    __slots__ = ("v",)

    def __init__(self):
        self.v = {}

    def next(self, name):
        n = self.v.get(name, 0)
        self.v[name] = n + 1
        return n

    def peek(self, name):
        return self.v.get(name, 0)

    def set_min(self, name, value):
        if value > self.v.get(name, 0):
            self.v[name] = value

    def reboot(self):
        for k, n in self.v.items():
            self.v[k] = _ceil_block(n)


class DesApp(NodeApp):
    """One node: the firmware's application core (firmware/app.py NodeApp: uplink, in-flight
    tracking, command checks, resend answers via firmware/node_cmd.py, replies, status), on a
    ring of dicts (this class: the ReadingRing methods the core uses) and the simulator's clock."""

    def __init__(self, sim, node, node_hmac):
        self.sim = sim
        self.node = node
        self.node_id = node.id
        self.ring = self
        self.counters = _Counters()
        self.mesh_hmac = sim.mesh_hmac
        self.node_hmac = node_hmac
        self.fleet_pub = None  # the DES sends no fleet-signed command to a node's app
        self.cmd_window = ReplayWindow(32)
        self.app_init()
        self._now = 0  # ms: set at every entry from the simulator
        self.next_seq = 0
        self.held = {}  # seq -> t_s (the ring: sent or not, until the end of the run)
        self.unsent = {}  # seq -> None, oldest first
        self.ram = []  # seqs in the RAM block (lost at a power cut)
        self.parent_report_ms = None  # node.py's: a changed parent to report then
        self.last_status_ms = None
        self.unstamped = []  # aggregation times (us) of readings waiting for wall-clock time
        self.kick_at = -1
        self.phase_us = (node.id * 7919) % POLL_US
        self.boot = 0
        self.created = []  # sim truth: created[seq] = aggregation time (us), -1 = never issued
        self.first_orig = []  # first_orig[seq] = when the reading was first handed to the router
        self.lost_at_cut = 0

    @property
    def router(self):
        return self.node.router  # a power cycle gives the node a new one

    # ---- the core's clock -----------------------------------------------------------------------

    def now_ms(self):
        return self._now

    def wall_s(self, now=None):
        return self.router.wall_time_s(self._now if now is None else now)

    # ---- the ring (firmware/ring.py ReadingRing's methods the core uses) -------------------------

    def record(self, seq):
        """The ring tuple of reading seq (values made up from the seq: they are not studied)."""
        v = (self.node_id * 7 + seq * 13) % 97
        return (seq, self.held[seq], 100 + v, 150 + v, 200 + v, 60, 215, 60, 0)

    def pending(self, max_n, after_seq=None):
        out = []
        for s in self.unsent:
            if after_seq is None or s > after_seq:
                out.append(self.record(s))
                if len(out) >= max_n:
                    break
        return out

    def mark_sent(self, first, last):
        unsent = self.unsent
        for s in range(first, last + 1):
            unsent.pop(s, None)

    def _held_in(self, a, b):
        held = self.held
        if b - a < 4096:
            return (s for s in range(a, b + 1) if s in held)
        return iter(sorted(s for s in held if a <= s <= b))

    def get_range(self, a, b, max_n):
        out = []
        for s in self._held_in(a, b):
            out.append(self.record(s))
            if len(out) >= max_n:
                break
        return out

    def gaps(self, a, b, max_ranges=8):
        """Not held in a..b: LOST below the next seq (a power cut, a reboot's skip), AHEAD from
        it (the DES ages nothing out: its ring holds the whole run)."""
        out = []
        top = min(b, self.next_seq - 1)
        cur = a
        for s in self._held_in(a, top):
            if s > cur and len(out) < max_ranges:
                out.append((cur, s - 1, LOST))
            cur = s + 1
        if cur <= top and len(out) < max_ranges:
            out.append((cur, top, LOST))
        if b > top and len(out) < max_ranges:
            out.append((max(a, top + 1), b, AHEAD))
        return out

    # ---- readings -------------------------------------------------------------------------

    def sample(self, now_us):
        """A report from the sampler: stamp it (or keep it until time is known), then poll."""
        self.unstamped.append(now_us)
        if len(self.unstamped) > UNSTAMPED_MAX:
            del self.unstamped[0]  # node.py keeps the newest UNSTAMPED_MAX: this one is lost
            self.sim.counters["unstamped_dropped"] += 1
        self.stamp(now_us)

    def stamp(self, now_us):
        """Number and store the readings waiting for wall-clock time, once it is known."""
        if not self.unstamped:
            return
        wall = self.router.wall_time_s(now_us // 1000)
        if not wall:
            return
        created = self.created
        held = self.held
        unsent = self.unsent
        ram = self.ram
        for at_us in self.unstamped:
            seq = self.next_seq
            self.next_seq = seq + 1
            while len(created) < seq:
                created.append(-1)  # skipped by a counter block after a reboot
                self.first_orig.append(-1)
            created.append(at_us)
            self.first_orig.append(-1)
            held[seq] = wall - (now_us - at_us) // 1_000_000
            unsent[seq] = None
            ram.append(seq)
            self.sim.made += 1
        self.unstamped = []
        if len(ram) >= DEFAULT_RAM or sum(1 for s in ram if s in unsent) >= DEFAULT_UNSENT_SPILL:
            self.ram = []  # spilled to flash: survives a power cut
        self.kick(now_us)

    # ---- uplink -----------------------------------------------------------------------------

    def kick(self, now_us):
        """Ask for an uplink poll at the node's next 500 ms boundary (once)."""
        t = now_us + (self.phase_us - now_us) % POLL_US
        if t <= now_us:
            t += POLL_US
        if self.kick_at > now_us and self.kick_at <= t:
            return
        self.kick_at = t
        self.sim.push_kick(t, self.node)

    def uplink(self, now_us):
        """node.py's uplink poll (the core's poll_uplink), with the simulator's truth kept:
        when each reading was first handed to the router."""
        self.kick_at = -1
        if not self.unsent:
            return
        self._now = now_ms = now_us // 1000
        first_last = self.poll_uplink(now_ms)
        if first_last is None:
            return
        fo = self.first_orig
        for s in range(first_last[0], first_last[1] + 1):
            if fo[s] < 0:
                fo[s] = now_us
        if len(self.in_flight) < MAX_IN_FLIGHT and next(reversed(self.unsent)) > first_last[1]:
            self.kick(now_us)

    def on_sent(self, token, ok, now_us=None):
        """The core's on_sent; given the simulator's now_us, the next poll is asked for while
        readings wait (node.py polls every 500 ms anyway)."""
        first_last = NodeApp.on_sent(self, token, ok)
        if first_last is not None and now_us is not None and self.unsent:
            self.kick(now_us)
        return first_last

    # ---- commands -----------------------------------------------------------------------------

    def on_command(self, cmd, now_us):
        """node.py's on_command for a command to this node: the core's checks, OP_RESEND answered
        by the firmware's own node_cmd.resend, any other op refused (code 2), then the reply."""
        if cmd.target != self.node_id:
            return
        self._now = now_us // 1000
        why = self.accept_command(cmd)
        if why is not None:
            self.sim.counters["cmd_replayed" if why == "replayed" else "cmd_refused"] += 1
            return
        if cmd.op == OP_RESEND and len(cmd.args) == 2:
            code, result, frames = node_cmd.resend(self, cmd.args[0], cmd.args[1])
            if code == 0:
                self.sim.counters["resent_frames"] += frames
                resent = self.sim.collector.resent_of(self.node_id)
                for s in self._held_in(result[0], result[1]):
                    resent.add(s)
        else:
            code, result = 2, []
        self.send_reply(cmd.cseq, code, result)
        self.sim.counters["replies_sent"] += 1

    def send_status(self, now_us):
        """node.py's send_status(): a Status frame (the real StatusBody) originated untracked."""
        self._now = now_ms = now_us // 1000
        r = self.router
        ota = self.node.ota
        body = StatusBody(fw_seq=1, fw_version="1.0.0", uptime_s=now_ms // 1000, heap_free=60000, heap_min=50000,
                          backlog=len(self.unsent), parent=r.parent, link_etx=min(r.parent_etx, 0xFFFF),
                          path_cost=min(r.cost, 0xFFFF), rssi=max(-128, min(0, r.parent_rssi)), boot_count=self.boot,
                          ota_state=ota.state if ota is not None else 0,
                          ota_progress=ota.progress_pct if ota is not None else 0, errors=0,
                          radio_drops=0, readings_lost=0)  # the DES models no receive buffer, no overflow
        self.send_status_body(body)
        self.sim.counters["status_sent"] += 1

    # ---- power -----------------------------------------------------------------------------------

    def power_off(self):
        """Power lost: RAM is gone (the RAM block of the ring, frames in flight, unstamped readings)."""
        for s in self.ram:
            self.held.pop(s, None)
            if s in self.unsent:
                del self.unsent[s]
                self.lost_at_cut += 1  # never reached the first hop: gone for good
        self.ram = []
        self.in_flight = {}
        self.unstamped = []
        self.kick_at = -1
        self.parent_report_ms = None
        self.last_status_ms = None

    def power_on(self):
        """Boot: counters resume from their persisted reserves (a block of 64)."""
        self.boot += 1
        self.next_seq = _ceil_block(self.next_seq)
        self.counters.reboot()


_MAX_HOPS = _MESH_DEFAULTS["max_hops"]


class Collector:
    """The fleet side: decodes uplinks once, tracks readings and gaps, sends resend requests."""

    def __init__(self, sim, repair_mode="flood", repair_config=None):
        self.sim = sim
        self.mode = repair_mode
        self.tracker = GapTracker(repair_config or RepairConfig())
        self.got = {}  # node id -> list: arrival time (us) by seq, 0 = not (yet)
        self.first_pass = {}  # node id -> bytearray: 1 = arrived without a resend
        self.resent = {}  # node id -> seqs re-originated for a resend request
        self.cseq = {}
        self.replies_seen = set()
        self.due_at = None
        self.latency_us = []  # first arrivals of first-pass readings: since first originated
        self.age_us = []  # ...and since the reading was made
        self.repair_latency_us = []
        self.hops = {}  # hops -> telemetry frames (first arrival of their first reading)
        self.via = {}  # node id -> gateway that last delivered its readings
        self.rejects = 0
        self.duplicates = 0
        self.frames = 0
        self.status_frames = 0
        self.requests = 0
        self.routes = SourceRoutes()  # the parents nodes report, and the routing rule (route mode)
        self.routed = 0  # resend requests sent down a source route
        self.route_fallbacks = 0  # ...flooded instead: no known path to the node
        self.route_retries_rerouted = 0  # retries down a path reports moved since the last attempt
        self.route_retries_flooded = 0  # ...flooded: a routed request went unanswered (stale path)
        self.scoped = 0  # flooded requests scoped to a few hops beyond the node (flood_start_hops)
        self.last_hops = {}  # node id -> hop count of its newest frame at a gateway
        self.first_request_hops = 0  # sum of the node's hop count over each gap's first request
        self.max_hops = (sim.opt.mesh_params or {}).get("max_hops", _MAX_HOPS)

    def resent_of(self, node_id):
        s = self.resent.get(node_id)
        if s is None:
            s = self.resent[node_id] = set()
        return s

    def key_of(self, node_id):
        app = self.sim.apps.get(node_id)
        return app.node_hmac if app is not None else None

    def on_uplink(self, gw, data, hops, now_us):
        """A gateway router's ("uplink", data, rssi, hops)."""
        t = data[2] if len(data) > 2 else 0
        if t == T_STATUS:
            self.status_frames += 1
            if self.mode == "route":  # the parent each node reports compiles its source route
                try:
                    f = decode(data, None, self.key_of)
                except ProtocolError:
                    self.rejects += 1
                    return
                self.routes.report(f.origin, f.body.parent)
            return
        if t != T_TELEMETRY and t != T_REPLY:
            return
        try:
            f = decode(data, None, self.key_of)
        except ProtocolError:
            self.rejects += 1
            return
        now_s = now_us / 1e6
        node = f.origin
        if t == T_REPLY:
            key = (node, f.seq)
            if key in self.replies_seen:
                return
            self.replies_seen.add(key)
            self.tracker.on_reply(node, f.cseq, f.code, f.result, now_s)
            self.schedule(now_us)
            return
        self.frames += 1
        self.last_hops[node] = hops
        app = self.sim.apps[node]
        created = app.created
        first_orig = app.first_orig
        got = self.got.get(node)
        if got is None:
            got = self.got[node] = []
            self.first_pass[node] = bytearray()
        fp = self.first_pass[node]
        resent = self.resent.get(node)
        first = f.seq
        last = f.seq + len(f.readings) - 1
        if len(got) <= last:
            got.extend([0] * (last + 1 - len(got)))
            fp.extend(bytes(last + 1 - len(fp)))
        new = False
        for s in range(first, last + 1):
            if got[s]:
                self.duplicates += 1
                continue
            new = True
            got[s] = now_us
            age = now_us - created[s]
            if resent is not None and s in resent:
                self.repair_latency_us.append(age)
            else:
                fp[s] = 1
                self.age_us.append(age)
                self.latency_us.append(now_us - first_orig[s])
        if new:
            self.hops[hops] = self.hops.get(hops, 0) + 1
        self.via[node] = gw.id
        self.tracker.on_readings(node, first, last, now_s, gateway=gw.id)
        self.schedule(now_us)

    def schedule(self, now_us):
        """Make sure a poll event is queued for the tracker's next due time."""
        d = self.tracker.next_due_s()
        if d is None:
            return
        t = max(int(d * 1e6), now_us + 1)
        if self.due_at is not None and self.due_at <= t and self.due_at > now_us:
            return
        self.due_at = t
        self.sim.at(t, self.poll)

    def _next_cseq(self, node):
        c = self.cseq.get(node, 0) + 1
        self.cseq[node] = c
        return c

    def _online(self, gw):
        n = self.sim.by_id.get(gw)
        return n is not None and n.alive

    def poll(self, now_us):
        """Turn due gaps into OP_RESEND commands and send them."""
        if self.due_at is not None and now_us < self.due_at:
            return
        self.due_at = None
        sim = self.sim
        reqs = self.tracker.due_requests(now_us / 1e6, self._next_cseq, self._online)
        for req in reqs:
            app = sim.apps[req.node]
            cmd = Command(target=req.node, cseq=req.cseq, op=OP_RESEND, args=[req.a, req.b])
            fb = encode(cmd, sim.mesh_hmac, app.node_hmac)
            self.requests += 1
            if req.gap is not None and req.gap.requests == 1:  # a gap's first request: its hop count
                self.first_request_hops += self.last_hops.get(req.node, 0)
            if self.mode == "route":
                # The first attempt goes down the compiled path; a retry means that path went
                # stale: down the path again only when status reports moved it since (counted),
                # else flooded (counted), as fleet.collector does
                if self._route(req.node, fb, now_us, retry=req.via_all):
                    continue
                if req.via_all:
                    self.route_retries_flooded += 1
            start = flood_start_hops(self.last_hops.get(req.node), req.gap.attempts if req.gap else None,
                                     self.max_hops)
            if start:  # the flood stops a few hops beyond the node, as fleet.collector sends it
                self.scoped += 1
                cmd.hops = start
                fb = encode(cmd, sim.mesh_hmac, app.node_hmac)
            if req.via_all or req.gateway is None:
                gws = [g for g in sim.gateways if g.alive]
            else:
                g = sim.by_id[req.gateway]
                gws = [g] if g.alive else [g for g in sim.gateways if g.alive]
            for g in gws:
                g.router.inject_downlink(fb, now_us // 1000)
                sim.service(g, now_us)
        self.schedule(now_us)

    def _route(self, node_id, fb, now_us, retry=False):
        """Send one resend request down the source route compiled from the reported parents
        (RPL non-storing mode); False (the caller floods) when no path is known or its gateway
        is down (counted as a fallback), or on a retry down the path already tried."""
        sim = self.sim
        r, why = self.routes.choose(node_id, {g.id for g in sim.gateways}, self._online, retry)
        if why == "fallback":
            self.route_fallbacks += 1
        elif why == "rerouted":
            self.route_retries_rerouted += 1
        if r is None:
            return False
        g = sim.by_id[r[0]]
        inject_routed(g.router, encode(Routed(path=r[1], at=0, cmd=fb), sim.mesh_hmac), now_us // 1000)
        sim.service(g, now_us)
        self.routed += 1
        return True

    # ---- figures ----------------------------------------------------------------------------------

    def delivery(self, apps, until_us, ids=None):
        """(made, first pass, after repair) counts over readings created before until_us."""
        made = fp_n = all_n = 0
        for nid, app in apps.items():
            if ids is not None and nid not in ids:
                continue
            got = self.got.get(nid, ())
            fp = self.first_pass.get(nid, b"")
            ng = len(got)
            for s, c in enumerate(app.created):
                if c < 0 or c > until_us:
                    continue
                made += 1
                if s < ng and got[s]:
                    all_n += 1
                    if fp[s]:
                        fp_n += 1
        return made, fp_n, all_n
