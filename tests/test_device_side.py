"""Runs every tests/device/test_*.py under the real MicroPython interpreter with a heap like
an ESP32's. The same files are collected by pytest on CPython (tests/device is a test path)."""
import glob
import os
import subprocess
import sys

import pytest
from mp_support import ROOT, micropython_bin

from fleet.sim import interp
from fleet.sim.board import parse_heap

DEVICE_TESTS = sorted(glob.glob(os.path.join(ROOT, "tests", "device", "test_*.py")))
# Heap per test module, in board KB (32-bit; fleet/sim/interp.py scales it on a 64-bit
# interpreter): protocol tests must fit 64k; firmware cores get more (tests/device/heaps.txt).
HEAP = {"default": "64k"}
HEAP_OVERRIDES_FILE = os.path.join(ROOT, "tests", "device", "heaps.txt")


def _heap_for(name):
    if os.path.exists(HEAP_OVERRIDES_FILE):
        with open(HEAP_OVERRIDES_FILE) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[0] == name:
                    return parts[1]
    return HEAP["default"]


@pytest.fixture(scope="session")
def mpy_dir(tmp_path_factory):
    """protocol/ and firmware/ compiled by mpy-cross, as a board would hold them."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import mpy_build

    out = str(tmp_path_factory.mktemp("mpy"))
    fails = mpy_build.build(out, coded=False)  # the unit tests read the exception texts
    assert not fails, f"mpy-cross failed: {fails}"
    # The test modules too: compiling a large test file from source on a 64k heap measures the
    # compiler, not our code (a board runs precompiled bytecode).
    tdir = os.path.join(out, "devtests")
    os.makedirs(tdir)
    for src in glob.glob(os.path.join(ROOT, "tests", "device", "*.py")):
        dst = os.path.join(tdir, os.path.basename(src)[:-3] + ".mpy")
        subprocess.run([mpy_build.mpy_cross(), "-o", dst, src], check=True, timeout=60, capture_output=True)
    return out


@pytest.mark.parametrize("path", DEVICE_TESTS, ids=[os.path.basename(p) for p in DEVICE_TESTS])
def test_under_micropython(path, mpy_dir):
    name = os.path.basename(path)
    heap = _heap_for(name)
    proc = subprocess.run(
        [micropython_bin(), "-X", interp.heap_arg(parse_heap(heap) // 1024), os.path.join(ROOT, "tests", "mp_run.py"), "-p", mpy_dir,
         "-p", os.path.join(mpy_dir, "devtests"), path],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, f"{name} failed under micropython -X heapsize={heap}:\n{tail}"
    assert " passed, 0 failed" in proc.stdout, tail
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert last.split()[:1] != ["0"], f"{name}: no test ran\n{tail}"  # "10 passed" ends like "0 passed"
