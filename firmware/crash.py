# Red Mesh crash handler: the second half of the flash's /boot.py (firmware/boot.py
# root_boot_py() appends this file to firmware/boot.py). The app never imports it: a running node
# pays no heap for it. Rules (see firmware/boot.py "Crashes"):
#   - boot_main(): the watchdog first, then a watchdog reset counts as a crash, then the slot.
#   - crashed(exc): the traceback to the console and /crash.log (its last CRASH_LOG_MAX bytes),
#     the crash count up, then after_crash(): CRASH_LOOP_N in a row roll a trial back to its
#     fallback slot, else enter the logged safe state (firmware/safe_state.py, fed watchdog);
#     fewer: machine.reset(). Whatever fails in here, the board still resets.
#   - The root main.py imports this file's module (`import boot`: /boot.py) when the app
#     crashes, after dropping the app's modules; at boot it runs as __main__ and then drops its
#     own names, keeping the watchdog and `_slot` for the root main.py.
# pyright: reportUnboundVariable=false, reportOperatorIssue=false, reportUnusedExpression=false
# (the names below come from firmware/boot.py: right above in /boot.py, imported here otherwise)
import sys

try:
    write_kv  # noqa: B018 - as /boot.py, firmware/boot.py is right above
except NameError:  # as firmware/crash.py (tests, lint)
    from firmware.boot import (  # noqa: F401
        _PRESENT,
        CRASH_COUNT,
        CRASH_LOG,
        CRASH_LOG_MAX,
        CRASH_LOOP_N,
        RESET_CAUSES,
        SLOTS,
        WDT_NAME,
        WDT_RESET,
        FlashFS,
        _booted,
        _slot_dir,
        clear_crashes,
        crash_count,
        hard_reset,
        read_pointer,
        reset_cause,
        rollback,
        run,
        start_watchdog,
        write_kv,
    )


ROOT_MAIN_PY = """\
# Red Mesh root main.py: run the active slot's app (boot.py put the slot first on sys.path and
# left its directory in _slot); it never returns (Ctrl-C raises). Any exception but Ctrl-C /
# sys.exit, or a return: drop the app's modules (a fresh heap), import /boot.py's crash handler
# and let it log the crash and reset the board.
import sys
try:
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
        import boot
        boot._booted[0] = _slot[-1:] if _slot else None
        boot.crashed(_crash, "app")
    except KeyboardInterrupt:
        raise
    except BaseException as _e:
        print("crash", "the crash handler failed: %r" % (_e,))
    import machine
    machine.reset()
"""

def root_boot_py(firmware_dir=None):
    """The text of the flash's /boot.py (host side: fleet/ota_bundle.py, fleet/provision.py):
    this file, then firmware/crash.py (the crash handler, which the app never imports, so its
    bytecode costs a running node no heap). `firmware_dir`: default, this file's directory."""
    d = firmware_dir or __file__.rsplit("/", 1)[0]
    out = []
    for name in ("boot.py", "crash.py"):
        f = open(d + "/" + name)
        try:
            out.append(f.read())
        finally:
            f.close()
    return "\n\n".join(out)


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
        n, where, _booted[0] or "-", RESET_CAUSES.get(cause, "unknown"), _uptime_ms(), text)
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


def crashed(exc, where="app", root=""):
    """An exception ended boot.py or the app: log it, count it, then reset, roll back a trial or
    enter the safe state (after_crash). Never returns; whatever fails here, the board resets."""
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


def boot_main(root=""):
    """The root boot.py: the watchdog first, then count a watchdog reset as a crash, then select
    the slot. Any exception becomes crashed()."""
    start_watchdog()
    try:
        if reset_cause() == WDT_RESET:
            fs = FlashFS(root)
            why = "watchdog reset (the app hung or stopped feeding it)"
            try:
                n = record_crash(fs, "watchdog", why + "\n")
            except OSError:
                n = 0
            if n >= CRASH_LOOP_N:
                after_crash(fs, n, why)
        run(root)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001
        crashed(e, "boot", root)


if __name__ == "__main__":
    boot_main()
    _slot = _booted[0] and _slot_dir("", _booted[0])
    # Keep only the watchdog and _slot for the root main.py: the rest of this file would hold
    # ~8 KB of a board's heap for nothing (a crash runs the file again).
    for _n in [k for k in globals() if k not in _PRESENT and k not in (WDT_NAME, "_slot")]:
        del globals()[_n]
