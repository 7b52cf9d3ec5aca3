"""A small, strict CBOR codec (RFC 8949) for Red Mesh — the same code on MicroPython and CPython.

Rules of operation
- Encoding is core deterministic (RFC 8949 section 4.2.1): shortest integer and length heads,
  definite lengths only, map keys sorted by the bytewise order of their encodings.
- Only what the spec (protocol/redmesh.cddl) uses is accepted: unsigned and negative integers
  up to 64 bits, byte strings, UTF-8 text strings, arrays, maps, false/true/null.
  Floats, tags, undefined, other simple values, indefinite lengths, non-shortest heads,
  unsorted or duplicate map keys, nesting deeper than MAX_DEPTH and trailing bytes are all
  rejected with a ProtocolError that says what was expected and what arrived.
- Every length is checked against the bytes remaining *before* anything is allocated, so a
  hostile 5-byte input can never ask for a 4 GB buffer.
"""
from protocol.errors import ProtocolError

MAX_DEPTH = 8
# A container can hold at most one item per remaining byte; this cap keeps item counts sane.
MAX_ITEMS = 4096

_SIMPLE_FALSE = 0xF4
_SIMPLE_TRUE = 0xF5
_SIMPLE_NULL = 0xF6


def put_head(major, n, out):
    """Append the CBOR head of major type `major` with argument `n` to bytearray `out`."""
    mt = major << 5
    if n < 24:
        out.append(mt | n)
    elif n < 0x100:
        out.append(mt | 24)
        out.append(n)
    elif n < 0x10000:
        out.append(mt | 25)
        out.extend(n.to_bytes(2, "big"))
    elif n < 0x100000000:
        out.append(mt | 26)
        out.extend(n.to_bytes(4, "big"))
    elif n < 0x10000000000000000:
        out.append(mt | 27)
        out.extend(n.to_bytes(8, "big"))
    else:
        raise ValueError("integer out of range: expected at most 64 bits, got " + str(n))


def _enc(obj, out, depth):
    if depth > MAX_DEPTH:
        raise ValueError("nesting too deep: expected at most %d levels" % MAX_DEPTH)
    # bool before int: on CPython True is an int.
    if obj is True:
        out.append(_SIMPLE_TRUE)
    elif obj is False:
        out.append(_SIMPLE_FALSE)
    elif obj is None:
        out.append(_SIMPLE_NULL)
    elif isinstance(obj, int):
        if obj >= 0:
            put_head(0, obj, out)
        else:
            put_head(1, -1 - obj, out)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        put_head(2, len(obj), out)
        out.extend(obj)
    elif isinstance(obj, str):
        b = obj.encode("utf-8")
        put_head(3, len(b), out)
        out.extend(b)
    elif isinstance(obj, (list, tuple)):
        put_head(4, len(obj), out)
        for item in obj:
            _enc(item, out, depth + 1)
    elif isinstance(obj, dict):
        pairs = []
        for k in obj:
            kb = bytearray()
            _enc(k, kb, depth + 1)
            pairs.append((bytes(kb), obj[k]))
        pairs.sort(key=lambda p: p[0])
        put_head(5, len(pairs), out)
        for kb, v in pairs:
            out.extend(kb)
            _enc(v, out, depth + 1)
    else:
        raise TypeError("cannot encode a " + type(obj).__name__ + ": expected int, bytes, str, list, dict, bool or None")


def dumps(obj):
    """Return the deterministic CBOR encoding of `obj` as bytes. Raises ValueError (an integer out
    of range, nesting too deep) or TypeError (a value CBOR does not carry): the caller's misuse."""
    out = bytearray()
    _enc(obj, out, 0)
    return bytes(out)


_MAJOR_NAMES = ("uint", "negative int", "byte string", "text string", "array", "map", "tag", "simple/float")


class Decoder:
    """Strict decoder over a buffer. `pos` is the offset of the next unread byte, so callers
    (frame decoders) can take slices of the exact bytes an item was encoded in."""

    def __init__(self, buf):
        if not isinstance(buf, (bytes, bytearray, memoryview)):
            raise ProtocolError("expected bytes to decode, got " + type(buf).__name__)
        self.buf = buf
        self.pos = 0
        self.end = len(buf)

    def _need(self, n, what):
        if self.end - self.pos < n:
            raise ProtocolError(
                "truncated: expected %d more byte(s) for %s at offset %d, %d left" % (n, what, self.pos, self.end - self.pos)
            )

    def head(self):
        """Read one initial byte and argument; return (major, value). Enforces shortest form."""
        self._need(1, "an item head")
        ib = self.buf[self.pos]
        self.pos += 1
        major = ib >> 5
        ai = ib & 0x1F
        if major == 7:
            if ib in (_SIMPLE_FALSE, _SIMPLE_TRUE, _SIMPLE_NULL):
                return 7, ib
            if ai in (25, 26, 27):
                raise ProtocolError("floats are not allowed: got a float at offset %d" % (self.pos - 1))
            raise ProtocolError("unsupported simple value 0x%02x at offset %d" % (ib, self.pos - 1))
        if major == 6:
            raise ProtocolError("tags are not allowed: got tag head 0x%02x at offset %d" % (ib, self.pos - 1))
        if ai < 24:
            return major, ai
        if ai == 31:
            raise ProtocolError("indefinite length is not allowed (offset %d)" % (self.pos - 1))
        if ai > 27:
            raise ProtocolError("reserved additional info %d at offset %d" % (ai, self.pos - 1))
        size = 1 << (ai - 24)
        self._need(size, "an integer argument")
        val = int.from_bytes(self.buf[self.pos:self.pos + size], "big")
        self.pos += size
        # shortest form: the value must not fit in the previous, smaller width
        if (ai == 24 and val < 24) or (ai > 24 and val < (1 << (4 << (ai - 24)))):
            raise ProtocolError("non-shortest integer encoding at offset %d" % (self.pos - size - 1))
        return major, val

    def item(self, depth=0):
        """Decode one complete data item and return it as a Python value."""
        if depth > MAX_DEPTH:
            raise ProtocolError("nesting too deep: expected at most %d levels" % MAX_DEPTH)
        major, val = self.head()
        if major == 0:
            return val
        if major == 1:
            return -1 - val
        if major == 2 or major == 3:
            self._need(val, _MAJOR_NAMES[major])
            raw = self.buf[self.pos:self.pos + val]
            self.pos += val
            if major == 2:
                return bytes(raw)
            try:
                return str(bytes(raw), "utf-8")
            except Exception:  # noqa: BLE001 - UnicodeError on CPython, UnicodeError/ValueError on MicroPython
                raise ProtocolError("invalid UTF-8 in text string ending at offset %d" % self.pos)
        if major == 4:
            self._check_count(val, 1)
            out = []
            for _ in range(val):
                out.append(self.item(depth + 1))
            return out
        if major == 5:
            self._check_count(val, 2)
            out = {}
            prev = None
            for _ in range(val):
                k_start = self.pos
                k = self.item(depth + 1)
                if isinstance(k, (list, dict)):
                    raise ProtocolError("map keys must be int or text, got a container at offset %d" % k_start)
                kb = bytes(self.buf[k_start:self.pos])
                if prev is not None and not (prev < kb):
                    raise ProtocolError("map keys not in deterministic order or duplicated at offset %d" % k_start)
                prev = kb
                out[k] = self.item(depth + 1)
            return out
        if major == 7:
            if val == _SIMPLE_TRUE:
                return True
            if val == _SIMPLE_FALSE:
                return False
            return None
        raise ProtocolError("unexpected major type %d" % major)  # pragma: no cover

    def _check_count(self, count, min_bytes_each):
        if count > MAX_ITEMS:
            raise ProtocolError("container too large: %d items, at most %d allowed" % (count, MAX_ITEMS))
        if count * min_bytes_each > self.end - self.pos:
            raise ProtocolError(
                "truncated: container claims %d items but only %d bytes remain" % (count, self.end - self.pos)
            )

    def done(self):
        if self.pos != self.end:
            raise ProtocolError("trailing bytes: %d byte(s) after the item at offset %d" % (self.end - self.pos, self.pos))


def loads(buf):
    """Decode exactly one CBOR item from `buf` (no trailing bytes). Raises ProtocolError only."""
    d = Decoder(buf)
    v = d.item()
    d.done()
    return v


# ---------------------------------------------------------------------- in-place scanners
# For the fast paths (a forwarder reading a frame's header where it lies, the simulator's
# medium): no frame object, no copy. They trust nothing: a layout they do not expect raises
# ProtocolError, a buffer cut short IndexError (bounds checks left to the indexing: this is the
# hot path) - a caller counts either as a bad frame. What they read is what decode() reads
# (tests/device/test_protocol_scan.py holds them to it).
_NOT_UINT = "not a small unsigned integer"


def uint_at(b, p):
    """The CBOR unsigned integer (at most 32 bits) at b[p]: (value, the offset after it)."""
    ib = b[p]
    if ib < 24:
        return ib, p + 1
    if ib == 24:
        return b[p + 1], p + 2
    if ib == 25:
        return (b[p + 1] << 8) | b[p + 2], p + 3
    if ib == 26:
        return (b[p + 1] << 24) | (b[p + 2] << 16) | (b[p + 3] << 8) | b[p + 4], p + 5
    raise ProtocolError(_NOT_UINT)


def skip_items(b, p, n):
    """The offset after the `n` CBOR items at b[p] (no floats, tags or indefinite lengths).
    Every step consumes a byte, so a hostile count ends in an IndexError, not a long loop; a
    hostile length is refused before it is used as an offset (on a 32-bit board an offset past
    2**30 is a long int, and indexing with it raises OverflowError, not IndexError)."""
    end = len(b)
    while n:
        ib = b[p]
        p += 1
        n -= 1
        if ib < 24:  # an unsigned integer below 24, all in its head: most of a frame's items
            continue
        major = ib >> 5
        ai = ib & 31
        if ai < 24:
            v = ai
        elif ai < 26:  # one or two bytes
            v = b[p] if ai == 24 else (b[p] << 8) | b[p + 1]
            p += ai - 23
        elif ai < 28:  # four or eight bytes
            k = 4 if ai == 26 else 8
            v = int.from_bytes(b[p:p + k], "big")
            p += k
        else:
            raise ProtocolError("indefinite length")
        if major < 2:
            continue
        if major == 4:
            n += v
        elif major < 4:
            p += v
            if p > end:
                raise ProtocolError("truncated")
        elif major == 5:
            n += v + v
        else:
            raise ProtocolError("unexpected major type")
    return p


def uint_head(v):
    """The CBOR head of unsigned `v` (at most 0xFFFF) as bytes: what a forwarder splices in."""
    if v < 24:
        return bytes((v,))
    if v < 256:
        return bytes((24, v))
    return bytes((25, v >> 8, v & 255))
