"""Red Mesh frames: plain classes, and their strict encoding and decoding.

Theory of operation (normative text: protocol/redmesh.cddl)
- Every frame is a CBOR array whose first two items are the protocol version and the frame
  type; the rest is positional. Lengths and ranges are checked field by field, so a decoded
  frame always satisfies the spec.
- Frames that cross the mesh (telemetry, status, reply, command) are laid out as
      [version, type, <immutable fields...>, <mutable fields...>, e2e-or-auth, hop-tag]
  The end-to-end tag covers the encoded bytes of the immutable fields (version through the
  body: one contiguous slice); forwarders rewrite only the mutable fields (hops, cost) and the
  hop tag. The hop tag covers every byte of the frame before it, array head included.
- One-hop frames (beacon, OTA advert/request/data) end with the hop tag only.
- MQTT messages (gateway envelope, downlink) are frames too, without tags: MQTT carries them
  and each air frame inside keeps its own tags.
- Key phase: an air frame's version item is VERSION, or VERSION | PHASE_BIT when the hop tag
  was made with the mesh key of an odd key epoch (protocol.auth.derive_mesh_key). Both values
  are one CBOR byte, so saying which epoch tagged a frame costs no byte (a clean-air telemetry
  frame stays 47 B). A node holds at most two mesh keys (current and next epoch), and their
  parities differ, so one bit picks the key (the QUIC key-phase bit does the same). The phase
  is a hop-level field: the hop tag covers it, end-to-end tags and signatures do not (they
  cover the version item as VERSION), so a forwarder may re-tag a frame in its own epoch.
"""
import sys

from protocol import cbor
from protocol.auth import E2E_TAG_LEN, HOP_TAG_LEN, SIG_LEN, Hmac, ct_equal
from protocol.cbor import put_head, skip_items, uint_at
from protocol.errors import ProtocolError

VERSION = 1
PHASE_BIT = 0x10  # in the version item: hop tag made with an odd epoch's mesh key
MAX_FRAME = 250  # ESP-NOW payload limit
MAX_ENVELOPE = 262144  # largest MQTT message we accept (bytes)

T_BEACON = 1
T_TELEMETRY = 2
T_STATUS = 3
T_COMMAND = 4
T_REPLY = 5
T_OTA_ADV = 6
T_OTA_REQ = 7
T_OTA_DATA = 8
T_ROUTED = 9
T_ENVELOPE = 16
T_DOWNLINK = 17

TYPE_NAMES = {
    T_BEACON: "beacon", T_TELEMETRY: "telemetry", T_STATUS: "status", T_COMMAND: "command",
    T_REPLY: "reply", T_OTA_ADV: "ota_advert", T_OTA_REQ: "ota_request", T_OTA_DATA: "ota_data", T_ROUTED: "routed",
    T_ENVELOPE: "envelope", T_DOWNLINK: "downlink",
}

COST_INFINITE = 0xFFFF
BF_GATEWAY = 1
BF_PULL = 2
BF_NO_ROUTE = 4

OP_RESEND = 1
OP_SET = 2
OP_REBOOT = 3
OP_STATUS = 4
OP_PING = 5
# 6, 7: OP_REKEY, OP_EPOCH (mesh key rotation): defined in protocol/keywrap.py, loaded only for them

MAX_READINGS = 12  # worst realistic readings (~16 bytes each) keep a frame within 250
OTA_PKT_MAX = 224  # image bytes per OTA data frame; a full frame stays within 250 bytes
OTA_PKTS_PER_PAGE = 16

U8 = 0xFF
U16 = 0xFFFF
U32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF

# ---- field checks -------------------------------------------------------------------------
# A field spec is (name, lo, hi) for an integer in lo..hi, or (name, None, max_bytes) for text.
# Table-driven on purpose: one code path per kind keeps the module small in a device's heap.


def _label(name, pre):
    """A field's name in an error message: "status.heap_free" for a record's field (the record's
    name `pre` is joined only when there is an error to report: no string per field encoded)."""
    return pre + "." + name if pre else name


def _num(d, name, lo, hi, pre=None):
    at = d.pos
    major, v = d.head()
    if major == 1 and lo < 0:
        v = -1 - v
    elif major != 0:
        raise ProtocolError("%s: expected %s at offset %d, got major type %d"
                            % (_label(name, pre), "an integer" if lo < 0 else "an unsigned integer", at, major))
    if v < lo or v > hi:
        if lo == 0:
            raise ProtocolError("%s: expected at most %d, got %d" % (_label(name, pre), hi, v))
        raise ProtocolError("%s: expected %d..%d, got %d" % (_label(name, pre), lo, hi, v))
    return v


def _uint(d, name, maxv):
    return _num(d, name, 0, maxv)


def _str_or_bytes(d, name, major_want, lo, hi, pre=None):
    at = d.pos
    major, n = d.head()
    if major != major_want:
        raise ProtocolError("%s: expected a %s at offset %d, got major type %d"
                            % (_label(name, pre), "byte string" if major_want == 2 else "text string", at, major))
    if n < lo or n > hi:
        if major_want == 3:
            raise ProtocolError("%s: expected at most %d bytes of text, got %d" % (_label(name, pre), hi, n))
        raise ProtocolError("%s: expected %d..%d bytes, got %d" % (_label(name, pre), lo, hi, n))
    d._need(n, _label(name, pre))
    v = bytes(d.buf[d.pos:d.pos + n])
    d.pos += n
    if major_want == 2:
        return v
    try:
        return str(v, "utf-8")
    except Exception:  # noqa: BLE001 - error type differs between interpreters
        raise ProtocolError("%s: invalid UTF-8" % _label(name, pre))


def _bstr(d, name, lo, hi):
    return _str_or_bytes(d, name, 2, lo, hi)


def _arr(d, name, lo, hi):
    at = d.pos
    major, n = d.head()
    if major != 4:
        raise ProtocolError("%s: expected an array at offset %d, got major type %d" % (name, at, major))
    if n < lo or n > hi:
        if lo == hi:
            raise ProtocolError("%s: expected %d items, got %d" % (name, lo, n))
        raise ProtocolError("%s: expected %d..%d items, got %d" % (name, lo, hi, n))
    if n > d.end - d.pos:
        raise ProtocolError("%s: truncated, %d items claimed but %d bytes left" % (name, n, d.end - d.pos))
    return n


def _get(d, spec, pre=None):
    """Decode the fields of `spec` in order; return their values as a list (pre: the record's
    name, for error messages)."""
    out = []
    for name, lo, hi in spec:
        out.append(_str_or_bytes(d, name, 3, 0, hi, pre) if lo is None else _num(d, name, lo, hi, pre))
    return out


def _put_num(out, name, v, lo, hi, pre=None):
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or v > hi:
        raise ValueError("%s: expected an integer %d..%d, got %r" % (_label(name, pre), lo, hi, v))
    if v >= 0:
        put_head(0, v, out)
    else:
        put_head(1, -1 - v, out)


def _put(out, obj, spec, pre=None):
    """Validate and encode the attributes of `obj` named by `spec`, in order (pre: the record's
    name, for error messages)."""
    for name, lo, hi in spec:
        v = getattr(obj, name)
        if lo is None:
            b = v.encode("utf-8") if isinstance(v, str) else None
            if b is None or len(b) > hi:
                raise ValueError("%s: expected text of at most %d bytes" % (_label(name, pre), hi))
            put_head(3, len(b), out)
            out.extend(b)
        else:
            _put_num(out, name, v, lo, hi, pre)


def _put_bytes(out, name, v, lo, hi):
    if not isinstance(v, (bytes, bytearray)) or len(v) < lo or len(v) > hi:
        raise ValueError("%s: expected %d..%d bytes" % (name, lo, hi))
    put_head(2, len(v), out)
    out.extend(v)


_ARG = -(1 << 63)


def _scalar_arg(d, name):
    """A command argument or reply result: an integer (64-bit range) or short text."""
    if d.pos >= d.end:
        raise ProtocolError("%s: truncated" % name)
    if d.buf[d.pos] >> 5 == 3:
        return _str_or_bytes(d, name, 3, 0, 32)
    return _num(d, name, _ARG, U64)


def _enc_args(args, out, name):
    put_head(4, len(args), out)
    for a in args:
        if isinstance(a, str):
            b = a.encode("utf-8")
            if len(b) > 32:
                raise ValueError(name + ": text arguments are at most 32 bytes")
            put_head(3, len(b), out)
            out.extend(b)
        else:
            _put_num(out, name, a, _ARG, U64)


def _hmac(key, phase=0):
    # key: bytes, an Hmac, or a pair (even epoch's key, odd epoch's key) indexed by key phase
    if isinstance(key, (tuple, list)):
        key = key[phase]
    if key is None:
        return None
    if isinstance(key, Hmac):
        return key
    return Hmac(key)


# ---- frame classes --------------------------------------------------------------------------


class Frame:
    """Base of every frame and record: attributes named by FIELDS, set from positional or
    keyword constructor arguments (defaults: 0, or a fresh copy of DEFAULTS[name]);
    value equality over FIELDS; `type` is the T_ constant."""

    type = 0
    FIELDS = ()
    DEFAULTS = {}
    phase = 0  # key phase of the hop tag (air frames): set by decode, used by encode

    def __init__(self, *args, **kw):
        fields = self.FIELDS
        if len(args) > len(fields):
            raise TypeError("too many arguments")
        for k in kw:
            if k not in fields:
                raise TypeError("unexpected field " + k)
        for i, name in enumerate(fields):
            if i < len(args):
                v = args[i]
            elif name in kw:
                v = kw[name]
            else:
                v = self.DEFAULTS.get(name, 0)
                if isinstance(v, list):
                    v = list(v)
                elif v is StatusBody:
                    v = StatusBody()
            setattr(self, name, v)

    def __eq__(self, other):
        if type(other) is not type(self):
            return False
        for f in self.FIELDS:
            if getattr(self, f) != getattr(other, f):
                return False
        return True


# A reading's flags (redmesh.cddl reading-flags): set by the node that made it (firmware/sampler.py,
# the rig's offered load firmware/hal/simload.py), shown and counted by the host. Other bits: 0.
FLAG_SENSOR_ERROR = 1  # no valid sample in the window
FLAG_HIGH_RH = 2  # mean RH above 75 %: optical PM reads high
FLAG_CHECKSUM = 4  # checksum errors during the window
FLAG_WARMUP_SHORT = 8  # sampling started before a full warm-up
FLAG_SYNTHETIC = 0x8000  # the rig's offered load, not a sensor's (fleet/sim/verify.py counts them)


class Reading(Frame):
    """One aggregated sensor reading.

    dt_s: seconds before the frame's time_s; pm1/pm25/pm10: 0.1 ug/m3; rh: %; temp: 0.1 C;
    n: samples aggregated; flags: FLAG_* bits (above)."""

    SPEC = (("dt_s", 0, U32), ("pm1", 0, U16), ("pm25", 0, U16),
            ("pm10", 0, U16), ("rh", 0, 100), ("temp", -400, 850),
            ("n", 0, U16), ("flags", 0, U16))
    FIELDS = ("dt_s", "pm1", "pm25", "pm10", "rh", "temp", "n", "flags")


class StatusBody(Frame):
    """Node health report body: firmware (fw_seq, fw_version), uptime_s, heap_free/heap_min
    (bytes), backlog (readings waiting), parent (node id, 0 = none), link_etx (tenths),
    path_cost (tenths), rssi (dBm of the parent link), boot_count, ota_state, ota_progress (%),
    errors (bit field), radio_drops (ESP-NOW frames the receive buffer dropped since boot),
    readings_lost (readings the node had to discard since boot), epoch (the mesh key epoch the
    node holds in force, issue 14: the fleet re-keys a node that reports an old one). Firmware
    1.0 sent the body without the last three (LEGACY_FIELDS items), firmware 1.1 without
    epoch (16 items): both still decode, the missing fields None ("not reported"), and such a
    body encodes back to the same items (its end-to-end tag covers them)."""

    FIELDS = ("fw_seq", "fw_version", "uptime_s", "heap_free", "heap_min", "backlog", "parent",
              "link_etx", "path_cost", "rssi", "boot_count", "ota_state", "ota_progress", "errors",
              "radio_drops", "readings_lost", "epoch")
    SPEC = (("fw_seq", 0, U32), ("fw_version", None, 16), ("uptime_s", 0, U32),
            ("heap_free", 0, U32), ("heap_min", 0, U32), ("backlog", 0, U32),
            ("parent", 0, U32), ("link_etx", 0, U16), ("path_cost", 0, U16),
            ("rssi", -128, 0), ("boot_count", 0, U32), ("ota_state", 0, U8),
            ("ota_progress", 0, 100), ("errors", 0, U32), ("radio_drops", 0, U32),
            ("readings_lost", 0, U32), ("epoch", 0, U32))
    DEFAULTS = {"fw_version": ""}
    LEGACY_FIELDS = 14


def _put_rec(out, rec, name, n=0):
    """Encode rec's fields as an array (only the first n when n is given); `name` prefixes the
    field in error messages ("reading.pm25")."""
    spec = rec.SPEC[:n] if n else rec.SPEC
    put_head(4, len(spec), out)
    _put(out, rec, spec, name)


# Mesh frames carrying an end-to-end tag ---------------------------------------------------

_UP_HEAD = (("origin", 0, U32), ("seq", 0, U32), ("time_s", 0, U32))
_UP_MUT = (("hops", 0, U8), ("cost", 0, U16))


class Telemetry(Frame):
    """Readings from one node. origin: node id; seq: sequence number of readings[0] (reading i
    has seq + i); time_s: unix seconds when sent; readings: 1..12 Reading; hops: hops so far;
    cost: path cost of the last transmitter (tenths of ETX); etag: 8-byte end-to-end tag.
    Layout: [version, type, origin, seq, time_s, body, hops, cost, etag, htag]."""

    type = T_TELEMETRY
    FIELDS = ("origin", "seq", "time_s", "readings", "hops", "cost", "etag")
    origin: int
    seq: int
    time_s: int
    readings: list
    hops: int
    cost: int
    etag: bytes
    DEFAULTS = {"readings": [], "etag": None}

    def _enc_body(self, out):
        n = len(self.readings)
        if n < 1 or n > MAX_READINGS:
            raise ValueError("telemetry: expected 1..%d readings, got %d" % (MAX_READINGS, n))
        put_head(4, n, out)
        for r in self.readings:
            _put_rec(out, r, "reading")



class Status(Frame):
    """A node's health report; body is a StatusBody. seq counts status frames of this node."""

    type = T_STATUS
    FIELDS = ("origin", "seq", "time_s", "body", "hops", "cost", "etag")
    DEFAULTS = {"body": StatusBody, "etag": None}

    def _enc_body(self, out):
        b = self.body
        # an older firmware's body (decoded, the fields it lacks None) re-encodes as it came: its
        # tag covers those 14 or 16 items
        n = 0
        if b.radio_drops is None and b.readings_lost is None:
            n = StatusBody.LEGACY_FIELDS
        elif b.epoch is None:
            n = StatusBody.LEGACY_FIELDS + 2
        _put_rec(out, b, "status", n)



class Reply(Frame):
    """A node's answer to a command: cseq (the command's counter), code (0 = ok, else an
    error code), result (0..8 integers or short texts). seq counts reply frames of this node."""

    type = T_REPLY
    FIELDS = ("origin", "seq", "time_s", "cseq", "code", "result", "hops", "cost", "etag")
    DEFAULTS = {"result": [], "etag": None}

    def _enc_body(self, out):
        if len(self.result) > 8:
            raise ValueError("reply.result: expected at most 8 items")
        put_head(4, 3, out)
        _put_num(out, "reply.cseq", self.cseq, 0, U32)
        _put_num(out, "reply.code", self.code, 0, U8)
        _enc_args(self.result, out, "reply.result")



class Command(Frame):
    """Downlink command, flooded through the mesh: [version, type, target, cseq, op, args, hops,
    auth, htag]. target: node id, 0 = every node; cseq: the fleet's command counter (per target)
    that nodes keep a replay window over; op: an OP_ constant; args: 0..4 ints or short texts;
    hops: hops so far; auth: 8-byte HMAC with the target's node key, or for target 0 a 64-byte
    Ed25519 signature by the fleet key over the same bytes (see signed_bytes)."""

    type = T_COMMAND
    FIELDS = ("target", "cseq", "op", "args", "hops", "auth")
    DEFAULTS = {"args": [], "auth": None}
    SPEC = (("target", 0, U32), ("cseq", 0, U32), ("op", 0, U8))


# One-hop frames -------------------------------------------------------------------------------


class Beacon(Frame):
    """Routing beacon, one hop: src (node id), bseq (0..255, for link estimation), cost (path ETX
    to a gateway in tenths; 0 at a gateway, COST_INFINITE without a route), depth (hops to the
    gateway), time_s (gateway wall clock, unix seconds; 0 = unknown), flags (BF_ bits), root (the
    gateway at the root of the sender's path, 0 = none or not said) and rseq (that gateway's
    sequence number as the sender last had it, 0..65535, compared modulo 2**16: firmware/mesh.py
    uses the pair for its feasibility rule; in a no-route beacon (BF_NO_ROUTE) the pair is a
    poison: the sender lost its path when that gateway stopped answering, and no path of it
    with that rseq or an older one is to be taken). With root 0 the beacon has the 9-item layout
    of earlier firmware (no root, no rseq), which every firmware reads."""

    type = T_BEACON
    SPEC = (("src", 0, U32), ("bseq", 0, U8), ("cost", 0, U16), ("depth", 0, U8), ("time_s", 0, U32),
            ("flags", 0, U8), ("root", 0, U32), ("rseq", 0, U16))
    FIELDS = ("src", "bseq", "cost", "depth", "time_s", "flags", "root", "rseq")
    LEGACY_FIELDS = 6


# The OTA frames (advert, request, data) are in protocol/frames_ota.py: only a node running an
# OTA campaign (firmware/ota.py, firmware/ota_node.py) and the host load them; decode imports
# them when one arrives.


# ---- encode ----------------------------------------------------------------------------------

_UPLINK = {T_TELEMETRY: Telemetry, T_STATUS: Status, T_REPLY: Reply}
# The MQTT messages (gateway envelope, downlink) are encoded and decoded by protocol/envelope.py,
# which registers its (encode, decode) pair here when imported: a plain node never carries them.
_MQTT_CODECS = {}


def _mqtt(t):
    codec = _MQTT_CODECS.get(t)
    if codec is None:
        raise ProtocolError("%s is an MQTT message: its codec (protocol.envelope) is not loaded" % TYPE_NAMES[t])
    return codec

_ONEHOP = (T_BEACON, T_OTA_ADV, T_OTA_REQ)


# A board encodes every frame in one buffer, emptied (its capacity kept) for each: a frame grown
# byte by byte in a new bytearray reallocates as it grows, and at a resend answer (up to 4
# frames, each encoded for its size and then for the air) that churn fragmented a 123 KB heap
# until 243 bytes in one piece could not be had. encode is not re-entrant and a node runs one
# task at a time, so one buffer serves; the host (threads) takes a new bytearray each time.
_SCRATCH = bytearray(MAX_FRAME + 16) if sys.implementation.name == "micropython" else None


def _out():
    b = _SCRATCH
    if b is None:
        return bytearray()
    b[:] = b""
    return b


def encode(frame, mesh_key=None, node_key=None, phase=None, at_origin=False):
    """Return the bytes of `frame`.

    Air frames need `mesh_key` (bytes or Hmac, or a pair indexed by key phase) for the hop tag;
    `phase` (0/1, default frame.phase) is the key phase written in the version item. Telemetry/status/reply use
    `node_key` to compute the end-to-end tag, or keep `frame.etag` when node_key is None (a
    forwarder). Commands use `node_key` for an HMAC auth tag or keep `frame.auth` (a signature
    made over `signed_bytes`). at_origin (telemetry/status/reply): encode as the frame's origin
    does, once - hops and cost written at their largest whatever the frame holds, so the bytes
    fit after any number of hops (a router splices the real ones in, as a forwarder does:
    firmware/mesh.py). Raises ValueError (the caller's misuse, not a peer's bytes:
    protocol/errors.py) when a field is out of range, a key is missing or the frame is over
    MAX_FRAME. `frame` is not changed: a tag computed here is in the bytes only (scan_uplink
    gives where)."""
    t = frame.type
    if t == T_ENVELOPE or t == T_DOWNLINK:  # MQTT messages: their codec is protocol/envelope.py
        return _mqtt(t)[0](frame)
    if phase is None:
        phase = frame.phase
    if phase != 0 and phase != 1:
        raise ValueError("key phase: expected 0 or 1")
    hmac_mesh = _hmac(mesh_key, phase)
    if hmac_mesh is None:
        raise ValueError("encoding an air frame needs the mesh key")
    out = _out()
    if t in _UPLINK:
        put_head(4, 10, out)
        start = len(out)
        put_head(0, VERSION, out)
        put_head(0, t, out)
        _put(out, frame, _UP_HEAD)
        frame._enc_body(out)
        if t == T_TELEMETRY and frame.seq + len(frame.readings) - 1 > U32:
            raise ValueError("telemetry: reading sequence numbers overflow 32 bits")
        if node_key is not None:
            etag = _hmac(node_key).tag(out[start:], E2E_TAG_LEN)
        else:
            etag = frame.etag
            if etag is None or len(etag) != E2E_TAG_LEN:
                raise ValueError("encoding %s needs the node key or an existing 8-byte etag" % TYPE_NAMES[t])
        if at_origin:
            put_head(0, 0xFF, out)  # hops and cost at their largest
            put_head(0, COST_INFINITE, out)
        else:
            _put(out, frame, _UP_MUT)
        _put_bytes(out, "etag", etag, E2E_TAG_LEN, E2E_TAG_LEN)
    elif t == T_COMMAND:
        if len(frame.args) > 4:
            raise ValueError("command.args: expected at most 4 items")
        put_head(4, 9, out)
        covered = signed_bytes(frame)
        out.extend(covered)
        a = frame.auth
        if node_key is not None:
            if frame.target == 0:
                raise ValueError("a command to every node (target 0) is signed, not tagged")
            a = _hmac(node_key).tag(covered, E2E_TAG_LEN)
        want = SIG_LEN if frame.target == 0 else E2E_TAG_LEN
        _put_num(out, "hops", frame.hops, 0, U8)
        if a is None or len(a) != want:
            raise ValueError("command auth: expected %d bytes for target %d" % (want, frame.target))
        _put_bytes(out, "auth", a, want, want)
    elif t == T_ROUTED:  # its codec is protocol/routed.py, loaded only where routes are made or read
        from protocol.routed import enc_routed
        enc_routed(frame, out)
    elif t in _ONEHOP or t == T_OTA_DATA:
        spec = frame.SPEC
        if t == T_BEACON and not frame.root:
            if frame.rseq:
                raise ValueError("beacon: rseq without a root")
            spec = spec[:Beacon.LEGACY_FIELDS]
        put_head(4, len(spec) + (4 if t == T_OTA_DATA else 3), out)
        put_head(0, VERSION, out)
        put_head(0, t, out)
        _put(out, frame, spec)
        if t == T_OTA_DATA:
            _put_bytes(out, "data", frame.data, 1, OTA_PKT_MAX)
    else:
        raise ValueError("cannot encode frame type %r" % (t,))
    if phase:
        out[1] |= PHASE_BIT  # after the e2e tag / auth: they cover the version item as VERSION
    out.append(0x44)  # bstr(4) head of the hop tag
    out.extend(hmac_mesh.tag(out, HOP_TAG_LEN))
    if len(out) > MAX_FRAME:
        raise ValueError("%s frame is %d bytes, the radio carries at most %d" % (TYPE_NAMES[t], len(out), MAX_FRAME))
    return bytes(out)


def signed_bytes(cmd):
    """Return the bytes a command's auth covers: version through args (a CBOR sequence)."""
    out = bytearray()
    put_head(0, VERSION, out)
    put_head(0, T_COMMAND, out)
    _put(out, cmd, cmd.SPEC)
    _enc_args(cmd.args, out, "command.args")
    return bytes(out)


# ---- decode ----------------------------------------------------------------------------------


# ---- headers read in place (a forwarder's fast path: protocol/cbor.py "in-place scanners").
# ProtocolError when the layout is not the frame's, IndexError when cut short; the tags are not
# checked. Offsets are where a forwarder splices: the hops item, the auth/etag item's head.

def scan_uplink(b):
    """A telemetry/status/reply frame's (origin, seq, hops, cost, p_hops, p_etag)."""
    if b[0] != 0x8A:
        raise ProtocolError("expected a 10-item array")
    origin, p = uint_at(b, 3)
    seq, p = uint_at(b, p)
    p = skip_items(b, p, 2)  # time_s, body
    p_hops = p
    hops, p = uint_at(b, p)
    cost, p = uint_at(b, p)
    if b[p] != 0x48 or b[p + 9] != 0x44 or p + 14 != len(b) or hops > 255 or cost > COST_INFINITE:
        raise ProtocolError("bad tail")
    return origin, seq, hops, cost, p_hops, p


def scan_beacon(b):
    """A beacon's (src, bseq, cost, depth, time_s, flags, root, rseq); root and rseq 0 in the
    9-item layout."""
    n = b[0]
    if n != 0x89 and n != 0x8B:
        raise ProtocolError("expected a 9- or 11-item array")
    src, p = uint_at(b, 3)
    bseq, p = uint_at(b, p)
    cost, p = uint_at(b, p)
    depth, p = uint_at(b, p)
    time_s, p = uint_at(b, p)
    flags, p = uint_at(b, p)
    root = rseq = 0
    if n == 0x8B:
        root, p = uint_at(b, p)
        rseq, p = uint_at(b, p)
        if not root or rseq > 0xFFFF:
            raise ProtocolError("bad beacon root")
    if b[p] != 0x44 or p + 5 != len(b) or bseq > 255 or cost > COST_INFINITE or depth > 255 or flags > 255:
        raise ProtocolError("bad beacon")
    return src, bseq, cost, depth, time_s, flags, root, rseq


def scan_command(b):
    """A command frame's (target, cseq, hops, p_hops, p_auth): p_auth is the auth item's head
    (an 8-byte HMAC tag or a 64-byte signature), the hop tag follows it."""
    if b[0] != 0x89:
        raise ProtocolError("expected a 9-item array")
    target, p = uint_at(b, 3)
    cseq, p = uint_at(b, p)
    p = skip_items(b, p, 2)  # op, args
    p_hops = p
    hops, p = uint_at(b, p)
    p_auth = p
    if b[p] == 0x48:
        p += 9
    elif b[p] == 0x58 and b[p + 1] == 64:
        p += 66
    else:
        raise ProtocolError("bad auth")
    if b[p] != 0x44 or p + 5 != len(b) or hops > 255:
        raise ProtocolError("bad tail")
    return target, cseq, hops, p_hops, p_auth


def peek_type(buf):
    """Return the frame type of `buf` after checking the version. Raises ProtocolError."""
    d = cbor.Decoder(buf)
    major, n = d.head()
    if major != 4:
        raise ProtocolError("frame: expected a CBOR array, got major type %d" % major)
    if n < 3:
        raise ProtocolError("frame: expected at least 3 items, got %d" % n)
    v = _uint(d, "version", U64)
    if v != VERSION and v != VERSION | PHASE_BIT:
        raise ProtocolError("version: expected %d, got %d" % (VERSION, v))
    t = _uint(d, "type", U64)
    if t not in TYPE_NAMES:
        raise ProtocolError("type: unknown frame type %d" % t)
    if v != VERSION and t >= T_ENVELOPE:  # MQTT messages have no key phase
        raise ProtocolError("version: expected %d, got %d" % (VERSION, v))
    return t


_NFIELDS = {T_BEACON: 9, T_TELEMETRY: 10, T_STATUS: 10, T_REPLY: 10, T_COMMAND: 9,
            T_OTA_ADV: 9, T_OTA_REQ: 8, T_OTA_DATA: 8, T_ROUTED: 6, T_ENVELOPE: 5, T_DOWNLINK: 3}


def decode(buf, mesh_key=None, node_key=None):
    """Decode one frame from `buf` and return the frame object.

    mesh_key: when given (bytes or Hmac, or a pair (even epoch key, odd epoch key) either of
    which may be None), the hop tag of an air frame must match the key of its key phase; the
    frame's `phase` attribute says which phase tagged it.
    node_key: when given (bytes, Hmac, or a callable origin -> key or None), the end-to-end tag
    of telemetry/status/reply, or the HMAC auth of a command to one node, must match.
    Raises ProtocolError — and nothing else — for any input."""
    try:
        return _decode(buf, mesh_key, node_key)
    except ProtocolError:
        raise
    except MemoryError:
        raise ProtocolError("frame too large to decode in the available memory")
    except Exception as e:  # noqa: BLE001 - the contract: only ProtocolError escapes
        raise ProtocolError("malformed frame (%s: %s)" % (type(e).__name__, e))


def _decode(buf, mesh_key, node_key):
    if not isinstance(buf, (bytes, bytearray, memoryview)):
        raise ProtocolError("expected bytes, got " + type(buf).__name__)
    t = peek_type(buf)
    # MQTT messages (an envelope, a downlink: several air frames) are bounded by MAX_ENVELOPE;
    # a downlink of routed commands passes 250 bytes at three frames
    if t != T_ENVELOPE and t != T_DOWNLINK and len(buf) > MAX_FRAME:
        raise ProtocolError("frame is %d bytes, the radio carries at most %d" % (len(buf), MAX_FRAME))
    if len(buf) > MAX_ENVELOPE:
        raise ProtocolError("message is %d bytes, at most %d accepted" % (len(buf), MAX_ENVELOPE))
    d = cbor.Decoder(buf)
    _, n = d.head()
    if n != _NFIELDS[t] and (t != T_BEACON or n != 11):  # a beacon: 9 items (no root) or 11
        raise ProtocolError("%s: expected %d items, got %d" % (TYPE_NAMES[t], _NFIELDS[t], n))
    start = d.pos
    phase = 1 if _uint(d, "version", U8) & PHASE_BIT else 0
    _uint(d, "type", U8)
    if t == T_ENVELOPE or t == T_DOWNLINK:
        return _mqtt(t)[1](d)
    if t in _UPLINK:  # the host's business (a node forwards these by their bytes, firmware/mesh.py)
        from protocol.frames_up import dec_uplink

        f, covered = dec_uplink(d, t, buf, start)
    elif t == T_COMMAND:
        f = Command(*_get(d, Command.SPEC))
        n = _arr(d, "command.args", 0, 4)
        f.args = [_scalar_arg(d, "command.args") for _ in range(n)]
        covered = bytes(buf[start:d.pos])
        f.hops = _uint(d, "hops", U8)
        want = SIG_LEN if f.target == 0 else E2E_TAG_LEN
        f.auth = _bstr(d, "command.auth", want, want)
    elif t == T_ROUTED:
        from protocol.routed import dec_routed
        f = dec_routed(d)
    elif t == T_BEACON:
        f = Beacon(*_get(d, Beacon.SPEC if n == 11 else Beacon.SPEC[:Beacon.LEGACY_FIELDS]))
        if n == 11 and not f.root:  # as scan_beacon and the CDDL: the 11-item layout names a root
            raise ProtocolError("beacon: rseq without a root")
    else:
        from protocol.frames_ota import OTA_FRAMES

        cls = OTA_FRAMES[t]
        f = cls(*_get(d, cls.SPEC))
        if t == T_OTA_DATA:
            f.data = _bstr(d, "data", 1, OTA_PKT_MAX)
    if phase and (t in _UPLINK or t == T_COMMAND):  # e2e tags and auth cover the version item as VERSION: only the hop tag has the phase
        covered = b"\x01" + covered[1:]
    tag_at = d.pos
    htag = _bstr(d, "hop tag", HOP_TAG_LEN, HOP_TAG_LEN)
    d.done()
    # The hop tag first: it is the cheap check that the frame comes from this mesh at all, so a
    # stranger's frame is told apart from a member's forgery and costs no node-key lookup.
    f.phase = phase
    if mesh_key is not None:
        hm = _hmac(mesh_key, phase)
        if hm is None:
            raise ProtocolError("hop tag: no mesh key for key phase %d" % phase)
        if not ct_equal(hm.tag(bytes(buf[:tag_at + 1]), HOP_TAG_LEN), htag):
            raise ProtocolError("hop tag mismatch: frame not from this mesh, or corrupted")
    if node_key is not None:
        if t in _UPLINK:
            key = node_key(f.origin) if callable(node_key) else node_key
            if key is None:
                raise ProtocolError("unknown node %d: no key to check its end-to-end tag" % f.origin)
            if not ct_equal(_hmac(key).tag(covered, E2E_TAG_LEN), f.etag):
                raise ProtocolError("end-to-end tag mismatch for node %d seq %d" % (f.origin, f.seq))
        elif t == T_COMMAND and f.target != 0:
            key = node_key(f.target) if callable(node_key) else node_key
            if key is None or not ct_equal(_hmac(key).tag(covered, E2E_TAG_LEN), f.auth):
                raise ProtocolError("command auth mismatch for node %d cseq %d" % (f.target, f.cseq))
    return f
