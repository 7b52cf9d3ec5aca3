"""Decoding the uplink frames (telemetry, status, reply): the host's part of protocol.decode.

A node makes these frames (protocol.encode) and forwards other nodes' by their bytes
(firmware/mesh.py), but never decodes one, so this code is not pinned in its heap: decode
imports it when an uplink frame arrives (on the host, and in the device tests)."""
from protocol.errors import ProtocolError
from protocol.frames import (
    _UP_HEAD,
    _UP_MUT,
    _UPLINK,
    E2E_TAG_LEN,
    MAX_READINGS,
    T_STATUS,
    T_TELEMETRY,
    U8,
    U32,
    Reading,
    StatusBody,
    _arr,
    _bstr,
    _get,
    _scalar_arg,
)

_REPLY = (("reply.cseq", 0, U32), ("reply.code", 0, U8))


def _rec(d, cls, name):
    _arr(d, name, len(cls.FIELDS), len(cls.FIELDS))
    return cls(*_get(d, cls.SPEC, name))


def _status_body(d):
    full = len(StatusBody.FIELDS)
    old = StatusBody.LEGACY_FIELDS
    n = _arr(d, "status", old, full)
    if n != old and n != old + 2 and n != full:
        raise ProtocolError("status: expected %d items (or %d, %d from older firmware), got %d"
                            % (full, old + 2, old, n))
    vals = _get(d, StatusBody.SPEC if n == full else StatusBody.SPEC[:n], "status")
    while len(vals) < full:
        vals.append(None)  # not reported by an older firmware
    return StatusBody(*vals)


def dec_uplink(d, t, buf, start):
    """Decode the rest of an uplink frame of type `t` from decoder `d` (version and type read;
    the array began at buf[start]); return (frame, the bytes its end-to-end tag covers)."""
    f = _UPLINK[t]()
    f.origin, f.seq, f.time_s = _get(d, _UP_HEAD)
    if t == T_TELEMETRY:
        n = _arr(d, "readings", 1, MAX_READINGS)
        f.readings = [_rec(d, Reading, "reading") for _ in range(n)]
    elif t == T_STATUS:
        f.body = _status_body(d)
    else:
        _arr(d, "reply", 3, 3)
        f.cseq, f.code = _get(d, _REPLY)
        n = _arr(d, "reply.result", 0, 8)
        f.result = [_scalar_arg(d, "reply.result") for _ in range(n)]
    covered = bytes(buf[start:d.pos])
    f.hops, f.cost = _get(d, _UP_MUT)
    f.etag = _bstr(d, "etag", E2E_TAG_LEN, E2E_TAG_LEN)
    if t == T_TELEMETRY and f.seq + len(f.readings) - 1 > U32:
        raise ProtocolError("telemetry: reading sequence numbers overflow 32 bits")
    return f, covered
