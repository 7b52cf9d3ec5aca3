"""No secret byte in any message: a sweep of every command that touches keys (keys init/show,
decode --key-file, provision's dry and failing paths, ota build/inspect/push, a key file that is
unsafe, damaged or of the wrong kind) greps stdout and stderr for every key's bytes - fleet
secret, signing seed, mesh key, node keys, a Wi-Fi password - as raw bytes, hex and base64
(tests/cli_run.py key_forms). tests/test_cli_contract.py runs the same grep over every output of
its walk of all commands."""
import json
import os
import sys

import pytest
from cli_run import assert_clean, assert_no_key_bytes, key_forms, run_fleet

from fleet.home import FleetHome

WIFI_PASSWORD = "wifi-Pa55-d0-not-print"
NODES = (1, 7, 10, 11)


def secrets_of(home):
    keys = FleetHome(home.path).keys()  # fresh: `keys init --force` may have replaced them
    out = [keys.fleet_secret(), keys.signing_seed(), keys.mesh_key()] + [keys.node_key(n) for n in NODES]
    return out + [WIFI_PASSWORD.encode()]


@pytest.fixture
def home(tmp_path):
    h = FleetHome(str(tmp_path / "home"))
    r = run_fleet(["keys", "init", "--home", h.path])
    assert r.code == 0, r
    assert_no_key_bytes(r, secrets_of(h))
    store = h.store(create=True)
    store.register_nodes([{"node": 1, "role": "gateway"}, {"node": 10}, {"node": 11}])
    store.close()
    return h


def _run(home, argv, codes=(0, 1, 2), secrets=None):
    r = run_fleet(argv)
    assert_clean(r, codes)
    assert_no_key_bytes(r, secrets or secrets_of(home))
    return r


def test_the_grep_finds_a_leak():
    # the check itself can fail: each form of a key is found
    key = bytes(range(0xA4, 0xA4 + 32))
    from cli_run import Ran

    for shown in (key.hex(), key.hex().upper()[10:40], "b'" + repr(key[3:12])[2:-1], json.dumps(
            {"k": __import__("base64").b64encode(key).decode()})):
        with pytest.raises(AssertionError, match="key's bytes"):
            assert_no_key_bytes(Ran(1, "", "Error: " + shown + "\n"), [key])
    with pytest.raises(AssertionError, match="raw bytes"):
        assert_no_key_bytes(Ran(1, "", "", b"Error: " + key[5:20]), [key])
    assert key.hex()[:16] in key_forms(key)[0]


def test_keys_commands(home):
    for argv in (["keys", "show"], ["keys", "show", "--json"], ["keys", "init"], ["keys", "init", "--json"]):
        _run(home, argv + ["--home", home.path])
    r = _run(home, ["keys", "init", "--force", "--json", "--home", home.path], codes=(0,))
    assert json.loads(r.stdout)["public_key"]


def test_decode_with_every_key_file(home, tmp_path):
    keys = home.keys()
    frame = "820102"
    files = [keys.secret_path, keys.signing_path, keys.public_path]
    for name, content in (
            ("mesh.json", json.dumps({"mesh_key": keys.mesh_key().hex()})),
            ("fleet.json", json.dumps({"fleet_secret": keys.fleet_secret().hex(), "net_id": 1})),
            ("bad-net.json", json.dumps({"fleet_secret": keys.fleet_secret().hex(), "net_id": "x" + keys.mesh_key().hex()})),
            ("short.json", json.dumps({"fleet_secret": keys.fleet_secret().hex()[:40]})),
            ("not-hex.json", json.dumps({"node_key": keys.node_key(10).hex() + "zz"})),
            ("truncated.json", '{"mesh_key": "' + keys.mesh_key().hex())):
        p = tmp_path / name
        p.write_text(content)
        files.append(str(p))
    raw = tmp_path / "raw-copy.key"
    raw.write_bytes(keys.signing_seed() + keys.fleet_secret())
    files.append(str(raw))
    # a seed that is not UTF-8 from its first byte (the leak: "can't decode byte 0xa4")
    leaky = bytes([0xA4]) + keys.signing_seed()[1:]
    p = tmp_path / "leaky.key"
    p.write_bytes(leaky)
    files.append(str(p))
    for path in files:
        for hex_in in (frame, "abc", "-"):
            _run(home, ["decode", hex_in, "--key-file", path], codes=(0, 1), secrets=secrets_of(home) + [leaky])


def test_unsafe_or_damaged_key_files(home):
    keys = home.keys()
    seed, secret = keys.signing_seed(), keys.fleet_secret()
    every = secrets_of(home)
    os.chmod(keys.signing_path, 0o644)  # readable by others: refused, named, never shown
    r = _run(home, ["ota", "build", "--home", home.path], codes=(1,), secrets=every)
    assert keys.signing_path in r.stderr
    os.chmod(keys.signing_path, 0o600)
    with open(keys.secret_path, "wb") as f:
        f.write(secret + seed[:5])  # damaged: wrong length
    _run(home, ["decode", "820102", "--key-file", keys.secret_path], codes=(1,), secrets=every)
    _run(home, ["provision", "--port", "/nonexistent/ttyUSB0", "--node-id", "7", "--home", home.path], codes=(1,),
         secrets=every)
    with open(keys.secret_path, "wb") as f:
        f.write(secret)


def test_provision_and_ota_paths(home, tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "device"))
    import ota_fixtures as fx

    from fleet import ota_bundle

    sheet = tmp_path / "sheet.csv"
    sheet.write_text("port,node_id,pole\n/nonexistent/ttyUSB0,7,P7\n/nonexistent/ttyUSB1,x,P8\n")
    for argv in (["provision", "--port", "/nonexistent/ttyUSB0", "--node-id", "7", "--role", "gateway",
                  "--broker", "mqtt://127.0.0.1:1", "--wifi-ssid", "poles", "--wifi-password", WIFI_PASSWORD],
                 ["provision", "--port", "/nonexistent/ttyUSB0", "--node-id", "7", "--wifi-password", WIFI_PASSWORD + "\n"],
                 ["provision", "--from-csv", str(sheet), "--json"],
                 ["provision", "--from-csv", home.keys().secret_path],
                 ["node", "info", "--port", "/nonexistent/ttyUSB0"]):
        _run(home, argv + ["--home", home.path], codes=(1, 2))
    b = ota_bundle.build_bundle(fx.app_files(2), 2, "2.0.0", home.keys().sign)
    path = tmp_path / "b.rmota"
    path.write_bytes(b.encode())
    for argv in (["ota", "inspect", str(path), "--json", "--files"], ["ota", "inspect", str(path)],
                 ["ota", "inspect", home.keys().signing_path],
                 ["ota", "build", "--version", "1.0\nslot=b"],
                 ["ota", "push", str(path), "--broker", "mqtt://127.0.0.1:1", "--timeout", "2"],
                 ["ota", "status"], ["status", "--json"], ["readings", "--node", "10", "--json"]):
        _run(home, argv + ["--home", home.path])
