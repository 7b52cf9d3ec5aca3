"""OTA manifest: what a bundle holds, signed by the fleet key (MicroPython and CPython).

Format (normative CDDL in protocol/redmesh.cddl, `ota-manifest` / `ota-signed-manifest`):
    manifest = [1, bseq, version, target_class, image_size, page_size,
                [page_sha256, ...], [[path, size, sha256], ...], compression]
    signed   = [manifest_bytes, signature]
- bseq: the bundle sequence number (anti-rollback: nodes refuse one not above what they run).
- image: the bytes disseminated, cut into pages of page_size (the last may be shorter); each
  page's SHA-256 is listed, so a node checks every page before storing or serving it.
- files: the app slot's files once the image is unpacked (fleet/ota_bundle.py documents the
  archive), each with its size and SHA-256; compression: "none" or "deflate" (zlib stream).
- signature: Ed25519 (RFC 8032) by the fleet key over SHA-256(manifest_bytes), the 32-byte
  digest — so a node runs the slow pure-Python SHA-512 over one short block, never over
  kilobytes (protocol/ed25519.py).

Rules: parse_signed_manifest checks the size, the outer structure, the signature and only then
the fields (strict CBOR, lengths and ranges, version and target class as tokens of
protocol/text.py, safe relative paths, one page digest per page);
anything wrong is one ProtocolError saying what was expected and what arrived.
"""
import hashlib

from protocol import cbor
from protocol.errors import ProtocolError
from protocol.frames import OTA_PKT_MAX, OTA_PKTS_PER_PAGE
from protocol.text import token_problem

FORMAT = 1
PAGE_MAX = OTA_PKTS_PER_PAGE * OTA_PKT_MAX  # 3584: one page is at most 16 radio packets
MAX_SIGNED = 8192  # a node buffers the whole signed manifest in RAM before checking it
MAX_IMAGE = 4 * 1024 * 1024
MAX_FILES = 256
MAX_PATH = 64
MAX_TEXT = 16  # version and target class (the status frame carries fw_version in 16 bytes)
DIGEST_LEN = 32
SIG_LEN = 64
COMPRESSIONS = ("none", "deflate")
_PATH_OK = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-."


def sha256(data):
    """Return the 32-byte SHA-256 digest of `data`."""
    return hashlib.sha256(data).digest()


def manifest_id(signed):
    """Return the manifest id adverts carry: the first 4 bytes of SHA-256(signed manifest), as
    an unsigned big-endian integer."""
    return int.from_bytes(sha256(signed)[:4], "big")


def manifest_pages(mlen):
    """Return how many 3584-byte pages a signed manifest of `mlen` bytes spans (usually 1)."""
    return (mlen + PAGE_MAX - 1) // PAGE_MAX


DIGEST_STRIDE = 2 + DIGEST_LEN  # a canonical CBOR byte string of 32 bytes: 0x58 0x20 and the digest


class PageDigests:
    """The page digests of a manifest parsed in place (parse_manifest files=False, as a node
    does): how many and where they sit in the manifest bytes, not a copy. A list of 73 digests
    is ~4 KB of a node's heap in 74 small pieces, allocated when a campaign's manifest arrives
    on a heap that has run for days (a 584-byte list did not fit a 123k node). Digest i is the
    DIGEST_LEN bytes at offset(i) of the manifest bytes (firmware/ota.py reads it from flash)."""

    def __init__(self, at, n):
        self.at = at  # offset of the first item (its CBOR head) in the manifest bytes
        self.n = n

    def __len__(self):
        return self.n

    def offset(self, i):
        return self.at + DIGEST_STRIDE * i + 2


class Manifest:
    """A parsed manifest. Attributes: bseq, version, target_class, image_size, page_size,
    pages (list of 32-byte digests; a PageDigests when parsed with files=False), files (list of
    (path, size, sha256), None with files=False), compression,
    raw (the manifest bytes), signed (the signed manifest bytes or None), mid (manifest id of
    `signed`, or 0)."""

    def __init__(self, bseq, version, target_class, image_size, page_size, pages, files, compression,
                 raw=b"", signed=None):
        self.bseq = bseq
        self.version = version
        self.target_class = target_class
        self.image_size = image_size
        self.page_size = page_size
        self.pages = pages
        self.files = files
        self.compression = compression
        self.raw = raw
        self.signed = signed
        self.mid = manifest_id(signed) if signed is not None else 0

    @property
    def npages(self):
        return len(self.pages)

    def page_len(self, i):
        """Return the length in bytes of image page i (0-based)."""
        return min(self.page_size, self.image_size - i * self.page_size)

    def to_dict(self):
        """Plain data for JSON: digests as hex."""
        return {
            "format": FORMAT, "bseq": self.bseq, "version": self.version, "target_class": self.target_class,
            "image_size": self.image_size, "page_size": self.page_size, "npages": self.npages,
            "compression": self.compression, "mid": self.mid,
            "pages": [bytes(p).hex() for p in self.pages],
            "files": [{"path": p, "size": s, "sha256": bytes(h).hex()} for p, s, h in self.files],
        }


# ---- strict field readers (over protocol.cbor.Decoder) ------------------------------------------


def _head(d, name, major_want, lo, hi):
    at = d.pos
    major, n = d.head()
    if major != major_want:
        raise ProtocolError("manifest %s: expected %s at offset %d, got major type %d"
                            % (name, _KIND[major_want], at, major))
    if n < lo or n > hi:
        raise ProtocolError("manifest %s: expected %d..%d, got %d" % (name, lo, hi, n))
    return n


_KIND = {0: "an unsigned integer", 2: "a byte string", 3: "a text string", 4: "an array"}


def _bytes(d, name, lo, hi):
    n = _head(d, name, 2, lo, hi)
    d._need(n, name)
    v = bytes(d.buf[d.pos:d.pos + n])
    d.pos += n
    return v


def _text(d, name, hi):
    n = _head(d, name, 3, 0, hi)
    d._need(n, name)
    raw = bytes(d.buf[d.pos:d.pos + n])
    d.pos += n
    try:
        return str(raw, "utf-8")
    except Exception:  # noqa: BLE001 - error type differs between interpreters
        raise ProtocolError("manifest %s: invalid UTF-8" % name)


def _token(d, name):
    # version and target class follow the one text grammar (protocol/text.py): a node writes
    # them into key=value files and status frames
    v = _text(d, name, MAX_TEXT)
    problem = token_problem(v, MAX_TEXT)
    if problem:
        raise ProtocolError("manifest %s: %s" % (name, problem))
    return v


def _array(d, name, lo, hi):
    n = _head(d, name, 4, lo, hi)
    if n > d.end - d.pos:
        raise ProtocolError("manifest %s: %d items claimed, %d bytes left" % (name, n, d.end - d.pos))
    return n


def check_path(path):
    """Raise ProtocolError unless `path` is a safe relative slot path: '/'-separated parts of
    letters, digits, '_', '-', '.', no empty part, no '.' or '..' part, at most 64 bytes."""
    if not path or len(path) > MAX_PATH:
        raise ProtocolError("manifest file path: expected 1..%d bytes, got %r" % (MAX_PATH, path))
    for part in path.split("/"):
        if part == "" or part == "." or part == "..":
            raise ProtocolError("manifest file path: unsafe path %r" % path)
        for c in part:
            if c not in _PATH_OK:
                raise ProtocolError("manifest file path: character %r not allowed in %r" % (c, path))


def parse_manifest(raw, signed=None, files=True):
    """Parse manifest bytes (no signature check) and return a Manifest. Raises ProtocolError;
    MemoryError passes through (a resource failure, not a verdict on the manifest).

    files=False: check every field all the same, but keep neither the file list (Manifest.files
    is None) nor a copy of the bytes (raw is b""): what a node disseminating the bundle needs,
    ~9 KB less of its heap for a 40-file app; it parses again with the files to stage."""
    try:
        return _parse(raw, signed, files)
    except (ProtocolError, MemoryError):
        # MemoryError says nothing about the manifest (a full heap, not bad input): the caller
        # must not refuse a bundle for it; the node resets and parses it again on a fresh heap
        raise
    except Exception as e:  # noqa: BLE001 - the contract: only ProtocolError escapes
        raise ProtocolError("malformed manifest (%s: %s)" % (type(e).__name__, e))


def _parse(raw, signed, keep_files):
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise ProtocolError("manifest: expected bytes")
    if len(raw) > MAX_SIGNED:
        raise ProtocolError("manifest: %d bytes, at most %d" % (len(raw), MAX_SIGNED))
    d = cbor.Decoder(raw)
    _array(d, "", 9, 9)
    fmt = _head(d, "format", 0, 0, 0xFFFFFFFF)
    if fmt != FORMAT:
        raise ProtocolError("manifest format: expected %d, got %d" % (FORMAT, fmt))
    bseq = _head(d, "bseq", 0, 1, 0xFFFFFFFF)
    version = _token(d, "version")
    target = _token(d, "target_class")
    image_size = _head(d, "image_size", 0, 1, MAX_IMAGE)
    page_size = _head(d, "page_size", 0, 1, PAGE_MAX)
    npages = (image_size + page_size - 1) // page_size
    n = _array(d, "pages", npages, npages)
    if keep_files:
        pages = [_bytes(d, "page digest", DIGEST_LEN, DIGEST_LEN) for _ in range(n)]
    else:
        # each item is DIGEST_STRIDE bytes: the decoder refuses a head that is not the shortest
        pages = PageDigests(d.pos, n)
        for _ in range(n):
            _head(d, "page digest", 2, DIGEST_LEN, DIGEST_LEN)
            d._need(DIGEST_LEN, "page digest")
            d.pos += DIGEST_LEN
    n = _array(d, "files", 1, MAX_FILES)
    files = [] if keep_files else None
    # duplicates are looked for only where the list is kept (the host, a node staging a bundle):
    # parsed in place a node keeps no file list, and a dict of 40 paths wanted a 584-byte table
    # in one piece on a heap that has run for days
    seen = {} if keep_files else None
    for _ in range(n):
        _array(d, "file entry", 3, 3)
        path = _text(d, "file path", MAX_PATH)
        check_path(path)
        if seen is not None:
            if path in seen:
                raise ProtocolError("manifest files: %r listed twice" % path)
            seen[path] = True
        size = _head(d, "file size", 0, 0, MAX_IMAGE * 8)
        digest = _bytes(d, "file digest", DIGEST_LEN, DIGEST_LEN)
        if keep_files:
            files.append((path, size, digest))
    compression = _text(d, "compression", 16)
    if compression not in COMPRESSIONS:
        raise ProtocolError("manifest compression: expected one of %s, got %r" % (", ".join(COMPRESSIONS), compression))
    d.done()
    seen = None
    return Manifest(bseq, version, target, image_size, page_size, pages, files, compression,
                    bytes(raw) if keep_files and not isinstance(raw, memoryview) else b"", signed)


def split_signed(buf):
    """Return (manifest_bytes, signature) of a signed manifest, checking only its structure."""
    a, b, sig = _split_at(buf)
    return bytes(buf[a:b]), sig


def manifest_at(buf):
    """The offset of the manifest bytes in signed manifest `buf` (structure checked as
    split_signed does)."""
    return _split_at(buf)[0]


def manifest_view(buf):
    """The manifest bytes of signed manifest `buf` as a memoryview into it (no copy); the
    structure is checked as split_signed does."""
    a, b, _sig = _split_at(buf)
    return memoryview(buf)[a:b]


def _split_at(buf):
    """split_signed's checks; return (start, end) of the manifest bytes in buf and the signature."""
    if not isinstance(buf, (bytes, bytearray, memoryview)):
        raise ProtocolError("signed manifest: expected bytes")
    if len(buf) > MAX_SIGNED:
        raise ProtocolError("signed manifest: %d bytes, at most %d" % (len(buf), MAX_SIGNED))
    d = cbor.Decoder(buf)
    _array(d, "signed", 2, 2)
    n = _head(d, "bytes", 2, 1, MAX_SIGNED)
    d._need(n, "bytes")
    a = d.pos
    d.pos += n
    sig = _bytes(d, "signature", SIG_LEN, SIG_LEN)
    d.done()
    return a, a + n, sig


def parse_signed_manifest(buf, fleet_pub, verify=None, files=True):
    """Check a signed manifest against the fleet public key (32 bytes) and return its Manifest.

    verify: an Ed25519 verify(public_key, message, signature) -> bool; default
    protocol.ed25519.verify (imported only when needed: it costs heap; a node passes one that
    unloads it again). files: see parse_manifest. Raises ProtocolError for a bad size,
    structure or signature, or any field out of spec; MemoryError passes through."""
    try:
        a, b, sig = _split_at(buf)
    except (ProtocolError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - only ProtocolError (and MemoryError) escape
        raise ProtocolError("malformed signed manifest (%s: %s)" % (type(e).__name__, e))
    # the Manifest's own copy, made first: the signature check leaves a node's heap in small
    # pieces, so no big block is allocated after it (the manifest bytes are parsed in place).
    # files=False and a buffer that is not bytes (a node's receive buffer): no copy at all, the
    # caller keeps the bytes (on flash); Manifest.signed is None, mid is computed all the same
    signed = buf if isinstance(buf, bytes) or not files else bytes(buf)
    raw = memoryview(signed)[a:b]
    # parsed (strictly, bounded) before the signature is checked, and used only if it verifies:
    # the page digests (a list and a small bytes per page, ~4 KB for 73 pages) are allocated
    # before the check's garbage, not into the small pieces it leaves (a 584-byte list did not
    # fit a 123k node after it)
    m = parse_manifest(bytes(raw) if files else raw, signed, files)  # Manifest.raw: bytes when kept
    if verify is None:
        from protocol.ed25519 import verify
    if not verify(fleet_pub, sha256(raw), sig):
        raise ProtocolError("manifest signature does not verify with the fleet key")
    verify = None
    if not isinstance(signed, bytes):
        m.signed = None  # a view of the caller's buffer, not to be kept
    return m


def build_manifest(bseq, version, target_class, image_size, page_size, page_digests, files, compression):
    """Return manifest bytes for these fields (files: (path, size, sha256) tuples, in archive
    order). Raises ValueError when a field is out of spec (the bytes are parsed back: the
    caller's fields, not a peer's bytes)."""
    raw = cbor.dumps([FORMAT, bseq, version, target_class, image_size, page_size, list(page_digests),
                      [[p, s, h] for p, s, h in files], compression])
    try:
        parse_manifest(raw)
    except ProtocolError as e:
        raise ValueError(str(e)) from None
    return raw


def sign_manifest(manifest_bytes, sign_fn):
    """Return the signed manifest [manifest_bytes, sign_fn(SHA-256(manifest_bytes))] as CBOR.

    sign_fn(message) -> 64-byte Ed25519 signature (fleet side: Keystore.sign). Raises
    ValueError if the signature is not 64 bytes or the result exceeds MAX_SIGNED."""
    sig = sign_fn(sha256(manifest_bytes))
    if len(sig) != SIG_LEN:
        raise ValueError("signature: expected %d bytes, got %d" % (SIG_LEN, len(sig)))
    out = cbor.dumps([bytes(manifest_bytes), bytes(sig)])
    if len(out) > MAX_SIGNED:
        raise ValueError("signed manifest: %d bytes, at most %d (too many files or pages)" % (len(out), MAX_SIGNED))
    return out
