# Protocol tests that run unchanged on CPython (pytest) and MicroPython (tests/mp_run.py).
# The in-place scanners (protocol/cbor.py uint_at/skip_items/uint_head, protocol/frames.py
# scan_uplink/scan_beacon/scan_command, protocol/routed_scan.py scan_routed) are the forwarders'
# fast path: held here to decode().
from vectors import head, hexes, unhex

import protocol as P
from protocol import auth
from protocol.cbor import dumps, skip_items, uint_at, uint_head
from protocol.frames import scan_beacon, scan_command, scan_uplink
from protocol.routed import Routed
from protocol.routed_scan import MAX_ROUTE, scan_routed

_KEYS = head("frames.json")["keys"]
MESH = auth.Hmac(unhex(_KEYS["mesh_key"]))
NODE = unhex(_KEYS["node_key"])


def _rng(seed):
    x = seed or 1  # xorshift32: the same numbers on both interpreters
    while True:
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        yield x


def test_uint_at_and_uint_head_agree_with_the_codec():
    for v in (0, 1, 23, 24, 255, 256, 0xFFFF, 0x10000, 0xFFFFFFFF):
        b = dumps(v)
        assert uint_at(b + b"\x00", 0) == (v, len(b)), v
        if v <= 0xFFFF:
            assert uint_head(v) == b, v
    for bad in (b"\x1b" + bytes(8), b"\x20", b"\x40", b"\xf6"):  # 64-bit, negative, bytes, null
        try:
            uint_at(bad, 0)
        except P.ProtocolError:
            pass
        else:
            raise AssertionError("read %r as a small unsigned integer" % bad)


def test_skip_items_lands_where_the_codec_ends_an_item():
    items = [0, 24, 70000, -1, -500, b"", b"x" * 30, "text", [1, [2, 3], b"ab"], {1: 2, "k": [3]}, 1 << 40]
    for it in items:
        b = dumps(it) + b"\xff"
        assert skip_items(b, 0, 1) == len(b) - 1, it
    b = b"".join(dumps(it) for it in items)
    assert skip_items(b, 0, len(items)) == len(b)
    # indefinite length, a float, and the simple values: no frame field a forwarder skips holds them
    for bad in (b"\x9f\x01\xff", b"\xf9\x00\x00", dumps(None), dumps(True)):
        try:
            skip_items(bad, 0, 1)
        except P.ProtocolError:
            pass
        else:
            raise AssertionError("skipped %r" % bad)


def _frames():
    rs = [P.Reading(60 * i, 123 + i, 187, 254, 64, 215, 30, 0) for i in range(3)]
    yield P.Telemetry(origin=1234, seq=5000, time_s=1795000000, readings=rs, hops=3, cost=57)
    yield P.Telemetry(origin=70000, seq=0xFFFFFFF0, time_s=0, readings=rs[:1], hops=255, cost=P.COST_INFINITE)
    yield P.Status(origin=7, seq=9, time_s=1, body=P.StatusBody(fw_version="1.2", uptime_s=3600, epoch=2), hops=0,
                   cost=0)
    yield P.Reply(origin=300, seq=2, time_s=5, cseq=41, code=0, result=[1, 5], hops=7, cost=300)
    yield P.Beacon(src=1234, bseq=200, cost=57, depth=3, time_s=1795000000, flags=P.BF_GATEWAY)
    yield P.Beacon(src=0xFFFFFFFF, bseq=0, cost=P.COST_INFINITE, depth=255, time_s=0, flags=255)
    yield P.Beacon(src=1234, bseq=7, cost=57, depth=3, time_s=1795000000, flags=0, root=2, rseq=0xFFFF)
    yield P.Beacon(src=9, bseq=255, cost=0, depth=0, time_s=0, flags=P.BF_GATEWAY, root=0xFFFFFFFF, rseq=0)
    yield P.Command(target=1234, cseq=9, op=P.OP_RESEND, args=[1, 5], hops=4)
    yield P.Command(target=70000, cseq=70000, op=P.OP_PING, args=[], hops=255)
    cmd = P.encode(P.Command(target=1234, cseq=9, op=P.OP_RESEND, args=[1, 5]), MESH, NODE)
    yield Routed(path=[1100, 70000, 1234], at=1, cmd=cmd)
    yield Routed(path=[0xFFFF - i for i in range(MAX_ROUTE - 1)] + [1234], at=MAX_ROUTE - 1, cmd=cmd)
    yield Routed(path=[0xFFFFFFFF - i for i in range(31)] + [1234], at=31, cmd=cmd)  # the longest of 5-byte ids


def _check(b):
    """Scan `b` with the scanner of its type; compare with decode(). Returns 'same' when both
    accept and agree, 'refused' when decode refuses, else raises. decode without keys: the
    scanners do not check tags either, so a mutated field is compared, not refused by its tag."""
    t = b[2] if len(b) > 2 else -1
    try:
        f = P.decode(b)
    except P.ProtocolError:
        f = None
    scan = {P.T_TELEMETRY: scan_uplink, P.T_STATUS: scan_uplink, P.T_REPLY: scan_uplink,
            P.T_BEACON: scan_beacon, P.T_COMMAND: scan_command, P.T_ROUTED: scan_routed}.get(t)
    if scan is None:
        return "other"
    try:
        got = scan(b)
    except (P.ProtocolError, IndexError):
        got = None
    if f is None:
        return "refused"  # decode refuses more (tags, field ranges): a scanner may read what it then drops
    if f.type != t:
        return "other"
    assert got is not None, ("decode accepted what the scanner refused", bytes(b).hex())
    if t == P.T_BEACON:
        assert got == (f.src, f.bseq, f.cost, f.depth, f.time_s, f.flags, f.root, f.rseq), bytes(b).hex()
    elif t == P.T_COMMAND:
        target, cseq, hops, p_hops, p_auth = got
        assert (target, cseq, hops) == (f.target, f.cseq, f.hops), bytes(b).hex()
        assert uint_at(b, p_hops)[0] == f.hops and b[p_auth] in (0x48, 0x58), bytes(b).hex()
    elif t == P.T_ROUTED:
        path, at, p_at, p_cmd, cmd = got
        assert (path, at, uint_at(b, p_at)[0]) == (f.path, f.at, f.at), bytes(b).hex()
        assert bytes(cmd) == bytes(f.cmd) and skip_items(b, p_cmd, 1) + 5 == len(b), bytes(b).hex()
    else:
        origin, seq, hops, cost, p_hops, p_etag = got
        assert (origin, seq, hops, cost) == (f.origin, f.seq, f.hops, f.cost), bytes(b).hex()
        assert uint_at(b, p_hops) == (f.hops, p_hops + len(uint_head(f.hops))), bytes(b).hex()
        assert bytes(b[p_etag + 1:p_etag + 9]) == bytes(f.etag), bytes(b).hex()
    return "same"


def test_scanners_read_what_decode_reads():
    n = 0
    for f in _frames():
        b = P.encode(f, MESH, NODE)
        assert _check(b) == "same", f
        n += 1
    for h in hexes("frames.json"):  # the protocol's own vectors, every type
        _check(h)
        n += 1
    assert n >= 10


def test_scanners_on_mutated_frames_agree_with_decode_or_refuse():
    """Every mutated frame decode accepts, the scanner reads the same; what it refuses it refuses
    with ProtocolError or IndexError, never anything else (a forwarder counts a bad frame)."""
    seeds = [P.encode(f, MESH, NODE) for f in _frames()]
    r = _rng(4242)
    counts = {"same": 0, "refused": 0, "other": 0}
    for _ in range(3000):
        b = bytearray(seeds[next(r) % len(seeds)])
        op = next(r) % 3
        pos = next(r) % len(b)
        if op == 0:
            b[pos] ^= 1 << (next(r) % 8)
        elif op == 1:
            b = b[:pos]
        else:
            b[pos] = next(r) & 0xFF
        counts[_check(bytes(b))] += 1
    assert counts["same"] > 500 and counts["refused"] > 500 and sum(counts.values()) == 3000, counts
