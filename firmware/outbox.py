"""Bounded FIFO of messages waiting for the MQTT broker: RAM first, spilled to flash beyond that.

Rules
-----
* Order is strict FIFO. Each message gets a sequence number (`head_seq` is the oldest one's);
  numbers are contiguous and only live in RAM (they restart at 0 after a reset).
* Newest messages sit in a RAM list (the *tail*). When it holds `ram_max_msgs` messages or
  `ram_max_bytes` bytes, or on `flush()`, the whole tail is written to flash in ONE append:
  segment files `<n>.seg` (append-only, about `segment_bytes` each) in directory `dir_path`.
* The oldest segment is read back into RAM (the *head*) when its messages are wanted. A segment
  whose messages are all popped is deleted. When the queue is empty the directory is empty:
  that is the compaction.
* A small index file `head` records how many messages of the oldest segment were already
  delivered; it is rewritten (temp file + rename, atomic on littlefs and POSIX) every
  `checkpoint_every` pops and on `flush()`, not on every pop, to spare the flash. After a reset
  up to `checkpoint_every - 1` already-delivered messages are therefore sent again
  (at-least-once; the collector de-duplicates on (node, seq)).
* Capacity: `ram_max_msgs` messages (at most `ram_max_bytes`) in RAM plus `flash_max_bytes` of
  segments (6 bytes of header + topic + payload per message). When flash is full the OLDEST
  segment is deleted and its messages are counted in `dropped` - the newest data wins. Without
  `dir_path` the outbox is RAM-only and drops the oldest single message when full.
* Survives a reset: everything already on flash is reloaded by the constructor. Messages still
  in the RAM tail are lost on a power cut; callers bound that window by calling `flush()`
  (the MQTT client does so periodically while the broker is unreachable).

Record: 0xA5, flags (bits 0-1 QoS, bit 2 retain), topic length u16, payload length u16, topic,
payload. A record cut short or without its magic byte ends the segment (counted in `corrupt`).
Files are opened with plain `open()`, which works on the ESP32 littlefs and on the unix port.
"""
import gc
import os

from firmware.compat import const

_MAGIC = const(0xA5)
_HDR = const(6)
_INDEX = "head"


def _isdir(path):
    try:
        return os.stat(path)[0] & 0x4000 != 0
    except OSError:
        return False


def _record(topic_b, payload, qos, retain):
    return bytes((_MAGIC, qos | (4 if retain else 0), len(topic_b) >> 8, len(topic_b) & 0xFF,
                  len(payload) >> 8, len(payload) & 0xFF)) + topic_b + payload


class OutboxError(Exception):
    """A message the outbox cannot hold (too big, bad QoS)."""

    def __init__(self, msg):
        super().__init__(msg)


class Outbox:
    """FIFO of (topic, payload, qos, retain) tuples; see the module docstring for the rules."""

    def __init__(self, dir_path=None, ram_max_msgs=32, ram_max_bytes=8192, flash_max_bytes=65536,
                 segment_bytes=4096, checkpoint_every=16):
        self.dir_path = dir_path
        self.ram_max_msgs = ram_max_msgs
        self.ram_max_bytes = ram_max_bytes
        self.flash_max_bytes = flash_max_bytes
        self.segment_bytes = segment_bytes
        self.checkpoint_every = checkpoint_every
        self.head_seq = 0
        self.dropped = 0  # messages discarded because the outbox was full (oldest first)
        self.corrupt = 0  # segments found damaged on reload
        self.spills = 0  # flash appends (one per spill, however many messages)
        self._tail = []  # [(topic, payload, qos, retain)], newest last, RAM only
        self._tail_bytes = 0
        self._segs = []  # [[segno, nbytes, nrecs]] oldest first; _segs[0] may be loaded as head
        self._flash_bytes = 0
        # The loaded oldest segment: its bytes and the offset of each record. Messages are
        # decoded on demand, so a loaded segment costs about its file size, not ~30 objects/KB.
        # The buffer is allocated once, up front: allocated later, among long-lived small
        # objects, a 4 KB block may no longer be found in a fragmented heap.
        self._head = None  # [record offsets] of _segs[0] when loaded, else None
        self._head_buf = bytearray(segment_bytes) if dir_path is not None else b""
        self._head_i = 0  # records of _head already popped
        self._head_skip = 0  # records of _segs[0] delivered before it was loaded (from the index)
        self._since_ckpt = 0
        self._next_segno = 1
        self._sealed = False
        self._hdr = bytearray(_HDR)
        if dir_path is not None:
            if not _isdir(dir_path):
                os.mkdir(dir_path)
            self._reload()

    # ---------------------------------------------------------------- public
    def __len__(self):
        n = len(self._tail)
        for s in self._segs:
            n += s[2]
        if self._head is not None:
            n -= self._head_i + self._head_skip  # _segs[0][2] counts the whole segment
        else:
            n -= self._head_skip
        return n

    def put(self, topic, payload, qos=1, retain=False):
        """Append a message (topic str, payload bytes). Drops the oldest when full (see `dropped`).
        Raises OutboxError if the message alone cannot fit."""
        if isinstance(payload, str):
            payload = payload.encode()
        tlen = len(topic.encode())
        size = _HDR + tlen + len(payload)
        if qos not in (0, 1) or len(payload) > 65535 or tlen > 65535:
            raise OutboxError("message not storable: QoS %r, topic %d B, payload %d B"
                              % (qos, len(topic), len(payload)))
        limit = self.flash_max_bytes if self.dir_path is not None else self.ram_max_bytes
        if size > limit:
            raise OutboxError("message of %d bytes exceeds the outbox capacity of %d" % (size, limit))
        self._tail.append((topic, bytes(payload), qos, retain))
        self._tail_bytes += _HDR + len(topic) + len(payload)  # same measure as on removal
        if self.dir_path is None:
            while len(self._tail) > self.ram_max_msgs or self._tail_bytes > self.ram_max_bytes:
                self._drop_tail_front()
        elif len(self._tail) >= self.ram_max_msgs or self._tail_bytes >= self.ram_max_bytes:
            self._spill()

    def get(self, seq):
        """Return message number `seq` as (topic, payload, qos, retain), or None when it is not
        held (already popped, not yet put) or not loaded yet (it waits on flash behind the head
        segment; it becomes available once the messages before it are popped)."""
        i = seq - self.head_seq
        if i < 0:
            return None
        if self._head is None and self._segs:
            self._load_head()
        if self._head is not None:
            n = len(self._head) - self._head_i
            if i < n:
                return self._decode(self._head[self._head_i + i])
            if len(self._segs) > 1:
                return None
            i -= n
        elif self._segs:
            return None
        if i < len(self._tail):
            return self._tail[i]
        return None

    def pop(self, n=1):
        """Remove the `n` oldest messages (delivered)."""
        while n > 0 and len(self):
            n -= 1
            self.head_seq += 1
            if self._segs:
                if self._head is None:
                    self._load_head()
                if self._head is not None:
                    self._head_i += 1
                    self._since_ckpt += 1
                    if self._head_i >= len(self._head):
                        self._delete_head_segment()
                    elif self._since_ckpt >= self.checkpoint_every:
                        self._checkpoint()
                    continue
            t = self._tail.pop(0)
            self._tail_bytes -= _HDR + len(t[0]) + len(t[1])

    def flush(self):
        """Write the RAM tail to flash and record delivery progress: call before a planned reset
        and periodically while the broker is unreachable. No-op without `dir_path`."""
        if self.dir_path is None:
            return
        if self._tail:
            self._spill()
        if self._since_ckpt:
            self._checkpoint()

    def stats(self):
        """Return a dict of counters and occupancy."""
        return {"queued": len(self), "ram_msgs": len(self._tail), "flash_bytes": self._flash_bytes,
                "segments": len(self._segs), "dropped": self.dropped, "corrupt": self.corrupt,
                "spills": self.spills}

    # ---------------------------------------------------------------- internals
    def _path(self, name):
        return self.dir_path + "/" + name

    def _seg_name(self, segno):
        return "%08d.seg" % segno

    def _drop_tail_front(self):
        t = self._tail.pop(0)
        self._tail_bytes -= _HDR + len(t[0]) + len(t[1])
        self.head_seq += 1
        self.dropped += 1

    def _spill(self):
        recs = []
        for topic, payload, qos, retain in self._tail:
            tb = topic.encode() if isinstance(topic, str) else topic
            recs.append(_record(tb, payload, qos, retain))
        self._tail = []
        self._tail_bytes = 0
        total = 0
        for r in recs:
            total += len(r)
        # Make room: drop whole oldest segments (one unlink each), then, if the batch alone is
        # too big, its own oldest records.
        while self._segs and self._flash_bytes + total > self.flash_max_bytes:
            self._drop_oldest_segment()
        while total > self.flash_max_bytes:
            total -= len(recs.pop(0))
            self.head_seq += 1
            self.dropped += 1
        # Append to the newest segment if it is not loaded and has room, else start new ones;
        # one open/write/close per segment touched.
        i = 0
        while i < len(recs):
            last = self._segs[-1] if self._segs else None
            # A segment never outgrows segment_bytes (the head buffer's size) unless it holds a
            # single bigger record; never append to a loaded head or a reloaded segment.
            if (last is None or last[1] + len(recs[i]) > self.segment_bytes or self._sealed
                    or (self._head is not None and last is self._segs[0])):
                self._sealed = False
                last = [self._next_segno, 0, 0]
                self._next_segno += 1
                self._segs.append(last)
            chunk = bytearray()
            j = i
            while j < len(recs) and ((j == i and not last[1])
                                     or last[1] + len(chunk) + len(recs[j]) <= self.segment_bytes):
                chunk += recs[j]
                j += 1
            with open(self._path(self._seg_name(last[0])), "ab") as f:
                f.write(chunk)
            last[1] += len(chunk)
            last[2] += j - i
            self._flash_bytes += len(chunk)
            self.spills += 1
            i = j

    def _drop_oldest_segment(self):
        seg = self._segs[0]
        if self._head is not None:
            lost = len(self._head) - self._head_i
        else:
            lost = seg[2] - self._head_skip
        self.dropped += lost
        self.head_seq += lost
        self._delete_head_segment()

    def _delete_head_segment(self):
        seg = self._segs.pop(0)
        self._flash_bytes -= seg[1]
        self._head = None
        self._head_i = 0
        self._since_ckpt = 0
        try:
            os.remove(self._path(self._seg_name(seg[0])))
        except OSError:
            pass
        if self._head_skip or self._has_index():
            # The index refers to the segment just deleted; a stale one could match a later
            # segment with the same number once numbering restarts.
            try:
                os.remove(self._path(_INDEX))
            except OSError:
                pass
        self._head_skip = 0

    def _has_index(self):
        try:
            os.stat(self._path(_INDEX))
            return True
        except OSError:
            return False

    def _checkpoint(self):
        if not self._segs:
            return
        done = self._head_skip + self._head_i
        tmp = self._path(_INDEX + ".tmp")
        with open(tmp, "w") as f:
            f.write("%d %d\n" % (self._segs[0][0], done))
        os.rename(tmp, self._path(_INDEX))
        self._since_ckpt = 0

    def _read_records(self, segno):
        """Scan one segment's headers without reading bodies; return (nrecs, nbytes_scanned,
        damaged)."""
        n = 0
        off = 0
        damaged = False
        hdr = self._hdr  # read into one buffer: no garbage per record while scanning at boot
        with open(self._path(self._seg_name(segno)), "rb") as f:
            while True:
                got = f.readinto(hdr)
                if not got:
                    break
                if got < _HDR or hdr[0] != _MAGIC or hdr[1] & 0xF8:
                    damaged = True
                    break
                ln = ((hdr[2] << 8) | hdr[3]) + ((hdr[4] << 8) | hdr[5])
                f.seek(ln, 1)  # past EOF is allowed; _reload compares with the size
                off += _HDR + ln
                n += 1
        return n, off, damaged

    def _decode(self, off):
        b = self._head_buf
        tl = (b[off + 2] << 8) | b[off + 3]
        pl = (b[off + 4] << 8) | b[off + 5]
        p = off + _HDR
        mv = memoryview(b)
        return (str(mv[p:p + tl], "utf-8"), bytes(mv[p + tl:p + tl + pl]), b[off + 1] & 3,
                bool(b[off + 1] & 4))

    def _reload(self):
        segnos = []
        for name in os.listdir(self.dir_path):
            if name.endswith(".seg") and name[:-4].isdigit():
                segnos.append(int(name[:-4]))
            elif name == _INDEX + ".tmp":
                os.remove(self._path(name))  # an interrupted checkpoint; the old index stands
        segnos.sort()
        for segno in segnos:
            size = os.stat(self._path(self._seg_name(segno)))[6]
            n, scanned, damaged = self._read_records(segno)
            if scanned > size:  # last record claims more bytes than the file has: cut short
                n -= 1
                damaged = True
            if damaged:
                self.corrupt += 1
            if n <= 0:
                os.remove(self._path(self._seg_name(segno)))
                continue
            self._segs.append([segno, size, n])
            self._flash_bytes += size
            self._next_segno = segno + 1
        # Never append to a reloaded segment: a damaged tail would hide what follows it.
        self._sealed = True
        try:
            with open(self._path(_INDEX)) as f:
                parts = f.read().split()
            if self._segs and len(parts) == 2 and int(parts[0]) == self._segs[0][0]:
                self._head_skip = min(int(parts[1]), self._segs[0][2])
        except (OSError, ValueError):
            pass
        if self._segs and self._head_skip >= self._segs[0][2]:
            self._head_skip = self._segs[0][2]
            self._delete_head_segment()

    def _load_head(self):
        seg = self._segs[0]
        data = self._head_buf
        if len(data) < seg[1]:  # a segment holding one record bigger than segment_bytes
            self._head_buf = data = b""  # let the old buffer go before the bigger one
            gc.collect()
            self._head_buf = data = bytearray(seg[1])
        with open(self._path(self._seg_name(seg[0])), "rb") as f:
            size = f.readinto(data) or 0
        offs = []
        off = 0
        while off + _HDR <= size and data[off] == _MAGIC and not data[off + 1] & 0xF8:
            end = off + _HDR + ((data[off + 2] << 8) | data[off + 3]) + ((data[off + 4] << 8) | data[off + 5])
            if end > size:
                break
            offs.append(off)
            off = end
        if len(offs) < seg[2]:  # damage found only now (flash changed under us)
            self.corrupt += 1
        seg[2] = len(offs)
        self._head = offs[self._head_skip:]
        self._head_i = 0
        if not self._head:
            self._delete_head_segment()
            if self._segs:
                self._load_head()
