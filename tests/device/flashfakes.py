# Helpers for the ring/counters/config device tests (CPython and MicroPython): unique temp dirs
# and a filesystem adapter that loses power at a chosen mutating operation.
import os

from firmware.fsutil import PosixFS

_n = [0]


def tmpdir(tag):
    """Create and return a fresh directory under /tmp (no tempfile module on MicroPython)."""
    _n[0] += 1
    d = "/tmp/rm_%s_%s_%d" % (tag, "".join("%02x" % b for b in os.urandom(4)), _n[0])
    os.mkdir(d)
    return d


def rmtree(d):
    try:
        names = os.listdir(d)
    except OSError:
        return
    for n in names:
        p = d + "/" + n
        try:
            os.remove(p)
        except OSError:
            rmtree(p)
    os.rmdir(d)


class PowerCut(Exception):
    """The board lost power here: the test stops driving the old objects."""

    def __init__(self, msg="power cut"):
        super().__init__(msg)


class CutFS(PosixFS):
    """PosixFS that counts mutating operations (open for writing, each write, rename, remove,
    mkdir) and loses power at operation number `cut_at` (1-based). A write cut short keeps the
    first `torn` bytes of its data (a flash that programs part of a buffer), unless torn is
    None. While `full` is set, every write stores its first `full_partial` bytes and raises
    OSError(28) (flash full)."""

    def __init__(self, root, cut_at=None, torn=None):
        super().__init__(root)
        self.cut_at = cut_at
        self.torn = torn
        self.full = False
        self.full_partial = 0
        self.ops = 0
        self.dead = False

    def tick(self):
        if self.dead:
            raise PowerCut("already dead")
        self.ops += 1
        if self.cut_at is not None and self.ops >= self.cut_at:
            self.dead = True
            return True
        return False

    def open(self, path, mode="rb"):
        if "w" in mode or "a" in mode:
            if self.tick():
                raise PowerCut()
            return _CutFile(super().open(path, mode), self)
        if self.dead:
            raise PowerCut("already dead")
        return super().open(path, mode)

    def rename(self, src, dst):
        if self.tick():
            raise PowerCut()
        super().rename(src, dst)

    def remove(self, path):
        if self.tick():
            raise PowerCut()
        super().remove(path)

    def mkdir(self, path):
        if self.tick():
            raise PowerCut()
        super().mkdir(path)


class _CutFile:
    def __init__(self, f, fs):
        self._f = f
        self._fs = fs

    def write(self, data):
        fs = self._fs
        if fs.full:
            if fs.full_partial:
                self._f.write(bytes(data)[:fs.full_partial])  # a full flash may take a part
            raise OSError(28, "no space")
        if fs.tick():
            if fs.torn:
                self._f.write(bytes(data)[:fs.torn])
            raise PowerCut()
        return self._f.write(data)

    def flush(self):
        self._f.flush()

    def fileno(self):
        return self._f.fileno()

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()
