# pyright: reportAssignmentType=false, reportAttributeAccessIssue=false
# (this shim defines CPython fallbacks for MicroPython names; the checker sees both branches)
"""The one place that papers over MicroPython/CPython differences for the shell and HAL.

Cores (mesh, ota, sampler, drivers) import only `const` from here: they never read a clock.
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
