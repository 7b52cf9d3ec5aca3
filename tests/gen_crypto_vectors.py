"""Writes protocol/vectors/ed25519.json and sha512.json (CPython). Deterministic: run it and the
files must not change; tests/test_signing.py checks exactly that.

    .venv/bin/python tests/gen_crypto_vectors.py

Valid Ed25519 cases are RFC 8032 section 7.1 as printed; tests/test_signing.py re-derives each
public key and signature from the secret with `cryptography`. Invalid cases are built here from
them: each is a way a verifier can go wrong, and names what it probes. SHA-512 cases are the
FIPS 180-4 examples plus padding-boundary lengths, each checked against hashlib.
"""
import hashlib
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VECTORS_DIR = os.path.join(ROOT, "protocol", "vectors")

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P

RFC8032 = [
    ("TEST 1",
     "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
     "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
     "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("TEST 2",
     "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
     "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
     "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
    ("TEST 3",
     "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
     "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
     "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
     "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"),
    ("TEST 1024",
     "f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
     "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e",
     "08b8b2b733424243760fe426a4b54908632110a66c2f6591eabd3345e3e4eb98"
     "fa6e264bf09efe12ee50f8f54e9f77b1e355f6c50544e23fb1433ddf73be84d8"
     "79de7c0046dc4996d9e773f4bc9efe5738829adb26c81b37c93a1b270b20329d"
     "658675fc6ea534e0810a4432826bf58c941efb65d57a338bbd2e26640f89ffbc"
     "1a858efcb8550ee3a5e1998bd177e93a7363c344fe6b199ee5d02e82d522c4fe"
     "ba15452f80288a821a579116ec6dad2b3b310da903401aa62100ab5d1a36553e"
     "06203b33890cc9b832f79ef80560ccb9a39ce767967ed628c6ad573cb116dbef"
     "efd75499da96bd68a8a97b928a8bbc103b6621fcde2beca1231d206be6cd9ec7"
     "aff6f6c94fcd7204ed3455c68c83f4a41da4af2b74ef5c53f1d8ac70bdcb7ed1"
     "85ce81bd84359d44254d95629e9855a94a7c1958d1f8ada5d0532ed8a5aa3fb2"
     "d17ba70eb6248e594e1a2297acbbb39d502f1a8c6eb6f1ce22b3de1a1f40cc24"
     "554119a831a9aad6079cad88425de6bde1a9187ebb6092cf67bf2b13fd65f270"
     "88d78b7e883c8759d2c4f5c65adb7553878ad575f9fad878e80a0c9ba63bcbcc"
     "2732e69485bbc9c90bfbd62481d9089beccf80cfe2df16a2cf65bd92dd597b07"
     "07e0917af48bbb75fed413d238f5555a7a569d80c3414a8d0859dc65a46128ba"
     "b27af87a71314f318c782b23ebfe808b82b0ce26401d2e22f04d83d1255dc51a"
     "ddd3b75a2b1ae0784504df543af8969be3ea7082ff7fc9888c144da2af58429e"
     "c96031dbcad3dad9af0dcbaaaf268cb8fcffead94f3c7ca495e056a9b47acdb7"
     "51fb73e666c6c655ade8297297d07ad1ba5e43f1bca32301651339e22904cc8c"
     "42f58c30c04aafdb038dda0847dd988dcda6f3bfd15c4b4c4525004aa06eeff8"
     "ca61783aacec57fb3d1f92b0fe2fd1a85f6724517b65e614ad6808d6f6ee34df"
     "f7310fdc82aebfd904b01e1dc54b2927094b2db68d6f903b68401adebf5a7e08"
     "d78ff4ef5d63653a65040cf9bfd4aca7984a74d37145986780fc0b16ac451649"
     "de6188a7dbdf191f64b5fc5e2ab47b57f7f7276cd419c17a3ca8e1b939ae49e4"
     "88acba6b965610b5480109c8b17b80e1b7b750dfc7598d5d5011fd2dcc5600a3"
     "2ef5b52a1ecc820e308aa342721aac0943bf6686b64b2579376504ccc493d97e"
     "6aed3fb0f9cd71a43dd497f01f17c0e2cb3797aa2a2f256656168e6c496afc5f"
     "b93246f6b1116398a346f1a641f3b041e989f7914f90cc2c7fff357876e506b5"
     "0d334ba77c225bc307ba537152f3f1610e4eafe595f6d9d90d11faa933a15ef1"
     "369546868a7f3a45a96768d40fd9d03412c091c6315cf4fde7cb68606937380d"
     "b2eaaa707b4c4185c32eddcdd306705e4dc1ffc872eeee475a64dfac86aba41c"
     "0618983f8741c5ef68d3a101e8a3b8cac60c905c15fc910840b94c00a0b9d0",
     "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350"
     "aa5371b1508f9f4528ecea23c436d94b5e8fcd4f681e30a6ac00a9704a188a03"),
    ("TEST SHA(abc)",
     "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
     "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
     "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
     "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
     "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589"
     "09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704"),
]

IDENTITY = (1).to_bytes(32, "little")  # the point (0, 1)


def _case(name, secret, public, message, signature, valid, note=""):
    out = {"name": name, "secret": secret, "public": public, "message": message,
           "signature": signature, "valid": valid}
    if note:
        out["note"] = note
    return out


def _flip(hex_str, byte_index, mask):
    b = bytearray(bytes.fromhex(hex_str))
    b[byte_index] ^= mask
    return b.hex()


def _is_square(n):
    return n == 0 or pow(n, (P - 1) // 2, P) == 1


def _y_on_curve(y):
    """True if some x makes (x, y) a curve point: (y^2 - 1) / (d y^2 + 1) is a square."""
    u = (y * y - 1) % P
    v = (D * y * y + 1) % P
    return _is_square(u * pow(v, P - 2, P) % P)


def _secret_scalar(seed_hex):
    h = hashlib.sha512(bytes.fromhex(seed_hex)).digest()
    a = bytearray(h[:32])
    a[0] &= 248
    a[31] &= 127
    a[31] |= 64
    return int.from_bytes(a, "little")


def _k(r, a, message):
    return int.from_bytes(hashlib.sha512(r + a + message).digest(), "little") % L


def ed25519_cases():
    """All Ed25519 cases, RFC 8032 first, as a list of dicts."""
    cases = [_case(n, s, pk, m, sig, True, "RFC 8032 section 7.1") for n, s, pk, m, sig in RFC8032]
    _, s1, pk1, m1, sig1 = RFC8032[0]
    _, s2, pk2, m2, sig2 = RFC8032[1]
    _, _, pk3, _, _ = RFC8032[2]
    cases.append(_case("TEST 1, bit flipped in R", s1, pk1, m1, _flip(sig1, 0, 0x01), False))
    cases.append(_case("TEST 1, bit flipped in S", s1, pk1, m1, _flip(sig1, 40, 0x10), False))
    cases.append(_case("TEST 2, bit flipped in the message", s2, pk2, "73", sig2, False))
    cases.append(_case("TEST 2, bit flipped in the public key", s2, _flip(pk2, 5, 0x04), m2, sig2, False))
    cases.append(_case("TEST 2 signature under TEST 3's public key", "", pk3, m2, sig2, False))
    sig_bytes = bytes.fromhex(sig1)
    s_val = int.from_bytes(sig_bytes[32:], "little")
    cases.append(_case(
        "TEST 1 with S + L (non-canonical S)", s1, pk1, m1,
        (sig_bytes[:32] + (s_val + L).to_bytes(32, "little")).hex(), False,
        "[S+L]B == [S]B, so only the S < L check rejects this malleated signature"))
    cases.append(_case("TEST 1 with S = 2^256 - 1", s1, pk1, m1, sig1[:64] + "ff" * 32, False))
    cases.append(_case("TEST 1 with S = L", s1, pk1, m1, sig1[:64] + L.to_bytes(32, "little").hex(), False))
    # Small-order public key: with A = identity, R = identity and S = 0 satisfy
    # [S]B - [k]A == R for every message. Only the small-order check rejects it.
    cases.append(_case(
        "identity public key, R = identity, S = 0", "", IDENTITY.hex(), "4f5441",
        (IDENTITY + bytes(32)).hex(), False,
        "passes the group equation for any message; rejected as a small-order public key"))
    # Small-order R under an honest key: R = identity and S = k*a mod L also satisfy the
    # equation; only the small-order check on R rejects it.
    a_scalar = _secret_scalar(s1)
    forged_msg = bytes.fromhex("6d616e6966657374")
    s_forged = _k(IDENTITY, bytes.fromhex(pk1), forged_msg) * a_scalar % L
    cases.append(_case(
        "TEST 1 key, R = identity, S = k*a mod L", s1, pk1, forged_msg.hex(),
        (IDENTITY + s_forged.to_bytes(32, "little")).hex(), False,
        "passes the group equation; rejected because R has small order"))
    # Order-2 point (0, -1) as the public key.
    minus_one = (P - 1).to_bytes(32, "little")
    cases.append(_case("public key of order 2 (0, -1)", "", minus_one.hex(), m1, sig1, False))
    # y with no x on the curve.
    y_off = next(y for y in range(2, 100) if not _y_on_curve(y))
    cases.append(_case("public key not on the curve (y = %d)" % y_off, "",
                       y_off.to_bytes(32, "little").hex(), m1, sig1, False))
    r_off = y_off.to_bytes(32, "little")
    cases.append(_case("R not on the curve (y = %d)" % y_off, s1, pk1, m1,
                       (r_off + sig_bytes[32:]).hex(), False))
    # Non-canonical encodings: y + p < 2^255 for the y below 19 that are on the curve.
    y_nc = next(y for y in range(2, 19) if _y_on_curve(y))
    nc = (y_nc + P).to_bytes(32, "little")
    cases.append(_case("public key with non-canonical y (y + p, y = %d)" % y_nc, "", nc.hex(), m1,
                       sig1, False, "decodes to a curve point if y >= p is not rejected"))
    cases.append(_case("R with non-canonical y (y + p, y = %d)" % y_nc, s1, pk1, m1,
                       (nc + sig_bytes[32:]).hex(), False))
    x0_sign = bytearray(IDENTITY)
    x0_sign[31] |= 0x80
    cases.append(_case("public key x = 0 with the sign bit set", "", bytes(x0_sign).hex(), m1, sig1, False))
    cases.append(_case("signature one byte short", s1, pk1, m1, sig1[:-2], False))
    cases.append(_case("signature one byte long", s1, pk1, m1, sig1 + "00", False))
    cases.append(_case("public key one byte short", s1, pk1[:-2], m1, sig1, False))
    cases.append(_case("all-zero signature", s1, pk1, m1, "00" * 64, False))
    return cases


FIPS_MESSAGES = [
    ("FIPS 180-4 one block: abc", b"abc", 1, False),
    ("empty message", b"", 1, False),
    ("448-bit message", b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 1, False),
    ("896-bit message", b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmno"
                        b"ijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu", 1, False),
    ("one million a", b"a", 1000000, True),
]

EXPECTED_FIPS = {
    "FIPS 180-4 one block: abc":
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
    "empty message":
        "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
        "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
    "448-bit message":
        "204a8fc6dda82f0a0ced7beb8e08a41657c16ef468b228a8279be331a703c335"
        "96fd15c13b1b07f9aa1d3bea57789ca031ad85c7a71dd70354ec631238ca3445",
    "896-bit message":
        "8e959b75dae313da8cf4f72814fc143f8f7779c6eb9f7fa17299aeadb6889018"
        "501d289e4900f7e4331b99dec4b5433ac7d329eeb6dd26545e96e55b874be909",
    "one million a":
        "e718483d0ce769644e2e42c7bc15b4638e1f98b13b2044285632a803afa973eb"
        "de0ff244877ea60a4cb0432ce577c31beb009c5c2c49aa2e4eadb217ad8cc09b",
}


def sha512_cases():
    """SHA-512 cases: message hex repeated `repeat` times hashes to `digest`."""
    cases = []
    for name, msg, repeat, cpython_only in FIPS_MESSAGES:
        digest = hashlib.sha512(msg * repeat).hexdigest()
        if digest != EXPECTED_FIPS[name]:
            raise SystemExit("hashlib disagrees with FIPS 180-4 on %r" % name)
        cases.append({"name": name, "message": msg.hex(), "repeat": repeat, "digest": digest,
                      "cpython_only": cpython_only})
    # Lengths around the padding boundaries (112 and 128 bytes mod 128), from hashlib.
    for n in (111, 112, 113, 127, 128, 129, 239, 240, 256):
        msg = bytes((i * 7 + 3) & 0xFF for i in range(n))
        cases.append({"name": "%d bytes (padding boundary, from hashlib)" % n, "message": msg.hex(),
                      "repeat": 1, "digest": hashlib.sha512(msg).hexdigest(), "cpython_only": False})
    return cases


ED25519_DESCRIPTION = (
    "Ed25519 (RFC 8032 PureEdDSA) vectors, all hex: protocol.ed25519.verify(public, message, "
    "signature) must return `valid`. Valid entries are RFC 8032 section 7.1 (secret is the 32-byte "
    "seed); invalid ones are built from them by tests/gen_crypto_vectors.py and say what they probe.")
SHA512_DESCRIPTION = (
    "SHA-512 (FIPS 180-4) vectors: protocol.sha512.sha512(bytes.fromhex(message) * repeat) == "
    "digest. cpython_only entries are too long for a device heap.")


def _layout(description, vectors):
    """One header line, then one vector per line, as tests/device/vectors.py streams them."""
    head = json.dumps({"description": description, "vectors": []})
    lines = [head[: head.rindex("[]")] + "["]
    lines.append(",\n".join(json.dumps(v) for v in vectors))
    lines.append("]}")
    return "\n".join(lines) + "\n"


def render():
    """Return {file name: text} for both vector files."""
    return {
        "ed25519.json": _layout(ED25519_DESCRIPTION, ed25519_cases()),
        "sha512.json": _layout(SHA512_DESCRIPTION, sha512_cases()),
    }


if __name__ == "__main__":
    for file_name, text in render().items():
        with open(os.path.join(VECTORS_DIR, file_name), "w") as f:
            f.write(text)
        print("wrote", os.path.join(VECTORS_DIR, file_name))
