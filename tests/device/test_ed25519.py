# Ed25519 verify and SHA-512 against protocol/vectors/{ed25519,sha512}.json. Runs unchanged on
# CPython (pytest) and MicroPython (tests/mp_run.py).
import json
import sys

from protocol import ed25519
from protocol.sha512 import SHA512, sha512

try:
    _HERE = __file__.rsplit("/", 1)[0]
except NameError:  # pragma: no cover
    _HERE = "tests/device"
# Beside this file in the repo; from the working directory (the repo root) when this module was
# precompiled to a temporary directory by tests/test_device_side.py.
_VECTOR_DIRS = (_HERE + "/../../protocol/vectors/", "protocol/vectors/")
_ON_MICROPYTHON = sys.implementation.name == "micropython"

_P = 2**255 - 19
_BASE = (15112221349535400772501151409588531511454012693041857206046113283949847762202,
         46316835694926478169428394003475163141307993866256225615783033603165251855960)


def _open_vectors(name):
    for d in _VECTOR_DIRS:
        try:
            return open(d + name)
        except OSError:
            pass
    raise OSError("protocol/vectors/" + name + " not found: run from the repository root")


def _each(name):
    """Vectors of one file, one line at a time, so a 64k heap never holds the whole file."""
    with _open_vectors(name) as f:
        f.readline()  # header
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                yield json.loads(line[:-1] if line.endswith(",") else line)


def _h(s):
    return bytes.fromhex(s)


def _affine(q):
    zi = pow(q[2], _P - 2, _P)
    return (q[0] * zi % _P, q[1] * zi % _P)


def test_every_valid_vector_verifies_and_every_invalid_one_does_not():
    seen = {True: 0, False: 0}
    for v in _each("ed25519.json"):
        got = ed25519.verify(_h(v["public"]), _h(v["message"]), _h(v["signature"]))
        assert got is v["valid"], v["name"]
        seen[v["valid"]] += 1
    assert seen[True] == 5  # RFC 8032 7.1: TEST 1, 2, 3, 1024, SHA(abc)
    assert seen[False] >= 20


def test_verify_accepts_bytearray_and_memoryview():
    v = next(_each("ed25519.json"))
    assert ed25519.verify(bytearray(_h(v["public"])), memoryview(_h(v["message"])),
                          bytearray(_h(v["signature"])))


def test_verify_returns_false_for_wrong_types_without_raising():
    v = next(_each("ed25519.json"))
    pk, msg, sig = _h(v["public"]), _h(v["message"]), _h(v["signature"])
    assert ed25519.verify(pk, msg, sig)
    for bad in (None, 0, 32, "x" * 32, [0] * 32):
        assert ed25519.verify(bad, msg, sig) is False
        assert ed25519.verify(pk, bad, sig) is False
        assert ed25519.verify(pk, msg, bad) is False
    assert ed25519.verify(b"", b"", b"") is False


def test_sha512_vectors():
    n = 0
    for v in _each("sha512.json"):
        if v["cpython_only"] and _ON_MICROPYTHON:
            continue
        msg = _h(v["message"])
        if v["repeat"] == 1:
            assert sha512(msg).hex() == v["digest"], v["name"]
        else:
            # Fed in 1000-byte pieces: no million-byte buffer.
            h = SHA512()
            chunk = msg * 1000
            for _ in range(v["repeat"] // 1000):
                h.update(chunk)
            assert h.hexdigest() == v["digest"], v["name"]
        n += 1
    assert n >= 13


def test_sha512_incremental_matches_one_shot_at_every_split():
    msg = bytes((i * 13 + 5) & 0xFF for i in range(300))
    want = sha512(msg)
    for cut in (0, 1, 63, 111, 112, 127, 128, 129, 200, 255, 256, 299, 300):
        h = SHA512(msg[:cut])
        h.update(msg[cut:])
        assert h.digest() == want, cut
    h = SHA512()
    for i in range(300):
        h.update(msg[i:i + 1])
    assert h.digest() == want


def test_sha512_digest_is_repeatable_and_copy_is_independent():
    h = SHA512(b"ab")
    c = h.copy()
    h.update(b"c")
    assert h.digest() == h.digest() == sha512(b"abc")
    assert c.digest() == sha512(b"ab")
    assert len(h.hexdigest()) == 128


def test_b_table_is_the_odd_multiples_of_the_base_point():
    b = (_BASE[0], _BASE[1], 1, _BASE[0] * _BASE[1] % _P)
    b2 = ed25519._double(b)
    q = b
    table = ed25519._B_TABLE
    n = 1 << (ed25519._W_B - 2)
    assert len(table) == 96 * n
    for i in range(n):
        if i:
            q = ed25519._add(q, b2)
        x, y = _affine(q)
        got = [int.from_bytes(table[96 * i + 32 * j:96 * i + 32 * j + 32], "little") for j in range(3)]
        assert got == [(y - x) % _P, (y + x) % _P, 2 * ed25519._D * x * y % _P], i


def test_base_point_decodes_from_its_rfc_encoding():
    enc = _BASE[1].to_bytes(32, "little")  # x of B is even: sign bit 0
    q = ed25519._decode_point(enc)
    assert (q[0], q[1]) == _BASE


def test_small_order_points_are_rejected_as_public_key_and_as_r():
    # The 8 points of order dividing 8, as libsodium lists their canonical encodings.
    encodings = (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    )
    v = next(_each("ed25519.json"))
    pk, msg, sig = _h(v["public"]), _h(v["message"]), _h(v["signature"])
    for e in encodings:
        q = ed25519._decode_point(_h(e))
        assert q is not None, e  # each is a curve point...
        assert ed25519._has_small_order(q), e  # ...of small order
        assert not ed25519.verify(_h(e), msg, sig)
        assert not ed25519.verify(pk, msg, _h(e) + sig[32:])
    a = ed25519._decode_point(pk)
    assert not ed25519._has_small_order(a)


def test_non_canonical_y_is_rejected_where_the_canonical_one_decodes():
    checked = 0
    for y in range(19):  # y + p < 2^255 only for y < 19
        canonical = ed25519._decode_point(y.to_bytes(32, "little"))
        if canonical is None:
            continue
        assert ed25519._decode_point((y + _P).to_bytes(32, "little")) is None, y
        checked += 1
    assert checked >= 3


def test_x_zero_with_sign_bit_is_rejected():
    # y = 1 and y = p - 1 are the points with x = 0; their sign bit must be 0.
    for y in (1, _P - 1):
        enc = bytearray(y.to_bytes(32, "little"))
        assert ed25519._decode_point(bytes(enc)) is not None
        enc[31] |= 0x80
        assert ed25519._decode_point(bytes(enc)) is None


def test_decoded_points_are_on_the_curve_with_the_requested_sign():
    d = ed25519._D
    for v in _each("ed25519.json"):
        if not v["valid"]:
            continue
        for enc in (_h(v["public"]), _h(v["signature"])[:32]):
            x, y, z, t = ed25519._decode_point(enc)
            assert z == 1 and t == x * y % _P
            assert (-x * x + y * y - 1 - d * x * x * y * y) % _P == 0
            assert (x & 1) == (enc[31] >> 7)
