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

Fleet side (`FleetLink`): no collector of its own. The gateways publish what their routers
hand up as firmware/gateway.py does, and the real collector core, fleet.collector.Ingest over an
in-memory store, on the simulator's clock, verifies, stores, tracks gaps (fleet/repair.py), compiles
source routes from the parents in status reports and issues the resend requests - down a source
route, or flooded and scoped as it decides; its downlink messages reach the gateways' routers
through firmware/gateway.py's own inject. `Measure` only measures (arrival times, first pass or
repaired, latency, hops, the gateway each node is heard through), fed by Ingest with what it
accepts. Both are real at every size: no repair is estimated.
"""
from firmware import node_cmd
from firmware.app import MAX_IN_FLIGHT, NodeApp
from firmware.counters import DEFAULT_BLOCK
from firmware.node import UNSTAMPED_MAX, UPLINK_POLL_MS
from firmware.ring import AHEAD, DEFAULT_RAM, DEFAULT_UNSENT_SPILL, LOST
from fleet.repair import RepairConfig
from protocol import OP_RESEND, T_ROUTED, StatusBody
from protocol.auth import ReplayWindow

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

    def newest_seq(self):
        """The newest reading held, or None (`held` is in seq order; a power cut pops the newest)."""
        return next(reversed(self.held), None)

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
                resent = self.sim.measure.resent_of(self.node_id)
                for s in self._held_in(result[0], result[1]):
                    resent.add(s)
                if node_cmd.answered(self, cmd.args[0], cmd.args[1], code, result):
                    return  # the readings are the answer
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


class DesKeys:
    """The fleet's keys as the collector asks for them (fleet.keys.Keystore's mesh_key() and
    node_key()): the mesh key and each node's key, derived once by the simulator from its fleet
    secret, as the fleet derives them (protocol.auth)."""

    def __init__(self, mesh_key, node_keys):
        self._mesh_key = mesh_key
        self._node_keys = node_keys  # node id -> key bytes

    def mesh_key(self):
        return self._mesh_key

    def node_key(self, node_id):
        """Node `node_id`'s key. Raises KeyError for a node the simulation does not have (the
        collector asks only for registered nodes)."""
        return self._node_keys[node_id]


class Measure:
    """The simulator's measurements at the fleet side - not a collector: the collector is
    fleet.collector.Ingest (FleetLink below), which feeds this through its on_readings hook with
    every telemetry frame it accepts, as it accepts it. Kept here: when each reading first arrived
    (virtual us), whether it came on the first pass or was resent for a request (the nodes' truth:
    `resent`, filled by DesApp.on_command), latency, age and repair latency, the hop histogram
    (frames that brought a new reading), the gateway each node was last heard through, and each
    node's last hop count."""

    def __init__(self, sim):
        self.sim = sim
        self.got = {}  # node id -> list: arrival time (us) by seq, 0 = not (yet)
        self.first_pass = {}  # node id -> bytearray: 1 = arrived without a resend
        self.resent = {}  # node id -> seqs re-originated for a resend request
        self.latency_us = []  # first arrivals of first-pass readings: since first originated
        self.age_us = []  # ...and since the reading was made
        self.repair_latency_us = []
        self.hops = {}  # hops -> telemetry frames (first arrival of their first reading)
        self.via = {}  # node id -> gateway that last delivered its readings
        self.last_hops = {}  # node id -> hop count of its newest telemetry frame at a gateway
        # the denominator of tx_per_gap_hop: per gap's first request (or overdue probe), the hop
        # count of the node's path when the repair went - that of its first frame to arrive after
        # the request (a request goes down, and the readings come up, the path in use then; after
        # a gateway died it is longer than the one the last reading before the gap took), or, if
        # none arrives, of its last frame before
        self.first_request_hops = 0
        self.hops_pending = {}  # node id -> requests waiting for the node's next frame

    def resent_of(self, node_id):
        s = self.resent.get(node_id)
        if s is None:
            s = self.resent[node_id] = set()
        return s

    def on_readings(self, node, first, last, gw, hops, now_s):
        """Ingest.on_readings: readings first..last of `node` accepted through gateway `gw`."""
        now_us = self.sim.now_us  # the exact virtual time (now_s is the same, in seconds)
        self.last_hops[node] = hops
        if node in self.hops_pending:
            self.first_request_hops += hops * self.hops_pending.pop(node)
        app = self.sim.apps[node]
        created = app.created
        first_orig = app.first_orig
        got = self.got.get(node)
        if got is None:
            got = self.got[node] = []
            self.first_pass[node] = bytearray()
        fp = self.first_pass[node]
        resent = self.resent.get(node)
        if len(got) <= last:
            got.extend([0] * (last + 1 - len(got)))
            fp.extend(bytes(last + 1 - len(fp)))
        new = False
        for s in range(first, last + 1):
            if got[s]:
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
        self.via[node] = gw

    def on_requests(self, reqs):
        """Resend requests the collector just issued (fleet.repair.Request): a gap's first request
        or an overdue probe waits for the hop count of its node's next frame (first_request_hops)."""
        pending = self.hops_pending
        for req in reqs:
            if req.gap is None or req.gap.requests == 1:
                pending[req.node] = pending.get(req.node, 0) + 1

    def request_hops(self):
        """first_request_hops, the requests whose node sent nothing after counted at its last hop count."""
        last = self.last_hops
        return self.first_request_hops + sum(last.get(n, 0) * k for n, k in self.hops_pending.items())

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


class FleetLink:
    """The fleet side of the simulation: the MQTT broker between the gateways and the collector,
    and the collector itself - fleet.collector.Ingest, the real one, over an in-memory
    SQLiteStore, on the simulator's clock (now_s = virtual us / 1e6, never wall time).

    - Uplink: every frame a gateway's router hands up (its "uplink" event) goes to the collector
      at once as the one item of an uplink envelope (receive time in unix ms by the gateway's
      clock, RSSI, the frame: what firmware/gateway.py publishes on redmesh/<net>/up/<gw>),
      through Ingest.on_envelope: the MQTT payload's encoding and decoding are skipped (~20 us
      a frame in pure Python, about what the collector's own work costs; tests/test_collector.py
      holds on_envelope to on_message). The gateway's
      batching of up to BATCH_MS is not modelled: it would only delay what the collector sees.
    - Gateway state: "online" on redmesh/<net>/state/<gw> for every gateway at the start,
      "offline" the moment one dies (its MQTT last will; the broker's keepalive wait before
      sending it is not modelled).
    - Downlink: Ingest.poll() runs at Ingest.next_deadline_s(); each (topic, payload) it returns
      goes to the gateway the topic names, or to every gateway for redmesh/<net>/down/all (a
      dead gateway gets nothing), where firmware/gateway.py's own downlink_frames and inject
      hand the frames to its router: routed frames down their source route, commands flooded.
    - Batches: the collector's own batching, flushed every FLUSH_INTERVAL_S of virtual time
      (or its batch_rows): the store's write cost is then one transaction a virtual minute
      (and one per resend request, for its command counter), and nothing in the simulation
      waits for a flush (gap tracking is in memory).

    Counted here, as a broker would see them: routed (Routed frames published), flooded_all
    (commands published to every gateway: in route mode, retries flooded)."""

    FLUSH_INTERVAL_S = 60.0

    def __init__(self, sim, keys, repair_mode="route", repair_config=None):
        from fleet.collector import CollectorConfig, Ingest
        from fleet.store import SQLiteStore
        from protocol.envelope import downlink_topic, state_topic

        self.sim = sim
        self.net_id = net = sim.net_id
        self.store = SQLiteStore(":memory:")
        self.store.register_nodes([{"node": n.id, "mac": n.mac.hex(), "role": "gateway" if n.is_gateway else "node"}
                                   for n in sim.nodes])
        cfg = CollectorConfig(flush_interval_s=self.FLUSH_INTERVAL_S, route_commands=repair_mode == "route",
                              repair=repair_config or RepairConfig(),
                              mesh_ttl=(sim.opt.mesh_params or {}).get("max_hops"))
        self.ingest = Ingest(self.store, keys, net, now_fn=self.now_s, config=cfg)
        self.measure = Measure(sim)
        self.ingest.on_readings = self.measure.on_readings
        self._down = {downlink_topic(net, g.id): [g] for g in sim.gateways}
        self._down[downlink_topic(net)] = sim.gateways
        self._down_all = downlink_topic(net)
        self._state_topic = state_topic
        self.poll_at = None
        self.routed = 0
        self.flooded_all = 0
        self.messages_down = 0

    def now_s(self):
        return self.sim.now_us / 1e6

    def start(self):
        """The gateways come online (their retained state)."""
        for g in self.sim.gateways:
            self.gateway_state(g, True, 0)

    def gateway_state(self, gw, online, now_us):
        """Gateway `gw` (a SimNode) went online, or offline (its last will)."""
        self.ingest.on_message(self._state_topic(self.net_id, gw.id), b"online" if online else b"offline",
                               now_us / 1e6)

    def on_uplink(self, gw, data, rssi, now_us):
        """A gateway router's ("uplink", data, rssi, hops): handed to the collector as the item of
        an uplink envelope (receive time by the gateway's clock, RSSI as the gateway clamps it)."""
        rx_ms = gw.router.wall_time_ms(now_us // 1000)
        self.ingest.on_envelope(gw.id, ((rx_ms, -128 if rssi < -128 else 0 if rssi > 0 else rssi, data),),
                                now_us / 1e6)
        self.schedule(now_us)

    def schedule(self, now_us):
        """Make sure a poll is queued for the collector's next deadline."""
        t = max(int(self.ingest.next_deadline_s() * 1e6), now_us + 1)
        if self.poll_at is not None and now_us < self.poll_at <= t:
            return
        self.poll_at = t
        self.sim.at(t, self.poll)

    def poll(self, now_us):
        """Ingest.poll(): flush when due, resend requests out to the gateways."""
        if self.poll_at is not None and now_us < self.poll_at:
            return
        self.poll_at = None
        tr = self.ingest.tracker
        sent = tr.requests_sent + tr.probes_sent
        out = self.ingest.poll(now_us / 1e6)
        if tr.requests_sent + tr.probes_sent != sent:
            self.measure.on_requests(r for r in tr.outstanding.values() if r.sent_s == now_us / 1e6)
        for topic, payload in out:
            self.publish_down(topic, payload, now_us)
        self.schedule(now_us)

    def publish_down(self, topic, payload, now_us):
        """One downlink message to the gateways subscribed to `topic` (those alive)."""
        from firmware.gateway import downlink_frames, inject

        frames = downlink_frames(payload)
        self.messages_down += 1
        routed = sum(1 for fb in frames if fb[2] == T_ROUTED)
        self.routed += routed
        if topic == self._down_all:
            self.flooded_all += len(frames) - routed
        sim = self.sim
        for g in self._down.get(topic, ()):
            if g.alive:
                inject(g.router, frames, now_us // 1000)
                sim.service(g, now_us)

    def finish(self, now_us):
        """Flush what the collector holds into the store (the end of the run)."""
        self.ingest.flush(now_us / 1e6)
