"""The routed frame's layout read in place, for the relays that forward it by its bytes
(firmware/downroute.py). protocol/routed.py is the codec (Routed objects, on the host and in
tests); this is its fast path, held to protocol.decode by tests/device/test_protocol_scan.py. A
module of its own: a node loads it with downroute.py on its first routed frame, and never the
codec."""

from protocol.cbor import skip_items, uint_at
from protocol.errors import ProtocolError
from protocol.frames import T_ROUTED

# hops a source route names at most. The frame must fit the radio too: 48 node ids below 65,536
# (3 bytes each) or 32 of 5 bytes with a resend command; a longer one fails protocol.encode
# (ValueError) and the fleet floods instead. 48 = the routers' TTL (firmware/mesh_params.py)
MAX_ROUTE = 48


def scan_routed(b):
    """A routed frame [v, 9, path, at, cmd, htag]: (path, at, p_at, p_cmd, cmd). path: the node
    ids; at: the index of the node it is addressed to now; p_at: the offset of the at item (a
    relay rewrites it); p_cmd: the cmd item's head (the item runs to the hop tag's, 5 bytes
    before the end); cmd: the command frame it carries, not checked here (its receiver scans
    it). Raises ProtocolError on a bad layout (IndexError on a short frame)."""
    ib = b[3]
    if ib == 0x98:
        n = b[4]
        p = 5
    else:
        n = ib - 0x80
        p = 4
    if b[0] != 0x86 or b[2] != T_ROUTED or n < 1 or n > MAX_ROUTE:
        raise ProtocolError("routed: bad header")
    path = []
    for _ in range(n):
        v, p = uint_at(b, p)
        path.append(v)
    p_at = p
    at, p = uint_at(b, p)
    p_cmd = p
    p = skip_items(b, p, 1)
    hb = b[p_cmd]  # cmd: a byte string of at most 255 bytes (its length head in shortest form)
    if at >= n or hb >> 5 != 2 or hb & 31 > 24 or b[p] != 0x44 or p + 5 != len(b):
        raise ProtocolError("routed: bad layout")
    return path, at, p_at, p_cmd, b[p_cmd + (1 if hb < 0x58 else 2):p]
