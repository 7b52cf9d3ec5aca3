"""Nodes run their firmware from a romfs partition, as a board built with ROMFS does (issue 10).

The rig's 32-bit interpreter maps romfs segment files outside its GC heap
(tools/mp32/rig_romfs.c, REDMESH_ROMFS=PATH[:PATH]): bytecode runs in place and costs no heap,
segment 0 is mounted at /rom and put on sys.path, and writes follow a NOR flash's rules (an
erase sets whole 4 KB sectors to 0xFF, a write can only clear bits). Each test runs the real
interpreter with a deadline; the ones that need the rig's build skip, with the reason, on an
interpreter without it (the PyPI one).
"""
import os
import subprocess
import sys
import time

import pytest

from fleet import romfs
from fleet.errors import FleetError
from fleet.sim import interp
from fleet.sim.rig import NodeProc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 60


def test_a_segment_is_the_image_then_erased_flash():
    seg = romfs.segment(b"\xd2\xcd\x31\x00", size=8192)
    assert len(seg) == 8192 and seg[:4] == b"\xd2\xcd\x31\x00" and set(seg[4:]) == {0xFF}


def test_an_image_larger_than_the_partition_is_refused_with_the_sizes():
    with pytest.raises(FleetError) as e:
        romfs.segment(b"\x00" * 5000, size=4096)
    assert "5000 bytes" in str(e.value) and "4 KB romfs partition" in str(e.value)


@pytest.fixture(scope="module")
def mp():
    path = interp.micropython_bin()
    if not interp.has_romfs(path):
        pytest.skip("%s has no romfs segments (the rig's 32-bit build has: `make mp32`)" % path)
    return path


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import mpy_build
    finally:
        sys.path.pop(0)
    out = str(tmp_path_factory.mktemp("mpy"))
    assert mpy_build.build(out) == []
    return out


def _run(mp, code, segments=(), heap="256k"):
    env = {k: v for k, v in os.environ.items() if k != interp.ROMFS_ENV}
    if segments:
        env[interp.ROMFS_ENV] = ":".join(segments)
    return subprocess.run([mp, "-X", "heapsize=" + heap, "-c", code], capture_output=True, text=True,
                          timeout=TIMEOUT_S, env=env, cwd=os.path.dirname(segments[0]) if segments else "/")


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


_PINNED = ("import gc, sys\n{path}gc.collect()\na = gc.mem_alloc()\n"
           "import protocol, firmware.mesh, firmware.ring, firmware.node\ngc.collect()\n"
           "print(gc.mem_alloc() - a, firmware.mesh.__file__)\n")


def test_firmware_imported_from_romfs_runs_in_place_and_pins_far_less_heap(mp, tree, tmp_path):
    seg = _write(tmp_path / "a.romfs", romfs.segment(romfs.image(tree)))
    rom = _run(mp, _PINNED.format(path=""), [seg])
    fs = _run(mp, _PINNED.format(path="sys.path.insert(0, %r)\n" % tree))
    assert rom.returncode == 0 and fs.returncode == 0, rom.stderr + fs.stderr
    rom_b, rom_file = rom.stdout.split()
    fs_b, fs_file = fs.stdout.split()
    assert rom_file == "/rom/firmware/mesh.mpy" and fs_file.startswith(tree)
    # bytecode and constants stay in the mapped file: measured 46.0 KB vs 101.6 KB for a node's
    # imports (bench/heap_bench.py); the bound leaves room for firmware growth, not for a copy
    assert int(rom_b) < 0.6 * int(fs_b), (rom_b, fs_b)


def test_no_segment_no_rom_on_the_path(mp):
    out = _run(mp, "import sys, vfs\nprint(vfs.rom_ioctl(1), '/rom' in sys.path)\n")
    assert out.returncode == 0 and out.stdout.split() == ["0", "False"], out.stderr


def test_writes_follow_nor_flash_rules(mp, tmp_path):
    a = _write(tmp_path / "a.romfs", b"\xff" * 8192)
    b = _write(tmp_path / "b.romfs", b"\x00" * 8192)  # programmed flash: needs an erase
    code = ("import vfs\n"
            "print(vfs.rom_ioctl(1))\n"
            "vfs.rom_ioctl(4, 1, 0, b'\\xff\\xff')\n"  # without an erase a write cannot set bits
            "print(bytes(vfs.rom_ioctl(2, 1)[:2]).hex())\n"
            "print(vfs.rom_ioctl(3, 1, 100))\n"  # erase: the whole first sector
            "s = vfs.rom_ioctl(2, 1)\n"
            "print(bytes(s[4094:4098]).hex())\n"
            "vfs.rom_ioctl(4, 1, 0, b'\\x0f\\xf0')\nvfs.rom_ioctl(4, 1, 0, b'\\xf0\\xff')\n"
            "print(bytes(s[:2]).hex(), vfs.rom_ioctl(5, 1))\n"
            "print(vfs.rom_ioctl(4, 1, 8190, b'abc'), vfs.rom_ioctl(2, 2), vfs.rom_ioctl(3, 0, 9000))\n")
    out = _run(mp, code, [a, b])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "0000", "4", "ffff0000", "00f0", "0", "-22", "-22", "-22"]
    with open(b, "rb") as f:
        assert f.read(2) == b"\x00\xf0"  # written through to the partition file


def test_a_missing_segment_file_stops_the_interpreter_with_its_name(mp, tmp_path):
    out = _run(mp, "print('ran')", [str(tmp_path / "nope.romfs")])
    assert out.returncode == 1 and "ran" not in out.stdout
    assert "nope.romfs: not a segment file" in out.stderr


def test_a_rig_node_runs_the_firmware_on_its_romfs_partition_not_the_build_directory(mp, tmp_path):
    # a build directory and a romfs image that both hold firmware/main: the node must run the romfs one
    build = tmp_path / "build"
    (build / "firmware").mkdir(parents=True)
    (build / "firmware" / "__init__.py").write_text("")
    (build / "firmware" / "main.py").write_text("def run(flash):\n    print('from build')\n")
    img = tmp_path / "img" / "firmware"
    img.mkdir(parents=True)
    (img / "__init__.py").write_text("")
    (img / "main.py").write_text("import sys\n\ndef run(flash):\n    print('from', __file__, '/rom' in sys.path)\n")
    rom = _write(tmp_path / "n1.romfs", romfs.segment(romfs.image(str(tmp_path / "img"))))
    flash = tmp_path / "n1"
    flash.mkdir()
    np = NodeProc(1, str(flash), str(build), interp.NODE_HEAP_KB, str(tmp_path / "n1.log"), mode="plain", romfs=rom)
    np.start()
    try:
        text = _wait_for(tmp_path / "n1.log", "from ")
    finally:
        np.kill(True)
    assert "from /rom/firmware/main.py True" in text and "from build" not in text


def _wait_for(path, needle):
    deadline = time.monotonic() + TIMEOUT_S
    text = ""
    while time.monotonic() < deadline:
        with open(path, errors="replace") as f:
            text = f.read()
        if needle in text and "\n" in text[text.index(needle):]:
            return text
        time.sleep(0.1)
    pytest.fail("no %r in the node's console within %d s:\n%s" % (needle, TIMEOUT_S, text))


# ---- OTA slots as romfs partitions (firmware/slots.py, firmware/boot.py) -----------------------

_STAGE = """
import os, sys
sys.path[:0] = [{dev!r}, {root!r}]
import ota_fixtures as fx, ota_vectors as vec
from protocol import manifest as mf
from firmware import boot
from firmware.fsutil import PosixFS
from firmware.slots import SlotError, SlotManager
pub = bytes.fromhex(vec.PUB)
def m(v):
    return mf.parse_signed_manifest(bytes.fromhex("".join((vec.V1, vec.V2)[v - 1])), pub)
sm = SlotManager(PosixFS("."))
def reader(pages):
    return lambda i: pages[i]
print("staged", sm.stage(m(1), reader(fx.app_pages(1))))
bad = fx.app_pages(2)
bad[1] = bad[1][:10] + bytes([bad[1][10] ^ 1]) + bad[1][11:]
try:
    sm.stage(m(2), reader(bad))
except SlotError as e:
    print("refused", "image page 1" in str(e))
p = boot.read_pointer(PosixFS("."))
print("pointer", p["slot"], p["bseq"], p["state"])
print("staged", sm.stage(m(2), reader(fx.app_pages(2))))
p = boot.read_pointer(PosixFS("."))
print("pointer", p["slot"], p["bseq"], p["state"])
print("files", sorted(n for n in os.listdir(".") if n in ("a", "b")))
"""

_REBOOT = """
import sys
sys.path.insert(0, {fw!r})
import boot
slot = boot.run("")
import main
print("boot", slot, main.VERSION, main.__file__, sys.path[0], "/rom" in sys.path)
"""


def test_ota_slots_are_romfs_partitions_staged_in_place_and_booted_from(mp, tmp_path):
    flash = tmp_path / "flash"
    flash.mkdir()
    parts = [_write(tmp_path / "a.romfs", romfs.erased(65536)), _write(tmp_path / "b.romfs", romfs.erased(65536))]
    env = {k: v for k, v in os.environ.items() if k != interp.ROMFS_ENV}
    env[interp.ROMFS_ENV] = ":".join(parts)

    def run(code):
        out = subprocess.run([mp, "-X", "heapsize=1m", "-c", code], capture_output=True, text=True,
                             timeout=TIMEOUT_S, env=env, cwd=str(flash))
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout.split("\n")

    lines = run(_STAGE.format(dev=os.path.join(ROOT, "tests", "device"), root=ROOT))
    # first install into a (partition 0); a corrupt page of v2 is refused before the pointer
    # moves; then v2 goes into b (partition 1), on trial; no slot directory on the flash
    assert lines[:6] == ["staged a", "refused True", "pointer a 1 confirmed", "staged b", "pointer b 2 trial",
                         "files []"], lines
    got = run(_REBOOT.format(fw=os.path.join(ROOT, "firmware")))
    # the trial boots v2 from partition 1 mounted at /b; the port's /rom (partition 0) is off the path
    assert got[0] == "boot b 2 /b/main.py /b False", got
    for part in parts:
        with open(part, "rb") as f:
            assert f.read(3) == b"\xd2\xcd\x31"  # a ROMFS image, written in place


def test_a_slot_whose_partition_holds_no_image_runs_from_its_directory(mp, tmp_path):
    # fleet provision writes a slot as a flash directory and erases the slot's partition; boot.py
    # then runs the directory. Once an image is in the partition (an OTA update), it runs that.
    flash = tmp_path / "flash"
    (flash / "a").mkdir(parents=True)
    (flash / "a" / "main.py").write_text("VERSION = 7\n")
    (flash / "active").write_text("slot=a\nbseq=7\nversion=7\nstate=confirmed\n")
    parts = [_write(tmp_path / "a.romfs", romfs.erased(65536)), _write(tmp_path / "b.romfs", romfs.erased(65536))]
    env = {k: v for k, v in os.environ.items() if k != interp.ROMFS_ENV}
    env[interp.ROMFS_ENV] = ":".join(parts)

    def reboot():
        out = subprocess.run([mp, "-X", "heapsize=256k", "-c", _REBOOT.format(fw=os.path.join(ROOT, "firmware"))],
                             capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=str(flash))
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout.split("\n")[0]

    d = str(flash / "a")
    assert reboot() == "boot a 7 %s/main.py %s False" % (d, d)
    _write(tmp_path / "a.romfs", romfs.segment(romfs.image_of_files({"main.py": b"VERSION = 8\n"}), 65536))
    assert reboot() == "boot a 8 /a/main.py /a False"
