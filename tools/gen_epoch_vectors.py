"""Regenerate protocol/vectors/epochs.json: key-epoch vectors (CPython only).

Mesh keys per epoch (protocol.auth.derive_mesh_key) computed here with CPython's own `hmac`,
and frames whose version item carries the key phase, built with cbor2 rather than our encoder,
so the vectors check protocol/ independently. Deterministic. Usage:
python tools/gen_epoch_vectors.py [OUT_DIR]
"""
import hashlib
import hmac
import os
import sys

import cbor2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from gen_vectors import write_vectors  # noqa: E402

SECRET = bytes(range(1, 33))
NET_ID = 7
NODE_ID = 1234
EVEN, ODD = 2, 3  # the epochs of the key pair a node holds while the network moves from 2 to 3


def mesh_key(secret, net_id, epoch):
    label = b"redmesh mesh key\x00" + net_id.to_bytes(4, "big") + (epoch.to_bytes(4, "big") if epoch else b"")
    return hmac.new(secret, label, hashlib.sha256).digest()


def node_key(secret, net_id, node):
    label = b"redmesh node key\x00" + net_id.to_bytes(4, "big") + node.to_bytes(4, "big")
    return hmac.new(secret, label, hashlib.sha256).digest()


def tag(key, data, n):
    return hmac.new(key, data, hashlib.sha256).digest()[:n]


def frame(items, phase, hop_key, e2e_at=None, e2e_upto=None, nkey=None):
    """cbor2-encode `items` ([version, type, ...] without the hop tag): the e2e tag / auth at
    index e2e_at covers items[:e2e_upto] with version 1; the version item then gets the phase
    bit and the hop tag (hop_key) covers everything before it."""
    items = list(items)
    if e2e_at is not None:
        covered = b"".join(cbor2.dumps(x, canonical=True) for x in items[:e2e_upto])
        items[e2e_at] = tag(nkey, covered, 8)
    items[0] = 1 | (0x10 if phase else 0)
    body = cbor2.dumps(items + [b"\0" * 4], canonical=True)[:-4]
    return (body + tag(hop_key, body, 4)).hex()


def vectors():
    out = []
    for secret, net, epoch in ((SECRET, NET_ID, 0), (SECRET, NET_ID, 1), (SECRET, NET_ID, EVEN), (SECRET, NET_ID, ODD),
                               (SECRET, 8, 1), (bytes(16), 1, 0xFFFFFFFF)):
        out.append({"name": "mesh key, net %d epoch %d" % (net, epoch), "kind": "derive", "fleet_secret": secret.hex(),
                    "net_id": net, "epoch": epoch, "mesh_key": mesh_key(secret, net, epoch).hex()})
    nk = node_key(SECRET, NET_ID, NODE_ID)
    k_even, k_odd, k_old = mesh_key(SECRET, NET_ID, EVEN), mesh_key(SECRET, NET_ID, ODD), mesh_key(SECRET, NET_ID, 1)
    tel = [1, 2, NODE_ID, 5000, 1795000000, [[0, 123, 187, 254, 64, 215, 30, 0]], 3, 57, b"\0" * 8]
    t_fields = {"type": "telemetry", "origin": NODE_ID, "seq": 5000, "time_s": 1795000000,
                "readings": [{"dt_s": 0, "pm1": 123, "pm25": 187, "pm10": 254, "rh": 64, "temp": 215, "n": 30, "flags": 0}],
                "hops": 3, "cost": 57}
    beacon = [1, 1, NODE_ID, 17, 0, 1, 1795000000, 0]
    b_fields = {"type": "beacon", "src": NODE_ID, "bseq": 17, "cost": 0, "depth": 1, "time_s": 1795000000, "flags": 0,
                "root": 0, "rseq": 0}  # the 9-item layout: no root
    cmd = [1, 4, NODE_ID, 9, 4, [], 2, b"\0" * 8]
    c_fields = {"type": "command", "target": NODE_ID, "cseq": 9, "op": 4, "args": [], "hops": 2}
    for name, items, fields, e2e in (("telemetry", tel, t_fields, (8, 6)), ("beacon", beacon, b_fields, None),
                                     ("command to one node", cmd, c_fields, (7, 6))):
        for phase, k in ((0, k_even), (1, k_odd)):
            at, upto = e2e if e2e else (None, None)
            out.append({"name": "%s, key phase %d (epoch %d)" % (name, phase, EVEN + phase), "kind": "frame",
                        "hex": frame(items, phase, k, at, upto, nk), "valid": True, "phase": phase, "fields": fields})
    bad = (
        ("phase 1 but tagged with the even epoch's key", frame(tel, 1, k_even, 8, 6, nk), "hop tag mismatch", "pair"),
        ("phase 0 but tagged with the odd epoch's key", frame(tel, 0, k_odd, 8, 6, nk), "hop tag mismatch", "pair"),
        ("an old epoch's key (a stolen pole's)", frame(tel, 1, k_old, 8, 6, nk), "hop tag mismatch", "pair"),
        ("cost-0 beacon with an old epoch's key", frame(beacon, 1, k_old), "hop tag mismatch", "pair"),
        ("phase 1, node holds only the even key", frame(tel, 1, k_odd, 8, 6, nk), "no mesh key for key phase 1", "even"),
        ("version item with another bit set", frame(tel, 0, k_even, 8, 6, nk).replace("8a01", "8a03", 1), "version", "pair"),
    )
    for name, hx, err, keys in bad:
        out.append({"name": name, "kind": "frame", "hex": hx, "valid": False, "error": err, "keys": keys})
    # key wraps (protocol/keywrap.py), computed here with CPython's hmac
    for node, epoch in ((NODE_ID, ODD), (NODE_ID, 4), (7, 1)):
        nk_i = node_key(SECRET, NET_ID, node)
        mk = mesh_key(SECRET, NET_ID, epoch)
        w = wrap(nk_i, NET_ID, node, epoch, mk)
        out.append({"name": "wrap, node %d epoch %d" % (node, epoch), "kind": "wrap", "node_id": node, "epoch": epoch,
                    "node_key": nk_i.hex(), "mesh_key": mk.hex(), "wrapped": w.hex(), "valid": True})
    # node keys per epoch (protocol.keywrap.epoch_node_key)
    for epoch in (0, 1, ODD, 0xFFFFFFFF):
        mk = mesh_key(SECRET, NET_ID, epoch)
        enk = nk if not epoch else hmac.new(nk, b"redmesh node key epoch\x00" + epoch.to_bytes(4, "big") + mk,
                                           hashlib.sha256).digest()
        out.append({"name": "node key, epoch %d" % epoch, "kind": "node_key", "node_key": nk.hex(), "epoch": epoch,
                    "mesh_key": mk.hex(), "epoch_node_key": enk.hex()})
    w = wrap(nk, NET_ID, NODE_ID, ODD, k_odd)
    for name, node, epoch, hx, err in (
            ("wrap with one bit of the ciphertext flipped", NODE_ID, ODD, bytes([w[0] ^ 1]) + w[1:], "tag mismatch"),
            ("wrap with one bit of the tag flipped", NODE_ID, ODD, w[:-1] + bytes([w[-1] ^ 0x80]), "tag mismatch"),
            ("wrap replayed as another epoch", NODE_ID, ODD + 2, w, "tag mismatch"),
            ("wrap meant for another node", NODE_ID + 1, ODD, w, "tag mismatch"),
            ("wrap truncated", NODE_ID, ODD, w[:-1], "expected 48 bytes"),
            ("wrap for epoch 0", NODE_ID, 0, w, "epoch must be")):
        out.append({"name": name, "kind": "wrap", "node_id": node, "epoch": epoch, "node_key": nk.hex(),
                    "wrapped": hx.hex(), "valid": False, "error": err})
    return out


def wrap(nk, net, node, epoch, mk):
    hdr = b"redmesh wrap\x00" + net.to_bytes(4, "big") + node.to_bytes(4, "big") + epoch.to_bytes(4, "big")
    enc = hmac.new(nk, b"redmesh wrap enc\x00", hashlib.sha256).digest()
    mac = hmac.new(nk, b"redmesh wrap mac\x00", hashlib.sha256).digest()
    ct = bytes(a ^ b for a, b in zip(mk, hmac.new(enc, hdr, hashlib.sha256).digest(), strict=True))
    return ct + hmac.new(mac, hdr + ct, hashlib.sha256).digest()[:16]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    head = {"description": "Red Mesh key-epoch vectors. kind=derive: protocol.auth.derive_mesh_key(fleet_secret, "
                           "net_id, epoch) == mesh_key. kind=node_key: protocol.keywrap.epoch_node_key(node_key, epoch, "
                           "mesh_key) == epoch_node_key. kind=wrap: protocol.keywrap.unwrap(node_key, net_id, node_id, epoch, "
                           "wrapped) == mesh_key and wrap() gives `wrapped`; invalid ones raise ProtocolError "
                           "containing `error`. kind=frame: protocol.decode(bytes.fromhex(hex), (mesh_even, "
                           "mesh_odd), node_key) (keys \"even\": (mesh_even, None)); valid ones decode to `fields` "
                           "(without tags) with frame.phase == phase and re-encode to the same bytes; invalid ones "
                           "raise ProtocolError containing `error`.",
            "keys": {"fleet_secret": SECRET.hex(), "net_id": NET_ID, "mesh_even_epoch": EVEN,
                     "mesh_even": mesh_key(SECRET, NET_ID, EVEN).hex(), "mesh_odd": mesh_key(SECRET, NET_ID, ODD).hex(),
                     "node_key": node_key(SECRET, NET_ID, NODE_ID).hex()}}
    vec_dir = argv[0] if argv else os.path.join(ROOT, "protocol", "vectors")
    vs = vectors()
    write_vectors(os.path.join(vec_dir, "epochs.json"), head, vs)
    print("epochs.json: %d vectors" % len(vs))


if __name__ == "__main__":
    main()
