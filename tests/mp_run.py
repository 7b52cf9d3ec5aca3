# Tiny test runner for MicroPython (and CPython): runs every test_* function of the given
# test modules and prints pytest-like totals. Usage:
#   micropython -X heapsize=64k tests/mp_run.py tests/device/test_codec.py [...]
import sys

try:
    import gc
except ImportError:  # pragma: no cover
    gc = None


def _root_of(path):
    i = path.rfind("/tests/")
    return path[:i] if i >= 0 else "."


def run_module(path):
    name = path.split("/")[-1][:-3]
    d = path[: path.rfind("/")] if "/" in path else "."
    if d not in sys.path:
        sys.path.append(d)  # after any -p dirs, so precompiled test modules win
    mod = __import__(name)
    passed = failed = 0
    names = sorted(n for n in dir(mod) if n.startswith("test_"))
    for n in names:
        fn = getattr(mod, n)
        if gc:
            gc.collect()
        try:
            fn()
            passed += 1
        except Exception as e:  # noqa: BLE001 - report every failure, keep going
            failed += 1
            print("FAIL", name + "." + n, type(e).__name__, e)
            if hasattr(sys, "print_exception"):
                sys.print_exception(e)
    return passed, failed


def main(argv):
    root = _root_of(argv[0]) if argv else "."
    if root not in sys.path:
        sys.path.insert(0, root)
    args = argv[1:]
    # -p DIR: import device code from DIR first (protocol/ and firmware/ precompiled with
    # mpy-cross, as they ship to a board: compiling source on the device costs heap it lacks)
    while args and args[0] == "-p":
        sys.path.insert(0, args[1])
        args = args[2:]
    total_p = total_f = 0
    for path in args:
        p, f = run_module(path)
        total_p += p
        total_f += f
    print("%d passed, %d failed" % (total_p, total_f))
    return 1 if total_f else 0


sys.exit(main(sys.argv))
