"""Issue 16 items 1-6 through the real `fleet` entry point: hostile text for a node refused on the
host with a line naming the option; `fleet.toml`, CSV sheets and option values that used to end
in "unexpected ... this is a bug"; a locked or emptied store; key bytes in decode errors; small
ones (unknown node, odd-length hex, `1_000`, 10,000 bad rows)."""
import base64
import os
import subprocess
import sys

import pytest
from cli_run import assert_clean, run_fleet
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.home import FleetHome
from protocol.text import text_problem, token_problem

HOSTILE_VERSIONS = ["1.0\nslot=b", "", "   ", "-1", "../../x", "\x1b[31mred\x1b[0m", "\udca4\udcff", "1.0 beta",
                    "x" * 17]


@pytest.fixture
def home(tmp_path):
    h = FleetHome(str(tmp_path / "home"))
    r = run_fleet(["keys", "init", "--home", h.path])
    assert r.code == 0, r
    return h


# ---- 1. one text grammar: refused on the host before anything is signed or written ----------


@pytest.mark.parametrize("version", HOSTILE_VERSIONS)
def test_ota_build_refuses_a_version_outside_the_grammar(home, version, tmp_path):
    out = tmp_path / "b.rmota"
    r = run_fleet(["ota", "build", "--version", version, "--out", str(out), "--home", home.path])
    assert_clean(r, codes=(1,))
    assert "--version" in r.stderr and "letters, digits and . _ + -" in r.stderr, r
    assert "\x1b" not in r.output  # the escape is shown escaped, never sent to the terminal
    assert not out.exists() and not os.path.exists(os.path.join(home.path, "ota", "last_bseq"))


@pytest.mark.parametrize("args,option", [(["--target-class", ""], "--target-class"),
                                         (["--target-class", "esp32\n"], "--target-class"),
                                         (["--arch", "bogus"], "--arch")])
def test_ota_build_refuses_a_bad_target_class_or_arch(home, args, option, tmp_path):
    r = run_fleet(["ota", "build", *args, "--out", str(tmp_path / "b.rmota"), "--home", home.path])
    assert_clean(r, codes=(1,))
    assert r.stderr.startswith(f"Error: {option} "), r
    assert "firmware/" not in r.stderr  # names the option, not a file mpy-cross choked on
    if option == "--arch":
        assert "xtensawin" in r.stderr


def test_provision_refuses_a_pole_outside_the_grammar(home, tmp_path):
    r = run_fleet(["provision", "--port", str(tmp_path / "no-such-port"), "--node-id", "7", "--pole", "P 7/../x",
                   "--home", home.path])
    assert_clean(r, codes=(1,))
    assert "--pole" in r.stderr and "letters, digits" in r.stderr, r
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("port,node_id,pole\n/dev/ttyUSB0,7,\"P7\x1b[2J\"\n")
    r = run_fleet(["provision", "--from-csv", str(sheet), "--home", home.path])
    assert_clean(r, codes=(1,))
    assert "row 2: pole '" in r.stderr and "\x1b" not in r.stderr, r


def test_the_node_refuses_a_signed_bundle_whose_version_breaks_the_grammar():
    # defence in depth: a bundle signed by the fleet key (a host without the check, or an old
    # one) whose version would end up in the node's key=value boot files: refused over the air
    # as a ProtocolError with nothing stored, and dropped at boot if one is on flash already
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "device"))
    import cbor2
    import ota_fixtures as fx

    from firmware.ota import OtaEngine
    from firmware.ota_store import PageStore
    from fleet import signing
    from protocol import ProtocolError
    from protocol import manifest as mf

    seed, pub = signing.generate_keypair()
    files = fx.app_files(2)
    image = fx.make_archive(files)
    pages = fx.paginate(image)
    for version in ("1.0\nslot=b", "", "../../x", "\x1b[2J"):
        raw = cbor2.dumps([1, 2, version, "esp32", len(image), fx.PAGE, [fx.sha256(p) for p in pages],
                           [[p, len(d), fx.sha256(d)] for p, d in files], "none"])
        signed = mf.sign_manifest(raw, lambda m: signing.sign(seed, m))
        fs = fx.MemFS()
        eng = OtaEngine(7, pub, PageStore(fs), 1, running_bseq=1)
        with pytest.raises(ProtocolError, match="manifest version"):
            eng.offer_bundle(signed, pages)
        assert eng.m is None and PageStore(fs).manifest() is None
        store = PageStore(fs)
        store.put_manifest(signed)  # as if stored before the rule existed
        again = OtaEngine(7, pub, PageStore(fs), 1, running_bseq=1)
        assert again.m is None and PageStore(fs).manifest() is None  # dropped at boot, no crash


def _cddl_schema(rule):
    import pycddl

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(here, "protocol", "redmesh.cddl")) as f:
        return pycddl.Schema(f"start = {rule}\n" + f.read())


_TOKEN16 = _cddl_schema("token16")
_PLAIN = _cddl_schema("plain-text")


def _cddl_ok(schema, v):
    import cbor2

    try:
        schema.validate_cbor(cbor2.dumps(v))
        return True
    except Exception:  # noqa: BLE001 - pycddl's ValidationError
        return False


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.text(max_size=20), st.text(alphabet="aZ09._+- /=\n\x1b\x85", max_size=18)))
def test_the_written_grammar_and_the_checker_agree(v):
    # protocol/redmesh.cddl writes the grammar down; protocol/text.py checks it: they cannot drift
    if any(0xD800 <= ord(c) <= 0xDFFF for c in v):
        return  # not encodable as CBOR text at all
    assert _cddl_ok(_TOKEN16, v) == (token_problem(v, 16) is None), repr(v)
    assert _cddl_ok(_PLAIN, v) == (text_problem(v, 0, 1 << 20) is None), repr(v)


# ---- 3. no "unexpected ... this is a bug" --------------------------------------------------


@pytest.mark.parametrize("content", [
    bytes(range(256)) * 4,                      # random bytes, not UTF-8
    b"[status]\nstale_after_s = 1\n\xa4\xff",   # TOML with a non-UTF-8 tail
    b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n",  # 5,000-deep nested array (RecursionError)
    os.urandom(512),
])
def test_a_fleet_toml_of_garbage_is_named(home, content):
    with open(home.config_path, "wb") as f:
        f.write(content)
    r = run_fleet(["status", "--home", home.path])
    assert_clean(r, codes=(1,))
    assert home.config_path in r.stderr, r


def test_a_non_utf8_csv_sheet_is_named(home, tmp_path):
    sheet = tmp_path / "sheet.csv"
    sheet.write_bytes(b"port,node_id,pole\n/dev/ttyUSB0,7,P\xe97\n")  # Latin-1, as a spreadsheet may save
    r = run_fleet(["provision", "--from-csv", str(sheet), "--home", home.path])
    assert_clean(r, codes=(1,))
    assert str(sheet) in r.stderr and "UTF-8" in r.stderr, r


@pytest.fixture
def store_home(tmp_path):
    h = FleetHome(str(tmp_path / "home"))
    store = h.store(create=True)
    store.register_node(10, role="node")
    store.close()
    return h


@pytest.mark.parametrize("argv", [
    ["readings", "--node", "10", "--since", "99999999999999999999"],
    ["readings", "--node", "10", "--until", "1" + "0" * 400],
    ["readings", "--node", "10", "--since", "-99999999999999w"],
    ["readings", "--node", "10", "--since", "9999-12-31T23:59:59"],
    ["readings", "--node", "99999999999999999999"],
    ["readings", "--node", "10", "--limit", "99999999999999999999"],
    ["status", "--gateway", "99999999999999999999"],
    ["status", "--node", "99999999999999999999"],
    ["status", "--limit", "99999999999999999999"],
    ["status", "--stale-after", "99999999999999999999"],
    ["status", "--watch", "--count", "1", "--interval", "nan"],
])
def test_huge_option_values_are_usage_errors(store_home, argv):
    r = run_fleet([*argv, "--home", store_home.path])
    assert_clean(r, codes=(2,))
    assert "Invalid value for" in r.stderr, r


def test_ota_push_to_an_unreachable_broker_says_so(home, tmp_path):
    import socket

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "device"))
    import ota_fixtures as fx

    from fleet import ota_bundle

    store = home.store(create=True)
    store.register_nodes([{"node": 1, "role": "gateway"}, {"node": 10}])
    store.close()
    b = ota_bundle.build_bundle(fx.app_files(2), 2, "2.0.0", home.keys().sign)
    path = tmp_path / "b.rmota"
    path.write_bytes(b.encode())
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    r = run_fleet(["ota", "push", str(path), "--broker", f"mqtt://127.0.0.1:{port}", "--timeout", "5",
                   "--home", home.path])
    assert_clean(r, codes=(1,))
    assert f"cannot reach the MQTT broker at 127.0.0.1:{port}" in r.stderr, r
    r = run_fleet(["ota", "push", str(path), "--broker", "mqtt://[bad", "--home", home.path])
    assert_clean(r, codes=(1,))
    assert "broker URL 'mqtt://[bad' not understood" in r.stderr, r


# ---- 4. a locked store is busy, an empty one is reported ------------------------------------

_HOLD_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA locking_mode = EXCLUSIVE")
db.execute("BEGIN EXCLUSIVE")
db.execute("CREATE TABLE IF NOT EXISTS held (x)")
print("locked", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


def test_a_locked_store_is_busy_not_unusable(store_home):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, store_home.store_path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = run_fleet(["status", "--home", store_home.path])  # waits out the busy timeout (10 s)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert_clean(r, codes=(1,))
    assert "busy" in r.stderr and "retry" in r.stderr and f"pid {holder.pid}" in r.stderr, r
    assert "move it aside" not in r.stderr and "not a usable" not in r.stderr
    assert run_fleet(["status", "--home", store_home.path]).code == 0  # the store was healthy all along


def test_an_empty_store_file_is_reported_not_reinitialised(store_home):
    open(store_home.store_path, "wb").close()
    for argv in (["status"], ["readings", "--node", "10"]):
        r = run_fleet([*argv, "--home", store_home.path])
        assert_clean(r, codes=(1,))
        assert "empty (0 bytes)" in r.stderr and store_home.store_path in r.stderr, r
    assert os.path.getsize(store_home.store_path) == 0  # left as found, for whoever investigates


# ---- 5. no key byte in a decode error -------------------------------------------------------


def key_forms(key):
    """Every way a key's bytes could show in text: hex both cases, base64, a bytes repr, and
    the '0xNN' / 'byte 0xNN' of a codec error naming its first byte."""
    forms = [key.hex(), key.hex().upper(), base64.b64encode(key).decode(), base64.b64encode(key).decode()[:12],
             repr(key)[2:14], key.hex()[:8]]
    forms.append(f"0x{key[0]:02x}")
    return forms


def test_decode_with_a_raw_key_file_shows_no_key_byte(home):
    # keys whose first byte is not UTF-8 (the seed began 0xa4) as well as the random ones
    fixed = home.path + "/fixed.key"
    with open(os.open(fixed, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
        f.write(bytes([0xA4]) + bytes(range(0xC1, 0xE0)))
    r = run_fleet(["decode", "820102", "--key-file", fixed])
    assert_clean(r, codes=(1,))
    assert "0xa4" not in r.output and "a4c1c2" not in r.output, r
    keys = home.keys()
    for path, key in ((keys.signing_path, keys.signing_seed()), (keys.secret_path, keys.fleet_secret())):
        r = run_fleet(["decode", "820102", "--key-file", path])
        assert_clean(r, codes=(1,))
        assert path in r.stderr and "JSON" in r.stderr, r
        for form in key_forms(key):
            assert form not in r.output, "a key byte appeared in the output"


def test_decode_key_file_errors_never_echo_content(tmp_path):
    secret = bytes(range(0xA0, 0xC0))
    for content in (b'{"mesh_key": "' + secret.hex().encode() + b'zz"}',
                    b'{"fleet_secret": "' + secret.hex().encode() + b'", "net_id": "' + secret.hex().encode() + b'"}',
                    b'{"fleet_secret": "' + secret.hex()[:30].encode() + b'"}',
                    b'{"node_key": ' + secret.hex().encode() + b"}",
                    secret):
        path = tmp_path / "k.json"
        path.write_bytes(content)
        r = run_fleet(["decode", "820102", "--key-file", str(path)])
        assert_clean(r, codes=(1,))
        for form in key_forms(secret) + [secret.hex()[:30]]:
            assert form not in r.output, (content, r)


# ---- 6. small ones ---------------------------------------------------------------------------


def test_readings_of_an_unknown_node_fails(store_home):
    r = run_fleet(["readings", "--node", "999", "--home", store_home.path])
    assert_clean(r, codes=(1,))
    assert "node 999" in r.stderr and "not registered" in r.stderr, r
    r = run_fleet(["readings", "--node", "10", "--home", store_home.path])  # known, no readings: empty
    assert r.code == 0 and "no readings for node 10" in r.stderr, r


@pytest.mark.parametrize("text,says", [("abc", "odd length"), ("82010", "odd length"), ("8z", "character 2 is 'z'"),
                                       ("", "input is empty")])
def test_decode_says_what_is_wrong_with_the_hex(text, says):
    r = run_fleet(["decode", text])
    assert_clean(r, codes=(1,))
    assert says in r.stderr, r


def test_a_csv_node_id_must_be_plain_digits(home, tmp_path):
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("port,node_id\n/dev/ttyUSB0,1_000\n/dev/ttyUSB1,+7\n/dev/ttyUSB2,\u0667\n/dev/ttyUSB3,99999999999\n")
    r = run_fleet(["provision", "--from-csv", str(sheet), "--home", home.path])
    assert_clean(r, codes=(1,))
    assert "4 bad row(s)" in r.stderr and "row 2: node_id '1_000' is not an integer" in r.stderr, r


def test_a_sheet_of_10000_bad_rows_prints_a_screenful(home, tmp_path):
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("port,node_id\n" + "".join(f"/dev/ttyUSB{i},x{i}\n" for i in range(10000)))
    r = run_fleet(["provision", "--from-csv", str(sheet), "--home", home.path])
    assert_clean(r, codes=(1,))
    lines = r.stderr.splitlines()
    assert len(lines) <= 25, len(lines)
    assert "10000 bad row(s)" in lines[0] and lines[-1].strip() == "... and 9980 more bad row(s)", r
