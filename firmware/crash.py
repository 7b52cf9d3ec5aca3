"""The crash handler of a node (issue 10): the root main.py imports it from the active slot only
after the app crashed (or boot.py deferred a crash or a watchdog reset to it), so a running node
pays no heap for it; as .mpy from the slot it needs no big contiguous block to load.

Rules (the flash layout and the watchdog are in firmware/boot.py):
- crashed(exc): the traceback to the console and /crash.log (its last CRASH_LOG_MAX bytes), the
  crash count (/crashes) up, then after_crash(): CRASH_LOOP_N in a row roll a trial back to its
  fallback slot, else enter the logged safe state (firmware/safe_state.py, watchdog fed); fewer:
  machine.reset(). Whatever fails in here, the board still resets.
- watchdog_reset(): a boot after a watchdog reset counts as a crash (the app hung or stopped
  feeding); the CRASH_LOOP_N-th in a row is handled as above.
- If this module cannot be imported (a damaged slot), the root main.py still resets the board;
  a damaged trial slot is then rolled back by boot.py's boot count (max_boots).
"""
import sys

from firmware.boot import (
    CRASH_COUNT,
    CRASH_LOG,
    CRASH_LOG_MAX,
    CRASH_LOOP_N,
    RESET_CAUSES,
    SLOTS,
    FlashFS,
    clear_crashes,
    crash_count,
    hard_reset,
    read_pointer,
    reset_cause,
    rollback,
    start_watchdog,
    write_kv,
)

ROOT_MAIN_PY = """\
# Red Mesh root main.py: run the active slot's app (boot.py put the slot first on sys.path and
# left its directory in _slot, a crash of its own in _boot_crash);
# the app never returns (Ctrl-C raises). Any exception but Ctrl-C / sys.exit, or a return: drop
# the app's modules (a fresh heap) and let the slot's firmware.crash log it and reset the board.
import sys
try:
    if _boot_crash is not None:
        raise _boot_crash
    if not _slot:
        raise ImportError("no app slot to run (no /active pointer)")
    import main
    if not getattr(main, "__file__", "").startswith(_slot):
        raise ImportError("the app slot %s has no main.py" % _slot)
    raise RuntimeError("the app returned (a damaged %s/main.py?)" % _slot)
except (KeyboardInterrupt, SystemExit):
    raise
except BaseException as _e:
    _crash = _e
    _e = None
    for _k in list(sys.modules):
        if _k == "main" or _k[:9] == "firmware." or _k[:9] == "protocol." or _k in ("firmware", "protocol"):
            del sys.modules[_k]
    try:
        from firmware import crash
        crash.crashed(_crash, "boot" if _crash is _boot_crash else "app", _slot)
    except KeyboardInterrupt:
        raise
    except BaseException as _e:
        print("crash", "no crash handler (%r): resetting" % (_e,))
    import machine
    machine.reset()
"""
def root_boot_py(firmware_dir=None):
    """The text of the flash's /boot.py (host side: fleet/ota_bundle.py, fleet/provision.py):
    firmware/boot.py, the very code the app's slots.py writes the pointer with. (Kept here, with
    ROOT_MAIN_PY, so that a node's firmware.boot carries no host-only bytes.)"""
    d = firmware_dir or __file__.rsplit("/", 1)[0]
    f = open(d + "/boot.py")
    try:
        return f.read()
    finally:
        f.close()


_SLOT = [None]  # the slot that crashed (a letter), for the log


def _log_crash(fs, entry):
    """Append `entry` to the crash log, keeping its last CRASH_LOG_MAX bytes (whole lines)."""
    old = b""
    try:
        f = fs.open(CRASH_LOG, "rb")
        try:
            f.seek(0, 2)
            size = f.tell()
            keep = CRASH_LOG_MAX - len(entry)
            if keep > 0 and size > 0:
                f.seek(max(0, size - keep))
                old = f.read(keep)
                if size > keep:
                    i = old.find(b"\n")
                    old = old[i + 1:] if i >= 0 else b""
        finally:
            f.close()
    except OSError:
        old = b""
    f = fs.open(CRASH_LOG + ".tmp", "wb")
    try:
        f.write(old)
        f.write(entry[-CRASH_LOG_MAX:])
    finally:
        f.close()
    try:
        fs.rename(CRASH_LOG + ".tmp", CRASH_LOG)
    except OSError:
        fs.remove(CRASH_LOG)
        fs.rename(CRASH_LOG + ".tmp", CRASH_LOG)


def _exc_text(exc):
    try:
        import io

        buf = io.StringIO()
        sys.print_exception(exc, buf)  # pyright: ignore (MicroPython: its StringIO is a stream)
        return buf.getvalue()  # pyright: ignore[reportAttributeAccessIssue]
    except Exception:  # noqa: BLE001 - MemoryError, or CPython (no print_exception)
        try:
            return "%s: %s\n" % (type(exc).__name__, exc)
        except Exception:  # noqa: BLE001
            return "crash\n"


def record_crash(fs, where, text):
    """Log one crash (console + crash log) and count it; return the crashes in a row. Raises
    OSError when the count cannot be stored (a loop could then not be seen)."""
    n = crash_count(fs) + 1
    cause = reset_cause()
    entry = "crash #%d in a row (%s), slot %s, after a %s, %d ms after boot\n%s" % (
        n, where, _SLOT[0] or "-", RESET_CAUSES.get(cause, "unknown"), _uptime_ms(), text)
    print(entry)
    try:
        _log_crash(fs, entry.encode())
    except OSError as e:
        print("crash", "cannot write %s: %s" % (CRASH_LOG, e))
    write_kv(fs, CRASH_COUNT, {"count": n})
    return n


def _uptime_ms():
    try:
        import time

        return time.ticks_ms()  # pyright: ignore[reportAttributeAccessIssue] (MicroPython)
    except Exception:  # noqa: BLE001
        return 0


def enter_safe_state(why, what="crash loop"):
    """The logged safe state, feeding the watchdog; never returns (Ctrl-C raises)."""
    import time

    w = start_watchdog()

    def sleep_s(s):
        if w is not None:
            w.feed()
        time.sleep(s)
        if w is not None:
            w.feed()

    try:
        from firmware.safe_state import safe_state_loop
    except Exception:  # noqa: BLE001 - the slot itself is broken: the same line, from here
        safe_state_loop = None
    while True:
        if safe_state_loop is not None:
            safe_state_loop(why, sleep_s, what=what)
        print("safe-state", "%s: %s. The node is idle (radio and sensor off). Re-provision it over USB "
              "(fleet provision --port <port>); the REPL stays available." % (what, why))
        sleep_s(30)


def after_crash(fs, n, why):
    """What follows crash number `n` in a row: roll back a trial, the safe state, or a reset."""
    if n >= CRASH_LOOP_N:
        try:
            p = read_pointer(fs)
        except Exception:  # noqa: BLE001
            p = None
        if p is not None and p["state"] == "trial" and p.get("fallback") in SLOTS:
            print("crash", "%d crashes in a row on a trial boot: rolling back to slot %s" % (n, p["fallback"]))
            rollback(fs, p, "crashed %d times in a row: %s" % (n, why))
            clear_crashes(fs)
        else:
            enter_safe_state("%d crashes in a row, the last: %s (see /%s: fleet node logs)" % (n, why, CRASH_LOG))
    hard_reset()


def crashed(exc, where="app", slot_dir=None, root=""):
    """An exception ended boot.py or the app (running from `slot_dir`): log it, count it, then
    reset, roll back a trial or enter the safe state (after_crash). Never returns; whatever
    fails here, the board resets."""
    _SLOT[0] = slot_dir[-1:] if slot_dir else None
    try:
        text = _exc_text(exc)
        exc = None
        import gc

        gc.collect()
        lines = text.strip().split("\n")
        why = lines[-1][:120] if lines else "crash"
        fs = FlashFS(root)
        try:
            n = record_crash(fs, where, text)
        except OSError as e:
            enter_safe_state("%s, and the crash cannot be counted on flash (%s)" % (why, e), "crash")
        after_crash(fs, n, why)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - the handler itself failed: still reset
        try:
            print("crash", "crash handler failed: %r" % (e,))
        except BaseException:  # noqa: BLE001
            pass
    hard_reset()


def watchdog_reset(slot_dir=None, root=""):
    """This boot follows a watchdog reset: count it as a crash; the CRASH_LOOP_N-th in a row
    rolls a trial back or enters the safe state (after_crash)."""
    _SLOT[0] = slot_dir[-1:] if slot_dir else None
    fs = FlashFS(root)
    why = "watchdog reset (the app hung or stopped feeding it)"
    try:
        n = record_crash(fs, "watchdog", why + "\n")
    except OSError:
        return
    if n >= CRASH_LOOP_N:
        after_crash(fs, n, why)
