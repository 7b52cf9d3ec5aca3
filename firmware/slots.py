"""A/B app slots on the node's flash: stage a verified bundle, switch, confirm, roll back.

Theory of operation (the pointer format and the boot rules are in firmware/boot.py)
- The active slot named by /active is never written. A new image is unpacked into the other
  slot only when no pointer field refers to it (not during a trial, whose fallback it is).
- stage(): refuse a bseq not above max(running bseq, highest failed bseq) or a trial in
  progress; wipe the inactive slot; stream the image pages (each checked against the
  manifest's page digest) through inflate and the archive reader into files; read every file
  back and check its size and SHA-256 against the manifest's file list; only then switch the
  pointer (one rename) to the new slot with state=trial and the old slot as fallback.
- confirm(): the app calls it once healthy (mesh joined, sensor read, collector reachable — the
  shell decides): the pointer becomes state=confirmed with no fallback, and /ota_result says so.
- check_trial(uptime_ms): past the trial deadline without a confirm -> roll back (the shell then
  resets). boot.py rolls back a crash loop (max_boots boots without a confirm).
- Power cuts: every step is either a write to the unreferenced slot or a rename of a complete
  file, so the node always boots a complete, verified version (tests/test_ota_powercut.py).
- Romfs partitions (a board with two, firmware/boot.py rom_segments()): a slot is partition 0
  (a) or 1 (b) instead of a flash directory. Staging erases the inactive partition and writes
  the archive's files into it as a ROMFS image laid out from the index (firmware/romfs_write.py),
  mounts it at /<slot> and reads every file back against the manifest, as above; boot.py
  mounts the active one. Bytecode then runs in place from flash (README "Firmware in ROMFS").

Archive (the unpacked image; fleet/ota_bundle.py writes it): b"RMA1", u16 count, then per file
u8 path length, path (UTF-8), u32 size; then the files' bytes in the same order. Big-endian.
The entries must match the manifest's file list exactly (paths, sizes, order).
"""
import hashlib
import io

from firmware import boot as _boot
from firmware.fsutil import exists, makedirs
from protocol.text import token_problem

# ota_state values reported in status frames (firmware/ota.py uses 0..2)
ST_TRIAL = 3
ST_CONFIRMED = 4
ST_ROLLED_BACK = 5
ST_REFUSED = 6

_RESULT_STATES = {"rolled_back": ST_ROLLED_BACK, "refused": ST_REFUSED, "confirmed": ST_CONFIRMED}
ARCHIVE_MAGIC = b"RMA1"
_CHUNK = 512
_DIR_BIT = 0x4000


class SlotError(Exception):
    """Staging refused or failed; the message says why. The active slot is untouched."""

    def __init__(self, msg):
        super().__init__(msg)
        self.msg = msg

    def __str__(self):
        return self.msg


def other_slot(slot):
    return "b" if slot == "a" else "a"


class _PageStream(io.IOBase):  # a stream deflate.DeflateIO can read
    """The image as a stream over read_page(i), checking each page's SHA-256 as it is read."""

    def __init__(self, manifest, read_page):
        self.m = manifest
        self.read_page = read_page
        self.i = 0
        self.buf = b""
        self.off = 0

    def readinto(self, buf):
        n = 0
        want = len(buf)
        while n < want:
            if self.off >= len(self.buf):
                if self.i >= self.m.npages:
                    break
                page = self.read_page(self.i)
                if page is None or len(page) != self.m.page_len(self.i) or \
                        hashlib.sha256(page).digest() != self.m.pages[self.i]:
                    raise SlotError("image page %d is missing or does not match the manifest" % self.i)
                self.buf = page
                self.off = 0
                self.i += 1
            k = min(want - n, len(self.buf) - self.off)
            buf[n:n + k] = memoryview(self.buf)[self.off:self.off + k]
            self.off += k
            n += k
        return n

    def read(self, n):
        b = bytearray(n)
        k = self.readinto(b)
        return bytes(b[:k])


class _ZlibReader:
    """CPython stand-in for deflate.DeflateIO(stream, ZLIB): same read()."""

    def __init__(self, stream):
        import zlib  # pyright: ignore[reportMissingImports] (CPython only)

        self.src = stream
        self.z = zlib.decompressobj()
        self.out = b""

    def readinto(self, buf):
        b = self.read(len(buf))
        buf[:len(b)] = b
        return len(b)

    def read(self, n):
        while len(self.out) < n and not self.z.eof:
            chunk = self.src.read(1024)
            if not chunk:
                break
            self.out += self.z.decompress(chunk)
        r = self.out[:n]
        self.out = self.out[n:]
        return r


def open_image(manifest, read_page):
    """Return a reader (read(n) -> bytes) of the unpacked archive of `manifest`'s image."""
    s = _PageStream(manifest, read_page)
    if manifest.compression == "none":
        return s
    try:
        import deflate
    except ImportError:
        return _ZlibReader(s)
    return deflate.DeflateIO(s, deflate.ZLIB)


def _read_exact(r, n, what):
    out = b""
    while len(out) < n:
        try:
            b = r.read(min(n - len(out), _CHUNK))
        except SlotError:
            raise
        except Exception as e:  # noqa: BLE001 - OSError/zlib.error from a corrupt stream
            raise SlotError("cannot unpack %s: %s" % (what, e))
        if not b:
            raise SlotError("image ends inside %s" % what)
        out += b
    return out


def _read_into(r, mv, what):
    """Read at most len(mv) bytes of the image into memoryview mv; return how many (> 0)."""
    try:
        k = r.readinto(mv)
    except SlotError:
        raise
    except Exception as e:  # noqa: BLE001 - OSError/zlib.error from a corrupt stream
        raise SlotError("cannot unpack %s: %s" % (what, e))
    if not k:
        raise SlotError("image ends inside %s" % what)
    return k


def read_archive_index(r):
    """Read the archive header from reader `r`; return [(path, size), ...]."""
    head = _read_exact(r, 6, "the archive header")
    if head[:4] != ARCHIVE_MAGIC:
        raise SlotError("image is not a Red Mesh archive (magic %r)" % head[:4])
    count = int.from_bytes(head[4:6], "big")
    out = []
    for _ in range(count):
        n = _read_exact(r, 1, "the archive index")[0]
        path = str(_read_exact(r, n, "the archive index"), "utf-8")
        size = int.from_bytes(_read_exact(r, 4, "the archive index"), "big")
        out.append((path, size))
    return out


def file_sha256(fs, path, buf=None):
    """Return (size, sha256 digest) of file `path` on fs, or (-1, None) when it is absent.
    buf: a bytearray of _CHUNK bytes to read through (default: a new one)."""
    try:
        f = fs.open(path, "rb")
    except OSError:
        return -1, None
    h = hashlib.sha256()
    n = 0
    if buf is None:
        buf = bytearray(_CHUNK)
    try:
        while True:
            k = f.readinto(buf)
            if not k:
                break
            h.update(buf[:k] if k < _CHUNK else buf)
            n += k
    finally:
        f.close()
    return n, h.digest()


def wipe(fs, path):
    """Remove every file under directory `path` (and the directories, if fs has rmdir)."""
    try:
        names = fs.listdir(path)
    except OSError:
        return
    for name in names:
        p = path + "/" + name
        if fs.stat(p)[0] & _DIR_BIT:
            wipe(fs, p)
            rmdir = getattr(fs, "rmdir", None)
            if rmdir is not None:
                rmdir(p)
        else:
            fs.remove(p)


def _rom_write(seg, off, buf):
    import vfs

    if vfs.rom_ioctl(4, seg, off, buf) < 0:
        raise SlotError("cannot write romfs partition %d at %d" % (seg, off))


def _umount(mount_point):
    import vfs

    try:
        vfs.umount(mount_point)
    except OSError:
        pass


class SlotManager:
    """The slots of one node. fs: an fsutil-style adapter at the flash root. max_boots: trial
    boots allowed without a confirm; trial_ms: time a trial has to confirm (app uptime);
    target_class: refuse manifests for another hardware class (None: accept any)."""

    def __init__(self, fs, max_boots=3, trial_ms=600000, target_class=None):
        self.fs = fs
        self.max_boots = max_boots
        self.trial_ms = trial_ms
        self.target_class = target_class

    # ---- reading ------------------------------------------------------------------------

    def pointer(self):
        """Return the pointer dict (see firmware/boot.py), or None without an A/B layout."""
        try:
            return _boot.read_pointer(self.fs)
        except ValueError:
            return None

    def running(self):
        """Return (bseq, version) of the active slot; (0, '') without a pointer."""
        p = self.pointer()
        return (p["bseq"], p.get("version", "")) if p else (0, "")

    def floor_bseq(self):
        """Return the highest bseq this node must refuse: max(active bseq, failed bseq)."""
        p = self.pointer()
        if p is None:
            return 0
        return max(p["bseq"], p.get("failed", 0))

    def in_trial(self):
        p = self.pointer()
        return p is not None and p["state"] == "trial"

    def last_result(self):
        """Return the last outcome as a dict (result: confirmed|rolled_back|refused, bseq,
        version, reason), or None when nothing has happened yet."""
        try:
            return _boot.read_kv(self.fs, _boot.RESULT)
        except ValueError:
            return None

    def status(self):
        """Return the ota_state code for status frames: ST_TRIAL, ST_ROLLED_BACK, ST_REFUSED,
        ST_CONFIRMED, or 0 when nothing has happened."""
        if self.in_trial():
            return ST_TRIAL
        r = self.last_result() or {}
        return _RESULT_STATES.get(str(r.get("result", "")), 0)

    def wants(self, manifest):
        """True when `manifest` is newer than anything this node runs or has refused."""
        return manifest.bseq > self.floor_bseq() and not self.in_trial()

    # ---- staging ------------------------------------------------------------------------

    def _refuse(self, manifest, reason):
        _boot.write_kv(self.fs, _boot.RESULT, {"result": "refused", "bseq": manifest.bseq,
                                               "version": manifest.version, "reason": reason})
        raise SlotError(reason)

    def stage(self, manifest, read_page):
        """Unpack `manifest`'s image (read_page(i) -> bytes of image page i) into the inactive
        slot, verify every file, then switch the pointer to it on trial. Returns the slot.

        Raises SlotError (active slot untouched) when the bseq is not above the running or a
        failed one, a trial is in progress, the target class differs, or the image does not
        unpack to exactly the manifest's files. The caller resets the node to boot the trial."""
        # the version goes into key=value files this node boots from: the one text grammar
        # (protocol/text.py) again here, so no manifest can make staging (or boot) raise
        problem = token_problem(manifest.version) or token_problem(manifest.target_class)
        if problem:
            raise SlotError("manifest version or target class refused: " + problem)
        p = self.pointer()
        if p is not None and p["state"] == "trial":
            raise SlotError("a trial of bseq %d is running: confirm or roll back first" % p["bseq"])
        floor = self.floor_bseq()
        if manifest.bseq <= floor:
            self._refuse(manifest, "bseq %d is not above %d (running or failed)" % (manifest.bseq, floor))
        if self.target_class is not None and manifest.target_class != self.target_class:
            self._refuse(manifest, "bundle is for %r, this node is %r" % (manifest.target_class, self.target_class))
        if not [1 for f in manifest.files if f[0] in ("main.py", "main.mpy")]:
            self._refuse(manifest, "bundle has no main.py")
        slot = other_slot(p["slot"]) if p is not None else "a"
        fs = self.fs
        chunk = bytearray(_CHUNK)  # one buffer for every read: a long-running heap has few big holes
        if _boot.rom_segments() >= 2:  # the slot is a romfs partition
            self._unpack_rom(manifest, read_page, slot, chunk)
            where, vfs_fs = "/" + slot, _boot.FlashFS()
        else:
            wipe(fs, slot)
            self._unpack(manifest, read_page, slot, chunk)
            where, vfs_fs = slot, fs
        try:
            for path, size, digest in manifest.files:
                n, h = file_sha256(vfs_fs, where + "/" + path, chunk)
                if n != size or h != digest:
                    raise SlotError("%s/%s does not match the manifest after writing (flash fault?)" % (slot, path))
        finally:
            if vfs_fs is not fs:
                _umount("/" + slot)
        if p is None:
            newp = _boot.confirmed_pointer(slot, manifest.bseq, manifest.version)
        else:
            newp = {"slot": slot, "bseq": manifest.bseq, "version": manifest.version, "state": "trial",
                    "boots": 0, "max_boots": self.max_boots, "trial_ms": self.trial_ms, "fallback": p["slot"],
                    "fallback_bseq": p["bseq"], "fallback_version": p.get("version", ""),
                    "failed": p.get("failed", 0)}
        _boot.write_kv(fs, _boot.POINTER, newp)  # the switch: one rename
        return slot

    def _unpack(self, manifest, read_page, slot, chunk):
        r = open_image(manifest, read_page)
        index = read_archive_index(r)
        want = [(f[0], f[1]) for f in manifest.files]
        if index != want:
            raise SlotError("archive index does not match the manifest's file list")
        fs = self.fs
        for path, size in index:
            full = slot + "/" + path
            i = full.rfind("/")
            if not exists(fs, full[:i]):
                makedirs(fs, full[:i])
            f = fs.open(full, "wb")
            try:
                left = size
                mv = memoryview(chunk)
                while left:
                    k = _read_into(r, mv[:min(left, _CHUNK)], path)
                    f.write(mv[:k])
                    left -= k
            finally:
                f.close()

    def _unpack_rom(self, manifest, read_page, slot, chunk):
        """Write the image as a ROMFS image into the slot's romfs partition (erased first; a
        power cut leaves a partition nothing points to), then mount it at /<slot> to be read
        back. The layout follows the manifest's file list (the archive's, checked equal)."""
        import vfs

        from firmware import romfs_write

        r = open_image(manifest, read_page)
        index = read_archive_index(r)
        files = manifest.files
        if len(index) != len(files) or [1 for i in range(len(files)) if index[i] != (files[i][0], files[i][1])]:
            raise SlotError("archive index does not match the manifest's file list")
        del index
        seg = _boot.SLOTS.index(slot)
        _umount("/" + slot)
        try:
            total = romfs_write.image_length(files)
        except ValueError as e:
            raise SlotError("cannot lay out the image: %s" % e)
        room = len(vfs.rom_ioctl(2, seg))
        if total > room:
            raise SlotError("the image needs %d bytes, the romfs partition holds %d" % (total, room))
        if vfs.rom_ioctl(3, seg, total) < 0:
            raise SlotError("cannot erase romfs partition %d" % seg)
        mv = memoryview(chunk)
        off = 0
        try:
            for head, path, left in romfs_write.records(files):
                _rom_write(seg, off, head)
                off += len(head)
                while left:
                    k = _read_into(r, mv[:min(left, _CHUNK)], path)
                    _rom_write(seg, off, mv[:k])
                    off += k
                    left -= k
        except ValueError as e:
            raise SlotError("cannot lay out the image: %s" % e)
        if vfs.rom_ioctl(5, seg) < 0:
            raise SlotError("cannot complete the write of romfs partition %d" % seg)
        try:
            vfs.mount(vfs.VfsRom(vfs.rom_ioctl(2, seg)), "/" + slot)  # pyright: ignore[reportAttributeAccessIssue]
        except Exception as e:  # noqa: BLE001 - OSError from a damaged image
            raise SlotError("the written image does not mount: %s" % e)

    # ---- trial --------------------------------------------------------------------------

    def confirm(self):
        """Mark the running trial healthy: pointer confirmed (no fallback), /ota_result says
        so. Returns True when a trial was confirmed, False when there was none."""
        p = self.pointer()
        if p is None or p["state"] != "trial":
            return False
        _boot.write_kv(self.fs, _boot.POINTER,
                       _boot.confirmed_pointer(p["slot"], p["bseq"], p.get("version", ""), p.get("failed", 0)))
        _boot.write_kv(self.fs, _boot.RESULT, {"result": "confirmed", "bseq": p["bseq"],
                                               "version": p.get("version", ""), "reason": "health confirmed"})
        return True

    def rollback(self, reason):
        """Abandon the running trial for its fallback slot; return that slot (None: no trial).
        The caller resets the node."""
        p = self.pointer()
        if p is None or p["state"] != "trial" or p.get("fallback") not in _boot.SLOTS:
            return None
        return _boot.rollback(self.fs, p, reason)

    def check_trial(self, uptime_ms):
        """Roll back a trial not confirmed within its deadline. Returns True when it rolled back
        (the caller resets the node)."""
        p = self.pointer()
        if p is None or p["state"] != "trial" or uptime_ms < p.get("trial_ms", self.trial_ms):
            return False
        return self.rollback("not confirmed within %d s" % (p.get("trial_ms", self.trial_ms) // 1000)) is not None
