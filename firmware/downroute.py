"""Downward source routes on a node (issue 15): forwarding of routed frames (protocol/routed.py;
read in place by protocol/routed_scan.py).

A command for one node travels down the path the fleet compiled from the parents nodes report
(RPL non-storing mode): each relay reads path[at], sets at + 1, re-tags and unicasts to the next
hop; the target hands the inner command to Router._rx_cmd (its auth, replay window, duplicate
check). Each hop is a unicast sent up to ROUTED_SENDS times (the router keeps at most 8 hops
awaiting their outcome). Bytes only: no frame objects, no per-descendant state. Kept out of firmware/mesh.py so
a node that never relays a routed frame does not pin this code (firmware/mesh.py imports it on
the first routed frame)."""

from firmware.mesh import BROADCAST
from protocol.auth import HOP_TAG_LEN
from protocol.cbor import uint_head
from protocol.frames import scan_command
from protocol.routed_scan import scan_routed

ROUTED_SENDS = 3  # unicasts of one hop (each after the MAC's own retries), as data frames retry
_MAX_PENDING = 8


def rx_routed(router, data, now, inject):
    """For `router` (a firmware.mesh.Router): a routed frame [v, 9, path, at, cmd, htag]: forward it to path[at + 1], or hand
    cmd to the command path when this node is its target. The next hop's MAC comes from
    the neighbour table (children beacon); a child not in it gets the frame as a one-hop
    broadcast that only it acts on (counted: routed_nbr_miss). No per-descendant state."""
    st = router.stats
    try:
        ids, at, p_at, p_cmd, cmd = scan_routed(data)
        last = len(ids) - 1
        if not inject:
            if ids[at] != router.node_id:
                return False  # a fallback broadcast for another node
            target, cseq = scan_command(cmd)[:2]
            if at == last and target != ids[at]:
                raise ValueError  # only a command for this node ends here: never a flood
    except Exception:  # noqa: BLE001 - a peer's bad bytes (ProtocolError, IndexError): a bad frame
        st["bad_frames"] += 1
        return False
    # the last hop to a node that missed a key rotation comes in an epoch it holds no key for:
    # the command inside carries its own end-to-end check (router._rx_cmd)
    if not (not inject and at == last) and not router._tag_ok(data):
        st["bad_frames"] += 1
        return False
    if not inject:
        if at == last:
            return router._rx_cmd(cmd, now)
        # a copy we passed on already: the hop before re-sent it after its ACK was lost (the
        # frame had come). Passed on again, every lost ACK on the path forked the rest of it:
        # ~4 sends per hop down 18-hop paths in the 2,000-node storm at 20 % loss, against ~1.2
        # for the replies coming up (whose duplicates the router drops)
        if router._flood.recent(target, cseq, 1, now, router.flood_memory_ms):
            st["routed_dup"] += 1
            return True
        at += 1
        # re-tagged in this node's own epoch (its key phase in the version item), as floods are:
        # the bytes up to the hop tag (its item's head included), then the new tag
        data = data[:1] + router._vb + data[2:p_at] + uint_head(at) + data[p_cmd:-HOP_TAG_LEN]
        data += router._hmac.tag(data, HOP_TAG_LEN)
    nb = router._nbrs.get(ids[at])
    if nb is None:
        st["routed_nbr_miss"] += 1
        router._out((router._token(), BROADCAST, data))
        return True
    st["routed_fwd"] += 1
    _send(router, nb.mac, data, 1)
    return True


def _send(router, mac, data, sends):
    """Unicast one hop of a routed frame, remembered until its outcome (routed_done): a routed
    frame has no queue entry, so without this a hop lost after the MAC's own retries was gone
    and the fleet's retry came as a flood (the 25-node HIL at 20 % extra loss: 2 of 24)."""
    rt = router._routed
    if rt is None:
        rt = router._routed = {}
    elif len(rt) >= _MAX_PENDING:  # outcomes that never came (a shell that lost them): forget one
        rt.pop(next(iter(rt)))
    tok = router._token()
    rt[tok] = (mac, data, sends)
    router._out((tok, mac, data))


def routed_done(router, pending, ok):
    """Router.on_send_done for a routed hop: on a failure send it again, up to ROUTED_SENDS."""
    mac, data, sends = pending
    if ok:
        return
    if sends < ROUTED_SENDS:
        router.stats["routed_retries"] += 1
        _send(router, mac, data, sends + 1)
    else:
        router.stats["routed_fail"] += 1



def inject_routed(router, frame_bytes, now_ms):
    """Gateway: a Routed frame from MQTT (a source route the fleet compiled) to send to path[0],
    its first hop. Returns True when sent (False: not a valid routed frame, counted bad_frames)."""
    if not router._started:
        router._start(now_ms)
    return rx_routed(router, bytes(frame_bytes), now_ms, True)
