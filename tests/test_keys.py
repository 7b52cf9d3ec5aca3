"""The keystore and `fleet keys`: 0600 files whatever the umask, never printed, never
overwritten without --force, unsafe permissions refused, node keys derived as protocol.auth says."""
import base64
import json
import os
import stat

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fleet import signing
from fleet.cli import group
from fleet.errors import FleetError
from fleet.home import FleetHome
from fleet.keys import Keystore
from protocol import auth


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def permissive_umask():
    old = os.umask(0)  # the worst case: nothing masked
    try:
        yield
    finally:
        os.umask(old)


def test_init_creates_0600_files_whatever_the_umask(tmp_path, permissive_umask):
    ks = Keystore(str(tmp_path / "keys"), net_id=7)
    info = ks.init()
    assert mode(ks.secret_path) == 0o600
    assert mode(ks.signing_path) == 0o600
    assert mode(ks.public_path) == 0o644
    assert mode(ks.dir) == 0o700
    assert os.path.getsize(ks.secret_path) == 32
    assert info["initialised"] and len(bytes.fromhex(info["public_key"])) == 32
    assert not [f for f in os.listdir(ks.dir) if ".tmp-" in f]  # no temporaries left behind


def test_refuses_to_overwrite_without_force(tmp_path):
    ks = Keystore(str(tmp_path / "keys"), net_id=1)
    ks.init()
    with open(ks.secret_path, "rb") as f:
        secret = f.read()
    with pytest.raises(FleetError, match="refusing to overwrite"):
        Keystore(ks.dir, 1).init()
    with open(ks.secret_path, "rb") as f:
        assert f.read() == secret
    Keystore(ks.dir, 1).init(force=True)
    with open(ks.secret_path, "rb") as f:
        assert f.read() != secret
    assert mode(ks.secret_path) == 0o600


def test_refuses_group_or_world_readable_key_files(tmp_path):
    ks = Keystore(str(tmp_path / "keys"), net_id=1)
    ks.init()
    os.chmod(ks.secret_path, 0o640)
    with pytest.raises(FleetError, match=r"chmod 600"):
        Keystore(ks.dir, 1).fleet_secret()
    os.chmod(ks.secret_path, 0o600)
    os.chmod(ks.signing_path, 0o604)
    with pytest.raises(FleetError, match="chmod 600"):
        Keystore(ks.dir, 1).signing_seed()


def test_missing_and_damaged_keys_are_clear_errors(tmp_path):
    ks = Keystore(str(tmp_path / "keys"), net_id=1)
    with pytest.raises(FleetError, match="fleet keys init"):
        ks.fleet_secret()
    ks.init()
    with open(ks.secret_path, "wb") as f:
        f.write(b"short")
    with pytest.raises(FleetError, match="holds 5 bytes"):
        Keystore(ks.dir, 1).fleet_secret()
    with open(ks.signing_path, "wb") as f:
        f.write(b"x" * 40)
    with pytest.raises(FleetError, match="bytes"):
        Keystore(ks.dir, 1).signing_seed()
    os.unlink(ks.signing_path)
    with pytest.raises(FleetError, match="fleet keys init"):
        Keystore(ks.dir, 1).signing_seed()


def test_derived_keys_match_protocol_auth_and_are_cached(tmp_path):
    ks = Keystore(str(tmp_path / "keys"), net_id=3)
    ks.init()
    secret = Keystore(ks.dir, 3).fleet_secret()
    fresh = Keystore(ks.dir, 3)
    k5 = fresh.node_key(5)
    assert k5 == auth.derive_node_key(secret, 3, 5)
    assert fresh.node_key(5) is k5  # cached
    assert fresh.node_key(6) != k5
    assert fresh.mesh_key() == auth.derive_mesh_key(secret, 3)
    assert Keystore(ks.dir, 4).node_key(5) != k5  # the network id matters


def test_signature_verifies_with_the_public_key(tmp_path):
    ks = Keystore(str(tmp_path / "keys"), net_id=1)
    ks.init()
    loaded = Keystore(ks.dir, 1)
    sig = loaded.sign(b"manifest")
    Ed25519PublicKey.from_public_bytes(loaded.public_key()).verify(sig, b"manifest")  # raises if bad
    # the key file is in fleet/signing.py's format, so OTA tools can load it directly
    assert signing.sign(signing.load_private_key(ks.signing_path), b"manifest") == sig
    assert os.path.getsize(ks.signing_path) == 32


def test_repr_hides_secrets(tmp_path):
    ks = Keystore(str(tmp_path / "keys"), net_id=1)
    ks.init()
    text = repr(ks) + repr(ks.info())
    assert ks.fleet_secret().hex() not in text


def _secret_forms(secret):
    return [secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode(), repr(secret)]


def test_cli_init_and_show_never_print_secrets(tmp_path):
    home = str(tmp_path / "home")
    runner = CliRunner()
    r = runner.invoke(group, ["keys", "init", "--home", home])
    assert r.exit_code == 0, r.output
    h = FleetHome(home)
    secret = h.keys().fleet_secret()
    seed = h.keys().signing_seed()
    r2 = runner.invoke(group, ["keys", "show", "--home", home])
    r3 = runner.invoke(group, ["keys", "show", "--json", "--home", home])
    assert r2.exit_code == 0 and r3.exit_code == 0
    for res in (r, r2, r3):
        out = res.output + (res.stderr or "")
        for form in _secret_forms(secret) + _secret_forms(seed):
            assert form not in out
    info = json.loads(r3.stdout)
    assert info["public_key"] == h.keys().public_key().hex()
    assert info["secret_file"].endswith("fleet.secret")
    # `keys init` pinned the network id in fleet.toml
    assert "[network]" in open(h.config_path).read()


def test_cli_init_refuses_twice_and_force_replaces(tmp_path):
    home = str(tmp_path / "home")
    runner = CliRunner()
    assert runner.invoke(group, ["keys", "init", "--home", home]).exit_code == 0
    pub1 = FleetHome(home).keys().public_key()
    r = runner.invoke(group, ["keys", "init", "--home", home])
    assert r.exit_code == 1
    assert "refusing to overwrite" in r.output and isinstance(r.exception, (SystemExit, type(None)))  # a clean exit, not a crash
    assert FleetHome(home).keys().public_key() == pub1
    r = runner.invoke(group, ["keys", "init", "--force", "--home", home])
    assert r.exit_code == 0
    assert FleetHome(home).keys().public_key() != pub1


def test_cli_show_without_keys_and_with_unsafe_keys(tmp_path):
    home = str(tmp_path / "home")
    runner = CliRunner()
    r = runner.invoke(group, ["keys", "show", "--home", home])
    assert r.exit_code == 0 and "fleet keys init" in r.output
    runner.invoke(group, ["keys", "init", "--home", home])
    os.chmod(FleetHome(home).keys().secret_path, 0o644)
    r = runner.invoke(group, ["keys", "show", "--home", home])
    assert r.exit_code == 1 and "chmod 600" in r.output and isinstance(r.exception, (SystemExit, type(None)))  # a clean exit, not a crash
