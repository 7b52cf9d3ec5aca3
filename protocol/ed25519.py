"""Ed25519 signature verification (RFC 8032, PureEdDSA), pure Python, for nodes and hosts.

Verify only: nodes hold the fleet's public key and check signed OTA manifests and broadcast
commands. Signing lives in fleet/signing.py (CPython, `cryptography`).

Rules this module keeps:
- `verify()` answers True or False and never raises for bad input: wrong types or lengths,
  S >= L (malleable), encodings with y >= p or x = 0 with the sign bit set (non-canonical),
  points not on the curve, and public keys or R of small order (order dividing 8) are all False.
- The check is cofactorless and exact: [S]B - [k]A must equal R (compared projectively), the
  equation libsodium and OpenSSL check; every RFC 8032 test vector and every `cryptography`
  signature passes it. Rejecting small-order A and R is stricter than RFC 8032 requires (as
  libsodium is): no honest key or signature has small order, and without it a small-order key
  would "verify" forged signatures (see the vectors).
- Speed and heap: [S]B - [k]A is one joint double-and-add (Straus/Shamir) over width-w NAF
  digits, in extended twisted Edwards coordinates (X:Y:Z:T), with 8 odd multiples of B
  precomputed below (affine, "cached" form) and 4 odd multiples of A built per call. Field
  elements are Python ints reduced mod p after each product; no floats. About 250 doublings,
  about 90 additions and two modular exponentiations (the square roots of point decoding):
  ~7 ms on the unix port; import + verify fit a ~26 KB heap when precompiled with mpy-cross
  (bench/ed25519_bench.py). Each verify allocates ~1.1 MB of short-lived big ints: GC churn.
- SHA-512 is hashlib's where the interpreter has it (CPython), else protocol.sha512
  (MicroPython). Keep signed messages short: hashing runs at ~0.5 ms per 128 bytes on the unix
  port and much slower on an ESP32.
"""
try:
    from hashlib import sha512 as _new_sha512
except ImportError:  # MicroPython: hashlib has no SHA-512
    from protocol.sha512 import SHA512 as _new_sha512

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64

_P = 2**255 - 19  # field prime
_L = 2**252 + 27742317777372353535851937790883648493  # order of the base point B
_D = 0x52036cee2b6ffe738cc740797779e89800700a4d4141d8ab75eb4dca135978a3  # -121665/121666 mod p
_D2 = (2 * _D) % _P
_SQRT_M1 = 0x2b8324804fc1df0b2b4d00993dfbd7a72f431806ad2fe478c4ee1b274a0ea0b0  # 2^((p-1)/4)
_Y_MASK = (1 << 255) - 1
_SQRT_EXP = (_P - 5) // 8
_W_A = 4  # NAF width for the per-call table of A: 4 odd multiples
_W_B = 5  # NAF width for the fixed table of B: 8 odd multiples

# B, 3B, 5B, ..., 15B in affine "cached" form (y - x, y + x, 2*d*x*y) mod p, each 32 bytes
# little-endian, so adding one costs 7 multiplications and needs no Z. A bytes literal keeps
# ~0.8 KB resident where 24 int literals keep ~2 KB. tests/device/test_ed25519.py recomputes
# this table from the base point of RFC 8032 section 5.1 and checks it.
_B_TABLE = (
    b"\x3e\x91\x40\xd7\x05\x39\x10\x9d\xb3\xbe\x40\xd1\x05\x9f\x39\xfd\x09\x8a\x8f\x68\x34\x84\xc1\xa5\x67\x12\xf8\x98\x92\x2f\xfd\x44"  # 1B: y - x
    b"\x85\x3b\x8c\xf5\xc6\x93\xbc\x2f\x19\x0e\x8c\xfb\xc6\x2d\x93\xcf\xc2\x42\x3d\x64\x98\x48\x0b\x27\x65\xba\xd4\x33\x3a\x9d\xcf\x07"  # 1B: y + x
    b"\x68\xaa\x7a\x87\x05\x12\xc9\xab\x9e\xc4\xaa\xcc\x23\xe8\xd9\x26\x8c\x59\x43\xdd\xcb\x7d\x1b\x5a\xa8\x65\x0c\x9f\x68\x7b\x11\x6f"  # 1B: 2dxy
    b"\x65\xd2\xfc\xa4\xe8\x1f\x61\x56\x7d\xba\xc1\xe5\xfd\x53\xd3\x3b\xbd\xd6\x4b\x21\x1a\xf3\x31\x81\x62\xda\x5b\x55\x87\x15\xb9\x2a"  # 3B: y - x
    b"\x30\x97\xee\x4c\xa8\xb0\x25\xaf\x8a\x4b\x86\xe8\x30\x84\x5a\x02\x32\x67\x01\x9f\x02\x50\x1b\xc1\xf4\xf8\x80\x9a\x1b\x4e\x16\x7a"  # 3B: y + x
    b"\x89\xd8\xd0\x0d\x3f\x93\xae\x14\x62\xda\x35\x1c\x22\x23\x94\x58\x4c\xdb\xf2\x8c\x45\xe5\x70\xd1\xc6\xb4\xb9\x12\xaf\x26\x28\x5a"  # 3B: 2dxy
    b"\xba\xd6\x47\xa4\xc3\x82\x91\x7f\xb7\x29\x27\x4b\xd1\x14\x00\xd5\x87\xa0\x64\xb8\x1c\xf1\x3c\xe3\xf3\x55\x1b\xeb\x73\x7e\x4a\x15"  # 5B: y - x
    b"\x33\xbb\xa5\x08\x44\xbc\x12\xa2\x02\xed\x5e\xc7\xc3\x48\x50\x8d\x44\xec\xbf\x5a\x0c\xeb\x1b\xdd\xeb\x06\xe2\x46\xf1\xcc\x45\x29"  # 5B: y + x
    b"\x85\x82\x2a\x81\xf1\xdb\xbb\xbc\xfc\xd1\xbd\xd0\x07\x08\x0e\x27\x2d\xa7\xbd\x1b\x0b\x67\x1b\xb4\x9a\xb6\x3b\x6b\x69\xbe\xaa\x43"  # 5B: 2dxy
    b"\xb1\x21\x32\xaa\x9a\x2c\x6f\xba\xa7\x23\xba\x3b\x53\x21\xa0\x6c\x3a\x2c\x19\x92\x4f\x76\xea\x9d\xe0\x17\x53\x2e\x5d\xdd\x6e\x1d"  # 7B: y - x
    b"\xbf\xa3\x4e\x94\xd0\x5c\x1a\x6b\xd2\xc0\x9d\xb3\x3a\x35\x70\x74\x49\x2e\x54\x28\x82\x52\xb2\x71\x7e\x92\x3c\x28\x69\xea\x1b\x46"  # 7B: y + x
    b"\xa2\xb3\xb8\x01\xc8\x6d\x83\xf1\x9a\xa4\x3e\x05\x47\x5f\x03\xb3\xf3\xad\x77\x58\xba\x41\x9c\x52\xa7\x90\x0f\x6a\x1c\xbb\x9f\x7a"  # 7B: 2dxy
    b"\x64\x80\x9d\x03\x7e\x21\x6e\xf3\x9b\x41\x20\xf5\xb6\x81\xa0\x98\x44\xb0\x5e\xe7\x08\xc6\xcb\x96\x8f\x9c\xdc\xfa\x51\x5a\xc0\x49"  # 9B: y - x
    b"\x2f\x63\xa8\xa6\x8a\x67\x2e\x9b\xc5\x46\xbc\x51\x6f\x9e\x50\xa6\xb5\xf5\x86\xc6\xc9\x33\xb2\xce\x59\x7f\xdd\x8a\x33\xed\xb9\x34"  # 9B: y + x
    b"\x1b\xaf\x45\x90\xbf\xe8\xb4\x06\x2f\xd2\x19\xa7\xe8\x83\xff\xe2\x16\xcf\xd4\x93\x29\xfc\xf6\xaa\x06\x8b\x00\x1b\x02\x72\xc1\x73"  # 9B: 2dxy
    b"\x48\x43\x86\x49\x02\x5b\x5f\x31\x81\x83\x08\x77\x69\xb3\xd6\x3e\x95\xeb\x8d\x6a\x55\x75\xa0\xa3\x7f\xc7\xd5\x29\x80\x59\xab\x18"  # 11B: y - x
    b"\xde\x2a\x80\x8a\x84\x00\xbf\x2f\x27\x2e\x30\x02\xcf\xfe\xd9\xe5\x06\x34\x70\x17\x71\x84\x3e\x11\xaf\x8f\x6d\x54\xe2\xaa\x75\x42"  # 11B: y + x
    b"\xe9\x89\x60\xfd\xc5\x2c\x2b\xd8\xa4\xe4\x82\x32\xa1\xb4\x1e\x03\x22\x86\x1a\xb5\x99\x11\x31\x44\x48\xf9\x3d\xb5\x22\x55\xc6\x3d"  # 11B: 2dxy
    b"\x93\xbf\x7f\x32\x3b\x01\x6f\x50\x6b\x6f\x77\x9b\xc9\xeb\xfc\xae\x68\x59\xad\xaa\x32\xb2\x12\x9d\xa7\x24\x60\x17\x2d\x88\x67\x02"  # 13B: y - x
    b"\x6d\x7f\x00\xa2\x22\xc2\x70\xbf\xdb\xde\xbc\xb5\x9a\xb3\x84\xbf\x07\xba\x07\xfb\x12\x0e\x7a\x53\x41\xf2\x46\xc3\xee\xd7\x4f\x23"  # 13B: y + x
    b"\x78\xa3\x2e\x73\x19\xa1\x60\x53\x71\xd4\x8d\xdf\xb1\xe6\x37\x24\x33\xe5\xa7\x91\xf8\x37\xef\xa2\x63\x78\x09\xaa\xfd\xa6\x7b\x49"  # 13B: 2dxy
    b"\x0b\xcf\x8c\x46\x86\xcd\x0b\x04\xd6\x10\x99\x2a\xa4\x9b\x82\xd3\x92\x51\xb2\x07\x08\x30\x08\x75\xbf\x5e\xd0\x18\x42\xcd\xb5\x43"  # 15B: y - x
    b"\xa0\xea\xcf\x13\x03\xcc\xce\x24\x6d\x24\x9c\x18\x8d\xc2\x48\x86\xd0\xd4\xf2\xc1\xfa\xbd\xbd\x2d\x2b\xe7\x2d\xf1\x17\x29\xe2\x61"  # 15B: y + x
    b"\x16\xb5\xd0\x9b\x2f\x76\x9a\x5d\xee\xde\x3f\x37\x4e\xaf\x38\xeb\x70\x42\xd6\x93\x7d\x5a\x2e\x03\x42\xd8\xe4\x0a\x21\x61\x1d\x51"  # 15B: 2dxy
)


def _decode_point(s):
    """Decode a 32-byte point encoding (RFC 8032 5.1.3) to extended (X, Y, Z, T), or None.

    None for y >= p, for a y with no x on the curve, and for x = 0 with the sign bit set.
    """
    p = _P
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= _Y_MASK
    if y >= p:
        return None
    yy = y * y % p
    u = (yy - 1) % p
    v = (_D * yy + 1) % p
    # x = u v^3 (u v^7)^((p-5)/8): a candidate square root of u/v without an inversion.
    v3 = v * v % p * v % p
    uv3 = u * v3 % p
    x = uv3 * pow(uv3 * v3 % p * v % p, _SQRT_EXP, p) % p
    vxx = v * x % p * x % p
    if vxx != u:
        if vxx != p - u:
            return None  # u/v is not a square: no point with this y
        x = x * _SQRT_M1 % p
    if x == 0 and sign:
        return None
    if (x & 1) != sign:
        x = p - x
    return (x, y, 1, x * y % p)


def _double(q):
    """2Q in extended coordinates (RFC 8032 5.1.4, dbl-2008-hwcd for a = -1)."""
    p = _P
    x1, y1, z1, _ = q
    a = x1 * x1 % p
    b = y1 * y1 % p
    c = 2 * (z1 * z1 % p)
    h = a + b
    e = (h - (x1 + y1) * (x1 + y1)) % p
    g = a - b
    f = c + g
    return (e * f % p, g * h % p, f * g % p, e * h % p)


def _add(q1, q2):
    """Q1 + Q2 in extended coordinates (RFC 8032 5.1.4, add-2008-hwcd-3)."""
    p = _P
    x1, y1, z1, t1 = q1
    x2, y2, z2, t2 = q2
    a = (y1 - x1) * (y2 - x2) % p
    b = (y1 + x1) * (y2 + x2) % p
    c = t1 * _D2 % p * t2 % p
    d = 2 * z1 * z2 % p
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return (e * f % p, g * h % p, f * g % p, e * h % p)


def _has_small_order(q):
    """True if 8Q is the identity, i.e. Q is one of the 8 points of order 1, 2, 4 or 8."""
    q = _double(_double(_double(q)))
    # X = 0 only at (0, 1) and (0, -1); after multiplying by 8 only the identity is left.
    return q[0] == 0


def _wnaf(n, w):
    """Width-w NAF digits of n >= 0, least significant first, in a bytearray (a digit d < 0 is
    stored as 256 + d). Returns (digits, length); nonzero digits are odd and |d| < 2^(w-1)."""
    out = bytearray(256)
    full = 1 << w
    half = full >> 1
    i = 0
    while n:
        if n & 1:
            d = n & (full - 1)
            if d >= half:
                d -= full
            n -= d
            out[i] = d & 0xFF
        n >>= 1
        i += 1
    return out, i


def _a_table(a):
    """-A, -3A, -5A, -7A in cached form (Y - X, Y + X, 2dT, 2Z): ready to be added by
    `_straus`, which subtracts [k]A."""
    p = _P
    a2 = _double(a)
    table = []
    q = a
    for i in range(1 << (_W_A - 2)):
        if i:
            q = _add(q, a2)
        x, y, z, t = q
        # -Q = (-X, Y, Z, -T): swap Y - X and Y + X, negate 2dT.
        table.append(((y + x) % p, (y - x) % p, (p - t) * _D2 % p, 2 * z % p))
    return table


def _straus(s, k, a):
    """[s]B - [k]A as projective (X, Y, Z): one shared chain of doublings, adding a table entry
    wherever either scalar's NAF digit is nonzero."""
    p = _P
    tb = _B_TABLE
    from_bytes = int.from_bytes
    ta = _a_table(a)
    ds, ns = _wnaf(s, _W_B)
    dk, nk = _wnaf(k, _W_A)
    x, y, z, t = 0, 1, 1, 0  # identity
    i = max(ns, nk) - 1
    while i >= 0:
        db = ds[i]
        da = dk[i]
        if db:
            # Mixed addition with an affine entry (Z2 = 1): D = 2 * Z1.
            if db < 128:
                o = (db >> 1) * 96
                ym = from_bytes(tb[o:o + 32], "little")
                yp = from_bytes(tb[o + 32:o + 64], "little")
                t2 = from_bytes(tb[o + 64:o + 96], "little")
            else:
                o = ((256 - db) >> 1) * 96
                yp = from_bytes(tb[o:o + 32], "little")
                ym = from_bytes(tb[o + 32:o + 64], "little")
                t2 = p - from_bytes(tb[o + 64:o + 96], "little")
            ea = (y - x) * ym % p
            eb = (y + x) * yp % p
            ec = t * t2 % p
            ed = 2 * z
            e = eb - ea
            f = ed - ec
            g = ed + ec
            h = eb + ea
            x = e * f % p
            y = g * h % p
            z = f * g % p
            if da:  # T is read only by an addition that follows at once
                t = e * h % p
        if da:
            # Entries hold -|d|A: a positive digit of k subtracts, so it takes the entry as is.
            if da < 128:
                ym, yp, t2, z2 = ta[da >> 1]
            else:
                yp, ym, t2, z2 = ta[(256 - da) >> 1]
                t2 = p - t2
            ea = (y - x) * ym % p
            eb = (y + x) * yp % p
            ec = t * t2 % p
            ed = z * z2 % p
            e = eb - ea
            f = ed - ec
            g = ed + ec
            h = eb + ea
            x = e * f % p
            y = g * h % p
            z = f * g % p
        i -= 1
        if i < 0:
            break
        # Doubling; T only if an addition follows before the next doubling.
        ea = x * x % p
        eb = y * y % p
        ec = 2 * (z * z % p)
        h = ea + eb
        e = (h - (x + y) * (x + y)) % p
        g = ea - eb
        f = ec + g
        x = e * f % p
        y = g * h % p
        z = f * g % p
        if ds[i] or dk[i]:
            t = e * h % p
    return x, y, z


def _is_bytes(b):
    return isinstance(b, (bytes, bytearray, memoryview))


def verify(public_key, message, signature):
    """Return True if `signature` (64 bytes, R || S) is a valid Ed25519 signature of `message`
    (bytes-like) under `public_key` (32 bytes), else False. Never raises for bad input."""
    if not (_is_bytes(public_key) and _is_bytes(message) and _is_bytes(signature)):
        return False
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    public_key = bytes(public_key)
    signature = bytes(signature)
    r_bytes = signature[:32]
    s = int.from_bytes(signature[32:], "little")
    if s >= _L:
        return False  # non-canonical S: would make signatures malleable
    a = _decode_point(public_key)
    if a is None or _has_small_order(a):
        return False
    r = _decode_point(r_bytes)
    if r is None or _has_small_order(r):
        return False
    hasher = _new_sha512()
    hasher.update(r_bytes)
    hasher.update(public_key)
    hasher.update(message)
    k = int.from_bytes(hasher.digest(), "little") % _L
    x, y, z = _straus(s, k, a)
    # R' == R without an inversion: X/Z == xR and Y/Z == yR.
    p = _P
    return (x - r[0] * z) % p == 0 and (y - r[1] * z) % p == 0
