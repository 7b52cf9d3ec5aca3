"""Regenerate protocol/vectors/frames.json and protocol/vectors/cbor.json (CPython only).

The vectors are data shared by every encoder/decoder test on both interpreters; this script
is how they were made, so a reviewer can see the intent of each invalid case. Deterministic:
fixed keys, fixed field values. Usage: python tools/gen_vectors.py
"""
import json
import os
import sys

import cbor2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import protocol as P  # noqa: E402
from protocol.auth import Hmac  # noqa: E402
from protocol.routed import Routed  # noqa: E402
from protocol.view import to_dict  # noqa: E402

MESH_KEY = bytes(range(32))
NODE_KEY = bytes(range(100, 132))
SIG = bytes(range(64))  # a signature-shaped placeholder: decode checks its size, not its value


def tagged(items, node_key=NODE_KEY, e2e_upto=None):
    """Encode `items` (a CBOR array without the trailing hop tag) with cbor2 (canonical), fix the
    e2e tag when e2e_upto is given (index of the etag item), and append a correct hop tag."""
    items = list(items)
    if e2e_upto is not None:
        covered = b"".join(cbor2.dumps(x, canonical=True) for x in items[:e2e_upto - 2])
        items[e2e_upto] = Hmac(node_key).tag(covered, 8)
    body = cbor2.dumps(items + [b"\0" * 4], canonical=True)[:-4]
    return body + Hmac(MESH_KEY).tag(body, 4)


def telem_items(**over):
    d = dict(origin=1234, seq=5000, time=1795000000, readings=[[0, 123, 187, 254, 64, 215, 30, 0]], hops=3, cost=57)
    d.update(over)
    return [1, 2, d["origin"], d["seq"], d["time"], d["readings"], d["hops"], d["cost"], b"\0" * 8]


def valid_vectors():
    frames = [
        ("beacon", P.Beacon(src=1234, bseq=17, cost=57, depth=3, time_s=1795000000, flags=0)),
        ("beacon from a gateway", P.Beacon(src=2, bseq=0, cost=0, depth=0, time_s=1795000000, flags=P.BF_GATEWAY)),
        ("telemetry, one reading", P.Telemetry(origin=1234, seq=5000, time_s=1795000000,
                                               readings=[P.Reading(0, 123, 187, 254, 64, 215, 30, 0)], hops=3, cost=57)),
        ("telemetry, three readings, negative temperature", P.Telemetry(
            origin=70000, seq=4294967000, time_s=1795000000,
            readings=[P.Reading(120, 80, 95, 140, 91, -25, 12, 2), P.Reading(60, 81, 96, 150, 92, -20, 12, 2),
                      P.Reading(0, 600, 812, 1400, 99, -5, 12, 3)], hops=0, cost=0)),
        ("status", P.Status(origin=1234, seq=7, time_s=1795000000, body=P.StatusBody(
            fw_seq=3, fw_version="1.2.0", uptime_s=86400, heap_free=51234, heap_min=40110, backlog=0, parent=1200,
            link_etx=12, path_cost=45, rssi=-71, boot_count=4, ota_state=0, ota_progress=0, errors=0, radio_drops=3,
            readings_lost=0, epoch=1), hops=2, cost=45)),
        ("status from firmware 1.1 (no epoch)", P.Status(origin=1234, seq=7, time_s=1795000000, body=P.StatusBody(
            fw_seq=3, fw_version="1.2.0", uptime_s=86400, heap_free=51234, heap_min=40110, backlog=0, parent=1200,
            link_etx=12, path_cost=45, rssi=-71, boot_count=4, ota_state=0, ota_progress=0, errors=0, radio_drops=3,
            readings_lost=0, epoch=None), hops=2, cost=45)),
        ("status from firmware 1.0 (no radio_drops, readings_lost)", P.Status(
            origin=1234, seq=6, time_s=1794999700, body=P.StatusBody(
                fw_seq=1, fw_version="1.0.0", uptime_s=86100, heap_free=51234, heap_min=40110, backlog=0, parent=1200,
                link_etx=12, path_cost=45, rssi=-71, boot_count=4, ota_state=0, ota_progress=0, errors=0,
                radio_drops=None, readings_lost=None, epoch=None), hops=2, cost=45)),
        ("command resend to one node", P.Command(target=1234, cseq=42, op=P.OP_RESEND, args=[4990, 4999], hops=1)),
        ("command set to every node (signed)", P.Command(target=0, cseq=7, op=P.OP_SET, args=["interval_s", 60],
                                                        hops=0, auth=SIG)),
        ("reply", P.Reply(origin=1234, seq=3, time_s=1795000000, cseq=42, code=0, result=[10, "ok"], hops=3, cost=57)),
        ("ota advert", P.OtaAdvert(src=1234, bseq=12, mlen=1432, mid=0xDEADBEEF, npages=40, have=41)),
        ("ota request", P.OtaRequest(src=1234, dst=1200, bseq=12, page=5, missing=0xFFFF)),
        ("ota data", P.OtaData(src=1200, bseq=12, page=5, pkt=15, data=bytes(range(48)))),
        ("beacon with its root gateway and sequence number", P.Beacon(src=1234, bseq=17, cost=57, depth=3,
                                                                      time_s=1795000000, flags=0, root=2, rseq=65535)),
        ("no-route beacon naming the gateway that stopped answering (a poison)",
         P.Beacon(src=1234, bseq=18, cost=P.COST_INFINITE, depth=255, time_s=1795000000,
                  flags=P.BF_NO_ROUTE | P.BF_PULL, root=2, rseq=812)),
    ]
    out = []
    for name, f in frames:
        node_key = NODE_KEY if f.type in (P.T_TELEMETRY, P.T_STATUS, P.T_REPLY) or (
            f.type == P.T_COMMAND and f.target != 0) else None
        b = P.encode(f, MESH_KEY, node_key)
        # the fields as decoded: the tag computed by encode is in the bytes (encode leaves f as it was)
        out.append({"name": name, "hex": b.hex(), "valid": True, "fields": to_dict(P.decode(b, MESH_KEY, node_key))})
    cmd = bytes.fromhex(next(v["hex"] for v in out if v["name"] == "command resend to one node"))
    for name, f in (("routed command, at the first hop", Routed(path=[1100, 1200, 1234], at=0, cmd=cmd)),
                    ("routed command, at its target", Routed(path=[1100, 1200, 1234], at=2, cmd=cmd))):
        out.append({"name": name, "hex": P.encode(f, MESH_KEY).hex(), "valid": True, "fields": to_dict(f)})
    tel = bytes.fromhex(out[2]["hex"])
    env = P.Envelope(gateway=2, eseq=99, items=[(1795000000123, -60, tel)])
    out.append({"name": "gateway envelope", "hex": P.encode(env).hex(), "valid": True, "fields": to_dict(env)})
    dl = P.Downlink(frames=[bytes.fromhex(out[5]["hex"])])
    out.append({"name": "downlink", "hex": P.encode(dl).hex(), "valid": True, "fields": to_dict(dl)})
    return out, tel


def invalid_vectors(tel):
    tel_items = telem_items()
    bad = []

    def add(name, data, error):
        bad.append({"name": name, "hex": data.hex(), "valid": False, "error": error})

    add("empty input", b"", "truncated")
    add("not an array (a map)", cbor2.dumps({1: 2}), "expected a CBOR array")
    add("unsupported version 2", tagged([2] + tel_items[1:]), "version: expected 1, got 2")
    add("unknown frame type 15", tagged([1, 15, 1, 2, 3]), "unknown frame type 15")
    add("too few items", bytes.fromhex("8201"), "expected at least 3 items")
    add("telemetry with an extra item", tagged(tel_items + [0]), "telemetry: expected 10 items, got 11")
    add("telemetry missing the cost", tagged(tel_items[:7] + tel_items[8:]), "telemetry: expected 10 items, got 9")
    add("non-shortest integer (origin as 0x19 0x00 0x05)", tel[:3] + bytes.fromhex("190005") + tel[6:],
        "non-shortest integer")
    add("non-shortest length head on a byte string", tel[:-5] + bytes.fromhex("5804") + tel[-4:], "non-shortest")
    add("indefinite-length array", bytes.fromhex("9f0102ff"), "indefinite length")
    add("indefinite-length byte string in a field",
        tel[:-5] + bytes.fromhex("5f44") + tel[-4:] + b"\xff", "indefinite length")
    add("half-precision float as pm25", tagged(telem_items(readings=[[0, 1, 2, 3, 4, 5, 6, 7]]))
        .replace(bytes.fromhex("880001020304050607"), bytes.fromhex("880001f93c000304050607")), "floats are not allowed")
    add("tagged integer (tag 1) as time", tagged(telem_items(time=cbor2.CBORTag(1, 1795000000))), "tags are not allowed")
    add("trailing byte after the frame", tel + b"\x00", "trailing bytes")
    add("truncated in the middle", tel[:20], "truncated")
    add("OTA data claiming 65536 bytes (checked before allocation)", bytes.fromhex("880108010203045a00010000"),
        "data: expected 1..224 bytes, got 65536")
    add("etag claims 1000 bytes", tel[:-14] + bytes.fromhex("5903e8"), "etag: expected 8..8 bytes, got 1000")
    add("array claiming 2^32 items", bytes.fromhex("9b0000000100000000"), "truncated")
    add("readings array claiming 60000 items",
        b"\x8a" + b"".join(cbor2.dumps(x) for x in tel_items[:5]) + bytes.fromhex("99ea60") + b"\x80" * 3,
        "readings: expected 1..12 items")
    add("frame over 250 bytes", tagged([1, 8, 1, 2, 3, 4, b"\0" * 240]), "at most 250")
    big = bytearray(tel)
    big[-1] ^= 0x01
    add("hop tag mismatch (last bit flipped)", bytes(big), "hop tag mismatch")
    flipped = bytearray(tel)
    flipped[-10] ^= 0x80
    add("end-to-end tag mismatch (tag bit flipped, hop tag recomputed)",
        bytes(flipped[:-4]) + Hmac(MESH_KEY).tag(bytes(flipped[:-4]), 4), "end-to-end tag mismatch")
    add("etag of 7 bytes", tagged(tel_items[:8] + [b"\0" * 7]), "etag: expected 8..8 bytes, got 7")
    add("hop tag of 5 bytes", tel[:-5] + b"\x45" + b"\0" * 5, "hop tag: expected 4..4 bytes")
    add("pm25 above 16 bits", tagged(telem_items(readings=[[0, 1, 70000, 3, 4, 5, 6, 7]])), "reading.pm25: expected at most 65535")
    add("relative humidity 101 %", tagged(telem_items(readings=[[0, 1, 2, 3, 101, 5, 6, 7]])), "reading.rh: expected at most 100")
    add("temperature below -40.0 C", tagged(telem_items(readings=[[0, 1, 2, 3, 4, -401, 6, 7]])), "reading.temp: expected -400..850")
    add("no readings", tagged(telem_items(readings=[])), "readings: expected 1..12 items")
    add("13 readings", tagged(telem_items(readings=[[0, 1, 2, 3, 4, 5, 6, 7]] * 13)), "readings: expected 1..12 items")
    add("reading with 7 fields", tagged(telem_items(readings=[[0, 1, 2, 3, 4, 5, 6]])), "reading: expected 8 items")
    add("negative origin", tagged(telem_items(origin=-1)), "origin: expected an unsigned integer")
    add("text where an integer is expected", tagged(telem_items(seq="5000")), "seq: expected an unsigned integer")
    add("origin above 32 bits", tagged(telem_items(origin=1 << 32)), "origin: expected at most 4294967295")
    add("sequence numbers overflow 32 bits", tagged(telem_items(seq=0xFFFFFFFF, readings=[[0, 1, 2, 3, 4, 5, 6, 7]] * 2)),
        "overflow 32 bits")
    st = [1, 3, 1, 1, 1, [1, "1.0", 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, 0, b"\0" * 8]
    s_utf = cbor2.dumps(st + [b"\0" * 4], canonical=True).replace(b"\x631.0", b"\x63\xff\xfe\xfd")
    add("invalid UTF-8 in firmware version", s_utf, "invalid UTF-8")
    st2 = list(st)
    st2[5] = [1, "1.0.0-rc1+build.20261122", 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    add("firmware version over 16 bytes", tagged(st2), "status.fw_version: expected at most 16")
    st3 = list(st)
    st3[5] = [1, "1.0", 1, 1, 1, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]
    add("positive RSSI in status", tagged(st3), "status.rssi: expected -128..0")
    st4 = list(st)
    st4[5] = st[5][:15]
    add("status body with 15 items (only one of the two new fields)", tagged(st4),
        "status: expected 17 items (or 16, 14 from older firmware), got 15")
    st5 = list(st)
    st5[5] = st[5] + [0]
    add("status body with 18 items", tagged(st5), "status: expected 14..17 items, got 18")
    st6 = list(st)
    st6[5] = st[5][:14] + [-1, 0, 0]
    add("negative radio_drops in status", tagged(st6), "status.radio_drops: expected an unsigned integer")
    st7 = list(st)
    st7[5] = st[5][:16] + [1 << 32]
    add("status epoch above 32 bits", tagged(st7), "status.epoch: expected at most 4294967295")
    add("OTA data of 225 bytes", tagged([1, 8, 1, 2, 3, 4, b"\0" * 225]), "data: expected 1..224 bytes")
    add("OTA data packet index 16", tagged([1, 8, 1, 2, 3, 16, b"\0" * 10]), "pkt: expected at most 15")
    add("OTA data without image bytes", tagged([1, 8, 1, 2, 3, 4, b""]), "data: expected 1..224 bytes")
    add("command to every node with an 8-byte tag", tagged([1, 4, 0, 1, 3, [], 0, b"\0" * 8]),
        "command.auth: expected 64..64 bytes")
    rcmd = P.encode(P.Command(target=1234, cseq=42, op=P.OP_RESEND, args=[4990, 4999], hops=1), MESH_KEY, NODE_KEY)
    add("routed with at past the end of its path", tagged([1, 9, [1100, 1234], 2, rcmd]),
        "routed.at: expected at most 1, got 2")
    add("routed with an empty path", tagged([1, 9, [], 0, rcmd]), "routed.path: expected 1..48 items, got 0")
    add("routed with node id 0 in its path", tagged([1, 9, [0, 1234], 0, rcmd]), "routed.path: expected 1..4294967295")
    add("routed carrying a telemetry frame", tagged([1, 9, [1234], 0, tel]), "routed.cmd: expected a command frame")
    add("command with 5 arguments", tagged([1, 4, 5, 1, 2, [1, 2, 3, 4, 5], 0, b"\0" * 8]), "command.args: expected 0..4")
    add("command argument is a byte string", tagged([1, 4, 5, 1, 2, [b"x"], 0, b"\0" * 8]), "expected an integer")
    add("envelope with a positive RSSI", cbor2.dumps([1, 16, 2, 1, [[1, 5, tel]]]), "rssi: expected -128..0")
    add("envelope carrying a 251-byte frame", cbor2.dumps([1, 16, 2, 1, [[1, -5, b"\0" * 251]]]),
        "frame: expected 1..250 bytes")
    add("downlink with no frames", cbor2.dumps([1, 17, []]), "downlink.frames: expected 1..")
    add("command argument is a nested array (9 levels)",
        tagged([1, 4, 5, 1, 2, [[[[[[[[[1]]]]]]]]], 0, b"\0" * 8]), "expected an integer")
    add("command auth mismatch (HMAC with another key)", tagged([1, 4, 5, 1, 2, [], 0, b"\0" * 8]),
        "command auth mismatch")
    add("command text argument of 33 bytes", tagged([1, 4, 5, 1, 2, ["x" * 33], 0, b"\0" * 8]),
        "expected at most 32 bytes of text")
    rep = [1, 5, 1234, 7, 1795000000, [9, 0, [1]], 2, 40, b"\0" * 8]
    add("reply missing the cost", tagged(rep[:7] + rep[8:]), "reply: expected 10 items, got 9")
    add("reply result with 9 entries", tagged(rep[:5] + [[9, 0, [1] * 9]] + rep[6:], e2e_upto=8),
        "reply.result: expected 0..8 items")
    add("OTA advert holding more than 65535 pages", tagged([1, 6, 1, 2, 300, 4, 10, 70000]),
        "have: expected at most 65535")
    add("OTA request with a missing-packet bitmap above 16 bits", tagged([1, 7, 1, 2, 3, 4, 70000]),
        "missing: expected at most 65535")
    add("envelope item with 2 fields", cbor2.dumps([1, 16, 2, 1, [[1, -5]]]), "envelope.item: expected 3 items")
    add("etag as a text string", tagged(tel_items[:8] + ["abcdefgh"]), "etag: expected a byte string")
    # tel[9:14] is the time field (1a + 4 bytes)
    add("undefined simple value as time", tel[:9] + b"\xf7" + tel[14:], "unsupported simple value")
    add("reserved additional information 28", tel[:9] + b"\x1c" + tel[14:], "reserved additional info")
    add("beacon with a map instead of flags", tagged([1, 1, 1, 2, 3, 4, 5, {}]), "flags: expected an unsigned integer")
    add("beacon with a root sequence number above 16 bits", tagged([1, 1, 1, 2, 3, 4, 5, 0, 2, 65536]),
        "rseq: expected at most 65535")
    add("beacon with a sequence number but no root", tagged([1, 1, 1, 2, 3, 4, 5, 0, 0, 7]),
        "rseq without a root")
    add("beacon with root 0 in the 11-item layout", tagged([1, 1, 1, 2, 3, 4, 5, 0, 0, 0]), "rseq without a root")
    add("beacon with a root but no sequence number (10 items)", tagged([1, 1, 1, 2, 3, 4, 5, 0, 2]),
        "beacon: expected 9 items, got 10")
    return bad


def cbor_vectors():
    """Codec-level vectors for protocol.cbor.loads (maps are used by config files)."""
    good = [
        ("unsigned 0", 0), ("unsigned 23", 23), ("unsigned 24", 24), ("unsigned 2^32", 1 << 32),
        ("negative -1", -1), ("negative -2^64", -(1 << 64)), ("empty bytes", b""), ("text with accents", "Dañina"),
        ("nested arrays", [1, [2, [3]]]), ("map with int and text keys", {1: "a", "b": [2], 10: None}),
        ("booleans and null", [True, False, None]),
    ]
    out = []
    for name, v in good:
        out.append({"name": name, "hex": cbor2.dumps(v, canonical=True).hex(), "valid": True,
                    "fields": {"value": _jsonable(v)}})
    bad = [
        ("map keys out of order", bytes.fromhex("a2026161016162"), "deterministic order"),
        ("duplicate map key (complete)", bytes.fromhex("a2016161016162"), "deterministic order"),
        ("array as map key (complete)", bytes.fromhex("a18001"), "map keys must be int or text"),
        ("double-precision float", bytes.fromhex("fb3ff0000000000000"), "floats are not allowed"),
        ("indefinite map", bytes.fromhex("bf01 02ff".replace(" ", "")), "indefinite length"),
        ("non-shortest 64-bit head", bytes.fromhex("1b00000000ffffffff"), "non-shortest"),
        ("nesting 10 deep", bytes.fromhex("81" * 10 + "01"), "nesting too deep"),
        ("invalid UTF-8 text", bytes.fromhex("62c328"), "invalid UTF-8"),
        ("trailing bytes", bytes.fromhex("0101"), "trailing bytes"),
        ("tag 0", bytes.fromhex("c000"), "tags are not allowed"),
    ]
    for name, b, err in bad:
        out.append({"name": name, "hex": b.hex(), "valid": False, "error": err})
    return out


def _jsonable(v):
    """Vectors are JSON: bytes as {"bytes": hex}, maps as {"map": [[k, v], ...]}."""
    if isinstance(v, bytes):
        return {"bytes": v.hex()}
    if isinstance(v, dict):
        return {"map": [[_jsonable(k), _jsonable(x)] for k, x in v.items()]}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


def write_vectors(path, head, vectors):
    """Write valid JSON with one vector per line, so a small-heap reader (MicroPython) can
    parse the file a line at a time instead of holding the whole document."""
    with open(path, "w") as f:
        f.write(json.dumps(head, ensure_ascii=False)[:-1] + ', "vectors": [\n')
        for i, v in enumerate(vectors):
            f.write(json.dumps(v, ensure_ascii=False) + ("," if i < len(vectors) - 1 else "") + "\n")
        f.write("]}\n")


def main(argv=None):
    """gen_vectors.py [OUT_DIR]: write frames.json and cbor.json (default: protocol/vectors)."""
    argv = sys.argv[1:] if argv is None else argv
    valid, tel = valid_vectors()
    frames = {
        "description": "Red Mesh frame vectors. Decode every entry with protocol.decode(bytes.fromhex(hex), "
                       "mesh_key, node_key) using the keys below. Valid entries decode to `fields` (protocol.view.to_dict(frame)) "
                       "and re-encode to the same bytes; invalid ones raise ProtocolError whose message contains "
                       "`error`. Signatures in target-0 commands are placeholders (decode checks their size only).",
        "keys": {"mesh_key": MESH_KEY.hex(), "node_key": NODE_KEY.hex()},
        "vectors": valid + invalid_vectors(tel),
    }
    vec_dir = argv[0] if argv else os.path.join(ROOT, "protocol", "vectors")
    os.makedirs(vec_dir, exist_ok=True)
    vectors = frames.pop("vectors")
    write_vectors(os.path.join(vec_dir, "frames.json"), frames, vectors)
    write_vectors(os.path.join(vec_dir, "cbor.json"),
                  {"description": "protocol.cbor.loads vectors; JSON encodes bytes as {bytes: hex}, maps as "
                                  "{map: [[k, v], ...]}"}, cbor_vectors())
    frames["vectors"] = vectors
    n_bad = sum(1 for v in frames["vectors"] if not v["valid"])
    print("frames.json: %d valid, %d invalid" % (len(frames["vectors"]) - n_bad, n_bad))


if __name__ == "__main__":
    main()
