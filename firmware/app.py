"""A node's application core (sans-IO): what a node does between its ring of readings and its
router - the uplink of readings with their in-flight tracking, a command's authentication and
replay check, replies and status reports. No clock, no radio, no asyncio: time comes from the
subclass's now_ms()/wall_s(), bytes go to the router.

One implementation, three drivers:
- firmware/node.py `Node(NodeApp)`: the asyncio shell on a board or the virtual rig (HAL, tasks);
- fleet/sim/_des_app.py `DesApp(NodeApp)`: the discrete-event simulator's nodes (a ring of
  dicts with the ReadingRing methods used here);
- tests/device/test_app.py: the same methods on the real router, ring and counters, on both
  interpreters.
A subclass is a shell (a class, not a wrapper object: a node's heap keeps no second object) and
sets, before the first call: node_id; router (firmware.mesh.Router); ring (pending, mark_sent;
get_range and gaps for firmware/node_cmd.py resend); counters (next(name), set_min(name, v):
firmware/counters.py); mesh_hmac, node_hmac (protocol.auth.Hmac); fleet_pub (Ed25519 key of
fleet-signed commands); cmd_window (protocol.auth.ReplayWindow); and calls app_init(). It
provides now_ms() and wall_s(now_ms=None) (0 while wall time is unknown) and may override
woke() (called when there is something for the radio to send).

Inputs:  poll_uplink(now) · on_sent(token, ok) · accept_command(cmd) · send_reply(cseq, code,
         result) · make_reply(...) / send_own(data) · send_status_body(body, probe, ask)
Outputs: frames handed to router.originate / broadcast_own, each encoded once
         (ring.build_telemetry, protocol.encode at_origin)
"""
# pyright: reportAttributeAccessIssue=false
# (the attributes and the clock above come from the subclass: class annotations for them would
# cost a module-level import of each type on the board, for the type checker alone)
from firmware.ring import build_telemetry
from protocol import MAX_READINGS, Reply, Status, auth, encode, signed_bytes

MAX_IN_FLIGHT = 2  # telemetry frames whose first hop is not yet settled
_MAX_CAPS = 4  # failed frames whose range a retry keeps (see on_sent)


class NodeApp:
    _nk_oth = None  # mid-rotation: the other epoch's node key (firmware/rekey.py node_op)

    def app_init(self):
        self.in_flight = {}  # app token -> (first seq, last seq)
        self.caps = {}  # first seq -> last seq of a frame reported failed: its retry ends there too
        self.next_token = 1

    def woke(self):
        pass

    def poll_uplink(self, now):
        """Originate the next readings while a route exists and fewer than MAX_IN_FLIGHT frames
        are in flight: the oldest unsent ones after those in flight, consecutive, one frame.
        Returns (first seq, last seq) of the frame originated, or None."""
        if not self.router.has_route() or len(self.in_flight) >= MAX_IN_FLIGHT:
            return None
        wall = self.wall_s(now)
        if not wall:
            # A frame's readings are times relative to its time_s; with time_s 0 the collector
            # would stamp a backlog (from before a reboot) with its arrival time.
            return None
        after = None
        for first_last in self.in_flight.values():
            if after is None or first_last[1] > after:
                after = first_last[1]
        pending = self.ring.pending(MAX_READINGS, after_seq=after)
        if not pending:
            return None
        seq = pending[0][0]
        cap = self.caps.pop(seq, None)
        if cap is not None and cap - seq + 1 < len(pending):
            pending = pending[:cap - seq + 1]
        made = build_telemetry(self.node_id, pending, wall, self.mesh_hmac, self.node_hmac)
        token = self.next_token
        self.next_token += 1
        first_last = (seq, seq + made[1] - 1)
        self.in_flight[token] = first_last
        self.router.originate(made[0], now, token)
        self.woke()
        return first_last

    def on_sent(self, token, ok):
        """The router's ("sent", token, ok) for a telemetry frame: its readings are sent when ok
        (else they stay unsent: the next poll sends them again, and no further). Returns (first,
        last) or None when the token is not one of ours.

        A failure may be a lost ACK of a frame that arrived; every router on the way then
        remembers (origin, first seq) and drops another frame starting there as a copy, ACKing
        it. A retry that carried newer readings too would have them marked sent and lost, so
        the retry of a failed frame carries its readings and no more (caps)."""
        first_last = self.in_flight.pop(token, None)
        if first_last is not None:
            if ok:
                self.ring.mark_sent(first_last[0], first_last[1])
            else:
                caps = self.caps
                if len(caps) >= _MAX_CAPS:
                    del caps[min(caps)]  # the oldest: its readings went (or aged) out long ago
                caps[first_last[0]] = first_last[1]
        return first_last

    def accept_command(self, cmd):
        """None when `cmd` is for this node (or every node), authentic and new (its cseq then
        counts as seen, across reboots); else why it is refused ("" when it is for another
        node: not ours to log)."""
        if cmd.target == 0:
            from firmware.compat import verify_signature  # Ed25519: loaded for this check only

            if not verify_signature(self.fleet_pub, signed_bytes(cmd), cmd.auth):
                return "bad fleet signature"
        elif cmd.target != self.node_id:
            return ""
        else:
            sb = signed_bytes(cmd)
            o = self._nk_oth  # mid-rotation: the fleet may still use the other epoch's node key
            if not auth.ct_equal(self.node_hmac.tag(sb, auth.E2E_TAG_LEN), cmd.auth) and (
                    o is None or not auth.ct_equal(o.tag(sb, auth.E2E_TAG_LEN), cmd.auth)):
                return "bad tag"
        if self.cmd_window.accept(cmd.cseq) != auth.NEW:
            return "replayed"
        self.counters.set_min("cseq", cmd.cseq)
        return None

    def make_reply(self, cseq, code, result):
        """The bytes of a new Reply frame (result: up to 8 ints or texts of <= 32 bytes), its
        reply seq taken; send_own() sends them, as often as needed (the fleet keeps one copy of
        a reply seq)."""
        f = Reply(origin=self.node_id, seq=self.counters.next("reply"), time_s=self.wall_s(self.now_ms()),
                  cseq=cseq, code=code, result=result)
        return encode(f, self.mesh_hmac, self.node_hmac, at_origin=True)

    def send_reply(self, cseq, code, result):
        """Originate a Reply frame (make_reply), once."""
        self.router.originate(self.make_reply(cseq, code, result), self.now_ms(), None)
        self.woke()

    def send_own(self, data):
        """Send an uplink frame this node made (make_reply's bytes), again if need be; returns the app token
        of its ("sent", token, ok) outcome."""
        token = self.next_token
        self.next_token += 1
        self.router.originate(data, self.now_ms(), token)
        self.woke()
        return token

    def send_status_body(self, body, probe=False, ask=False):
        """Originate a Status frame carrying `body` (protocol.StatusBody). With probe, it carries
        an app token whose ("sent", token, ok) outcome the caller watches; returns that token
        (else None). With ask (a key request), it is broadcast to every neighbour instead."""
        now = self.now_ms()
        f = Status(origin=self.node_id, seq=self.counters.next("status"), time_s=self.wall_s(now), body=body)
        self.parent_report_ms = None  # this one reports the parent in force
        self.last_status_ms = now
        data = encode(f, self.mesh_hmac, self.node_hmac, at_origin=True)
        r = self.router
        token = None
        if ask and not r.is_gateway:
            r.broadcast_own(data)
        else:
            if probe:
                token = self.next_token
                self.next_token += 1
            r.originate(data, now, token)
        self.woke()
        return token
