# A virtual rig node, MicroPython side: the `machine` module of a board (WDT, reset,
# reset_cause) and the board's start-up (boot.py then main.py in the REPL's globals).
#
# Started by fleet/sim/rig.py NodeProc as
#   micropython -X heapsize=H -c "...import _rignode; _rignode.boot(globals(), CAUSE, CTL, MODE, BUILD, FLASH)"
# with the flash directory as cwd. It installs itself as sys.modules["machine"].
#
# Rules (what an ESP32 does):
# - An uncaught exception (or an app that returns) leaves the node at its REPL: the traceback is
#   printed, then the REPL banner and prompt, and the process idles (alive, not running the app).
#   Only a watchdog that was started, or machine.reset(), brings it back.
# - machine.WDT(timeout) starts the watchdog; the rig keeps it (it resets the node when feed()
#   stops for `timeout` ms, even while the node sits at the REPL). It cannot be stopped.
# - machine.reset(): nothing more runs; the rig restarts the node with reset_cause() SOFT_RESET
#   (what an ESP32 reports after machine.reset()). sys.exit() is a soft reset: same cause, the
#   watchdog keeps running.
# - "mode" slot: run the flash's boot.py, then main.py only if boot.py succeeded; "plain": the
#   app (firmware.main.run on the flash) from the romfs partition mounted at /rom when the
#   interpreter has one (REDMESH_ROMFS, tools/mp32/rig_romfs.c), else from the build directory.
#
# Control file CTL (rewritten whole, read by the rig every second): "<state> <wdt_ms> <feeds>\n"
# with state run | repl | reset | soft; wdt_ms 0 while no watchdog runs; feeds counts feed().
import sys
import time

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

_s = {"cause": PWRON_RESET, "ctl": None, "state": "run", "wdt_ms": 0, "feeds": 0}


def _tell(state):
    _s["state"] = state
    try:
        f = open(_s["ctl"], "w")
        f.write("%s %d %d\n" % (state, _s["wdt_ms"], _s["feeds"]))
        f.close()
    except OSError:
        pass


def _halt():
    while True:
        try:
            time.sleep(1)
        except BaseException:  # noqa: BLE001 - nothing may run once the board resets
            pass


def reset_cause():
    return _s["cause"]


def reset():
    """Hard reset: the rig restarts the node (boot.py, main.py), reset_cause() SOFT_RESET."""
    _tell("reset")
    _halt()


def soft_reset():
    raise SystemExit


class WDT:
    """The watchdog, kept by the rig; one per board: a second WDT() is the same one."""

    def __init__(self, id=0, timeout=5000):
        if timeout < 1:
            raise ValueError("WDT timeout too short")
        if not _s["wdt_ms"]:
            _s["wdt_ms"] = timeout
        _tell(_s["state"])

    def feed(self):
        _s["feeds"] += 1
        _tell(_s["state"])


def _run(name, g):
    """Run file `name` in globals g (compiled as it is read, as a board's pyexec_file does: no
    copy of the whole source in the heap); True when it ran to the end."""
    try:
        if name.endswith(".py"):
            execfile(name, g)  # noqa: F821 - a MicroPython builtin
        else:
            exec(name, g)
        return True
    except SystemExit:
        _tell("soft")  # sys.exit() in boot.py/main.py soft-resets an ESP32
        _halt()
    except BaseException as e:  # noqa: BLE001 - KeyboardInterrupt too: printed, as the board does
        try:
            sys.print_exception(e)
        except BaseException:  # noqa: BLE001
            print("Traceback: %r" % (e,))
    return False


def _exists(name):
    try:
        open(name).close()
        return True
    except OSError:
        return False


def boot(g, cause, ctl, mode, build, flash):
    """Start the node like a board; never returns."""
    _s["cause"] = cause
    _s["ctl"] = ctl
    sys.modules["machine"] = sys.modules["_rignode"]
    if mode == "slot":
        if not _exists("boot.py") or _run("boot.py", g):
            if _exists("main.py"):
                _run("main.py", g)
    else:
        if "/rom" not in sys.path:  # no romfs partition mounted: the build directory on the flash
            sys.path.insert(0, build)
        _run("from firmware.main import run\nrun(%r)\n" % flash, g)
    # the banner first: the rig (and a test) may read the console as soon as the state says repl
    print('MicroPython (virtual rig node); the app is not running\nType "help()" for more information.\n>>> ')
    _tell("repl")
    _halt()
