"""The routed frame (type 9): a command for one node on its way down a source route.

Kept out of protocol/frames.py so that a plain node, which forwards routed frames by their bytes
(firmware/mesh.py), does not pin this codec in its heap; frames.encode/decode load it on demand."""

from protocol.auth import HOP_TAG_LEN
from protocol.cbor import put_head, uint_head
from protocol.errors import ProtocolError
from protocol.frames import (
    MAX_FRAME,
    T_COMMAND,
    T_ROUTED,
    U32,
    VERSION,
    Frame,
    _arr,
    _bstr,
    _num,
    _put_bytes,
    _put_num,
    peek_type,
)
from protocol.routed_scan import MAX_ROUTE  # noqa: F401 - hops a source route names at most


class Routed(Frame):
    """[version, type, path, at, cmd, htag] (RPL non-storing style). path: the node ids from the
    gateway's child down to the target (1..MAX_ROUTE, the target last), compiled by the gateway
    from the parents nodes report; at: the index in path of the node the frame is addressed to
    now (mutable, like hops); cmd: the whole command frame (its own auth and hop tag) that the
    target hands to its ordinary command path. No node keeps a table of its descendants."""

    type = T_ROUTED
    FIELDS = ("path", "at", "cmd")
    DEFAULTS = {"path": []}


def enc_routed(frame, out):
    put_head(4, 6, out)
    put_head(0, VERSION, out)
    put_head(0, T_ROUTED, out)
    n = len(frame.path)
    if n < 1 or n > MAX_ROUTE:
        raise ValueError("routed.path: expected 1..%d node ids" % MAX_ROUTE)
    put_head(4, n, out)
    for nid in frame.path:
        _put_num(out, "routed.path", nid, 1, U32)
    _put_num(out, "routed.at", frame.at, 0, n - 1)
    _put_bytes(out, "routed.cmd", frame.cmd, 8, MAX_FRAME)
    # relays rewrite `at`, which takes a byte more from 24 on: the frame must fit at its last hop
    last = len(out) + len(uint_head(n - 1)) - len(uint_head(frame.at)) + 1 + HOP_TAG_LEN
    if last > MAX_FRAME:
        raise ValueError("routed frame is %d bytes at its last hop, the radio carries at most %d (a route "
                         "of %d hops)" % (last, MAX_FRAME, n))


def dec_routed(d):
    n = _arr(d, "routed.path", 1, MAX_ROUTE)
    f = Routed([_num(d, "routed.path", 1, U32) for _ in range(n)])
    f.at = _num(d, "routed.at", 0, n - 1)
    f.cmd = _bstr(d, "routed.cmd", 8, MAX_FRAME)
    if peek_type(f.cmd) != T_COMMAND:
        raise ProtocolError("routed.cmd: expected a command frame")
    return f


def compile_path(parents, target, gateways):
    """Source route to `target` from the parents nodes reported (RPL non-storing mode, at the
    fleet, never on a node): parents maps node id -> parent id (0 or absent: unknown);
    gateways is a set of gateway ids. Returns (gateway, path) with path the node ids from the
    gateway's child down to target, or None when the chain is unknown, loops, or is longer
    than MAX_ROUTE (the caller falls back to a flood and counts it)."""
    path = [target]
    cur = parents.get(target, 0)
    while cur not in gateways:
        if not cur or cur in path or len(path) >= MAX_ROUTE:
            return None
        path.append(cur)
        cur = parents.get(cur, 0)
    path.reverse()
    return cur, path
