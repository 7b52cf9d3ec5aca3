# Red Mesh boot.py: choose the app slot to run (A/B with trial boot and rollback).
#
# Installed at the flash root as /boot.py (the port runs it on every boot); the app ships a copy
# as firmware/boot.py so firmware/slots.py writes the pointer with this very code. It must stay
# small, rarely change and import nothing from the app (the app is what it chooses).
#
# Flash layout
#   /a/, /b/       app slots: main.py, firmware/*.mpy, protocol/*.mpy
#   /active        the pointer, "key=value" lines, replaced only by rename (atomic):
#                    slot=a|b  bseq=N  version=V  state=trial|confirmed  boots=N  max_boots=N
#                    trial_ms=N  fallback=a|b|-  fallback_bseq=N  fallback_version=V  failed=N
#   /ota_result    the last outcome for the fleet (same format): result=confirmed|rolled_back|
#                    refused, bseq, version, reason
#   /main.py       one line, `import main`: boot.py puts the slot first on sys.path, so this
#                  imports the slot's main.py
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
import os
import sys

POINTER = "active"
RESULT = "ota_result"
SLOTS = ("a", "b")
ROOT_MAIN_PY = "import main  # the active slot's main.py: boot.py put the slot first on sys.path\n"
_INT_KEYS = ("bseq", "boots", "max_boots", "trial_ms", "fallback_bseq", "failed")


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
    except (ValueError, OSError):
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


def run(root=""):
    """The device path: select a slot on the flash and put it first on sys.path."""
    slot = select(FlashFS(root))
    if slot is not None:
        d = (root.rstrip("/") + "/" + slot) if root else "/" + slot
        for s in SLOTS:
            for cand in ("/" + s, root.rstrip("/") + "/" + s):
                while cand in sys.path:
                    sys.path.remove(cand)
        sys.path.insert(0, d)
    return slot


if __name__ == "__main__":
    run()
