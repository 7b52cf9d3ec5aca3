# Red Mesh boot.py: start the watchdog, choose the app slot to run (A/B with trial boot and
# rollback), and turn any crash into a logged reset.
#
# Installed at the flash root as /boot.py (the port runs it on every boot); the app ships a copy
# as firmware/boot.py so firmware/slots.py writes the pointer with this very code. It must stay
# small, rarely change and import nothing from the app (the app is what it chooses).
#
# Flash layout
#   /a/, /b/       app slots: main.py, firmware/*.mpy, protocol/*.mpy; on a board with two romfs
#                  partitions (rom_segments()) the slots are those partitions (a: 0, b: 1), the
#                  active one mounted at /a or /b: its bytecode runs in place, off the heap
#   /active        the pointer, "key=value" lines, replaced only by rename (atomic):
#                    slot=a|b  bseq=N  version=V  state=trial|confirmed  boots=N  max_boots=N
#                    trial_ms=N  fallback=a|b|-  fallback_bseq=N  fallback_version=V  failed=N
#   /ota_result    the last outcome for the fleet (same format): result=confirmed|rolled_back|
#                    refused, bseq, version, reason
#   /main.py       firmware/crash.py ROOT_MAIN_PY (host side, with root_boot_py()): imports the active slot's main.py (boot.py put
#                  the slot first on sys.path and left `_slot`: boot.py and main.py share the REPL's
#                  globals on a board); on a crash it drops the app's modules and hands it to the
#                  slot's firmware.crash
#   /crash.log     the last crashes, newest last, at most CRASH_LOG_MAX bytes (see crashed())
#   /crashes       "count=N": crashes in a row, cleared once the app has run CRASH_CLEAR_MS or
#                  resets on purpose (hal.reset(): an update, a rollback, a planned restart)
# Rules
#   confirmed          -> run `slot`.
#   trial, boots < max -> boots += 1 (pointer rewritten), run `slot`; the app must call
#                         firmware.slots.SlotManager.confirm() once healthy.
#   trial, boots >= max (a crash loop: max boots without a confirm) -> roll back: write
#                         /ota_result first, then the pointer naming `fallback` as confirmed.
#   no pointer         -> leave sys.path alone (a node provisioned without slots).
#   unreadable pointer -> run slot a (cannot happen through rename; kept as a last resort).
# Every file is replaced by writing `<name>.tmp` then renaming it, so a power cut anywhere leaves
# the old or the new pointer, never a torn one (tests/test_ota_powercut.py cuts at every write).
#
# Crashes (an ESP32 left with an uncaught exception sits at its REPL forever; only a started
# watchdog or machine.reset() brings it back):
#   - The watchdog starts first thing (WDT_TIMEOUT_MS covers boot, imports and a stage at boot
#     on a real board); the app feeds this same WDT (machine.WDT cannot be stopped, re-created
#     or given another timeout: start_watchdog() hands out the one boot.py started).
#   - Any exception out of boot.py or the app (except Ctrl-C and sys.exit) -> firmware/crash.py
#     crashed() (the slot's copy, imported by the root main.py only then): the traceback goes to
#     the console and to /crash.log, the crash count goes up, machine.reset(). A watchdog reset
#     seen at boot counts as a crash too (the app hung or stopped feeding): boot.py hands it to
#     the slot's firmware.crash. A crash of boot.py itself is left for the root main.py (which
#     always runs after a boot.py that returned).
#   - CRASH_LOOP_N crashes in a row: on a trial boot, roll back to the old slot (the crash is a
#     failed boot); otherwise the logged safe state (firmware/safe_state.py), which feeds the
#     watchdog and keeps the REPL reachable for a technician.
#   - Nothing read from flash can make this file raise: every read is guarded, and an
#     unexpected failure of the crash handler itself still ends in machine.reset(). This file
#     stays small: an ESP32 compiles /boot.py from source at every boot and keeps its interned
#     names for good.
_PRESENT = tuple(globals())  # names there before this file ran (as __main__: the REPL's); see the end
import os  # noqa: E402
import sys  # noqa: E402

POINTER = "active"
RESULT = "ota_result"
SLOTS = ("a", "b")
_INT_KEYS = ("bseq", "boots", "max_boots", "trial_ms", "fallback_bseq", "failed", "count")
WDT_TIMEOUT_MS = 60000  # boot + imports + a stage at boot on an ESP32 take ~20 s at worst
CRASH_LOG = "crash.log"
CRASH_COUNT = "crashes"
CRASH_LOG_MAX = 2048
CRASH_LOOP_N = 3
CRASH_CLEAR_MS = 300000
# machine.reset_cause() on the ESP32 port: machine.reset() and a panic read SOFT_RESET, the EN
# button POWERON (ports/esp32/modmachine.c)
WDT_RESET = 3
RESET_CAUSES = {1: "power-on reset", 2: "hard reset", 3: "watchdog reset", 4: "deep-sleep wake", 5: "soft reset"}
WDT_NAME = "redmesh_wdt"  # the __main__ global holding the one WDT (fleet/mpboard.py feeds it)


class FlashFS:
    """The flash root with the primitives firmware.fsutil.PosixFS has (boot.py cannot import
    the app): open, rename, remove, stat, listdir, mkdir over paths relative to `root`."""

    def __init__(self, root=""):
        self.root = root

    def _p(self, path):
        if not self.root:
            return path
        return self.root.rstrip("/") + "/" + path

    def open(self, path, mode="rb"):
        return open(self._p(path), mode)

    def rename(self, src, dst):
        os.rename(self._p(src), self._p(dst))

    def remove(self, path):
        os.remove(self._p(path))

    def stat(self, path):
        return os.stat(self._p(path))

    def listdir(self, path=""):
        return os.listdir(self._p(path))

    def mkdir(self, path):
        os.mkdir(self._p(path))


def parse_kv(text):
    """Parse 'key=value' lines into a dict (ints for the numeric keys). Raises ValueError."""
    out = {}
    for line in text.split("\n"):
        if not line:
            continue
        i = line.find("=")
        if i <= 0:
            raise ValueError("bad line %r" % line)
        k = line[:i]
        v = line[i + 1:]
        out[k] = int(v) if k in _INT_KEYS else v
    return out


def format_kv(d):
    """Return the 'key=value' text of dict `d` (sorted keys; values must hold no newline)."""
    lines = []
    for k in sorted(d):
        v = str(d[k])
        if "\n" in v or "=" in k:
            raise ValueError("cannot store %r=%r" % (k, v))
        lines.append(k + "=" + v)
    return "\n".join(lines) + "\n"


def read_kv(fs, path):
    """Return the dict stored at `path`, None when absent; ValueError when unreadable."""
    try:
        f = fs.open(path, "rb")
    except OSError:
        return None
    try:
        data = f.read()
    finally:
        f.close()
    return parse_kv(str(data, "utf-8"))


def write_kv(fs, path, d):
    """Replace `path` with the text of `d` atomically (write path.tmp, rename it over path)."""
    tmp = path + ".tmp"
    f = fs.open(tmp, "wb")
    try:
        f.write(format_kv(d).encode())
    finally:
        f.close()
    try:
        fs.rename(tmp, path)
    except OSError:
        # FAT refuses to rename over a file: remove, then rename (the .tmp stays whole for a retry)
        fs.remove(path)
        fs.rename(tmp, path)


def read_pointer(fs):
    """Return the pointer dict, None when there is none; ValueError when it is invalid."""
    p = read_kv(fs, POINTER)
    if p is None:
        return None
    if p.get("slot") not in SLOTS or p.get("state") not in ("trial", "confirmed") or "bseq" not in p:
        raise ValueError("invalid pointer %r" % (p,))
    return p


def confirmed_pointer(slot, bseq, version, failed=0):
    """Return a pointer dict naming `slot` as confirmed, with no fallback."""
    return {"slot": slot, "bseq": bseq, "version": version, "state": "confirmed", "boots": 0,
            "max_boots": 0, "trial_ms": 0, "fallback": "-", "fallback_bseq": 0, "fallback_version": "",
            "failed": failed}


def rollback(fs, p, reason):
    """Make p's fallback slot the confirmed one and record why in /ota_result; return the
    fallback slot. The result is written first: a cut before the pointer repeats the rollback."""
    write_kv(fs, RESULT, {"result": "rolled_back", "bseq": p["bseq"], "version": p.get("version", ""),
                          "reason": reason})
    failed = p["bseq"] if p["bseq"] > p.get("failed", 0) else p.get("failed", 0)
    write_kv(fs, POINTER, confirmed_pointer(p["fallback"], p.get("fallback_bseq", 0),
                                            p.get("fallback_version", ""), failed))
    return p["fallback"]


def select(fs):
    """Apply the rules above on `fs` and return the slot to run ('a' or 'b'), or None when the
    flash has no pointer. Writes the pointer (boot count, rollback) as the rules say."""
    try:
        p = read_pointer(fs)
    except Exception:  # noqa: BLE001 - any damage (bad UTF-8, bad numbers, bad fields): slot a
        return SLOTS[0]
    if p is None:
        return None
    if p["state"] != "trial":
        return p["slot"]
    if p.get("fallback") not in SLOTS:
        return p["slot"]  # a trial with nothing to fall back to: keep running it
    boots = p.get("boots", 0)
    if boots >= p.get("max_boots", 3):
        return rollback(fs, p, "%d boots without a health confirmation" % boots)
    p["boots"] = boots + 1
    write_kv(fs, POINTER, p)
    return p["slot"]


_booted: list = [None, None]  # the slot run() chose and the directory it runs from


def rom_segments():
    """How many romfs partitions the board maps (0 where the port has none): with two, the
    slots are partitions (a: 0, b: 1) mounted at /a and /b instead of flash directories."""
    try:
        import vfs

        return vfs.rom_ioctl(1)
    except Exception:  # noqa: BLE001 - no vfs, no rom_ioctl (CPython, a port without ROMFS)
        return 0


def _slot_dir(root, slot):
    """The slot's flash directory (where `fleet provision` writes the app)."""
    base = root.rstrip("/") if root else os.getcwd().rstrip("/")
    return base + "/" + slot


def _mount_slot(slot):
    """Mount the slot's romfs partition at /<slot>, and nothing else of ROMFS: the port mounts
    partition 0 at /rom by itself, which would mix slot a's modules into slot b's. False when
    the partition holds no ROMFS image (erased: the slot was written over USB as a flash
    directory, and `fleet provision` erased the partition's first sector so a stale image in it
    can never shadow the directory)."""
    import vfs

    for mp in ("/rom", "/a", "/b"):
        try:
            vfs.umount(mp)
        except OSError:
            pass
    for p in ("/rom", "/rom/lib"):
        while p in sys.path:
            sys.path.remove(p)
    try:
        rom = vfs.VfsRom(vfs.rom_ioctl(2, SLOTS.index(slot)))  # pyright: ignore[reportAttributeAccessIssue] (MicroPython 1.25+)
    except OSError:
        return False  # ENODEV: no image in the partition
    vfs.mount(rom, "/" + slot)
    return True


def run(root=""):
    """The device path: select a slot on the flash and put it first on sys.path. `root` is the
    flash directory ("": the current directory, "/" on a board)."""
    slot = select(FlashFS(root))
    d = None
    if slot is not None:
        # the slot's romfs partition when it holds an image (staged by OTA), else its flash
        # directory (provisioned over USB, or a board without romfs partitions)
        d = "/" + slot if rom_segments() >= 2 and _mount_slot(slot) else _slot_dir(root, slot)
        for s in SLOTS:
            for cand in ("/" + s, _slot_dir(root, s)):
                while cand in sys.path:
                    sys.path.remove(cand)
        sys.path.insert(0, d)
    _booted[0] = slot
    _booted[1] = d
    return slot


# ---- watchdog, reset, crashes ----------------------------------------------------------------


def start_watchdog(timeout_ms=WDT_TIMEOUT_MS):
    """Return the board's one watchdog, starting it (with `timeout_ms`) if nothing has yet; the
    first start's timeout holds. None on a port without machine.WDT (plain unix MicroPython)."""
    import __main__  # pyright: ignore[reportMissingImports] (boot.py and main.py run in its globals)

    w = getattr(__main__, WDT_NAME, None)
    if w is not None:
        return w
    try:
        import machine

        w = machine.WDT(timeout=timeout_ms)
    except Exception:  # noqa: BLE001 - no WDT here; or (older ESP32 ports) already started before a
        return None  # soft reset, which OSErrors: it keeps running, unfed, and resets the board
    setattr(__main__, WDT_NAME, w)
    return w


def feed_watchdog():
    w = start_watchdog()
    if w is not None:
        w.feed()


def reset_cause():
    """machine.reset_cause() (RESET_CAUSES names it); 0 where the port cannot tell."""
    try:
        import machine

        return machine.reset_cause()
    except (ImportError, AttributeError):
        return 0


def hard_reset():
    """machine.reset(); where the port has none, SystemExit (ends a unix-port process)."""
    try:
        import machine

        machine.reset()
    except (ImportError, AttributeError):
        pass
    raise SystemExit(3)


def crash_count(fs):
    """Crashes in a row recorded on `fs` (0 when none or unreadable)."""
    try:
        n = (read_kv(fs, CRASH_COUNT) or {}).get("count", 0)
        return n if isinstance(n, int) and n > 0 else 0
    except Exception:  # noqa: BLE001 - a damaged counter counts as none
        return 0


def clear_crashes(fs):
    """The app ran long enough: forget the crashes in a row (the log stays)."""
    try:
        fs.remove(CRASH_COUNT)
    except OSError:
        pass


def _watchdog_reset(slot_dir):
    """This boot follows a watchdog reset: the slot's firmware.crash counts it (and handles the
    CRASH_LOOP_N-th in a row); without one (a damaged slot), it is only counted here."""
    try:
        from firmware import crash
    except Exception:  # noqa: BLE001 - a damaged slot: count it at least
        fs = FlashFS()
        n = crash_count(fs) + 1
        print("crash", "#%d in a row: watchdog reset (no crash handler in the slot)" % n)
        write_kv(fs, CRASH_COUNT, {"count": n})
        return
    crash.watchdog_reset(slot_dir)
    for k in ("firmware.crash", "firmware.safe_state"):
        if k in sys.modules:
            del sys.modules[k]


def boot_main(root=""):
    """The flash's /boot.py: the watchdog first, then the slot, then a watchdog reset counted as
    a crash (a hung app). A crash here is left for the root main.py (which runs after a boot.py
    that returned) to hand to the slot's firmware.crash: _boot_crash in the REPL's globals.
    Returns the slot's directory or None."""
    g = globals()
    start_watchdog()
    g["_boot_crash"] = None
    try:
        run(root)
        d = _booted[1]
        if reset_cause() == WDT_RESET:
            _watchdog_reset(d)
        return d
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - handled by the root main.py, which always runs after
        g["_boot_crash"] = e
        return _booted[1] if _booted[0] else None


if __name__ == "__main__":
    _slot = boot_main()
    # Keep only what the root main.py needs: the rest of this file would hold a board's heap for
    # nothing (the app imports its own firmware.boot).
    for _n in [k for k in globals() if k not in _PRESENT and k not in (WDT_NAME, "_slot", "_boot_crash")]:
        del globals()[_n]
