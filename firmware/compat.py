# pyright: reportAssignmentType=false, reportAttributeAccessIssue=false
# (this shim defines CPython fallbacks for MicroPython names; the checker sees both branches)
"""The one place that papers over MicroPython/CPython differences for the shell and HAL.

Cores (mesh, ota, sampler, drivers) import only `const` and `verify_signature` from here: they
never read a clock.
"""
try:
    from micropython import const  # noqa: F401
except ImportError:  # CPython
    def const(x):
        return x

try:
    from time import ticks_add, ticks_diff, ticks_ms  # noqa: F401
except ImportError:  # CPython
    import time as _time

    _TICKS_PERIOD = 1 << 30
    _TICKS_HALF = _TICKS_PERIOD // 2

    def ticks_ms():
        return int(_time.monotonic() * 1000) & (_TICKS_PERIOD - 1)

    def ticks_add(t, delta):
        return (t + delta) & (_TICKS_PERIOD - 1)

    def ticks_diff(a, b):
        return ((a - b + _TICKS_HALF) & (_TICKS_PERIOD - 1)) - _TICKS_HALF


def unload(*names):
    """Forget modules so their bytecode goes back to the heap once nothing refers to them (a
    later import loads them again): on MicroPython, drop them from sys.modules and from their
    package's attributes. On CPython nothing happens (its modules cost no board heap, and host
    tests keep their class identities)."""
    import sys

    if sys.implementation.name != "micropython":
        return
    for name in names:
        if sys.modules.pop(name, None) is None:
            continue
        i = name.rfind(".")
        parent = sys.modules.get(name[:i]) if i > 0 else None
        if parent is not None:
            try:
                delattr(parent, name[i + 1:])
            except (AttributeError, TypeError):
                pass


def boot_call(name, *args):
    """firmware.boot.<name>(*args), or its value when it is a constant, for the shell and the
    HALs (the watchdog, the crash count, the reset cause): firmware/boot.py (~4.6 KB of a node's
    heap on 32 bits) is imported for the call and, unless something had it loaded already,
    unloaded after it (a node kept it for its whole life once health() started the watchdog)."""
    import sys

    had = "firmware.boot" in sys.modules
    from firmware import boot

    try:
        v = getattr(boot, name)
        return v(*args) if callable(v) else v
    finally:
        boot = None
        if not had:
            unload("firmware.boot")


def verify_signature(public_key, message, signature):
    """protocol.ed25519.verify, with the module (and protocol.sha512, ~7 KB of bytecode on a
    node) imported for this one check and unloaded after it."""
    from protocol import ed25519

    ok = ed25519.verify(public_key, message, signature)
    ed25519 = None
    unload("protocol.ed25519", "protocol.sha512")
    return ok
