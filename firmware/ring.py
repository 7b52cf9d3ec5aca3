"""Store-and-forward ring of readings: a RAM block spilled to fixed-size segment files on flash.

Rules
-----
- Every reading gets a sequence number from the node's persistent reading counter
  (firmware/counters.py, name "reading") and the unix time the shell gives. Seqs only grow;
  they may jump (a reboot skips at most one counter block; readings lost at a power cut).
- A reading is a 24-byte record (big-endian): seq u32, t_s u32, pm1 u16, pm25 u16, pm10 u16,
  rh u8, temp i16, n u16, flags u16, magic 0x5A, crc u16 (low 16 bits of CRC-32 over the 22
  bytes before it). Values are clamped into the ranges a Reading frame accepts.
- New readings sit in a RAM block (`ram_capacity` records, one bytearray). The block is
  appended to flash in ONE write when it is full, when it holds `unsent_spill` readings not yet
  sent (the node has no route: protect them early), or on `flush()` (the shell calls it before
  a planned reset). With a route, readings leave within seconds, so the steady state costs one
  segment write per `ram_capacity` readings (about one per hour at 1/min).
- Flash: directory `path_prefix` holds segment files `NNNNNNNN.seg` of at most SEG_RECORDS
  records (4,080 bytes: one 4 KB littlefs block each), append-only, oldest first, plus
  `sent` (the sent watermark) and, when the ring owns its counter, `seq`. When a new segment
  would exceed the capacity, the oldest segment file is deleted: `aged` counts its readings and
  `dropped` those of them never sent (data the collector will never get).
- Sent state: the router reports first-hop success with `mark_sent(first, last)`. Every seq
  below the watermark W is sent; up to MAX_SENT_RANGES ranges above W record out-of-order
  successes. W is persisted (atomic rename) with every spill, on `flush()`, and every
  SENT_SAVE_EVERY seqs; after a power cut at most that many sent readings are sent again
  (duplicates the collector drops by (node, seq)). Sent readings stay until their segment ages
  out, so `get_range` can answer a downlink "resend readings A..B".

Capacity (defaults): RAM 64 readings (1.5 KB); flash ceil(20,000 / 170) = 118 segments =
20,060 readings = 472 KB of flash (118 x 4 KB blocks; measured on littlefs: 130 blocks in use
with the metadata): 13.9 days at one reading per minute, 70 days at one per 5 minutes. Once
full, the oldest 170 readings go at a time (19,890..20,060 held). Heap: ~5 KB for the object
(RAM block, counters) plus ~35 bytes per segment of index (64-bit unix figures; about half on
an ESP32). Flash writes at one reading a minute with a route: a segment append, the `sent`
file and a counter reserve about once an hour each; without a route, an append per
`unsent_spill` readings.

Power loss: littlefs commits a file at close, so a cut loses at most the RAM block: up to
`ram_capacity - 1` readings, of which at most `unsent_spill - 1` were not yet sent (the others
already reached the first hop). Their seqs become a gap that the collector sees and counts
as lost; one reboot also skips at most one counter block. That is the price of writing the
flash once per block instead of once per reading: a few minutes of readings on the rare
unplanned cut while the node is also cut off from the mesh, against flash wear and write
stalls on every reading. On filesystems without atomic appends, a segment cut mid-write is
detected on the next start (length not a multiple of 24, bad magic or CRC, seq not
increasing) and truncated to its valid records; earlier readings are kept.

Readings are returned as tuples (seq, t_s, pm1, pm25, pm10, rh, temp, n, flags).
"""
import struct

from firmware import fsutil
from firmware.compat import const
from protocol import Reading, Telemetry, cbor, encode
from protocol.frames import MAX_FRAME, MAX_READINGS

try:
    from binascii import crc32
except ImportError:  # pragma: no cover - ports built without binascii.crc32
    def crc32(data):
        c = 0xFFFFFFFF
        for b in data:
            c ^= b
            for _ in range(8):
                c = (c >> 1) ^ (0xEDB88320 & -(c & 1))
        return c ^ 0xFFFFFFFF

_FMT = ">IIHHHBhHHBH"
REC_SIZE = const(24)
_BODY = const(22)  # bytes covered by the CRC
_MAGIC = const(0x5A)
SEG_RECORDS = const(170)  # 170 x 24 = 4080 bytes: one 4 KB flash block per segment file
SENT_SAVE_EVERY = const(128)
MAX_SENT_RANGES = const(8)
_CHUNK = const(16)  # records read from flash per read() call

DEFAULT_RAM = const(64)
DEFAULT_FLASH = const(20000)
DEFAULT_UNSENT_SPILL = const(8)

AGED = "aged"  # below the oldest reading held: deleted to bound the ring
LOST = "lost"  # within what the node has numbered but not held: a power cut or a reboot skip
AHEAD = "ahead"  # not numbered yet

_SEQ_NAME = "reading"
_SENT = "sent"
_INF = 0xFFFFFFFFFF


def _clamp(v, lo, hi):
    v = 0 if v is None else int(v)  # None: a field the sensor does not measure
    return lo if v < lo else hi if v > hi else v


def pack_record(seq, t_s, pm1, pm25, pm10, rh, temp, n, flags):
    """Return the 24-byte record of one reading (values clamped to the frame's ranges)."""
    buf = bytearray(REC_SIZE)
    struct.pack_into(_FMT, buf, 0, seq, _clamp(t_s, 0, 0xFFFFFFFF), _clamp(pm1, 0, 0xFFFF),
                     _clamp(pm25, 0, 0xFFFF), _clamp(pm10, 0, 0xFFFF), _clamp(rh, 0, 100),
                     _clamp(temp, -400, 850), _clamp(n, 0, 0xFFFF), _clamp(flags, 0, 0xFFFF), _MAGIC, 0)
    struct.pack_into(">H", buf, _BODY, crc32(memoryview(buf)[:_BODY]) & 0xFFFF)
    return buf


def unpack_record(buf, off=0):
    """Return the reading tuple of the record at `off`, or None when its magic or CRC is bad."""
    r = struct.unpack_from(_FMT, buf, off)
    if r[9] != _MAGIC or r[10] != crc32(memoryview(buf)[off:off + _BODY]) & 0xFFFF:
        return None
    return r[:9]


class ReadingRing:
    """Bounded store-and-forward ring; see the module docstring for the rules.

    fs: filesystem adapter (firmware.fsutil.PosixFS); path_prefix: directory of the ring's
    files (created if absent); ram_capacity: readings held in RAM before a spill;
    flash_capacity: readings kept on flash (rounded up to whole segments); counters: a shared
    firmware.counters.Counters (name "reading"), else the ring keeps its own in `<dir>/seq`;
    unsent_spill: spill early once this many unsent readings wait in RAM.
    Construction recovers whatever a reset or power cut left on flash (may rewrite a damaged
    segment). Raises OSError only if the flash cannot be read or written at all."""

    def __init__(self, fs, path_prefix, ram_capacity=DEFAULT_RAM, flash_capacity=DEFAULT_FLASH,
                 counters=None, unsent_spill=DEFAULT_UNSENT_SPILL):
        if ram_capacity < 1 or flash_capacity < 1 or unsent_spill < 1:
            raise ValueError("ram_capacity, flash_capacity and unsent_spill must be >= 1")
        self._fs = fs
        self._dir = path_prefix.rstrip("/")
        if not self._dir:
            raise ValueError("path_prefix must name a directory for the ring's files, e.g. \"ring\"")
        self.ram_capacity = ram_capacity
        self.max_segments = max(1, (flash_capacity + SEG_RECORDS - 1) // SEG_RECORDS)
        self.flash_capacity = self.max_segments * SEG_RECORDS
        self.unsent_spill = min(unsent_spill, ram_capacity)
        self._ram = bytearray(ram_capacity * REC_SIZE)
        # one flash read buffer for every scan, allocated once: a 32-bit node answering a resend
        # failed to find 384 contiguous bytes for a fresh one in a busy heap
        self._buf = bytearray(_CHUNK * REC_SIZE)
        self._ram_n = 0
        # Segment index, parallel lists (small ints, no per-segment objects): file number,
        # first seq, last seq, record count. A segment is gapless when last-first+1 == count,
        # then a seq's position is arithmetic and needs no flash read.
        self._sno = []
        self._sfirst = []
        self._slast = []
        self._scount = []
        self._next_sno = 1  # never reuse a file number: a forgotten damaged file may remain
        self._sealed = False  # after a failed write, start a new segment rather than append
        self._w = 0  # sent watermark: every seq < _w is sent
        self._w_saved = 0
        self._ranges = []  # [[a, b], ...] sent ranges above _w, sorted, disjoint
        self.dropped = 0  # unsent readings deleted to bound the ring (lost data)
        self.aged = 0  # readings deleted to bound the ring (sent or not)
        self.corrupt = 0  # damaged records/segments found (recovery or read)
        self.spills = 0  # segment appends
        self.write_errors = 0  # failed flash writes (flash full...)
        fsutil.makedirs(fs, self._dir)
        if counters is None:
            from firmware.counters import Counters

            counters = Counters(fs, self._dir + "/seq")
        self.counters = counters
        self._recover()

    # ---------------------------------------------------------------- public
    def append(self, t_s, aggregate):
        """Store one reading (`aggregate`: pm1, pm25, pm10, rh, temp, n, flags, e.g. a
        firmware.sampler.Aggregate) taken at unix time `t_s`; return its seq. May write flash."""
        a = aggregate
        try:
            seq = self.counters.next(_SEQ_NAME)
        except OSError:
            # Flash full: the counter must be persisted before its value is used. Free the
            # oldest segment and try once more; a second failure reaches the caller.
            self.write_errors += 1
            if self._sno:
                self._drop_oldest()
            seq = self.counters.next(_SEQ_NAME)
        if self._ram_n >= self.ram_capacity:  # a previous spill failed: make room
            self._drop_ram_front()
        self._ram[self._ram_n * REC_SIZE:(self._ram_n + 1) * REC_SIZE] = pack_record(
            seq, t_s, a.pm1, a.pm25, a.pm10, a.rh, a.temp, a.n, a.flags)
        self._ram_n += 1
        if self._ram_n >= self.ram_capacity or self._ram_unsent() >= self.unsent_spill:
            self._spill()
        return seq

    def pending(self, max_n, after_seq=None):
        """Return up to `max_n` of the oldest readings not yet marked sent, oldest first
        (optionally only those with seq > after_seq, to fill a second frame in flight)."""
        lo = self._w if after_seq is None else max(self._w, after_seq + 1)
        return self._scan(lo, _INF, max_n, True)

    def mark_sent(self, seq_first, seq_last):
        """Record that readings seq_first..seq_last reached the first hop."""
        newest = self.newest_seq()
        if newest is None:
            return
        # Never beyond what exists: a bogus report must not pre-mark future readings as sent.
        if seq_last > newest:
            seq_last = newest
        if seq_last < seq_first or seq_last < self._w:
            return
        a = max(seq_first, self._w)
        rs = self._ranges
        i = 0
        while i < len(rs) and rs[i][1] + 1 < a:
            i += 1
        # merge [a, seq_last] with every range it overlaps or touches
        while i < len(rs) and rs[i][0] <= seq_last + 1:
            a = min(a, rs[i][0])
            seq_last = max(seq_last, rs[i][1])
            rs.pop(i)
        rs.insert(i, [a, seq_last])
        while len(rs) > MAX_SENT_RANGES:
            rs.pop()  # forget the newest success: those readings are just sent again
        self._advance()
        if self._w - self._w_saved >= SENT_SAVE_EVERY:
            self._try_save_sent()

    def get_range(self, a, b, max_n):
        """Return the readings with a <= seq <= b still held (sent or not), oldest first, at
        most `max_n`. Seqs not returned were aged out, lost or not numbered yet: `gaps(a, b)`
        says which."""
        return self._scan(a, b, max_n, False)

    def gaps(self, a, b, max_ranges=8):
        """Return the seq ranges in a..b that are NOT held, as [(lo, hi, reason)], reason AGED
        (deleted to bound the ring), LOST (power cut / reboot skip) or AHEAD (not numbered
        yet); at most `max_ranges` ranges, lowest first."""
        out = []
        nxt = self.counters.peek(_SEQ_NAME)
        oldest = self.oldest_seq()
        if oldest is None:
            oldest = 0  # nothing held: what was numbered was lost, not aged out
        cur = a
        if cur < oldest and cur <= b:
            out.append((cur, min(b, oldest - 1), AGED))
            cur = oldest
        top = min(b, nxt - 1)
        while cur <= top and len(out) < max_ranges:
            recs = self._scan(cur, top, _CHUNK, False)
            for r in recs:
                if r[0] > cur and len(out) < max_ranges:
                    out.append((cur, r[0] - 1, LOST))
                cur = r[0] + 1
            if len(recs) < _CHUNK:
                if cur <= top and len(out) < max_ranges:
                    out.append((cur, top, LOST))
                cur = top + 1
        if cur <= b and b >= nxt and len(out) < max_ranges:
            out.append((max(cur, nxt), b, AHEAD))
        return out

    def backlog(self):
        """Return the number of readings held and not yet marked sent."""
        n = self._count(self._w, _INF)
        for r in self._ranges:
            n -= self._count(r[0], r[1])
        return n

    def __len__(self):
        n = self._ram_n
        for c in self._scount:
            n += c
        return n

    def oldest_seq(self):
        """Return the seq of the oldest reading held, or None when empty."""
        if self._sno:
            return self._sfirst[0]
        if self._ram_n:
            return self._ram_seq(0)
        return None

    def newest_seq(self):
        """Return the seq of the newest reading held, or None when empty."""
        if self._ram_n:
            return self._ram_seq(self._ram_n - 1)
        if self._sno:
            return self._slast[-1]
        return None

    def flush(self):
        """Write the RAM block, the sent watermark and the counters to flash: call before a
        planned reset so it loses and skips nothing. Raises OSError if the flash fails."""
        if self._ram_n:
            self._spill()
            if self._ram_n:
                raise OSError(28, "ring: cannot write the RAM block to flash")
        if self._w != self._w_saved:
            self._save_sent()
        sync = getattr(self.counters, "sync", None)
        if sync is not None:
            sync()

    def stats(self):
        """Return a dict of occupancy and counters (for status and logs)."""
        return {"held": len(self), "ram": self._ram_n, "segments": len(self._sno),
                "backlog": self.backlog(), "oldest": self.oldest_seq(), "newest": self.newest_seq(),
                "sent_below": self._w, "dropped": self.dropped, "aged": self.aged,
                "corrupt": self.corrupt, "spills": self.spills, "write_errors": self.write_errors,
                "capacity": self.flash_capacity + self.ram_capacity}

    # ---------------------------------------------------------------- RAM block
    def _ram_seq(self, j):
        return struct.unpack_from(">I", self._ram, j * REC_SIZE)[0]

    def _ram_unsent(self):
        n = 0
        j = self._ram_n - 1
        while j >= 0:
            s = self._ram_seq(j)
            if s < self._w:
                break
            if not self._in_ranges(s):
                n += 1
            j -= 1
        return n

    def _drop_ram_front(self):
        s = self._ram_seq(0)
        if s >= self._w and not self._in_ranges(s):
            self.dropped += 1
        self.aged += 1
        self._ram[0:(self._ram_n - 1) * REC_SIZE] = self._ram[REC_SIZE:self._ram_n * REC_SIZE]
        self._ram_n -= 1

    def _in_ranges(self, s):
        for r in self._ranges:
            if r[0] <= s <= r[1]:
                return True
        return False

    # ---------------------------------------------------------------- flash segments
    def _seg_path(self, sno):
        return "%s/%08d.seg" % (self._dir, sno)

    def _spill(self):
        """Append the RAM block to the newest segment (and new ones as needed)."""
        done = 0
        try:
            while done < self._ram_n:
                if not self._sno or self._scount[-1] >= SEG_RECORDS or self._sealed:
                    if len(self._sno) >= self.max_segments:
                        self._drop_oldest()
                    self._sealed = False
                    self._sno.append(self._next_sno)
                    self._next_sno += 1
                    self._sfirst.append(self._ram_seq(done))
                    self._slast.append(self._ram_seq(done))
                    self._scount.append(0)
                k = min(self._ram_n - done, SEG_RECORDS - self._scount[-1])
                f = self._fs.open(self._seg_path(self._sno[-1]), "ab")
                try:
                    f.write(memoryview(self._ram)[done * REC_SIZE:(done + k) * REC_SIZE])
                finally:
                    f.close()
                self._scount[-1] += k
                self._slast[-1] = self._ram_seq(done + k - 1)
                done += k
                self.spills += 1
        except OSError:
            self.write_errors += 1
            try:
                self._after_failed_write()
            except OSError:
                self.write_errors += 1
            # Records of the failed chunk that did reach the file are on flash now.
            top = self._slast[-1] if self._sno else -1
            while done < self._ram_n and self._ram_seq(done) <= top:
                done += 1
        if done:
            n = self._ram_n - done
            self._ram[0:n * REC_SIZE] = self._ram[done * REC_SIZE:self._ram_n * REC_SIZE]
            self._ram_n = n
        if self._w != self._w_saved:
            self._try_save_sent()

    def _after_failed_write(self):
        """A segment append failed (flash full?): the file may end in part of a record. Take
        the newest segment's index from its true content, never append to it again (a cut
        record would misalign what follows; the next start truncates it), and free the oldest
        segment for the next try."""
        self._sealed = True
        if not self._sno:
            return
        i = len(self._sno) - 1
        if fsutil.size(self._fs, self._seg_path(self._sno[i])) <= 0:
            self._forget_seg(i)
        else:
            self._verify_seg(i, False)
        if len(self._sno) > 1:
            self._drop_oldest()

    def _drop_oldest(self):
        """Delete the oldest segment to bound the ring; count what it held."""
        first, last, count = self._sfirst[0], self._slast[0], self._scount[0]
        unsent = self._count_seg(0, max(first, self._w), last)
        for r in self._ranges:
            unsent -= self._count_seg(0, max(r[0], first), min(r[1], last))
        self.dropped += unsent
        self.aged += count
        try:
            self._fs.remove(self._seg_path(self._sno[0]))
        except OSError:
            pass
        self._forget_seg(0)
        self._advance()

    def _forget_seg(self, i):
        self._sno.pop(i)
        self._sfirst.pop(i)
        self._slast.pop(i)
        self._scount.pop(i)

    def _pos(self, i, seq, f=None):
        """Index of the first record with seq >= `seq` in segment i (0..count)."""
        first, last, count = self._sfirst[i], self._slast[i], self._scount[i]
        if seq <= first:
            return 0
        if seq > last:
            return count
        if last - first + 1 == count:
            return seq - first
        own = f is None
        if own:
            f = self._fs.open(self._seg_path(self._sno[i]), "rb")
        try:
            lo, hi = 1, count - 1  # record 0 < seq <= record count-1
            buf = bytearray(REC_SIZE)
            while lo < hi:
                mid = (lo + hi) // 2
                f.seek(mid * REC_SIZE)
                f.readinto(buf)
                if struct.unpack_from(">I", buf, 0)[0] < seq:
                    lo = mid + 1
                else:
                    hi = mid
            return lo
        finally:
            if own:
                f.close()

    def _count_seg(self, i, lo, hi):
        if hi < lo or hi < self._sfirst[i] or lo > self._slast[i]:
            return 0
        return self._pos(i, hi + 1) - self._pos(i, lo)

    def _count(self, lo, hi):
        """Number of held readings with lo <= seq <= hi."""
        n = 0
        for i in range(len(self._sno)):
            if self._sfirst[i] >= lo and self._slast[i] <= hi:
                n += self._scount[i]
            else:
                n += self._count_seg(i, lo, hi)
        for j in range(self._ram_n):
            if lo <= self._ram_seq(j) <= hi:
                n += 1
        return n

    def _first_held(self, lo):
        """Seq of the first held reading with seq >= lo, or None."""
        for i in range(len(self._sno)):
            if self._slast[i] >= lo:
                if lo <= self._sfirst[i]:
                    return self._sfirst[i]
                r = self._scan(lo, _INF, 1, False)
                return r[0][0] if r else None
        for j in range(self._ram_n):
            s = self._ram_seq(j)
            if s >= lo:
                return s
        return None

    def _advance(self):
        """Move the watermark over sent ranges that start at or before the first held unsent
        reading, and drop ranges below it."""
        rs = self._ranges
        while rs:
            h = self._first_held(self._w)
            if h is not None and rs[0][0] > h:
                break
            self._w = max(self._w, rs[0][1] + 1)
            rs.pop(0)

    def _scan(self, lo, hi, max_n, unsent):
        """Held readings with lo <= seq <= hi, oldest first, at most max_n; skip sent ones
        when `unsent`."""
        out = []
        if max_n <= 0 or hi < lo:
            return out
        buf = self._buf
        for i in range(len(self._sno)):
            if self._slast[i] < lo:
                continue
            if self._sfirst[i] > hi:
                return out
            f = self._fs.open(self._seg_path(self._sno[i]), "rb")
            try:
                j = self._pos(i, lo, f)
                count = self._scount[i]
                while j < count:
                    k = min(_CHUNK, count - j)
                    f.seek(j * REC_SIZE)
                    got = f.readinto(buf)
                    if got is None or got < k * REC_SIZE:
                        k = (got or 0) // REC_SIZE
                        count = j + k  # file shorter than the index says: flash changed
                        if k == 0:
                            break
                    for m in range(k):
                        r = unpack_record(buf, m * REC_SIZE)
                        if r is None:
                            self.corrupt += 1
                            continue
                        s = r[0]
                        if s > hi:
                            return out
                        if s < lo or (unsent and (s < self._w or self._in_ranges(s))):
                            continue
                        out.append(r)
                        if len(out) >= max_n:
                            return out
                    j += k
            finally:
                f.close()
        for j in range(self._ram_n):
            r = unpack_record(self._ram, j * REC_SIZE)
            if r is None:
                continue
            s = r[0]
            if s > hi:
                break
            if s < lo or (unsent and (s < self._w or self._in_ranges(s))):
                continue
            out.append(r)
            if len(out) >= max_n:
                break
        return out

    # ---------------------------------------------------------------- persistence
    def _save_sent(self):
        fsutil.write_file(self._fs, self._dir + "/" + _SENT, cbor.dumps([1, self._w]))
        self._w_saved = self._w

    def _try_save_sent(self):
        # Losing this write only means re-sending a few readings after a reset.
        try:
            self._save_sent()
        except OSError:
            self.write_errors += 1

    def _recover(self):
        """Rebuild the index from flash (boot): firmware/ring_check.py, loaded for it."""
        self._check("recover")

    def _verify_seg(self, i, fix):
        """Scan segment i and keep its valid prefix (firmware/ring_check.py verify_seg)."""
        self._check("verify_seg", i, fix)

    def _check(self, name, *args):
        # The ring's cold half (boot recovery, damaged-segment repair: ~2 KB of bytecode on a
        # 32-bit node) is imported for the call and dropped after it.
        from firmware import ring_check
        from firmware.compat import unload

        try:
            getattr(ring_check, name)(self, *args)
        finally:
            ring_check = None
            unload("firmware.ring_check")


# ---- telemetry packer ---------------------------------------------------------------------------

def to_reading(rec, now_s):
    """Return the protocol.Reading of a ring tuple, dt_s relative to `now_s` (clamped to 0 when
    the reading's time is unknown (0) or ahead of now_s)."""
    seq, t_s, pm1, pm25, pm10, rh, temp, n, flags = rec
    dt = now_s - t_s if t_s and now_s > t_s else 0
    if dt > 0xFFFFFFFF:
        dt = 0xFFFFFFFF
    return Reading(dt, pm1, pm25, pm10, rh, temp, n, flags)


def build_telemetry(node_id, readings, now_s, mesh_key, node_key, max_bytes=MAX_FRAME):
    """Return (bytes, n): a Telemetry frame (origin node_id, time_s now_s) carrying the first n
    of `readings` (ring tuples): the longest prefix with consecutive seqs, at most MAX_READINGS,
    that fits one frame of `max_bytes` after any number of hops. Encoded once, as its origin
    does (protocol.encode at_origin: end-to-end tagged with `node_key`; the router writes hops,
    cost and the hop tag). None when `readings` is empty. Raises ValueError if not even one
    reading fits. mesh_key/node_key: bytes or protocol.auth.Hmac (the node's own instances)."""
    if not readings:
        return None
    seq0 = readings[0][0]
    rs = []
    for i in range(min(len(readings), MAX_READINGS)):
        if readings[i][0] != seq0 + i:
            break
        rs.append(to_reading(readings[i], now_s))
    frame = Telemetry(origin=node_id, seq=seq0, time_s=now_s, readings=rs)
    # readings differ in size: drop from the end until it fits
    while True:
        try:
            b = encode(frame, mesh_key, node_key, at_origin=True)
        except ValueError:
            if len(rs) == 1:
                raise  # not a size: a bad key or field is the caller's, said as it is
            b = None  # over the radio's 250 bytes
        if b is not None and len(b) <= max_bytes:
            return b, len(rs)
        if len(rs) == 1:
            raise ValueError("telemetry: one reading does not fit in %d bytes" % max_bytes)
        rs.pop()
