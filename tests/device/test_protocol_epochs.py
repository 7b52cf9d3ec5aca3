# Key epochs (protocol/vectors/epochs.json), on both interpreters: mesh keys per epoch, and the
# key phase a frame carries in its version item.
from vectors import each, head, unhex

import protocol
from protocol import auth
from protocol.errors import ProtocolError
from protocol.keywrap import OP_REKEY
from protocol.view import to_dict

_H = head("epochs.json")["keys"]
EVEN, ODD, NODE = unhex(_H["mesh_even"]), unhex(_H["mesh_odd"]), unhex(_H["node_key"])


def test_mesh_key_per_epoch_vectors():
    n = 0
    for v in each("epochs.json"):
        if v["kind"] == "derive":
            got = auth.derive_mesh_key(unhex(v["fleet_secret"]), v["net_id"], v["epoch"])
            assert got == unhex(v["mesh_key"]), v["name"]
            n += 1
    assert n >= 4


def test_epoch_zero_is_the_provisioned_key():
    # nodes provisioned before epochs existed hold derive_mesh_key(secret, net): epoch 0
    s = unhex(_H["fleet_secret"])
    assert auth.derive_mesh_key(s, 7, 0) == auth.derive_mesh_key(s, 7)
    assert auth.derive_mesh_key(s, 7, 1) != auth.derive_mesh_key(s, 7, 0)


def test_bad_epoch_refused():
    for bad in (-1, 1 << 32, "1"):
        try:
            auth.derive_mesh_key(bytes(16), 1, bad)
        except ValueError as e:  # the caller's misuse, not a peer's bad bytes
            assert "epoch" in str(e)
        else:
            raise AssertionError("epoch %r accepted" % (bad,))


def _fields(f):
    d = to_dict(f)
    for k in ("etag", "auth"):
        d.pop(k, None)
    return d


def test_frame_vectors_with_key_phase():
    n_ok = n_bad = 0
    for v in each("epochs.json"):
        if v["kind"] != "frame":
            continue
        buf = unhex(v["hex"])
        keys = (EVEN, None) if v.get("keys") == "even" else (EVEN, ODD)
        if v["valid"]:
            f = protocol.decode(buf, keys, NODE)
            assert f.phase == v["phase"], v["name"]
            assert _fields(f) == v["fields"], (v["name"], _fields(f))
            assert protocol.encode(f, keys) == buf, v["name"]  # a forwarder re-tags in the same phase
            assert protocol.encode(f, keys, NODE) == buf, v["name"]  # the origin too
            n_ok += 1
        else:
            try:
                protocol.decode(buf, keys, NODE)
            except ProtocolError as e:
                assert v["error"] in str(e), (v["name"], str(e))
            else:
                raise AssertionError("accepted: " + v["name"])
            n_bad += 1
    assert n_ok >= 6 and n_bad >= 5


def test_phase_costs_no_byte_and_keeps_the_e2e_tag():
    # the same telemetry in both phases: same length, same end-to-end tag (a forwarder in the
    # other epoch may re-tag it), different hop tags
    f = protocol.Telemetry(origin=5, seq=1, time_s=1795000000,
                           readings=[protocol.Reading(0, 1, 2, 3, 40, 210, 30, 0)])
    a = protocol.encode(f, (EVEN, ODD), NODE, phase=0)
    b = protocol.encode(f, (EVEN, ODD), NODE, phase=1)
    assert f.etag is None and f.phase == 0  # encode leaves its argument as it was
    assert len(a) == len(b) and a[-4:] != b[-4:]
    assert protocol.decode(a, (EVEN, ODD)).etag == protocol.decode(b, (EVEN, ODD)).etag
    g = protocol.decode(b, (EVEN, ODD), NODE)
    assert g.phase == 1
    assert protocol.encode(g, (EVEN, ODD), phase=0) == a


def test_key_wrap_vectors():
    from protocol import keywrap

    net = _H["net_id"]
    n_ok = n_bad = 0
    for v in each("epochs.json"):
        if v["kind"] != "wrap":
            continue
        nk, w = unhex(v["node_key"]), unhex(v["wrapped"])
        if v["valid"]:
            assert keywrap.unwrap(nk, net, v["node_id"], v["epoch"], w) == unhex(v["mesh_key"]), v["name"]
            assert keywrap.wrap(nk, net, v["node_id"], v["epoch"], unhex(v["mesh_key"])) == w, v["name"]
            n_ok += 1
        else:
            try:
                keywrap.unwrap(nk, net, v["node_id"], v["epoch"], w)
            except ProtocolError as e:
                assert v["error"] in str(e), (v["name"], str(e))
            else:
                raise AssertionError("accepted: " + v["name"])
            n_bad += 1
    assert n_ok >= 3 and n_bad >= 5



def test_node_key_per_epoch_vectors():
    # a node derives its node key of each epoch from its provisioned key and that epoch's mesh
    # key, as the host does from the fleet secret
    from protocol import keywrap

    n = 0
    for v in each("epochs.json"):
        if v["kind"] == "node_key":
            got = keywrap.epoch_node_key(unhex(v["node_key"]), v["epoch"], unhex(v["mesh_key"]))
            assert got == unhex(v["epoch_node_key"]), v["name"]
            n += 1
    assert n >= 4
    try:
        keywrap.epoch_node_key(NODE, 1, b"short")
    except ValueError:
        pass
    else:
        raise AssertionError("a 5-byte mesh key accepted")


def test_rekey_command_carries_a_wrapped_key():
    # the 48-byte wrap travels as base64 text in two 32-byte text arguments (no new CBOR type)
    from protocol import keywrap

    w = keywrap.wrap(NODE, 7, 9, 3, ODD)
    args = keywrap.to_args(3, w)
    c = protocol.Command(target=9, cseq=3, op=OP_REKEY, args=args)
    buf = protocol.encode(c, (EVEN, ODD), NODE, phase=1)
    assert len(buf) <= protocol.MAX_FRAME
    g = protocol.decode(buf, (EVEN, ODD), NODE)
    assert keywrap.from_args(g.args) == (3, w)
    for bad in ([3, args[1]], [3, args[1], args[2][:-1]], [3, args[1], "!" * 32], ["3", args[1], args[2]]):
        try:
            keywrap.from_args(bad)
        except ProtocolError:
            pass
        else:
            raise AssertionError("accepted rekey args %r" % (bad,))
