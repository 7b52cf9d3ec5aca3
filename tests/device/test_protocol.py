# Protocol tests that run unchanged on CPython (pytest) and MicroPython (tests/mp_run.py).
from vectors import each, head, hexes, unhex

import protocol as P
import protocol.envelope  # noqa: F401 - the MQTT messages too (a node does without them)
from protocol import auth, cbor
from protocol.view import to_dict

_KEYS = head("frames.json")["keys"]
MESH = auth.Hmac(unhex(_KEYS["mesh_key"]))
NODE = unhex(_KEYS["node_key"])


def _frame_vectors(valid):
    for v in each("frames.json"):
        if v["valid"] == valid:
            yield v


def test_valid_vectors_decode_to_their_fields():
    n = 0
    for v in _frame_vectors(True):
        f = P.decode(unhex(v["hex"]), MESH, NODE)
        assert to_dict(f) == v["fields"], v["name"]
        n += 1
    assert n >= 13


def test_valid_vectors_reencode_to_the_same_bytes():
    for v in _frame_vectors(True):
        b = unhex(v["hex"])
        f = P.decode(b, MESH, NODE)
        assert P.encode(f, MESH) == b, v["name"]  # forwarder path: keeps etag/auth


def test_every_frame_type_has_a_valid_vector():
    types = set()
    for b in hexes("frames.json"):
        types.add(P.peek_type(b))
    for t in P.TYPE_NAMES:
        assert t in types, P.TYPE_NAMES[t]


def test_invalid_vectors_raise_protocol_error_with_reason():
    n = 0
    for v in _frame_vectors(False):
        try:
            P.decode(unhex(v["hex"]), MESH, NODE)
        except P.ProtocolError as e:
            assert v["error"] in str(e), (v["name"], str(e))
        else:
            raise AssertionError("accepted invalid vector: " + v["name"])
        n += 1
    assert n >= 30


def _from_json(v):
    if isinstance(v, dict):
        if "bytes" in v:
            return unhex(v["bytes"])
        return dict((_from_json(k), _from_json(x)) for k, x in v["map"])
    if isinstance(v, list):
        return [_from_json(x) for x in v]
    return v


def test_cbor_codec_vectors():
    for v in each("cbor.json"):
        b = unhex(v["hex"])
        if v["valid"]:
            val = cbor.loads(b)
            assert val == _from_json(v["fields"]["value"]), v["name"]
            assert cbor.dumps(val) == b, v["name"]
        else:
            try:
                cbor.loads(b)
            except P.ProtocolError as e:
                assert v["error"] in str(e), (v["name"], str(e))
            else:
                raise AssertionError("accepted invalid cbor: " + v["name"])
