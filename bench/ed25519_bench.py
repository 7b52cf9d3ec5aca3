"""Benchmark: Ed25519 verify (protocol.ed25519) and pure-Python SHA-512 (protocol.sha512).

Run with CPython; it measures CPython, then runs itself under the real `micropython` unix port:
  - verify time of a signature over a 32-byte message (what the curve costs: a signed digest)
    and over a 2,048-byte manifest (curve + SHA-512 of 2 KB), best and median of N runs;
  - SHA-512 of a 2,048-byte manifest;
  - bytes allocated by one verify (GC disabled, heap churn, not peak);
  - the smallest `-X heapsize` in which a fresh interpreter imports the modules and verifies a
    2 KB manifest, found by bisection (1 KB steps), for: our two modules precompiled with
    mpy-cross under an empty protocol/__init__ (what this code needs), the same from source,
    and the real protocol package (its __init__ imports the whole codec).
Prints the figures; asserts nothing (speed is not a test).

    .venv/bin/python bench/ed25519_bench.py [--runs 30]

Figures are for a 64-bit unix build: MicroPython objects there are ~1.6x their ESP32 size, and
an ESP32 at 240 MHz runs big-int code roughly 20-40x slower than this machine.
"""
import sys

_MP = sys.implementation.name == "micropython"
MANIFEST_BYTES = 2048
ONCE_SCRIPT = """import sys
sys.path.insert(0, sys.argv[1])
from protocol import ed25519
f = open(sys.argv[2], "rb")
b = f.read()
f.close()
print("OK" if ed25519.verify(b[:32], b[96:], b[32:96]) else "BAD")
"""


def _device(argv):
    """Under micropython: argv = [-p DIR]... CASEDIR time RUNS."""
    import gc
    import time

    while argv and argv[0] == "-p":
        sys.path.insert(0, argv[1])
        argv = argv[2:]
    case_dir = argv[0]
    from protocol import ed25519

    def load(name):
        with open(case_dir + "/" + name, "rb") as f:
            blob = f.read()
        return blob[:32], blob[32:96], blob[96:]

    from protocol.sha512 import sha512

    runs = int(argv[2])
    out = {}
    for name in ("digest.bin", "manifest.bin"):
        pk, sig, msg = load(name)
        if not ed25519.verify(pk, msg, sig):
            raise SystemExit("verify failed on " + name)
        times = []
        for _ in range(runs):
            gc.collect()
            t0 = time.ticks_us()
            ed25519.verify(pk, msg, sig)
            times.append(time.ticks_diff(time.ticks_us(), t0))
        times.sort()
        out[name] = (times[0], times[len(times) // 2])
    _, _, manifest = load("manifest.bin")
    times = []
    for _ in range(runs):
        gc.collect()
        t0 = time.ticks_us()
        sha512(manifest)
        times.append(time.ticks_diff(time.ticks_us(), t0))
    times.sort()
    out["sha512"] = (times[0], times[len(times) // 2])
    pk, sig, msg = load("digest.bin")
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    ed25519.verify(pk, msg, sig)
    out["churn"] = gc.mem_alloc() - before
    gc.enable()
    print("RESULT", out["digest.bin"][0], out["digest.bin"][1], out["manifest.bin"][0],
          out["manifest.bin"][1], out["sha512"][0], out["sha512"][1], out["churn"])


def _host():
    import argparse
    import hashlib
    import os
    import shutil
    import statistics
    import subprocess
    import tempfile
    import time

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    from protocol import ed25519, sha512

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    venv_bin = os.path.dirname(sys.executable)
    mp_bin = os.path.join(venv_bin, "micropython")
    mpy_cross = os.path.join(venv_bin, "mpy-cross")

    key = Ed25519PrivateKey.generate()
    pk = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    manifest = bytes((i * 31 + 7) & 0xFF for i in range(MANIFEST_BYTES))
    digest = hashlib.sha256(manifest).digest()
    cases = {"manifest.bin": manifest, "digest.bin": digest}

    def best_median(fn, runs):
        t = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
        return min(t) * 1e3, statistics.median(t) * 1e3

    print("CPython %s" % sys.version.split()[0])
    for name, msg in cases.items():
        sig = key.sign(msg)
        b, m = best_median(lambda: ed25519.verify(pk, msg, sig), args.runs)  # noqa: B023
        print("  verify, %-22s best %6.2f ms  median %6.2f ms" % (name[:-4] + " (%d B)" % len(msg), b, m))
    b, m = best_median(lambda: sha512.sha512(manifest), args.runs)
    print("  protocol.sha512, %d B       best %6.2f ms  median %6.2f ms" % (MANIFEST_BYTES, b, m))

    tmp = tempfile.mkdtemp(prefix="ed25519_bench_")
    try:
        case_dir = os.path.join(tmp, "cases")
        os.makedirs(case_dir)
        for name, msg in cases.items():
            with open(os.path.join(case_dir, name), "wb") as f:
                f.write(pk + key.sign(msg) + msg)
        # Our two modules alone, precompiled (as on a board) and as source.
        iso_mpy = os.path.join(tmp, "iso_mpy")
        iso_src = os.path.join(tmp, "iso_src")
        full_mpy = os.path.join(tmp, "full_mpy")
        for d in (iso_mpy, iso_src):
            os.makedirs(os.path.join(d, "protocol"))
        open(os.path.join(iso_src, "protocol", "__init__.py"), "w").close()
        empty = os.path.join(iso_src, "protocol", "__init__.py")
        subprocess.run([mpy_cross, "-o", os.path.join(iso_mpy, "protocol", "__init__.mpy"), empty],
                       check=True, timeout=60)
        for mod in ("ed25519", "sha512"):
            src = os.path.join(root, "protocol", mod + ".py")
            shutil.copy(src, os.path.join(iso_src, "protocol"))
            subprocess.run([mpy_cross, "-o", os.path.join(iso_mpy, "protocol", mod + ".mpy"), src],
                           check=True, timeout=60)
        # The real package, every protocol/ module precompiled.
        os.makedirs(os.path.join(full_mpy, "protocol"))
        for fn in sorted(os.listdir(os.path.join(root, "protocol"))):
            if fn.endswith(".py"):
                subprocess.run([mpy_cross, "-o", os.path.join(full_mpy, "protocol", fn[:-3] + ".mpy"),
                                os.path.join(root, "protocol", fn)], check=True, timeout=60)

        # The heap search runs this tiny script, not this file: compiling a 200-line bench on
        # the device would be counted as the verifier's heap.
        once = os.path.join(tmp, "once.py")
        with open(once, "w") as f:
            f.write(ONCE_SCRIPT)
        # A run that does all but import and verify: how much of the figure is interpreter
        # start-up, compiling once.py and the 2 KB buffer.
        with open(os.path.join(tmp, "base.py"), "w") as f:
            f.write(ONCE_SCRIPT.replace("from protocol import ed25519", "")
                    .replace("ed25519.verify(b[:32], b[96:], b[32:96])", "len(b) > 96"))

        def mp(heap_kb, *argv):
            cmd = [mp_bin, "-X", "heapsize=%dk" % heap_kb] + list(argv)
            # cwd=tmp: nothing from the repo is importable but what the script puts on sys.path.
            return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp)

        proc = mp(16384, os.path.abspath(__file__), "-p", iso_mpy, case_dir, "time", str(args.runs))
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
        if not line:
            raise SystemExit("micropython run failed:\n" + proc.stdout + proc.stderr)
        v = [int(x) for x in line[0].split()[1:]]
        print("MicroPython unix port (%s)" % subprocess.run(
            [mp_bin, "-c", "import sys; print(sys.version)"], capture_output=True, text=True,
            timeout=30).stdout.strip())
        print("  verify, digest (32 B)       best %6.2f ms  median %6.2f ms" % (v[0] / 1e3, v[1] / 1e3))
        print("  verify, manifest (%d B)   best %6.2f ms  median %6.2f ms" % (MANIFEST_BYTES, v[2] / 1e3,
                                                                           v[3] / 1e3))
        print("  protocol.sha512, %d B       best %6.2f ms  median %6.2f ms" % (MANIFEST_BYTES, v[4] / 1e3,
                                                                              v[5] / 1e3))
        print("  bytes allocated by one verify (churn, GC off): %d" % v[6])

        manifest_case = os.path.join(case_dir, "manifest.bin")

        def smallest_heap(script, path_dir):
            lo, hi = 2, 256  # KB; hi must pass
            if "OK" not in mp(hi, script, path_dir, manifest_case).stdout:
                return None
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if "OK" in mp(mid, script, path_dir, manifest_case).stdout:
                    hi = mid
                else:
                    lo = mid
            return hi

        print("  smallest heap for start-up + reading the case file alone: %d KB"
              % smallest_heap(os.path.join(tmp, "base.py"), iso_mpy))
        for label, d in (("ed25519+sha512 precompiled (.mpy)", iso_mpy),
                         ("ed25519+sha512 from source (.py)", iso_src),
                         ("whole protocol package (.mpy)", full_mpy)):
            kb = smallest_heap(once, d)
            print("  smallest heap to import + verify a %d B manifest, %s: %s" % (
                MANIFEST_BYTES, label, "%d KB" % kb if kb else "> 256 KB"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if _MP:
        _device(sys.argv[1:])
    else:
        _host()
