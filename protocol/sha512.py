"""SHA-512 (FIPS 180-4) in pure Python, for MicroPython, whose hashlib has no SHA-512.

Ed25519 (protocol.ed25519) needs it to hash R || A || message. Words are 64-bit ints kept
masked to 64 bits (`& _M64`): they are arbitrary-precision on both interpreters (mpz on
MicroPython), so the mask is what makes the arithmetic modular. A 64-bit rotation is done by
shifting a 128-bit doubled copy of the word (`x | x << 64`) and masking once, which costs fewer
big-int operations than two shifts and an OR per rotation.

Only for short inputs (a signed manifest, R || A || M of a signature): about 0.5 ms per 128-byte
block on the unix port, far more on an ESP32. Hash bulk data with the native hashlib.sha256.

API: `sha512(data) -> bytes(64)`; `SHA512(data=b"")` with `update(data)`, `digest()`,
`hexdigest()` and `copy()`, like hashlib objects (digest() may be called more than once).
"""
from struct import pack, unpack_from

_M64 = 0xFFFFFFFFFFFFFFFF
_BLOCK = 128

# Round constants K[0..79]: first 64 bits of the fractional parts of the cube roots of the first
# 80 primes, as 640 big-endian bytes. A bytes literal keeps ~0.8 KB resident where a tuple of 80
# int literals keeps ~6 KB (and a hex string ~2 KB): each round unpacks its own constant.
_K = (
    b"\x42\x8a\x2f\x98\xd7\x28\xae\x22\x71\x37\x44\x91\x23\xef\x65\xcd"  # K[0], K[1]
    b"\xb5\xc0\xfb\xcf\xec\x4d\x3b\x2f\xe9\xb5\xdb\xa5\x81\x89\xdb\xbc"  # K[2], K[3]
    b"\x39\x56\xc2\x5b\xf3\x48\xb5\x38\x59\xf1\x11\xf1\xb6\x05\xd0\x19"  # K[4], K[5]
    b"\x92\x3f\x82\xa4\xaf\x19\x4f\x9b\xab\x1c\x5e\xd5\xda\x6d\x81\x18"  # K[6], K[7]
    b"\xd8\x07\xaa\x98\xa3\x03\x02\x42\x12\x83\x5b\x01\x45\x70\x6f\xbe"  # K[8], K[9]
    b"\x24\x31\x85\xbe\x4e\xe4\xb2\x8c\x55\x0c\x7d\xc3\xd5\xff\xb4\xe2"  # K[10], K[11]
    b"\x72\xbe\x5d\x74\xf2\x7b\x89\x6f\x80\xde\xb1\xfe\x3b\x16\x96\xb1"  # K[12], K[13]
    b"\x9b\xdc\x06\xa7\x25\xc7\x12\x35\xc1\x9b\xf1\x74\xcf\x69\x26\x94"  # K[14], K[15]
    b"\xe4\x9b\x69\xc1\x9e\xf1\x4a\xd2\xef\xbe\x47\x86\x38\x4f\x25\xe3"  # K[16], K[17]
    b"\x0f\xc1\x9d\xc6\x8b\x8c\xd5\xb5\x24\x0c\xa1\xcc\x77\xac\x9c\x65"  # K[18], K[19]
    b"\x2d\xe9\x2c\x6f\x59\x2b\x02\x75\x4a\x74\x84\xaa\x6e\xa6\xe4\x83"  # K[20], K[21]
    b"\x5c\xb0\xa9\xdc\xbd\x41\xfb\xd4\x76\xf9\x88\xda\x83\x11\x53\xb5"  # K[22], K[23]
    b"\x98\x3e\x51\x52\xee\x66\xdf\xab\xa8\x31\xc6\x6d\x2d\xb4\x32\x10"  # K[24], K[25]
    b"\xb0\x03\x27\xc8\x98\xfb\x21\x3f\xbf\x59\x7f\xc7\xbe\xef\x0e\xe4"  # K[26], K[27]
    b"\xc6\xe0\x0b\xf3\x3d\xa8\x8f\xc2\xd5\xa7\x91\x47\x93\x0a\xa7\x25"  # K[28], K[29]
    b"\x06\xca\x63\x51\xe0\x03\x82\x6f\x14\x29\x29\x67\x0a\x0e\x6e\x70"  # K[30], K[31]
    b"\x27\xb7\x0a\x85\x46\xd2\x2f\xfc\x2e\x1b\x21\x38\x5c\x26\xc9\x26"  # K[32], K[33]
    b"\x4d\x2c\x6d\xfc\x5a\xc4\x2a\xed\x53\x38\x0d\x13\x9d\x95\xb3\xdf"  # K[34], K[35]
    b"\x65\x0a\x73\x54\x8b\xaf\x63\xde\x76\x6a\x0a\xbb\x3c\x77\xb2\xa8"  # K[36], K[37]
    b"\x81\xc2\xc9\x2e\x47\xed\xae\xe6\x92\x72\x2c\x85\x14\x82\x35\x3b"  # K[38], K[39]
    b"\xa2\xbf\xe8\xa1\x4c\xf1\x03\x64\xa8\x1a\x66\x4b\xbc\x42\x30\x01"  # K[40], K[41]
    b"\xc2\x4b\x8b\x70\xd0\xf8\x97\x91\xc7\x6c\x51\xa3\x06\x54\xbe\x30"  # K[42], K[43]
    b"\xd1\x92\xe8\x19\xd6\xef\x52\x18\xd6\x99\x06\x24\x55\x65\xa9\x10"  # K[44], K[45]
    b"\xf4\x0e\x35\x85\x57\x71\x20\x2a\x10\x6a\xa0\x70\x32\xbb\xd1\xb8"  # K[46], K[47]
    b"\x19\xa4\xc1\x16\xb8\xd2\xd0\xc8\x1e\x37\x6c\x08\x51\x41\xab\x53"  # K[48], K[49]
    b"\x27\x48\x77\x4c\xdf\x8e\xeb\x99\x34\xb0\xbc\xb5\xe1\x9b\x48\xa8"  # K[50], K[51]
    b"\x39\x1c\x0c\xb3\xc5\xc9\x5a\x63\x4e\xd8\xaa\x4a\xe3\x41\x8a\xcb"  # K[52], K[53]
    b"\x5b\x9c\xca\x4f\x77\x63\xe3\x73\x68\x2e\x6f\xf3\xd6\xb2\xb8\xa3"  # K[54], K[55]
    b"\x74\x8f\x82\xee\x5d\xef\xb2\xfc\x78\xa5\x63\x6f\x43\x17\x2f\x60"  # K[56], K[57]
    b"\x84\xc8\x78\x14\xa1\xf0\xab\x72\x8c\xc7\x02\x08\x1a\x64\x39\xec"  # K[58], K[59]
    b"\x90\xbe\xff\xfa\x23\x63\x1e\x28\xa4\x50\x6c\xeb\xde\x82\xbd\xe9"  # K[60], K[61]
    b"\xbe\xf9\xa3\xf7\xb2\xc6\x79\x15\xc6\x71\x78\xf2\xe3\x72\x53\x2b"  # K[62], K[63]
    b"\xca\x27\x3e\xce\xea\x26\x61\x9c\xd1\x86\xb8\xc7\x21\xc0\xc2\x07"  # K[64], K[65]
    b"\xea\xda\x7d\xd6\xcd\xe0\xeb\x1e\xf5\x7d\x4f\x7f\xee\x6e\xd1\x78"  # K[66], K[67]
    b"\x06\xf0\x67\xaa\x72\x17\x6f\xba\x0a\x63\x7d\xc5\xa2\xc8\x98\xa6"  # K[68], K[69]
    b"\x11\x3f\x98\x04\xbe\xf9\x0d\xae\x1b\x71\x0b\x35\x13\x1c\x47\x1b"  # K[70], K[71]
    b"\x28\xdb\x77\xf5\x23\x04\x7d\x84\x32\xca\xab\x7b\x40\xc7\x24\x93"  # K[72], K[73]
    b"\x3c\x9e\xbe\x0a\x15\xc9\xbe\xbc\x43\x1d\x67\xc4\x9c\x10\x0d\x4c"  # K[74], K[75]
    b"\x4c\xc5\xd4\xbe\xcb\x3e\x42\xb6\x59\x7f\x29\x9c\xfc\x65\x7e\x2a"  # K[76], K[77]
    b"\x5f\xcb\x6f\xab\x3a\xd6\xfa\xec\x6c\x44\x19\x8c\x4a\x47\x58\x17"  # K[78], K[79]
)

# Initial hash value: first 64 bits of the fractional parts of the square roots of the first
# 8 primes.
_H0 = (
    0x6a09e667f3bcc908,
    0xbb67ae8584caa73b,
    0x3c6ef372fe94f82b,
    0xa54ff53a5f1d36f1,
    0x510e527fade682d1,
    0x9b05688c2b3e6c1f,
    0x1f83d9abfb41bd6b,
    0x5be0cd19137e2179,
)


def _compress(h, data, offset):
    """Mix the 128-byte block at data[offset:] into the state list h (8 words), in place."""
    k = _K
    m = _M64
    # A rolling 16-word message schedule: 16 big ints live at a time instead of 80.
    w = list(unpack_from(">16Q", data, offset))
    a, b, c, d, e, f, g, hh = h
    for t in range(80):
        if t < 16:
            wt = w[t]
        else:
            x = w[(t - 15) & 15]
            xx = x | (x << 64)
            y = w[(t - 2) & 15]
            yy = y | (y << 64)
            wt = (w[t & 15] + w[(t - 7) & 15]
                  + ((((xx >> 1) ^ (xx >> 8)) & m) ^ (x >> 7))
                  + ((((yy >> 19) ^ (yy >> 61)) & m) ^ (y >> 6))) & m
            w[t & 15] = wt
        ee = e | (e << 64)
        t1 = (hh + (((ee >> 14) ^ (ee >> 18) ^ (ee >> 41)) & m) + (g ^ (e & (f ^ g)))
              + unpack_from(">Q", k, t << 3)[0] + wt)
        aa = a | (a << 64)
        t2 = (((aa >> 28) ^ (aa >> 34) ^ (aa >> 39)) & m) + ((a & b) | (c & (a | b)))
        hh = g
        g = f
        f = e
        e = (d + t1) & m
        d = c
        c = b
        b = a
        a = (t1 + t2) & m
    h[0] = (h[0] + a) & m
    h[1] = (h[1] + b) & m
    h[2] = (h[2] + c) & m
    h[3] = (h[3] + d) & m
    h[4] = (h[4] + e) & m
    h[5] = (h[5] + f) & m
    h[6] = (h[6] + g) & m
    h[7] = (h[7] + hh) & m


class SHA512:
    """Incremental SHA-512 with the hashlib object interface (update, digest, hexdigest, copy)."""

    digest_size = 64
    block_size = _BLOCK

    def __init__(self, data=b""):
        self._h = list(_H0)
        self._buf = bytearray()  # pending bytes of a partial block, always < 128
        self._length = 0  # bytes hashed so far
        if data:
            self.update(data)

    def update(self, data):
        """Hash `data` (bytes-like) after what came before. Returns None."""
        n = len(data)
        self._length += n
        buf = self._buf
        i = 0
        if buf:
            take = min(_BLOCK - len(buf), n)
            buf.extend(memoryview(data)[:take])
            i = take
            if len(buf) < _BLOCK:
                return
            _compress(self._h, buf, 0)
            buf[:] = b""
        # Whole blocks straight from the caller's buffer: no copy.
        while n - i >= _BLOCK:
            _compress(self._h, data, i)
            i += _BLOCK
        if i < n:
            buf.extend(memoryview(data)[i:])

    def copy(self):
        """Return an independent hasher in the same state."""
        other = SHA512()
        other._h = list(self._h)
        other._buf = bytearray(self._buf)
        other._length = self._length
        return other

    def digest(self):
        """Return the 64-byte digest of everything hashed so far (the state is not changed)."""
        h = list(self._h)
        # Padding: 0x80, zeros to 112 mod 128, then the bit length as a 128-bit big-endian int.
        tail = bytearray(self._buf)
        tail.append(0x80)
        zeros = (112 - len(tail)) % _BLOCK
        tail.extend(bytes(zeros))
        bits = self._length * 8
        tail.extend(pack(">QQ", bits >> 64, bits & _M64))
        for off in range(0, len(tail), _BLOCK):
            _compress(h, tail, off)
        return pack(">8Q", h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7])

    def hexdigest(self):
        """Return the digest as 128 lowercase hex characters."""
        return "".join("%02x" % x for x in self.digest())


def sha512(data):
    """Return the 64-byte SHA-512 digest of `data` (bytes-like)."""
    return SHA512(data).digest()
