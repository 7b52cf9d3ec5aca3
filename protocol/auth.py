"""Authentication for Red Mesh frames: HMAC-SHA256 on hashlib (MicroPython has no `hmac`),
truncated tags, key derivation, and a replay window over monotonic counters.

Tag lengths, and why
- End-to-end tag (E2E_TAG_LEN = 8 bytes, 64 bits), HMAC-SHA256 with the node's own key over the
  frame's immutable fields. The collector checks it; a forger must guess 64 bits per attempt and
  every attempt costs airtime through a mesh that drops bad hop tags first: 2^-64 is far beyond
  any attack budget on a 1 Mbit/s radio, while 8 bytes keep a one-reading frame within 48.
- Hop-by-hop tag (HOP_TAG_LEN = 4 bytes, 32 bits), HMAC-SHA256 with the network's mesh key over
  every byte before it. It only keeps outsiders from injecting into the mesh and making nodes
  forward junk; an outsider at ~1,000 frames/s would need ~50 days on average to get one frame
  past one hop, and that frame would still fail the end-to-end tag. 4 bytes is the usual
  link-layer trade-off (cf. IEEE 802.15.4 MIC-32).
- Keys are 32 bytes. Node keys and the mesh key are derived on the fleet host from the fleet
  secret (HMAC-SHA256 as a PRF with distinct labels), so a node holds only its own key and the
  mesh key, and one stolen node key forges only that node's readings.
- Mesh keys carry an epoch (derive_mesh_key(secret, net, epoch)): after a pole is stolen the
  fleet revokes it and rotates the network to the next epoch, whose key the thief never saw.
"""
import hashlib

E2E_TAG_LEN = 8
HOP_TAG_LEN = 4
SIG_LEN = 64  # Ed25519 signature (broadcast commands, OTA manifests)
KEY_LEN = 32

_BLOCK = 64
_IPAD = bytes(0x36 for _ in range(_BLOCK))
_OPAD = bytes(0x5C for _ in range(_BLOCK))


def _xor(a, b):
    return bytes(x ^ y for x, y in zip(a, b))


class Hmac:
    """HMAC-SHA256 (RFC 2104) with a fixed key. The padded key blocks are computed once; each
    message then costs two SHA-256 runs. When hashlib objects support copy() (CPython), the
    inner/outer states are hashed once and copied per message."""

    def __init__(self, key):
        if not isinstance(key, (bytes, bytearray)) or len(key) == 0:
            raise ValueError("HMAC key must be non-empty bytes")
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = bytes(key) + bytes(_BLOCK - len(key))
        self._ipad = _xor(key, _IPAD)
        self._opad = _xor(key, _OPAD)
        self._inner = None
        try:
            inner = hashlib.sha256(self._ipad)
            outer = hashlib.sha256(self._opad)
            inner.copy()
            self._inner = inner
            self._outer = outer
        except AttributeError:  # MicroPython: no copy()
            pass

    def digest(self, data):
        """Return the 32-byte HMAC-SHA256 of `data`."""
        if self._inner is not None:
            h = self._inner.copy()
            h.update(data)
            o = self._outer.copy()
            o.update(h.digest())
            return o.digest()
        h = hashlib.sha256(self._ipad)
        h.update(data)
        o = hashlib.sha256(self._opad)
        o.update(h.digest())
        return o.digest()

    def tag(self, data, n):
        """Return the first `n` bytes of the HMAC of `data` (a truncated tag)."""
        return self.digest(data)[:n]


def ct_equal(a, b):
    """Compare two byte strings in time independent of where they differ."""
    if len(a) != len(b):
        return False
    r = 0
    for x, y in zip(a, b):
        r |= x ^ y
    return r == 0


try:  # CPython (fleet, simulators): the same comparison in C
    from hmac import compare_digest as ct_equal  # noqa: F401, F811
except ImportError:  # MicroPython has no hmac module
    pass


def _check_secret(fleet_secret):
    if not isinstance(fleet_secret, (bytes, bytearray)) or len(fleet_secret) < 16:
        raise ValueError("fleet secret must be at least 16 bytes")


def derive_node_key(fleet_secret, net_id, node_id):
    """Return the 32-byte key of node `node_id` in network `net_id`: HMAC(fleet_secret, label)."""
    _check_secret(fleet_secret)
    label = b"redmesh node key\x00" + int(net_id).to_bytes(4, "big") + int(node_id).to_bytes(4, "big")
    return Hmac(fleet_secret).digest(label)


MAX_EPOCH = 0xFFFFFFFF


def derive_mesh_key(fleet_secret, net_id, epoch=0):
    """Return the 32-byte network-wide mesh key of network `net_id` in key epoch `epoch`.

    Epoch 0 is the key every node was provisioned with (its label has no epoch, so existing
    nodes keep working); epoch e > 0 appends e as 4 big-endian bytes to the label. Each rotation
    (`fleet keys rotate`) moves the network to the next epoch; a frame says which of the two
    keys a node holds tagged it by the epoch's parity (its key phase, see protocol/frames.py)."""
    _check_secret(fleet_secret)
    label = b"redmesh mesh key\x00" + int(net_id).to_bytes(4, "big")
    if not isinstance(epoch, int) or epoch < 0 or epoch > MAX_EPOCH:
        raise ValueError("bad key epoch")
    if epoch:
        label += epoch.to_bytes(4, "big")
    return Hmac(fleet_secret).digest(label)


NEW = 0
DUPLICATE = 1
OLD = 2


class ReplayWindow:
    """Sliding window over a monotonic counter (RFC 4303 style). `check(c)` says whether `c` is
    NEW, a DUPLICATE inside the window, or OLD (below the window: the caller decides — the node
    refuses old commands; the collector consults its store, since gap repair legitimately
    resends old readings). `update(c)` records an accepted counter."""

    def __init__(self, size=64):
        self.size = size
        self.top = -1  # highest accepted counter
        self.bits = 0  # bit i set = counter top - i seen

    def check(self, c):
        if c > self.top:
            return NEW
        off = self.top - c
        if off >= self.size:
            return OLD
        return DUPLICATE if (self.bits >> off) & 1 else NEW

    def update(self, c):
        if c > self.top:
            shift = c - self.top
            self.bits = ((self.bits << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self.top = c
        else:
            off = self.top - c
            if off < self.size:
                self.bits |= 1 << off

    def restore(self, top):
        """Rebuild the window after a restart from the highest counter accepted before it (the
        bitmap was not persisted): every counter up to `top` counts as seen, so none of them is
        accepted again. Counters below `top` that never arrived are refused too: the sender
        issues a new counter (safe side)."""
        self.top = top
        self.bits = (1 << self.size) - 1

    def accept(self, c):
        """check() and, when NEW, update(); return the check result."""
        r = self.check(c)
        if r == NEW:
            self.update(c)
        return r
