"""Mesh key wrapping for over-the-air rotation (issue 14): the next epoch's mesh key, sent to one
node encrypted and authenticated with that node's own key. Imported only by the re-key path
(firmware/rekey.py on a node, fleet/keys.py on the host), never by protocol/__init__.

Construction (encrypt-then-MAC, HMAC-SHA256 only: hashlib is on every MicroPython port, while
`cryptolib` is not in the project's 32-bit unix build - it is compiled without SSL/mbedTLS -
so AES would not run on the rig):
    hdr = "redmesh wrap\\0" | net_id u32 | node_id u32 | epoch u32
    enc = HMAC(node_key, "redmesh wrap enc\\0"),  mac = HMAC(node_key, "redmesh wrap mac\\0")
    ct  = mesh_key XOR HMAC(enc, hdr)              (HMAC-SHA256 as a PRF in counter mode, 1 block)
    tag = HMAC(mac, hdr | ct)[:16]
    wrapped = ct | tag                             (48 bytes)
Each (node, epoch) wraps exactly one key (that epoch's mesh key), so the keystream is never
reused for two plaintexts; the header binds the key to its network, node and epoch, so a wrap
for another node or another epoch fails the tag. The tag is checked (constant time) before
anything is decrypted.

Node keys carry the epoch too (epoch_node_key): in epoch 0 a node's end-to-end key is the one it
was provisioned with; in epoch e > 0 it is HMAC(provisioned key, "redmesh node key epoch\0" | e
u32 | epoch e's mesh key). The node derives it from what it holds, the host from the fleet
secret; the next epoch's key is wrapped with the node key of the epoch the node is in. Whoever
holds an old node key but not the new epoch's mesh key (read from a discarded or serviced
board, say) cannot make or check that node's frames after a rotation. (Whoever holds it and
also recorded the re-key sent to that node can: without a key agreement on the node, e.g.
X25519, a key delivered under the old one is no stronger than it.)
"""
from protocol.auth import KEY_LEN, MAX_EPOCH, Hmac, ct_equal
from protocol.errors import ProtocolError

OP_REKEY = 6  # command to one node: [epoch, wrap b64 [:32], wrap b64 [32:]] (+ [1]: in force now); reply [epoch]
OP_EPOCH = 7  # command to every node (signed): [epoch, 0] activate the epoch, [epoch, 1] end its grace
WRAP_TAG_LEN = 16
WRAPPED_LEN = KEY_LEN + WRAP_TAG_LEN


def _hdr(net_id, node_id, epoch):
    if not 0 < epoch <= MAX_EPOCH:
        raise ProtocolError("key wrap: epoch must be 1..%d, got %r" % (MAX_EPOCH, epoch))
    return b"redmesh wrap\x00" + int(net_id).to_bytes(4, "big") + int(node_id).to_bytes(4, "big") + int(epoch).to_bytes(4, "big")


def _keys(node_key):
    h = Hmac(node_key)
    return Hmac(h.digest(b"redmesh wrap enc\x00")), Hmac(h.digest(b"redmesh wrap mac\x00"))


def epoch_node_key(node_key, epoch, mesh_key):
    """The node's end-to-end key in key epoch `epoch` (see the module docstring): `node_key` is
    the provisioned key, `mesh_key` epoch `epoch`'s mesh key."""
    if not epoch:
        return bytes(node_key)
    if not 0 < epoch <= MAX_EPOCH or len(mesh_key) != KEY_LEN:
        raise ValueError("node key: bad epoch or mesh key")
    return Hmac(node_key).digest(b"redmesh node key epoch\x00" + int(epoch).to_bytes(4, "big") + bytes(mesh_key))


def wrap(node_key, net_id, node_id, epoch, mesh_key):
    """Return the 48-byte wrap of `mesh_key` (32 bytes) for node `node_id`, epoch `epoch`."""
    if len(mesh_key) != KEY_LEN:
        raise ValueError("key wrap: the mesh key must be %d bytes" % KEY_LEN)
    hdr = _hdr(net_id, node_id, epoch)
    enc, mac = _keys(node_key)
    ks = enc.digest(hdr)
    ct = bytes(a ^ b for a, b in zip(mesh_key, ks))
    return ct + mac.tag(hdr + ct, WRAP_TAG_LEN)


def unwrap(node_key, net_id, node_id, epoch, wrapped):
    """Return the mesh key in `wrapped`, or raise ProtocolError when it was not made with this
    node key for this network, node and epoch (forged, corrupted, or meant for another)."""
    if not isinstance(wrapped, (bytes, bytearray)) or len(wrapped) != WRAPPED_LEN:
        raise ProtocolError("key wrap: expected %d bytes" % WRAPPED_LEN)
    hdr = _hdr(net_id, node_id, epoch)
    enc, mac = _keys(node_key)
    ct = bytes(wrapped[:KEY_LEN])
    if not ct_equal(mac.tag(hdr + ct, WRAP_TAG_LEN), bytes(wrapped[KEY_LEN:])):
        raise ProtocolError("key wrap: tag mismatch (forged, corrupted, or for another node or epoch)")
    ks = enc.digest(hdr)
    return bytes(a ^ b for a, b in zip(ct, ks))


def to_args(epoch, wrapped, now=False):
    """The OP_REKEY command arguments: [epoch, base64 of the wrap in two 32-character texts],
    and a fourth, 1, when the epoch is already in force on the fleet (the answer to a node that
    missed the rotation and asked: it takes the key in force at once, no grace window)."""
    import binascii

    b = binascii.b2a_base64(wrapped).strip().decode()
    return [epoch, b[:32], b[32:], 1] if now else [epoch, b[:32], b[32:]]


def from_args(args):
    """(epoch, wrapped) from OP_REKEY arguments (the in-force flag, args[3], is read by the
    caller); raises ProtocolError when malformed."""
    if len(args) < 3 or len(args) > 4 or not isinstance(args[0], int) or not isinstance(args[1], str) \
            or not isinstance(args[2], str) or (len(args) == 4 and args[3] != 1):
        raise ProtocolError("rekey: expected [epoch, text, text] or [epoch, text, text, 1]")
    import binascii

    try:
        w = binascii.a2b_base64(args[1] + args[2])
    except Exception:  # noqa: BLE001 - binascii.Error on CPython, ValueError on MicroPython
        raise ProtocolError("rekey: the wrapped key is not base64")
    if len(w) != WRAPPED_LEN:
        raise ProtocolError("rekey: the wrapped key is %d bytes, expected %d" % (len(w), WRAPPED_LEN))
    return args[0], w
