"""Flash store of one OTA bundle's verified pages (the OtaEngine's injected `store`).

Layout under `dir` (default "ota", beside the slots, so unpacking into a slot never touches the
pages a node keeps serving to its neighbours):
    m      the signed manifest, replaced by write-then-rename (never torn)
    p<i>   image page i (0-based), written directly once verified against the manifest
A page file cut short by a power loss is harmless: the engine re-checks every page's SHA-256
when it starts and drops the first bad one and everything after it.
"""
from firmware.fsutil import exists, makedirs, read_file, size, write_file


class PageStore:
    """Pages on an fsutil-style `fs` under directory `dir`."""

    def __init__(self, fs, dir="ota"):
        self.fs = fs
        self.dir = dir

    def _p(self, name):
        return self.dir + "/" + name

    def manifest(self):
        """Return the stored signed manifest bytes, or None."""
        return read_file(self.fs, self._p("m"))

    def put_manifest(self, signed):
        """Start a new bundle: forget the old manifest and pages, store `signed`."""
        if not exists(self.fs, self.dir):
            makedirs(self.fs, self.dir)
        if exists(self.fs, self._p("m")):
            self.fs.remove(self._p("m"))
        self.drop_pages(0)
        write_file(self.fs, self._p("m"), signed)

    def put_page(self, i, data):
        """Store verified image page i."""
        f = self.fs.open(self._p("p%d" % i), "wb")
        try:
            f.write(data)
        finally:
            f.close()

    def page_length(self, i):
        """The size of stored page i's file, -1 when absent (not checked against anything)."""
        return size(self.fs, self._p("p%d" % i))

    def get_page(self, i):
        """Return image page i as bytes, or None when absent."""
        return read_file(self.fs, self._p("p%d" % i))

    def read_page_into(self, i, buf):
        """Read image page i into bytearray `buf` (no allocation); return its length, or -1
        when absent."""
        return self._read_into("p%d" % i, buf, 0)

    def read_manifest_into(self, buf, offset=0):
        """Read the stored signed manifest from byte `offset` into bytearray `buf` (no
        allocation); return how many bytes, or -1 when there is none."""
        return self._read_into("m", buf, offset)

    def _read_into(self, name, buf, offset):
        try:
            f = self.fs.open(self._p(name), "rb")
        except OSError:
            return -1
        try:
            mv = memoryview(buf)
            if offset and hasattr(f, "seek"):
                f.seek(offset)  # a board's and the rig's files seek; past the end reads nothing
                offset = 0
            while offset:  # skip through buf itself (a file object that cannot seek)
                k = f.readinto(mv[:min(offset, len(buf))])
                if not k:
                    return 0
                offset -= k
            n = 0
            while n < len(buf):
                k = f.readinto(mv[n:])
                if not k:
                    break
                n += k
            return n
        finally:
            f.close()

    def drop_pages(self, start):
        """Remove the files of pages start, start+1, ... (and stray temporary files)."""
        try:
            names = self.fs.listdir(self.dir)
        except OSError:
            return
        for name in names:
            if name.endswith(".tmp") or (name[:1] == "p" and name[1:].isdigit() and int(name[1:]) >= start):
                self.fs.remove(self._p(name))

    def clear(self):
        """Forget the bundle entirely."""
        if exists(self.fs, self._p("m")):
            self.fs.remove(self._p("m"))
        self.drop_pages(0)
