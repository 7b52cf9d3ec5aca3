"""ROMFS images of the device build: what a node's romfs flash partition holds.

A node runs its firmware from a ROMFS partition (MicroPython's read-only, memory-mapped
filesystem, `vfs.VfsRom`): .mpy bytecode and constants there are executed and read in place,
from flash, not copied into the 112 KB Python heap, as frozen modules are (measured on the
32-bit rig: the modules a node imports pin 101.6 KB of heap from a littlefs directory, 46.0 KB
from ROMFS). The board: ESP32_GENERIC built with a partition table holding two `romfs`
partitions (data, subtype 0x8f) of SEGMENT_BYTES each (see README "Hardware"); the rig maps
segment files in their place (tools/mp32/rig_romfs.c).
"""
import contextlib
import io
import os
import tempfile

from fleet.errors import FleetError

# One romfs partition: 256 KB of the 4 MB flash (two of them leave ~1.5 MB of littlefs).
SEGMENT_BYTES = 256 * 1024
SECTOR_BYTES = 4096  # the flash's erase unit; a segment file is whole sectors


def image(tree_dir):
    """The ROMFS image (bytes) of a directory tree (e.g. the .mpy build of firmware/ and
    protocol/), as `mpremote romfs build` makes it."""
    from mpremote.romfs import VfsRomWriter, copy_recursively

    fs = VfsRomWriter()
    with contextlib.redirect_stdout(io.StringIO()):  # it draws the tree as it goes
        copy_recursively(fs, tree_dir.rstrip("/") + "/", "", False)
    return fs.finalise()


def image_of_files(files):
    """The ROMFS image holding `files` ({relative path: bytes})."""
    with tempfile.TemporaryDirectory(prefix="redmesh-romfs-") as d:
        for rel, data in files.items():
            path = os.path.join(d, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        return image(d)


def erased(size=SEGMENT_BYTES):
    """A romfs partition as it leaves the factory: all 0xFF."""
    return b"\xff" * size


def segment(img, size=SEGMENT_BYTES):
    """A whole romfs partition holding `img`: the image, then erased flash (0xFF)."""
    if len(img) > size:
        raise FleetError("the firmware image is %d bytes: more than a %d KB romfs partition"
                         % (len(img), size // 1024))
    return bytes(img) + b"\xff" * (size - len(img))
