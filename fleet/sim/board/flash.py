"""The virtual board's settings and its flash directory: the littlefs image, the MAC, the
flash-write counter and the power-cut hook (shared with the interpreter side, board_fs/_vboard.py).
See fleet/sim/board/__init__.py for the whole picture."""
import hashlib
import os
from dataclasses import dataclass

from fleet.errors import FleetError
from fleet.sim import interp

BLOCK_SIZE = 4096  # the ESP32 port's littlefs block size (one flash sector)
DEFAULT_QUOTA_BYTES = 2 * 1024 * 1024  # the vfs partition of the usual 4 MB ESP32 layout
MAX_QUOTA_BYTES = 16 * 1024 * 1024  # the largest ESP32 module flash (the image is written in full)
# The default heap is a node's (fleet/sim/interp.py owns the figures and their 64-bit scaling):
# "node" resolves to default_heap_kb() when the board starts.
DEFAULT_HEAP = "node"


def default_heap_kb(micropython=None):
    """A virtual board's default heap in board KB: a provisioned node's, booted from its A/B slots.
    With romfs partitions (the rig's 32-bit build) `fleet provision` writes the app into one and
    its bytecode runs in place: the board budget, interp.RIG_OTA_NODE_HEAP_KB. Without them the
    bytecode is loaded from files into RAM: interp.RIG_OTA_NODE_HEAP_FS_KB."""
    if interp.has_romfs(micropython or None):
        return interp.RIG_OTA_NODE_HEAP_KB
    return interp.RIG_OTA_NODE_HEAP_FS_KB

# The supervisor's last lines (bytes each way, messages, connections), written beside the flash
# image when it stops (fleet/sim/board/supervisor.py), so a failure on a busy machine can be read.
TRACE_FILE = "vboard.trace"
BOARD_FS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "board_fs")

_FIELD = 20  # bytes in flash_writes / cut_power_at (ascii decimal, padded) — see _vboard.py


class BoardError(FleetError):
    """The virtual board cannot start or was given bad settings; the message says what to do."""


@dataclass
class BoardConfig:
    """Settings of one virtual board (see `fleet sim board --help`)."""

    flash_dir: str | None = None  # None: a new temporary directory, removed at shutdown
    link: str | None = None  # symlink to create to the port
    heap: str = DEFAULT_HEAP
    quota_bytes: int = DEFAULT_QUOTA_BYTES
    mac: bytes | None = None  # None: the stored one, else derived from the flash directory
    cut_power_at_write: int | None = None  # arm the power-cut hook N writes after start
    micropython: str | None = None  # interpreter path; default: the venv's
    stop_on_stdin_eof: bool = False  # exit when stdin closes (the Python API's lifeline)


def find_micropython():
    """Path of the MicroPython unix-port command (fleet/sim/interp.py decides). Raises BoardError."""
    try:
        return interp.micropython_bin()
    except FleetError as e:
        raise BoardError(str(e)) from e


def parse_heap(text):
    """Bytes in a heap size like '160k', '1m' or '65536', or "node" (default_heap_kb()). Raises
    BoardError."""
    t = str(text).strip().lower()
    if t == DEFAULT_HEAP:
        return default_heap_kb() * 1024
    mult = 1
    if t.endswith("k"):
        mult, t = 1024, t[:-1]
    elif t.endswith("m"):
        mult, t = 1024 * 1024, t[:-1]
    if not t.isdigit() or int(t) * mult < 16 * 1024:
        raise BoardError(f"bad heap size {text!r}: give bytes with an optional k/m suffix, at least 16k (e.g. 160k), or 'node'")
    return int(t) * mult


def parse_mac(text):
    """6 bytes from 'a1b2c3d4e5f6' or 'a1:b2:c3:d4:e5:f6'. Raises BoardError."""
    t = str(text).replace(":", "").replace("-", "").strip()
    try:
        mac = bytes.fromhex(t)
    except ValueError:
        mac = b""
    if len(mac) != 6:
        raise BoardError(f"bad MAC {text!r}: give 12 hex digits, e.g. 02:00:00:12:34:56")
    return mac


def derive_mac(flash_dir):
    """A stable, locally administered unicast MAC derived from the flash directory's path."""
    digest = bytearray(hashlib.sha256(b"redmesh-vboard:" + os.path.abspath(flash_dir).encode()).digest()[:6])
    digest[0] = (digest[0] | 0x02) & 0xFE
    return bytes(digest)


def _read_field(path):
    try:
        with open(path, "rb") as f:
            return int(f.read(_FIELD).strip() or b"0")
    except (OSError, ValueError):
        return 0


def _write_field(path, value, torn=False):
    # In place, one write: the board reads this file on every flash write and must never see it
    # truncated (so no O_TRUNC, no rename). Right-aligned, as the board writes it; a leading "t"
    # (cut_power_at only) asks for a torn write (see _vboard.py).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, (b"t%18d\n" if torn else b"%19d\n") % value, 0)
    finally:
        os.close(fd)


def flash_writes(flash_dir):
    """Program/erase operations the board has made on this flash over its life."""
    return _read_field(os.path.join(flash_dir, "flash_writes"))


def arm_power_cut(flash_dir, after_writes, torn=False):
    """Make flash operation number flash_writes()+after_writes fail with a power cut; return it.

    after_writes=1 cuts at the very next write. Fires once. Works while the board runs. torn:
    the cut lands inside that operation (the first half of the block program or erase reaches
    the flash, as when a NOR flash loses power mid-page), not before it."""
    if after_writes < 1:
        raise BoardError("after_writes must be at least 1")
    at_write = flash_writes(flash_dir) + after_writes
    _write_field(os.path.join(flash_dir, "cut_power_at"), at_write, torn)
    return at_write


def disarm_power_cut(flash_dir):
    """Remove a pending power cut."""
    _write_field(os.path.join(flash_dir, "cut_power_at"), 0)


ROMFS_PARTITIONS = ("romfs_a", "romfs_b")  # the board's two romfs partitions (OTA slots a and b)


PORT_SEGMENT = "romfs_port"  # the virtual board's own Python "port" code (_vboard, _vmachine): segment 2


def port_segment(flash_dir):
    """Write the ROMFS segment holding the virtual board's port code (board_fs/_vboard.py and
    _vmachine.py as .mpy) into its flash directory; return its path. On a board that code is C in
    flash; as .py on the host it is compiled into the Python heap (11.3 KB of a 123k heap, 9 KB
    more than a rig node's _rignode): from this segment it runs in place, as a board's does.
    _vboot.py mounts it at /vport (rom_ioctl id 2, after the two slot partitions)."""
    import subprocess
    import tempfile

    from fleet import ota_bundle, romfs

    with tempfile.TemporaryDirectory(prefix="vport-") as d:
        for name in ("_vboard", "_vmachine"):
            src = os.path.join(BOARD_FS_DIR, name + ".py")
            r = subprocess.run([ota_bundle._mpy_cross(), "-o", os.path.join(d, name + ".mpy"), "-s", name + ".py", src],
                               capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                raise BoardError(f"mpy-cross failed on {src}: {(r.stderr or r.stdout).strip()[:200]}")
        img = romfs.segment(romfs.image(d), 64 * 1024)
    path = os.path.join(flash_dir, PORT_SEGMENT)
    with open(path + ".new", "wb") as f:
        f.write(img)
    os.replace(path + ".new", path)
    return path


def romfs_paths(flash_dir):
    """The files of the board's romfs partitions (partition 0 and 1) in its flash directory."""
    return [os.path.join(flash_dir, n) for n in ROMFS_PARTITIONS]


def prepare_flash(flash_dir, quota_bytes, mac=None, romfs=False):
    """Create or check a flash directory; return the board's MAC (6 bytes). Raises BoardError.

    A new image is blank (all 0xff, like erased flash); the board formats it at first boot.
    romfs: the board also has two romfs partitions of fleet/romfs.py SEGMENT_BYTES (as the
    node's hardware spec, README "Virtual rig"), created erased when absent; the interpreter maps
    them (tools/mp32/rig_romfs.c) when it can."""
    if quota_bytes % BLOCK_SIZE or not 8 * BLOCK_SIZE <= quota_bytes <= MAX_QUOTA_BYTES:
        raise BoardError(f"flash quota must be a multiple of 4 KB from 32 KB to {MAX_QUOTA_BYTES // 1024} KB "
                         f"(an ESP32's flash), not {quota_bytes} bytes")
    try:
        os.makedirs(flash_dir, exist_ok=True)
        img = os.path.join(flash_dir, "flash.img")
        if os.path.exists(img):
            size = os.path.getsize(img)
            if size != quota_bytes:
                raise BoardError(
                    f"{img} is {size // 1024} KB but the quota is {quota_bytes // 1024} KB: "
                    f"pass --quota-kb {size // 1024} or use a new --flash directory"
                )
        else:
            with open(img + ".new", "wb") as f:
                chunk = b"\xff" * (64 * 1024)
                left = quota_bytes
                while left:
                    f.write(chunk[: min(left, len(chunk))])
                    left -= min(left, len(chunk))
            os.replace(img + ".new", img)
        if romfs:
            from fleet import romfs as romfs_mod

            for path in romfs_paths(flash_dir):
                if not os.path.exists(path):
                    with open(path + ".new", "wb") as f:
                        f.write(romfs_mod.erased())
                    os.replace(path + ".new", path)
        for name in ("flash_writes", "cut_power_at"):
            path = os.path.join(flash_dir, name)
            if not os.path.exists(path):
                _write_field(path, 0)
        mac_path = os.path.join(flash_dir, "mac")
        if mac is None and os.path.exists(mac_path):
            with open(mac_path) as f:
                mac = parse_mac(f.read())
        if mac is None:
            mac = derive_mac(flash_dir)
        with open(mac_path, "w") as f:
            f.write(mac.hex() + "\n")
    except OSError as e:
        raise BoardError(f"cannot prepare the flash directory {flash_dir}: {e.strerror}; choose a writable --flash DIR") from e
    return mac
