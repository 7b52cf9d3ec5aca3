"""Host-only protocol checks: cbor2 and pycddl as references, Hypothesis fuzzing, `fleet decode`."""
import json
import os
import sys

import cbor2
import pycddl
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol as P
from fleet.cli import group
from protocol import cbor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "device"))
from vectors import each, head  # noqa: E402

KEYS = head("frames.json")["keys"]
MESH = bytes.fromhex(KEYS["mesh_key"])
NODE = bytes.fromhex(KEYS["node_key"])
_CDDL = open(os.path.join(ROOT, "protocol", "redmesh.cddl")).read()
_RULES = ("beacon", "telemetry", "status", "command", "reply", "ota-advert", "ota-request", "ota-data",
          "routed", "envelope", "downlink")
# One schema per frame rule: pycddl 0.6 wrongly accepts some arrays against a type choice of
# array rules (e.g. `envelope / downlink` accepts [1, 9, 1, 2, 3], which neither accepts alone).
SCHEMAS = {r: pycddl.Schema("top = %s\n%s" % (r, _CDDL)) for r in _RULES}


def cddl_matches(b):
    """Return the frame rules of the spec that `b` validates against."""
    ok = []
    for name, schema in SCHEMAS.items():
        try:
            schema.validate_cbor(b)
            ok.append(name)
        except pycddl.ValidationError:
            pass
    return ok


@pytest.fixture(autouse=True)
def _cwd_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def valid():
    os.chdir(ROOT)
    return [v for v in each("frames.json") if v["valid"]]


def invalid():
    os.chdir(ROOT)
    return [v for v in each("frames.json") if not v["valid"]]


@pytest.mark.parametrize("v", valid(), ids=lambda v: v["name"])
def test_cbor2_decodes_valid_vectors_and_reencodes_canonically(v):
    b = bytes.fromhex(v["hex"])
    obj = cbor2.loads(b)
    assert cbor2.dumps(obj, canonical=True) == b
    assert cbor.loads(b) == obj  # our codec agrees with the reference on structure


@pytest.mark.parametrize("v", valid(), ids=lambda v: v["name"])
def test_valid_vectors_match_the_cddl(v):
    rule = v["fields"]["type"].replace("_", "-")
    assert cddl_matches(bytes.fromhex(v["hex"])) == [rule]


def test_reading_flags_are_the_cddls():
    """protocol/frames.py FLAG_* and redmesh.cddl reading-flags name the same bits."""
    import re

    block = _CDDL[_CDDL.index("reading-flags = &("):]
    block = block[:block.index(")")]
    spec = {name.replace("-", "_").upper(): 1 << int(bit) for name, bit in re.findall(r"([a-z-]+): (\d+)", block)}
    from protocol import frames

    ours = {k[5:]: v for k, v in vars(frames).items() if k.startswith("FLAG_")}
    assert spec and spec == ours


def test_cddl_rejects_structurally_invalid_vectors():
    # pycddl checks structure and ranges (not byte-level encoding rules): every invalid vector
    # that cbor2 can parse and that breaks a structural rule must fail the schema too.
    # (pycddl 0.6 does not enforce the upper bound of `1*12 reading`: "13 readings" is ours alone)
    structural = ("expected 10 items", "readings: expected 1..12 items, got 0", "reading: expected 8 items",
                  "expected at most 65535", "reading.rh", "unknown frame type", "version: expected 1",
                  "command.args: expected 0..4", "data: expected 1..224", "status: expected 16 items",
                  "status: expected 14..16 items", "routed.path: expected 1..32 items, got 0",
                  "routed.path: expected 1..4294967295")
    checked = 0
    for v in invalid():
        if any(s in v["error"] for s in structural):
            assert cddl_matches(bytes.fromhex(v["hex"])) == [], v["name"]
            checked += 1
    assert checked >= 8


@pytest.mark.parametrize("v", invalid(), ids=lambda v: v["name"])
def test_invalid_vectors(v):
    with pytest.raises(P.ProtocolError, match=None) as ei:
        P.decode(bytes.fromhex(v["hex"]), MESH, NODE)
    assert v["error"] in str(ei.value)


def test_vector_files_are_up_to_date(tmp_path):
    """tools/gen_vectors.py is the source of the vectors: regenerating them (into a temporary
    directory, so tests reading the committed files meanwhile are undisturbed) changes nothing."""
    import subprocess

    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gen_vectors.py"), str(tmp_path)], check=True,
                   timeout=60, capture_output=True)
    for name in ("frames.json", "cbor.json"):
        with open(os.path.join(ROOT, "protocol", "vectors", name)) as f:
            committed = f.read()
        assert (tmp_path / name).read_text() == committed, "%s is stale: run tools/gen_vectors.py" % name


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**64), max_value=2**64 - 1) | st.binary(max_size=40)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.integers(-5, 30) | st.text(max_size=5),
                                                                       children, max_size=5),
    max_leaves=20,
)


@given(cbor_values)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_codec_matches_cbor2(value):
    ours = cbor.dumps(value)
    assert cbor2.loads(ours) == value
    assert cbor.loads(ours) == value
    if not _has_map(value):
        assert ours == cbor2.dumps(value, canonical=True)
    # cbor2's canonical mode sorts map keys length-first (RFC 7049); RFC 8949 core deterministic
    # encoding, which we follow, sorts by the bytes of the encoded keys: check that directly.


def _has_map(v):
    if isinstance(v, dict):
        return True
    return isinstance(v, list) and any(_has_map(x) for x in v)


def test_map_keys_sorted_bytewise_per_rfc8949():
    assert cbor.dumps({24: None, "": None}) == bytes.fromhex("a2181 8f660f6".replace(" ", ""))
    assert cbor.loads(bytes.fromhex("a21818f660f6")) == {24: None, "": None}


def _refused_by_a_rule(e):
    """decode() turns any stray exception into a ProtocolError as a safety net: a fuzzed input
    must be refused by a rule (a message naming it), never caught by that net."""
    m = str(e)
    assert not m.startswith("malformed frame (") and "available memory" not in m, m


@given(st.binary(max_size=300))
@settings(max_examples=3000)
def test_random_bytes_only_raise_protocol_error(data):
    try:
        P.decode(data, MESH, NODE)
    except P.ProtocolError as e:
        _refused_by_a_rule(e)


_SEEDS = [bytes.fromhex(v["hex"]) for v in valid()] if os.path.isdir(os.path.join(ROOT, "protocol")) else []


@given(st.sampled_from(_SEEDS), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
       st.integers(0, 300))
@settings(max_examples=3000)
def test_mutated_vectors_only_raise_protocol_error(seed, edits, cut):
    b = bytearray(seed)
    for pos, val in edits:
        if b:
            b[pos % len(b)] = val
    b = bytes(b[: max(cut, 0)] if cut < len(b) else b)
    try:
        f = P.decode(b, MESH)
    except P.ProtocolError as e:
        _refused_by_a_rule(e)
        return
    # whatever decodes must re-encode to the very same bytes (no two encodings of one frame)
    if f.type not in (P.T_ENVELOPE, P.T_DOWNLINK):
        assert P.encode(f, MESH) == b
    else:
        assert P.encode(f) == b


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 13), st.lists(
    st.tuples(st.integers(0, 3600), st.integers(0, 9999), st.integers(0, 9999), st.integers(0, 9999),
              st.integers(0, 100), st.integers(-400, 850), st.integers(0, 65535), st.integers(0, 65535)),
    min_size=1, max_size=8))
@settings(max_examples=300)
def test_telemetry_roundtrip(origin, seq, readings):
    f = P.Telemetry(origin=origin, seq=seq, time_s=1795000000, readings=[P.Reading(*r) for r in readings])
    b = P.encode(f, MESH, NODE)
    g = P.decode(b, MESH, NODE)
    assert f.etag is None and len(g.etag) == 8  # the tag is in the bytes; f is left as it was
    f.etag = g.etag
    assert g == f
    assert cddl_matches(b) == ["telemetry"]


# ---- fleet decode ----------------------------------------------------------------------------

def _run(args, input=None):
    return CliRunner().invoke(group, args, input=input)


def test_fleet_decode_telemetry_json():
    v = [v for v in valid() if v["name"] == "telemetry, one reading"][0]
    r = _run(["decode", v["hex"]])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["type"] == "telemetry" and d["origin"] == 1234 and d["hops"] == 3
    assert d["readings"][0]["pm25"] == 187


def test_fleet_decode_envelope_lists_frames_and_reads_stdin():
    v = [v for v in valid() if v["name"] == "gateway envelope"][0]
    r = _run(["decode", "-"], input=v["hex"] + "\n")
    assert r.exit_code == 0
    d = json.loads(r.output)
    assert d["type"] == "envelope" and d["frames"][0]["origin"] == 1234 and d["frames"][0]["rssi"] == -60


def test_fleet_decode_verifies_with_key_file(tmp_path):
    kf = tmp_path / "keys.json"
    kf.write_text(json.dumps({"mesh_key": KEYS["mesh_key"], "node_key": KEYS["node_key"]}))
    v = [v for v in valid() if v["name"] == "telemetry, one reading"][0]
    r = _run(["decode", "--key-file", str(kf), v["hex"]])
    assert r.exit_code == 0 and json.loads(r.output)["verified"] == ["hop", "e2e"]
    kf.write_text(json.dumps({"mesh_key": "00" * 32}))
    r = _run(["decode", "--key-file", str(kf), v["hex"]])
    assert r.exit_code == 1 and "hop tag mismatch" in r.output
    # only the mesh key: the end-to-end tag was not checked, and the output says so
    kf.write_text(json.dumps({"mesh_key": KEYS["mesh_key"]}))
    r = _run(["decode", "--key-file", str(kf), v["hex"]])
    assert r.exit_code == 0 and json.loads(r.output)["verified"] == ["hop"]


def test_fleet_decode_verifies_the_frames_inside_an_envelope(tmp_path):
    env = [v for v in valid() if v["name"] == "gateway envelope"][0]
    kf = tmp_path / "keys.json"
    kf.write_text(json.dumps({"mesh_key": KEYS["mesh_key"], "node_key": KEYS["node_key"]}))
    r = _run(["decode", "--key-file", str(kf), env["hex"]])
    assert r.exit_code == 0, r.output
    frames = json.loads(r.output)["frames"]
    assert frames and all(f["verified"] == ["hop", "e2e"] for f in frames)
    # wrong keys: the envelope still prints, each frame says why, and the exit status is 1
    kf.write_text(json.dumps({"mesh_key": "00" * 32, "node_key": "00" * 32}))
    r = _run(["decode", "--key-file", str(kf), env["hex"]])
    assert r.exit_code == 1 and "frames in the envelope are invalid" in r.stderr
    frames = json.loads(r.stdout)["frames"]
    assert all("tag mismatch" in f["error"] for f in frames)
    # a malformed frame (cut short) inside an envelope is invalid with or without keys
    e = P.decode(bytes.fromhex(env["hex"]))
    rx, rssi, fb = e.items[0]
    e.items[0] = [rx, rssi, fb[:-2]]
    r = _run(["decode", P.encode(e).hex()])
    assert r.exit_code == 1 and "1 of 1 frames" in r.output


@pytest.mark.parametrize("arg", ["zz", "8201", "", "a1" * 300])
def test_fleet_decode_invalid_input_one_line_no_traceback(arg):
    r = _run(["decode", arg])
    assert r.exit_code == 1
    assert isinstance(r.exception, (SystemExit, type(None)))  # a clean exit, not a crash
    assert r.output.startswith("Error: ") and r.output.count("\n") == 1


def test_fleet_decode_subprocess_exit_status():
    import subprocess

    fleet = os.path.join(os.path.dirname(sys.executable), "fleet")
    p = subprocess.run([fleet, "decode", "8201"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stdout == "" and "invalid frame" in p.stderr and "Traceback" not in p.stderr
