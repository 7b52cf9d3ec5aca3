"""Host tests: fleet/signing.py against protocol.ed25519 (signatures made by `cryptography`,
verified by our pure-Python verifier), the key file's permissions, and the vector files."""
import hashlib
import json
import os
import stat

import gen_crypto_vectors
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet import signing
from fleet.errors import FleetError
from protocol import ed25519, sha512

VECTORS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "protocol", "vectors")

seeds = st.binary(min_size=32, max_size=32)
messages = st.binary(min_size=0, max_size=600)


def _vectors(name):
    with open(os.path.join(VECTORS, name)) as f:
        return json.load(f)["vectors"]


def _flip(data, bit):
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


@settings(max_examples=60, deadline=None)
@given(seed=seeds, message=messages)
def test_signatures_from_cryptography_verify(seed, message):
    sig = signing.sign(seed, message)
    assert len(sig) == 64
    assert ed25519.verify(signing.public_key_of(seed), message, sig)


@settings(max_examples=60, deadline=None)
@given(seed=seeds, message=st.binary(min_size=1, max_size=300), data=st.data())
def test_a_flipped_message_bit_is_rejected(seed, message, data):
    bit = data.draw(st.integers(0, len(message) * 8 - 1))
    sig = signing.sign(seed, message)
    assert not ed25519.verify(signing.public_key_of(seed), _flip(message, bit), sig)


@settings(max_examples=100, deadline=None)
@given(seed=seeds, message=messages, bit=st.integers(0, 511))
def test_a_flipped_signature_bit_is_rejected(seed, message, bit):
    sig = signing.sign(seed, message)
    assert not ed25519.verify(signing.public_key_of(seed), message, _flip(sig, bit))


@settings(max_examples=100, deadline=None)
@given(seed=seeds, message=messages, bit=st.integers(0, 255))
def test_a_flipped_public_key_bit_is_rejected(seed, message, bit):
    sig = signing.sign(seed, message)
    assert not ed25519.verify(_flip(signing.public_key_of(seed), bit), message, sig)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, other=seeds, message=messages)
def test_another_keys_signature_is_rejected(seed, other, message):
    if seed == other:
        return
    assert not ed25519.verify(signing.public_key_of(other), message, signing.sign(seed, message))


def test_generated_keys_are_distinct_and_consistent():
    seed, pub = signing.generate_keypair()
    seed2, pub2 = signing.generate_keypair()
    assert len(seed) == 32 and len(pub) == 32 and seed != seed2 and pub != pub2
    assert signing.public_key_of(seed) == pub
    assert ed25519.verify(pub, b"manifest", signing.sign(seed, b"manifest"))


def test_sign_refuses_a_bad_seed():
    with pytest.raises(ValueError):
        signing.sign(b"\x00" * 31, b"m")
    with pytest.raises(ValueError):
        signing.public_key_of("not bytes")


def test_key_file_is_created_0600_whatever_the_umask(tmp_path):
    path = tmp_path / "fleet.key"
    old = os.umask(0)
    try:
        pub = signing.generate_key_file(str(path))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    seed = signing.load_private_key(str(path))
    assert len(seed) == 32 and path.read_bytes() == seed
    assert signing.public_key_of(seed) == pub


def test_save_refuses_to_replace_a_key_unless_asked(tmp_path):
    path = tmp_path / "fleet.key"
    first = signing.generate_key_file(str(path))
    with pytest.raises(FleetError, match="already exists"):
        signing.generate_key_file(str(path))
    assert signing.public_key_of(signing.load_private_key(str(path))) == first
    os.chmod(path, 0o644)  # overwrite narrows an existing file's mode too
    second = signing.generate_key_file(str(path), overwrite=True)
    assert second != first
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o602])
def test_load_refuses_a_key_others_can_access(tmp_path, mode):
    path = tmp_path / "fleet.key"
    signing.generate_key_file(str(path))
    os.chmod(path, mode)
    with pytest.raises(FleetError) as err:
        signing.load_private_key(str(path))
    msg = str(err.value.message)
    assert "%04o" % mode in msg and "chmod 600" in msg
    assert path.read_bytes().hex() not in msg


def test_load_accepts_owner_read_only(tmp_path):
    path = tmp_path / "fleet.key"
    signing.generate_key_file(str(path))
    os.chmod(path, 0o400)
    assert len(signing.load_private_key(str(path))) == 32


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_load_refuses_a_file_of_the_wrong_size(tmp_path, size):
    path = tmp_path / "fleet.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"\x01" * size)
    os.close(fd)
    with pytest.raises(FleetError, match="32-byte"):
        signing.load_private_key(str(path))


def test_load_reports_a_missing_file_and_a_directory(tmp_path):
    with pytest.raises(FleetError, match="no signing key"):
        signing.load_private_key(str(tmp_path / "absent.key"))
    os.chmod(tmp_path, 0o700)
    with pytest.raises(FleetError):
        signing.load_private_key(str(tmp_path))


def test_vector_files_are_what_the_generator_writes():
    for name, text in gen_crypto_vectors.render().items():
        with open(os.path.join(VECTORS, name)) as f:
            assert f.read() == text, f"{name} is stale: run .venv/bin/python tests/gen_crypto_vectors.py"


def test_rfc8032_vectors_are_reproduced_by_cryptography():
    valid = [v for v in _vectors("ed25519.json") if v["valid"]]
    assert [v["name"] for v in valid] == ["TEST 1", "TEST 2", "TEST 3", "TEST 1024", "TEST SHA(abc)"]
    for v in valid:
        seed = bytes.fromhex(v["secret"])
        message = bytes.fromhex(v["message"])
        assert signing.public_key_of(seed).hex() == v["public"], v["name"]
        assert signing.sign(seed, message).hex() == v["signature"], v["name"]
    assert len(bytes.fromhex(valid[3]["message"])) == 1023
    assert bytes.fromhex(valid[4]["message"]) == hashlib.sha512(b"abc").digest()


def test_small_order_forgeries_pass_the_group_equation_but_are_rejected():
    # The two small-order cases satisfy [S]B - [k]A == R (OpenSSL, which does not check point
    # order, accepts them); only protocol.ed25519's small-order checks stop them.
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    cases = [v for v in _vectors("ed25519.json") if "R = identity" in v["name"]]
    assert len(cases) == 2
    for v in cases:
        pk, msg, sig = (bytes.fromhex(v[k]) for k in ("public", "message", "signature"))
        try:
            Ed25519PublicKey.from_public_bytes(pk).verify(sig, msg)
            group_equation_holds = True
        except InvalidSignature:
            group_equation_holds = False
        assert group_equation_holds, v["name"]
        assert not ed25519.verify(pk, msg, sig)


def test_sha512_constants_are_the_fips_definitions():
    def primes(n):
        out, c = [], 2
        while len(out) < n:
            if all(c % q for q in out):
                out.append(c)
            c += 1
        return out

    def iroot(x, k):  # floor of the k-th root: integer Newton from above
        r = 1 << ((x.bit_length() + k - 1) // k)
        while True:
            y = ((k - 1) * r + x // r ** (k - 1)) // k
            if y >= r:
                return r
            r = y

    mask = (1 << 64) - 1
    k = [iroot(q << 192, 3) & mask for q in primes(80)]
    h0 = [iroot(q << 128, 2) & mask for q in primes(8)]
    assert sha512._K == b"".join(x.to_bytes(8, "big") for x in k)
    assert list(sha512._H0) == h0


@settings(max_examples=80, deadline=None)
@given(data=st.binary(max_size=700), cut=st.integers(0, 700))
def test_sha512_matches_hashlib(data, cut):
    h = sha512.SHA512(data[:cut])
    h.update(data[cut:])
    assert h.digest() == hashlib.sha512(data).digest() == sha512.sha512(data)


def test_verify_uses_hashlib_on_cpython():
    assert ed25519._new_sha512 is hashlib.sha512


def test_sign_is_cryptographys_deterministic_ed25519():
    key = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
    assert key.sign(b"x") == signing.sign(b"\x07" * 32, b"x") == signing.sign(b"\x07" * 32, b"x")
