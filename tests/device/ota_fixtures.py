# Shared by the OTA tests on both interpreters (CPython and MicroPython): deterministic app
# files, an in-memory flash with the firmware.fsutil primitives (also the flash of the reading
# rings in tests/fake_radio.py), and a power-cut wrapper for any such filesystem (PosixFS over a
# host directory, MemFS, or a board's flash).
#
# Power-cut model (PowerCutFS): every mutating operation counts — open for writing (it creates or
# truncates), each write() call, rename, remove, mkdir, rmdir. Operation number `cut_at` never
# happens (or, torn, only partly): the wrapper settles the files it has open as the chosen
# `model` says and raises PowerCut; the dead filesystem then refuses everything. Renames,
# removes and mkdirs are atomic, as on littlefs and POSIX. Models of an open file at the cut:
# - "prefix" (default): what earlier write() calls wrote stays, the cut write is lost.
# - "torn": as prefix, and the first half of the cut write's bytes land too (a flash with no
#   journal, e.g. FAT, cut in the middle of a write: harsher than any board we ship).
# - "littlefs": what littlefs guarantees (the ESP32 port's filesystem; the virtual board runs
#   the real one, fleet/sim/board_fs/_vboard.py): a file's new content is committed only at
#   close (or sync), so a file open for writing keeps its content from before the open; a file
#   that open created exists, empty (littlefs commits its directory entry at open). The files
#   of a multi-file update are NOT committed together: each one closed before the cut stays.
import hashlib

PAGE = 3584


def pattern(n, salt, out=None, at=0):
    """n deterministic bytes that compress (a repeating ramp), different for each salt; written
    into bytearray `out` at offset `at` when given (no copy: a 64k heap is tight)."""
    own = out is None
    if own:
        out = bytearray(n)
    for i in range(n):
        out[at + i] = ((i % 61) * 7 + salt * 13 + (i // 997)) & 0xFF
    return bytes(out) if own else out


def app_files(v):
    """The app slot's files of test version v, sorted by path (as fleet/ota_bundle.py sorts)."""
    return [
        ("firmware/app.mpy", pattern(2500 + 300 * v, v)),
        ("main.py", ("VERSION = %d\n" % v).encode()),
        ("protocol/wire.mpy", pattern(5000, v + 10)),
    ]


def make_archive(files):
    """The archive format of fleet/ota_bundle.py and firmware/slots.py."""
    out = bytearray(b"RMA1")
    out.extend(len(files).to_bytes(2, "big"))
    for path, data in files:
        p = path.encode()
        out.append(len(p))
        out.extend(p)
        out.extend(len(data).to_bytes(4, "big"))
    for _, data in files:
        out.extend(data)
    return bytes(out)


def paginate(image, page=PAGE):
    return [image[i:i + page] for i in range(0, len(image), page)]


def app_pages(v):
    """The pages of make_archive(app_files(v)), built in one buffer (the heap-light way)."""
    sizes = (("firmware/app.mpy", 2500 + 300 * v), ("main.py", len("VERSION = %d\n" % v)),
             ("protocol/wire.mpy", 5000))
    head = 6 + sum(5 + len(p) for p, _ in sizes)
    buf = bytearray(head + sum(n for _, n in sizes))
    buf[0:4] = b"RMA1"
    buf[4:6] = len(sizes).to_bytes(2, "big")
    at = 6
    for path, n in sizes:
        buf[at] = len(path)
        buf[at + 1:at + 1 + len(path)] = path.encode()
        buf[at + 1 + len(path):at + 5 + len(path)] = n.to_bytes(4, "big")
        at += 5 + len(path)
    pattern(sizes[0][1], v, buf, at)
    at += sizes[0][1]
    buf[at:at + sizes[1][1]] = ("VERSION = %d\n" % v).encode()
    at += sizes[1][1]
    pattern(sizes[2][1], v + 10, buf, at)
    return [bytes(buf[i:i + PAGE]) for i in range(0, len(buf), PAGE)]


def sha256(b):
    return hashlib.sha256(b).digest()


class _MemFile:
    def __init__(self, fs, path, mode):
        self.fs = fs
        self.path = path
        self.writing = "w" in mode or "a" in mode
        if self.writing:
            parent = path.rsplit("/", 1)[0] if "/" in path else ""
            if parent not in fs.dirs:
                raise OSError(2)
            if "a" not in mode or path not in fs.files:
                fs.files[path] = bytearray()
        elif path not in fs.files:
            raise OSError(2)
        self.pos = 0

    def write(self, b):
        self.fs.files[self.path].extend(b)
        return len(b)

    def read(self, n=-1):
        data = self.fs.files[self.path]
        end = len(data) if n is None or n < 0 else min(len(data), self.pos + n)
        out = bytes(memoryview(data)[self.pos:end])
        self.pos = end
        return out

    def readinto(self, buf):
        data = self.fs.files[self.path]
        k = min(len(buf), len(data) - self.pos)
        buf[:k] = memoryview(data)[self.pos:self.pos + k]
        self.pos += k
        return k

    def seek(self, pos):
        self.pos = pos  # from the start only (firmware/ring.py reads records by position)
        return pos

    def flush(self):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


class MemFS:
    """An in-memory flash with the firmware.fsutil.PosixFS primitives (plus rmdir)."""

    def __init__(self):
        self.files = {}
        self.dirs = {"": True}

    def open(self, path, mode="rb"):
        return _MemFile(self, path, mode)

    def rename(self, src, dst):
        if src not in self.files:
            raise OSError(2)
        self.files[dst] = self.files.pop(src)

    def remove(self, path):
        if path not in self.files:
            raise OSError(2)
        del self.files[path]

    def _children(self, path):
        pre = path + "/" if path else ""
        out = {}
        for p in list(self.files) + list(self.dirs):
            if p and p.startswith(pre) and p != path:
                out[p[len(pre):].split("/")[0]] = True
        return list(out)

    def listdir(self, path=""):
        if path not in self.dirs:
            raise OSError(2)
        return self._children(path)

    def stat(self, path):
        if path in self.dirs:
            return (0x4000, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        if path in self.files:
            return (0x8000, 0, 0, 0, 0, 0, len(self.files[path]), 0, 0, 0)
        raise OSError(2)

    def mkdir(self, path):
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if path in self.dirs or path in self.files:
            raise OSError(17)
        if parent not in self.dirs:
            raise OSError(2)
        self.dirs[path] = True

    def rmdir(self, path):
        if path not in self.dirs or self._children(path):
            raise OSError(39)
        del self.dirs[path]


class PowerCut(BaseException):
    """The simulated power loss (a BaseException: no `except Exception` in the code under
    test may swallow it)."""


MODELS = ("prefix", "torn", "littlefs")


class _CutFile:
    def __init__(self, owner, f, path=None, before=None):
        self.owner = owner
        self.f = f
        self.path = path
        self.before = before  # the file's bytes at open (None: the open created it)

    def write(self, b):
        self.owner._op(self, b)
        return self.f.write(b)

    def flush(self):
        return self.f.flush()

    def fileno(self):
        return self.f.fileno()

    def close(self):
        if self in self.owner._open:
            self.owner._open.remove(self)
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


class PowerCutFS:
    """Wrap an fsutil-style fs; mutating operation number `cut_at` (1-based; 0 = never) loses
    power, with open files settled as `model` says (MODELS, see the top of this file). `ops`
    counts the mutating operations done so far."""

    def __init__(self, inner, cut_at=0, model="prefix"):
        if model not in MODELS:
            raise ValueError("model must be one of %r, got %r" % (MODELS, model))
        self.inner = inner
        self.cut_at = cut_at
        self.model = model
        self.ops = 0
        self.dead = False
        self._open = []
        if hasattr(inner, "rmdir"):
            self.rmdir = self._rmdir

    def _op(self, cut_file=None, data=None):
        if self.dead:
            raise PowerCut("the board is off")
        self.ops += 1
        if self.cut_at and self.ops >= self.cut_at:
            self.dead = True
            if self.model == "torn" and cut_file is not None and data:
                try:
                    cut_file.f.write(data[:len(data) // 2])  # half the cut write lands
                except Exception:  # noqa: BLE001
                    pass
            for f in list(self._open):
                try:
                    f.f.close()  # what reached the flash before the cut stays (prefix, torn)
                except Exception:  # noqa: BLE001
                    pass
                if self.model == "littlefs":
                    g = self.inner.open(f.path, "wb")  # not committed: back to the bytes at open
                    try:
                        g.write(f.before or b"")
                    finally:
                        g.close()
            self._open = []
            raise PowerCut("power cut at write %d" % self.ops)

    def _alive(self):
        if self.dead:
            raise PowerCut("the board is off")

    def open(self, path, mode="rb"):
        if "w" in mode or "a" in mode or "+" in mode:
            self._op()
            before = None
            if self.model == "littlefs":
                try:
                    g = self.inner.open(path, "rb")
                    try:
                        before = g.read()
                    finally:
                        g.close()
                except OSError:
                    before = None
            f = _CutFile(self, self.inner.open(path, mode), path, before)
            self._open.append(f)
            return f
        self._alive()
        return self.inner.open(path, mode)

    def rename(self, src, dst):
        self._op()
        self.inner.rename(src, dst)

    def remove(self, path):
        self._op()
        self.inner.remove(path)

    def mkdir(self, path):
        self._op()
        self.inner.mkdir(path)

    def _rmdir(self, path):
        self._op()
        self.inner.rmdir(path)

    def listdir(self, path=""):
        self._alive()
        return self.inner.listdir(path)

    def stat(self, path):
        self._alive()
        return self.inner.stat(path)
