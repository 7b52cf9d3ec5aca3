# firmware/app.py NodeApp, the node's application core, on the real router, ring and counters
# (flash in a temp dir): uplink with in-flight tracking, "sent" outcomes, a command's checks
# (tag, other epoch's key, replay, another node's), resend answers (firmware/node_cmd.py),
# replies and status reports - every frame encoded once and checked end to end by decode.
# Runs under CPython (pytest) and MicroPython (tests/mp_run.py).
from flashfakes import rmtree, tmpdir

import protocol
from firmware import node_cmd
from firmware.app import MAX_IN_FLIGHT, NodeApp
from firmware.counters import Counters
from firmware.fsutil import PosixFS
from firmware.mesh import Router
from firmware.ring import ReadingRing
from protocol.auth import Hmac, ReplayWindow

MESH = Hmac(b"m" * 32)
NODE = Hmac(b"n" * 32)
OTHER = Hmac(b"o" * 32)
T0 = 1795000000


class Agg:
    def __init__(self, i):
        self.pm1, self.pm25, self.pm10, self.rh, self.temp, self.n, self.flags = i, 100 + i, 200, 50, 215, 60, 0


class App(NodeApp):
    def __init__(self, d, node_id, gateway):
        fs = PosixFS(d)
        self.node_id = node_id
        self.router = Router(node_id, bytes((2, 0, 0, 0, 0, node_id)), gateway, MESH)
        self.counters = Counters(fs, "counters.bin")
        self.ring = ReadingRing(fs, "ring", counters=self.counters)
        self.mesh_hmac = MESH
        self.node_hmac = NODE
        self.fleet_pub = b"\0" * 32
        self.cmd_window = ReplayWindow(32)
        self.app_init()
        self.now = 1000
        self.wall = T0
        self.woken = 0

    def now_ms(self):
        return self.now

    def wall_s(self, now=None):
        return self.wall

    def woke(self):
        self.woken += 1

    def events(self):
        out = []
        ev = self.router.poll_event()
        while ev is not None:
            out.append(ev)
            ev = self.router.poll_event()
        return out


def _ups(evs):
    return [protocol.decode(e[1], MESH, NODE) for e in evs if e[0] == "uplink"]


def test_uplink_in_flight_and_sent():
    d = tmpdir("app")
    try:
        a = App(d, 7, True)  # a gateway: a frame it originates is uplinked at once
        assert a.poll_uplink(a.now) is None  # nothing held
        for i in range(30):
            a.ring.append(T0 - 100 + i, Agg(i))
        a.wall = 0
        assert a.poll_uplink(a.now) is None  # no wall time: nothing leaves
        a.wall = T0
        first = a.poll_uplink(a.now)
        assert first == (0, protocol.MAX_READINGS - 1) and a.woken == 1
        second = a.poll_uplink(a.now)  # the next readings, after those in flight
        assert second == (protocol.MAX_READINGS, 2 * protocol.MAX_READINGS - 1)
        assert len(a.in_flight) == MAX_IN_FLIGHT and a.poll_uplink(a.now) is None
        evs = a.events()
        ups = _ups(evs)  # end-to-end tags checked; a gateway's own frame: hop 0, cost 0
        assert [(f.seq, len(f.readings), f.hops, f.cost, f.time_s) for f in ups] == [
            (0, 12, 0, 0, T0), (12, 12, 0, 0, T0)]
        assert ups[0].readings[3].pm25 == 103 and ups[0].readings[3].dt_s == 97
        sent = [e for e in evs if e[0] == "sent"]
        assert len(sent) == 2 and all(e[2] for e in sent)
        assert a.on_sent(sent[1][1], False) == second  # failed: stays unsent
        assert a.on_sent(sent[0][1], True) == first and a.on_sent(sent[0][1], True) is None
        assert a.ring.pending(1)[0][0] == 12 and a.ring.backlog() == 18
    finally:
        rmtree(d)


def test_a_failed_frame_is_retried_with_its_readings_and_no_more():
    """A failed send may be a lost ACK: the frame arrived, and the routers drop another frame
    from its first seq as a copy (ACKing it). So the retry must not carry newer readings too:
    they would be marked sent and never arrive."""
    d = tmpdir("app")
    try:
        a = App(d, 7, True)
        for i in range(3):
            a.ring.append(T0 - 100 + i, Agg(i))
        assert a.poll_uplink(a.now) == (0, 2)
        tok = [e for e in a.events() if e[0] == "sent"][0][1]
        for i in range(3, 8):  # newer readings, made while the outcome was awaited
            a.ring.append(T0 - 100 + i, Agg(i))
        assert a.on_sent(tok, False) == (0, 2)
        assert a.poll_uplink(a.now) == (0, 2)  # the same readings, not 0..7
        assert a.poll_uplink(a.now) == (3, 7)  # the newer ones in a frame of their own
        assert a.caps == {}
        for t in range(10, 10 + 2 * 5, 2):  # failures pile up: at most _MAX_CAPS remembered
            a.in_flight[t] = (t, t + 1)
            a.on_sent(t, False)
        assert sorted(a.caps) == [12, 14, 16, 18]
    finally:
        rmtree(d)


def test_no_route_no_uplink():
    d = tmpdir("app")
    try:
        a = App(d, 8, False)  # a node that has heard no parent
        a.ring.append(T0, Agg(1))
        assert a.poll_uplink(a.now) is None and a.in_flight == {}
    finally:
        rmtree(d)


def _cmd(target, cseq, key, op=protocol.OP_PING, args=None):
    c = protocol.Command(target=target, cseq=cseq, op=op, args=args or [1])
    return protocol.decode(protocol.encode(c, MESH, key), MESH)


def test_command_checks():
    d = tmpdir("app")
    try:
        a = App(d, 9, True)
        assert a.accept_command(_cmd(9, 5, NODE)) is None
        assert a.counters.peek("cseq") >= 5  # seen, across a reboot too
        assert a.accept_command(_cmd(9, 5, NODE)) == "replayed"
        assert a.accept_command(_cmd(9, 6, OTHER)) == "bad tag"
        assert a.accept_command(_cmd(10, 7, NODE)) == ""  # another node's: not ours to log
        a._nk_oth = OTHER  # mid-rotation: the other epoch's node key is accepted too
        assert a.accept_command(_cmd(9, 8, OTHER)) is None
        sig = protocol.Command(target=0, cseq=9, op=protocol.OP_PING, args=[1], auth=b"\0" * 64)
        assert a.accept_command(protocol.decode(protocol.encode(sig, MESH), MESH)) == "bad fleet signature"
    finally:
        rmtree(d)


def test_resend_reply_and_status():
    d = tmpdir("app")
    try:
        a = App(d, 11, True)
        for i in range(20):
            a.ring.append(T0 - 100 + i, Agg(i))
        code, result, frames = node_cmd.resend(a, 2, 30)
        assert (code, result, frames) == (0, [2, 19], 2)
        assert node_cmd.resend(a, 25, 30)[:2] == (3, [25, 30, "ahead"])
        # 2..19 of 2..30 is all there is (19 is the newest): the readings answer, no Reply
        assert node_cmd.answered(a, 2, 30, code, result)
        assert not node_cmd.answered(a, 1, 30, code, result)  # 1 no longer held: the Reply says so
        assert not node_cmd.answered(a, 2, 30, 3, [2, 30, "ahead"])
        a.send_reply(77, code, result)
        tok = a.send_status_body(protocol.StatusBody(fw_version="1.0", parent=0, epoch=0), probe=True)
        assert tok is not None and a.last_status_ms == a.now and a.parent_report_ms is None
        ups = _ups(a.events())
        assert [f.type for f in ups] == [protocol.T_TELEMETRY, protocol.T_TELEMETRY, protocol.T_REPLY,
                                         protocol.T_STATUS]
        assert [(f.seq, len(f.readings)) for f in ups[:2]] == [(2, 12), (14, 6)]
        assert (ups[2].cseq, ups[2].code, ups[2].result) == (77, 0, [2, 19])
        assert ups[3].body.fw_version == "1.0" and ups[2].seq == 0 and ups[3].seq == 0
    finally:
        rmtree(d)
