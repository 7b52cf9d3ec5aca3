"""Mesh key epochs on a node (issue 14): the persisted key state and the three rotation steps.
Imported only when a re-key or activation command arrives (firmware/node.py drops it after),
so a node's steady-state heap does not carry it.

State: the current epoch and its mesh key, plus at most one other epoch's key - the next epoch
(received, not yet active) or the previous one (grace window after an activation). Kept in
STATE_FILE on the flash, written with fsutil.write_file (new file, then rename), so a power cut
at any flash write leaves the old state or the new one, never none: a node without a valid
state file runs on the provisioned key (in the config's mesh_epoch, 0 by default). Layout (81 bytes):
    "RMK1" | cur_epoch u32 | cur_key 32 | oth_epoch u32 (0xFFFFFFFF = none) | oth_key 32 | check 8
where check = SHA-256 of the bytes before it, truncated (a corrupted file is not trusted).

Steps (each returns the new state and persists it first; a refused step changes nothing):
- offer(state, ..., epoch, wrapped, now): the next epoch's key, unwrapped with the node key
  (protocol/keywrap.py). Refused unless epoch > cur_epoch; a repeat of the held next epoch is
  accepted again without a write (the fleet may resend when a confirmation was lost). With now
  (the fleet's answer to a node that missed the rotation and asked for the key: the epoch is
  in force already), it becomes the only key at once.
- activate(state, epoch): the held next epoch becomes current; the old one is kept for the
  grace window. Refused unless epoch is the held next one (or already current: idempotent).
- end_grace(state): drop the previous epoch's key.
"""
import hashlib

from firmware import fsutil
from protocol.errors import ProtocolError
from protocol.frames import COST_INFINITE
from protocol.keywrap import OP_REKEY

STATE_FILE = "mesh_keys.bin"
# A node ends a grace window by itself this long after it began (or after a boot in one): the
# fleet's end of grace (signed OP_EPOCH [e, 1], sent three times) may all be lost, and the old
# epoch's key is a stolen pole's. `fleet keys rotate --grace` stays under it.
GRACE_MAX_S = 3600
_MAGIC = b"RMK1"
NONE = 0xFFFFFFFF
_LEN = 4 + 4 + 32 + 4 + 32 + 8


def _enc(st):
    cur_e, cur_k, oth_e, oth_k = st
    b = _MAGIC + cur_e.to_bytes(4, "big") + cur_k + (NONE if oth_e is None else oth_e).to_bytes(4, "big") \
        + (oth_k if oth_k is not None else bytes(32))
    return b + hashlib.sha256(b).digest()[:8]


def _dec(b):
    if b is None or len(b) != _LEN or b[:4] != _MAGIC or hashlib.sha256(b[:-8]).digest()[:8] != b[-8:]:
        return None
    oth_e = int.from_bytes(b[40:44], "big")
    if oth_e == NONE:
        return (int.from_bytes(b[4:8], "big"), bytes(b[8:40]), None, None)
    return (int.from_bytes(b[4:8], "big"), bytes(b[8:40]), oth_e, bytes(b[44:76]))


def load(fs, provisioned_key, provisioned_epoch=0):
    """Return the node's key state (cur_epoch, cur_key, other_epoch or None, other_key or None):
    the state file when valid and not older than the provisioned key's epoch (a board
    re-provisioned after a rotation may still hold an old file), else the provisioned mesh key
    in its epoch (config mesh_epoch)."""
    st = _dec(fsutil.read_file(fs, STATE_FILE))
    if st is not None and st[0] >= provisioned_epoch:
        return st
    return (provisioned_epoch, bytes(provisioned_key), None, None)


def save(fs, st):
    fsutil.write_file(fs, STATE_FILE, _enc(st))


def offer(fs, st, node_key, net_id, node_id, epoch, wrapped, now=False):
    """With now (the epoch is in force on the fleet already: this node missed the rotation and
    asked), the key becomes the only one at once, in one write: the old epoch is refused
    everywhere, so no grace window."""
    cur_e = st[0]
    if epoch <= cur_e:
        raise ProtocolError("rekey: epoch %d is not after the current epoch %d (replayed or stale)" % (epoch, cur_e))
    from protocol.keywrap import unwrap

    key = unwrap(node_key, net_id, node_id, epoch, wrapped)  # raises on a forged or foreign wrap
    new = (epoch, key, None, None) if now else (cur_e, st[1], epoch, key)
    if st[2] == epoch and st[3] == key and not now:
        return st
    save(fs, new)
    return new


def activate(fs, st, epoch):
    cur_e, cur_k, oth_e, oth_k = st
    if epoch == cur_e:
        return st
    if oth_e != epoch or epoch <= cur_e:
        raise ProtocolError("activate: epoch %d is not the next epoch this node holds" % epoch)
    new = (epoch, oth_k, cur_e, cur_k)
    save(fs, new)
    return new


def end_grace(fs, st):
    if st[2] is None or st[2] > st[0]:
        return st  # nothing to drop (or the other key is the next epoch's: kept)
    new = (st[0], st[1], None, None)
    save(fs, new)
    return new


def set_keys(router, current, phase, other=None):
    """Key epochs on a firmware.mesh.Router: `current` (bytes or Hmac) tags every frame it sends
    or forwards, in key phase `phase` (epoch & 1); `other` is the one other epoch's key it holds
    (the next epoch during a rotation, the previous one in the grace window) or None. Frames
    tagged with either are accepted; any other key phase fails the hop tag. (Here, not in
    mesh.py, so a node that never rotates carries none of this code.)"""
    from protocol.auth import Hmac

    cur = current if isinstance(current, Hmac) else Hmac(current)
    oth = other if other is None or isinstance(other, Hmac) else Hmac(other)
    router._hmac = cur
    router._phase = phase & 1
    router._vb = b"\x11" if router._phase else b"\x01"
    router._keys = [oth, cur] if router._phase else [cur, oth]
    for e in router._q:  # queued frames are re-tagged in the new epoch when sent
        if e is not router._inflight:
            e.data = None


def apply(router, st, now=None):
    """Give the router the state's keys. With `now` (ms, the router's clock), a change of the
    key phase it sends in (an activation) resets its beacon timer, so neighbours hear the new
    epoch within seconds; and once it holds one key only (the grace window over), every
    neighbour whose last beacon was tagged in the retired phase is forgotten. Nothing it sends
    can be checked any more, and a neighbour that stayed in the old epoch through the grace
    window holds no key in force: a stolen pole (revoked, left out of the rotation) is one. Its
    radio still acknowledges our unicasts - ESP-NOW's ACK is the radio's, not the mesh's - so as
    a parent it would swallow our frames for good. The parent among them is given up (the router
    re-chooses; a node then without a route rejoins as after any loss); honest neighbours come
    back with their next beacon. Counted in stats["nbr_evicted"]. (One function, no new names:
    every name is a qstr on a board's heap - a rogue OTA node at 123k ran out at boot.)"""
    phase = router._phase
    set_keys(router, st[1], st[0] & 1, st[3])
    if now is None:
        return
    if router._phase != phase:
        router.trickle.reset(now)
    if st[3] is not None:
        return
    b = router._phase << 4
    nbrs = router._nbrs
    par = router._par
    busy = router._inflight_nb
    old = [k for k, nb in nbrs.items() if nb.phase != b]
    for k in old:
        nb = nbrs[k]
        if nb is par or nb is busy:
            nb.cost = COST_INFINITE  # unusable; _evaluate leaves it, housekeeping drops it
            nb.last_ms = now - router.neighbor_timeout_ms - 1
        else:
            del nbrs[k]
    router.stats["nbr_evicted"] += len(old)
    if par is not None and par.phase != b:
        router._evaluate(now)
        if router._par is not par and nbrs.get(par.node_id) is par and par is not busy:
            del nbrs[par.node_id]


def node_op(node, cmd, log):
    """A firmware.node.Node's epoch command (or, cmd None, its boot-time load). OP_REKEY (to
    this node, node-key auth): store the next epoch's key, result [epoch] (with a fourth
    argument, 1: the key in force, taken at once - the answer to this node's key request, its
    status sent with an old epoch: firmware/node.py). OP_EPOCH [epoch, 0]:
    activate it (the previous key stays for the grace window); [epoch, 1]: end that epoch's
    grace window. Gives the router the resulting keys. Returns (code, result): 0 done,
    1 refused (replayed, forged, malformed, not held), 5 flash error."""
    from protocol.auth import Hmac
    from protocol.keywrap import epoch_node_key

    code, result = 0, []
    fs = node.hal.fs
    cfg = node.cfg
    st = load(fs, cfg.mesh_key, cfg.mesh_epoch)
    if cmd is not None:
        a = cmd.args
        try:
            if cmd.op == OP_REKEY:
                from protocol.keywrap import from_args

                epoch, w = from_args(a)
                # wrapped with the node key of the epoch this node is in
                st = offer(fs, st, epoch_node_key(cfg.node_key, st[0], st[1]), cfg.net_id, node.node_id, epoch, w,
                           len(a) == 4)
                result = [epoch]
            elif len(a) == 2 and isinstance(a[0], int) and a[1] == 0:
                st = activate(fs, st, a[0])
            elif len(a) == 2 and isinstance(a[0], int) and a[1] == 1 and a[0] == st[0]:
                st = end_grace(fs, st)
            else:
                code = 1
        except ProtocolError as e:
            log("cmd", "epoch op refused: %s" % e)
            code = 1
        except OSError as e:
            log("cmd", "epoch op: flash error %s" % e)
            code = 5
    now = node.now_ms() if cmd is not None else None
    apply(node.router, st, now)
    node.epoch = st[0]
    # the node key of each epoch held (protocol/keywrap.py epoch_node_key): frames are tagged
    # with the current one; commands made with either are taken
    node.node_hmac = Hmac(epoch_node_key(cfg.node_key, st[0], st[1]))
    node._nk_oth = None if st[2] is None else Hmac(epoch_node_key(cfg.node_key, st[2], st[3]))
    # in a grace window (the other key is the previous epoch's): firmware/node.py ends it by
    # itself GRACE_MAX_S after it began (after a boot in one: timed from the boot)
    if st[2] is None or st[2] > st[0]:
        node._grace = None
    elif node._grace is None:
        node._grace = (now or 0) + GRACE_MAX_S * 1000
    return code, result
