"""The ring's cold half (firmware/ring.py ReadingRing): rebuilding its segment index from flash
at boot, and cutting a damaged segment back to its valid records. A node runs this once per
boot (and after a failed flash write), so it is not kept in the heap: ReadingRing._check
imports this module for the call and unloads it after. The functions work on the ring's own
fields; firmware/ring.py's docstring holds the rules they keep."""
from firmware import fsutil
from firmware.ring import _SENT, _SEQ_NAME, REC_SIZE, SEG_RECORDS, unpack_record
from protocol import cbor
from protocol.errors import ProtocolError


def recover(ring):
    names = ring._fs.listdir(ring._dir)
    snos = []
    for name in names:
        if name.endswith(".seg") and len(name) == 12 and name[:8].isdigit():
            snos.append(int(name[:8]))
        elif name.endswith(".tmp"):
            try:
                ring._fs.remove(ring._dir + "/" + name)  # an interrupted atomic write
            except OSError:
                pass
    snos.sort()
    if snos:
        ring._next_sno = snos[-1] + 1
    for k in range(len(snos)):
        sno = snos[k]
        i = len(ring._sno)
        ring._sno.append(sno)
        ring._sfirst.append(0)
        ring._slast.append(0)
        ring._scount.append(0)
        # Only the newest segment is ever appended to; older ones get a cheap check.
        if not quick_check(ring, i, k == len(snos) - 1):
            verify_seg(ring, i, True)
        if i < len(ring._sno) and i > 0 and ring._sfirst[i] <= ring._slast[i - 1]:
            ring.corrupt += 1  # seqs must grow across segments: this file is not ours
            ring._fs.remove(ring._seg_path(sno))
            ring._forget_seg(i)
    while len(ring._sno) > ring.max_segments:  # capacity lowered since last boot
        ring._drop_oldest()
    data = fsutil.read_file(ring._fs, ring._dir + "/" + _SENT)
    try:
        v = cbor.loads(data) if data is not None else None
    except ProtocolError:
        v = None
        ring.corrupt += 1
    if isinstance(v, list) and len(v) == 2 and v[0] == 1 and isinstance(v[1], int):
        ring._w = ring._w_saved = v[1]
    newest = ring.newest_seq()
    if newest is not None:
        # Never hand out a seq already on flash, even if the counter file was lost.
        ring.counters.set_min(_SEQ_NAME, newest + 1)

def quick_check(ring, i, newest):
    """Fill the index of segment i from its first and last record; return False when a
    full verification is needed (the newest segment always gets one)."""
    if newest:
        return False
    size = fsutil.size(ring._fs, ring._seg_path(ring._sno[i]))
    if size <= 0 or size % REC_SIZE or size > SEG_RECORDS * REC_SIZE:
        return False
    n = size // REC_SIZE
    f = ring._fs.open(ring._seg_path(ring._sno[i]), "rb")
    try:
        b0 = f.read(REC_SIZE)
        f.seek((n - 1) * REC_SIZE)
        b1 = f.read(REC_SIZE)
    finally:
        f.close()
    if len(b0) < REC_SIZE or len(b1) < REC_SIZE:
        return False
    r0 = unpack_record(b0)
    r1 = unpack_record(b1)
    if r0 is None or r1 is None or r1[0] - r0[0] + 1 < n:
        return False
    ring._sfirst[i], ring._slast[i], ring._scount[i] = r0[0], r1[0], n
    return True

def verify_seg(ring, i, fix):
    """Scan segment i; keep the longest valid prefix (magic, CRC, growing seqs). With `fix`,
    rewrite a damaged file to that prefix (or delete it when nothing is valid)."""
    path = ring._seg_path(ring._sno[i])
    size = fsutil.size(ring._fs, path)
    n = 0
    first = last = -1
    buf = ring._buf
    f = ring._fs.open(path, "rb")
    try:
        ok = True
        while ok and n < SEG_RECORDS:
            got = f.readinto(buf) or 0
            k = got // REC_SIZE
            if k == 0:
                break
            for m in range(k):
                r = unpack_record(buf, m * REC_SIZE)
                if r is None or r[0] <= last or n >= SEG_RECORDS:
                    ok = False
                    break
                if first < 0:
                    first = r[0]
                last = r[0]
                n += 1
            if got < len(buf):
                break
    finally:
        f.close()
    if n * REC_SIZE != size:
        ring.corrupt += 1
        if n == 0:
            try:
                ring._fs.remove(path)
            except OSError:
                pass
        elif fix:
            g = ring._fs.open(path, "rb")
            try:
                keep = g.read(n * REC_SIZE)
            finally:
                g.close()
            try:
                fsutil.write_file(ring._fs, path, keep)
            except OSError:
                ring.write_errors += 1
                ring._sealed = True  # the cut tail stays: never append after it
    if n == 0:
        ring._forget_seg(i)
        return
    ring._sfirst[i], ring._slast[i], ring._scount[i] = first, last, n
