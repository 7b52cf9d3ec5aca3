# Protocol tests that run unchanged on CPython (pytest) and MicroPython (tests/mp_run.py).
from vectors import head, unhex

import protocol as P
from protocol import auth
from protocol.frames_ota import OtaData
from protocol.routed import MAX_ROUTE, Routed

_KEYS = head("frames.json")["keys"]
MESH = auth.Hmac(unhex(_KEYS["mesh_key"]))
NODE = unhex(_KEYS["node_key"])


def _telemetry(n_readings=1):
    rs = [P.Reading(60 * i, 123, 187, 254, 64, 215, 30, 0) for i in range(n_readings)]
    return P.Telemetry(origin=1234, seq=5000, time_s=1795000000, readings=rs, hops=3, cost=57)


def _one(origin, seq, pm, rh=64, cost=57):
    r = P.Reading(0, pm[0], pm[1], pm[2], rh, 215, 30, 0)
    return len(P.encode(P.Telemetry(origin=origin, seq=seq, time_s=1795000000, readings=[r], hops=3, cost=cost),
                        MESH, NODE))


def test_size_budgets():
    # telemetry with one reading, mesh header and both tags. The budget is 48 bytes; CBOR sizes
    # grow with the values, so the figure depends on them (documented in protocol/redmesh.cddl):
    # a first-phase node (id and seq < 65,536) in clean air (PM < 25.6 ug/m3): 47 bytes
    assert _one(1234, 5000, (123, 187, 254)) <= 48
    # ... in polluted air (PM >= 25.6 ug/m3: 3-byte values): 50
    assert _one(1234, 5000, (300, 450, 600)) <= 50
    # ... after 65,536 readings (227 days at 300 s: a 5-byte seq) and with a 100k-node id: 55
    assert _one(100000, 70000, (300, 450, 600), rh=90, cost=300) <= 56
    # worst-case ids, counters, values still fit
    worst = P.Telemetry(origin=0xFFFFFFFF, seq=0xFFFFFFF0, time_s=0xFFFFFFFF, hops=255, cost=0xFFFF,
                        readings=[P.Reading(0, 9999, 9999, 9999, 100, -400, 600, 0xFFFF)])
    assert len(P.encode(worst, MESH, NODE)) <= 64
    b = P.encode(P.Beacon(src=0xFFFFFFFF, bseq=255, cost=0xFFFF, depth=255, time_s=0xFFFFFFFF, flags=255), MESH)
    assert len(b) <= 32
    d = P.encode(OtaData(src=0xFFFFFFFF, bseq=0xFFFFFFFF, page=0xFFFF, pkt=15, data=bytes(P.OTA_PKT_MAX)), MESH)
    assert P.OTA_PKT_MAX >= 200 and len(d) <= P.MAX_FRAME
    # status: 63 bytes for a first-phase node with a few radio drops; every field at its
    # widest (16-byte version, u32 maxima) 117, so the two counters added after firmware 1.0
    # (10 bytes at worst) keep it under half a radio frame
    st = P.Status(origin=1234, seq=7, time_s=1795000000, hops=2, cost=45, body=P.StatusBody(
        fw_seq=3, fw_version="1.2.0", uptime_s=86400, heap_free=51234, heap_min=40110, parent=1200,
        link_etx=12, path_cost=45, rssi=-71, boot_count=4, radio_drops=3, readings_lost=0))
    assert len(P.encode(st, MESH, NODE)) <= 64
    u = 0xFFFFFFFF
    st = P.Status(origin=u, seq=u, time_s=u, hops=255, cost=0xFFFF, body=P.StatusBody(
        fw_seq=u, fw_version="x" * 16, uptime_s=u, heap_free=u, heap_min=u, backlog=u, parent=u, link_etx=0xFFFF,
        path_cost=0xFFFF, rssi=-128, boot_count=u, ota_state=255, ota_progress=100, errors=u, radio_drops=u,
        readings_lost=u))
    assert len(P.encode(st, MESH, NODE)) <= 125
    # the most readings one frame can hold fit the radio
    assert len(P.encode(_telemetry(P.MAX_READINGS), MESH, NODE)) <= P.MAX_FRAME


def test_forwarder_rewrites_hops_and_keeps_e2e_tag():
    b = P.encode(_telemetry(), MESH, NODE)
    f = P.decode(b, MESH)
    f.hops += 1
    f.cost = 40
    b2 = P.encode(f, MESH)
    g = P.decode(b2, MESH, NODE)  # end-to-end tag still valid
    assert g.hops == 4 and g.cost == 40 and g.etag == f.etag


def test_e2e_tag_binds_the_readings():
    f = P.decode(P.encode(_telemetry(), MESH, NODE), MESH)
    f.readings[0].pm25 += 1
    b = P.encode(f, MESH)  # keeps the old etag: a tampering forwarder
    try:
        P.decode(b, MESH, NODE)
    except P.ProtocolError as e:
        assert "end-to-end tag mismatch" in str(e)
    else:
        raise AssertionError("tampered reading accepted")


def test_encode_leaves_its_argument_alone_and_at_origin_fits_any_hops():
    f = _telemetry()
    before = (f.hops, f.cost, f.etag, f.phase)
    a = P.encode(f, MESH, NODE)
    assert (f.hops, f.cost, f.etag, f.phase) == before and P.encode(f, MESH, NODE) == a
    c = P.Command(target=5, cseq=9, op=P.OP_PING, args=[1])
    P.encode(c, MESH, NODE)
    assert c.auth is None
    # at the origin: hops and cost at the largest a forwarder writes, whatever the frame holds
    b = P.encode(f, MESH, NODE, at_origin=True)
    g = P.decode(b, MESH, NODE)
    assert (g.hops, g.cost) == (0xFF, P.COST_INFINITE) and g.readings == f.readings
    assert (f.hops, f.cost, f.etag) == before[:3]
    for hops, cost in ((0, 0), (1, 30), (254, 0xFFFE), (0xFF, P.COST_INFINITE)):  # the splice never grows it
        g.hops, g.cost = hops, cost
        assert len(P.encode(g, MESH)) <= len(b)
    assert P.encode(g, MESH) == b  # and at the largest, the same bytes


def test_node_key_lookup_callable_and_unknown_node():
    b = P.encode(_telemetry(), MESH, NODE)
    assert P.decode(b, MESH, lambda origin: NODE if origin == 1234 else None).origin == 1234
    try:
        P.decode(b, MESH, lambda origin: None)
    except P.ProtocolError as e:
        assert "unknown node 1234" in str(e)
    else:
        raise AssertionError("unknown node accepted")


def test_command_hmac_auth_and_wrong_key():
    c = P.Command(target=1234, cseq=9, op=P.OP_RESEND, args=[1, 5])
    b = P.encode(c, MESH, NODE)
    assert P.decode(b, MESH, NODE).args == [1, 5]
    try:
        P.decode(b, MESH, bytes(32))
    except P.ProtocolError as e:
        assert "command auth mismatch" in str(e)
    else:
        raise AssertionError("command with a wrong key accepted")


def test_encode_refuses_out_of_range_fields():
    bad = [
        P.Beacon(src=-1, bseq=0, cost=0, depth=0, time_s=0, flags=0),
        P.Telemetry(origin=1, seq=1, time_s=1, readings=[P.Reading(pm25=70000)]),
        P.Telemetry(origin=1, seq=1, time_s=1, readings=[]),
        OtaData(src=1, bseq=1, page=1, pkt=0, data=bytes(225)),
    ]
    for f in bad:
        try:  # a caller's misuse is a ValueError; ProtocolError is for a peer's bad bytes
            P.encode(f, MESH, NODE)
        except ValueError:
            pass
        else:
            raise AssertionError("encoded an invalid frame: %r" % f)


def test_a_downlink_of_routed_commands_longer_than_a_radio_frame_decodes():
    """A downlink (MQTT, fleet -> gateway) carries several air frames: bounded by MAX_ENVELOPE,
    not by the radio's 250 bytes. The gateway refused every downlink over 250 bytes (8 routed
    resend requests: 332) and the commands in it were lost."""
    from protocol.envelope import Downlink

    frames = []
    for i in range(8):
        cmd = P.encode(P.Command(target=1234 + i, cseq=9, op=P.OP_RESEND, args=[1, 5]), MESH, NODE)
        frames.append(P.encode(Routed(path=[1100, 1200, 1234 + i], at=0, cmd=cmd), MESH))
    b = P.encode(Downlink(frames))
    assert len(b) > P.MAX_FRAME
    back = P.decode(b)
    assert back.type == P.T_DOWNLINK and back.frames == frames


def test_routed_command_roundtrip_and_limits():
    cmd = P.encode(P.Command(target=1234, cseq=9, op=P.OP_RESEND, args=[1, 5]), MESH, NODE)
    r = Routed(path=[1100, 1200, 1234], at=1, cmd=cmd)
    b = P.encode(r, MESH)
    back = P.decode(b, MESH)
    assert back == r and P.TYPE_NAMES[P.peek_type(b)] == "routed"
    # the inner command is a whole frame: it decodes and authenticates on its own
    assert P.decode(back.cmd, MESH, NODE).target == 1234
    # the longest route of ids below 65,536 with a command fits the radio, and 32 of the largest ids
    assert len(P.encode(Routed(path=[0xFFFF] * MAX_ROUTE, at=MAX_ROUTE - 1, cmd=cmd), MESH)) <= P.MAX_FRAME
    assert len(P.encode(Routed(path=[0xFFFFFFFF] * 32, at=31, cmd=cmd), MESH)) <= P.MAX_FRAME
    # a frame that fits at its first hop but not at its last (`at` takes a byte more from 24 on)
    # is refused: a relay could not send it. Commands one byte longer each, down 30 hops:
    sizes = []
    for k in range(24, 33):
        big = P.encode(P.Command(target=1234, cseq=9, op=P.OP_SET, args=["x" * k, "y" * 32]), MESH, NODE)
        try:
            sizes.append(len(P.encode(Routed(path=[0xFFFFFFFF] * 30, at=0, cmd=big), MESH)))
        except ValueError as e:
            assert "last hop" in str(e)
            break
    assert sizes[-1] == P.MAX_FRAME - 1 and len(sizes) < 9  # 250 at its first hop: refused
    for bad in (Routed(path=[], at=0, cmd=cmd), Routed(path=[1, 2], at=2, cmd=cmd),
                Routed(path=[0], at=0, cmd=cmd), Routed(path=[1] * (MAX_ROUTE + 1), at=0, cmd=cmd)):
        try:
            P.encode(bad, MESH)
        except ValueError:
            pass
        else:
            raise AssertionError("encoded %r" % (bad,))
    try:
        P.decode(b[:-1] + bytes([b[-1] ^ 1]), MESH)
    except P.ProtocolError as e:
        assert "hop tag" in str(e)
    else:
        raise AssertionError("routed frame with a bad hop tag accepted")


def test_compile_path_from_reported_parents():
    from protocol.routed import compile_path
    parents = {5: 4, 4: 3, 3: 1, 7: 6, 6: 7, 8: 0, 9: 2}
    assert compile_path(parents, 5, {1, 2}) == (1, [3, 4, 5])
    assert compile_path(parents, 9, {1, 2}) == (2, [9])
    assert compile_path(parents, 7, {1, 2}) is None  # a loop
    assert compile_path(parents, 8, {1, 2}) is None  # no parent reported
    assert compile_path(parents, 42, {1, 2}) is None  # never heard of
    chain = {i + 1: i for i in range(1, MAX_ROUTE + 1)}  # 1 <- 2 <- ... <- MAX_ROUTE + 1
    assert compile_path(chain, MAX_ROUTE + 1, {1}) == (1, list(range(2, MAX_ROUTE + 2)))
    chain[MAX_ROUTE + 2] = MAX_ROUTE + 1
    assert compile_path(chain, MAX_ROUTE + 2, {1}) is None  # too long for one frame
