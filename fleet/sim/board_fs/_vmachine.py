# `machine` for the virtual board: what an ESP32 node and a provisioning tool use, over the
# unix port's own small `machine` module. Installed as sys.modules["machine"] by _vboard.boot().
#
# machine.VIRTUAL_BOARD is True here (and absent on a real board): that is how host tools and
# firmware tell a virtual board apart (sys.platform says "linux").
import binascii
import os
import time

import _vboard
from machine import PinBase, Signal, idle, mem8, mem16, mem32, time_pulse_us  # noqa: F401

VIRTUAL_BOARD = True

# machine.reset_cause() values of the ESP32 port
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

_MAC = binascii.unhexlify(os.getenv("VBOARD_MAC") or "02000000beef")
_CAUSE = int(os.getenv("VBOARD_CAUSE") or PWRON_RESET)
_freq_hz = 160000000  # ESP32 MicroPython default CPU clock


def unique_id():
    """The board's 6-byte base MAC, as on an ESP32."""
    return _MAC


def reset_cause():
    return _CAUSE


def freq(hz=None):
    global _freq_hz
    if hz is None:
        return _freq_hz
    if hz not in (20000000, 40000000, 80000000, 160000000, 240000000):
        raise ValueError("frequency must be 20MHz, 40MHz, 80Mhz, 160MHz or 240MHz")
    _freq_hz = hz


def reset():
    """Hard reset: the supervisor power-cycles the board (fresh interpreter, boot.py, main.py)."""
    _vboard.tell("reset")
    _vboard.halt()


def soft_reset():
    raise SystemExit


def deepsleep(time_ms=0):
    """Power down; wake after time_ms (0: only a reset or a new connection wakes it)."""
    _vboard.tell("deepsleep %d" % time_ms)
    _vboard.halt()


def lightsleep(time_ms=None):
    if time_ms is None:
        _vboard.halt()
    time.sleep_ms(time_ms)


def disable_irq():
    return 0


def enable_irq(state=0):
    pass


class WDT:
    """Watchdog kept by the supervisor: not fed within timeout ms, the board power-cycles.

    As on the ESP32 it cannot be stopped, and it keeps running across soft resets."""

    def __init__(self, id=0, timeout=5000):
        if timeout < 1:
            raise ValueError("timeout must be at least 1 ms")
        _vboard.tell("wdt %d" % timeout)

    def feed(self):
        _vboard.tell("feed")
