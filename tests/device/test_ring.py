# ReadingRing: RAM block, spill to segment files, reload after a reset, recovery from cut or
# garbage segment tails, capacity bound, pending/mark_sent/get_range/gaps, the telemetry packer.
# Runs under CPython (pytest) and MicroPython (tests/mp_run.py).
from flashfakes import CutFS, PowerCut, rmtree, tmpdir

import protocol
from firmware.fsutil import PosixFS
from firmware.ring import AGED, AHEAD, LOST, REC_SIZE, SEG_RECORDS, ReadingRing, build_telemetry


class Agg:
    """What the sampler hands over (firmware.sampler.Aggregate's fields the ring uses)."""

    def __init__(self, i, pm25=None):
        self.pm1 = i % 500
        self.pm25 = (i * 7) % 3000 if pm25 is None else pm25
        self.pm10 = (i * 11) % 4000
        self.rh = i % 101
        self.temp = (i % 1251) - 400
        self.n = 60
        self.flags = i % 16


T0 = 1760000000
K = b"k" * 32  # mesh key (hop tag)
NK = b"n" * 32  # node key (end-to-end tag)


def _fill(ring, start, n, dt=60):
    """Append readings start..start+n-1; check their seqs are consecutive; return (first, last)."""
    first = prev = None
    for i in range(start, start + n):
        s = ring.append(T0 + i * dt, Agg(i))
        if prev is None:
            first = s
        else:
            assert s == prev + 1, (prev, s)
        prev = s
    return first, prev


def _expect(rec, i, dt=60):
    a = Agg(i)
    assert rec[1:] == (T0 + i * dt, a.pm1, a.pm25, a.pm10, a.rh, a.temp, a.n, a.flags), (rec, i)


def _all_seqs(ring, lo=0, hi=1 << 30):
    """Seqs held in lo..hi, fetched in slices (a device heap cannot hold 400 tuples at once)."""
    out = []
    while True:
        got = ring.get_range(lo, hi, 16)
        for x in got:
            out.append(x[0])
        if len(got) < 16:
            return out
        lo = got[-1][0] + 1


def _seqs_are(ring, first, end):
    """True when the ring holds exactly the seqs first..end-1, checked slice by slice: a
    1,000-element list (or two, to compare) needs 8 KB contiguous, which a fragmented 128 KB
    device heap may not have."""
    lo = first
    want = first
    while True:
        got = ring.get_range(lo, 1 << 30, 16)
        for x in got:
            if x[0] != want:
                return False
            want += 1
        if len(got) < 16:
            return want == end
        lo = got[-1][0] + 1


def _seg_files(d):
    import os

    return sorted(n for n in os.listdir(d + "/ring") if n.endswith(".seg"))


def test_ram_only_pending_and_mark_sent():
    d = tmpdir("ring")
    try:
        r = ReadingRing(PosixFS(d), "ring", ram_capacity=16, unsent_spill=16)
        assert _fill(r, 0, 5) == (0, 4)
        assert _seg_files(d) == []  # nothing written yet: RAM block not full
        p = r.pending(3)
        assert [x[0] for x in p] == [0, 1, 2]
        _expect(p[1], 1)
        assert r.backlog() == 5
        r.mark_sent(0, 2)
        assert [x[0] for x in r.pending(12)] == [3, 4]
        assert r.backlog() == 2
        # sent readings stay for resend requests
        assert [x[0] for x in r.get_range(0, 4, 12)] == [0, 1, 2, 3, 4]
        r.mark_sent(3, 4)
        assert r.pending(12) == [] and r.backlog() == 0
        assert len(r) == 5
    finally:
        rmtree(d)


def test_spill_and_reload_after_reset():
    d = tmpdir("ring")
    try:
        fs = PosixFS(d)
        r = ReadingRing(fs, "ring", ram_capacity=16, unsent_spill=16)
        assert _fill(r, 0, 400) == (0, 399)
        assert r.spills >= 400 // 16
        r.mark_sent(0, 99)
        r.flush()  # a planned reset
        assert len(_seg_files(d)) == 3  # 400 readings / 170 per segment
        r2 = ReadingRing(fs, "ring", ram_capacity=16, unsent_spill=16)
        assert len(r2) == 400 and r2.corrupt == 0
        assert r2.oldest_seq() == 0 and r2.newest_seq() == 399
        assert r2.backlog() == 300
        assert r2.pending(1)[0][0] == 100
        for lo in range(0, 400, 50):  # in slices, as the node does: a device heap is small
            got = r2.get_range(lo, 399, 50)
            assert len(got) == 50
            for i in range(50):
                assert got[i][0] == lo + i
                _expect(got[i], lo + i)
        # a planned reset skips no seq
        assert r2.append(T0, Agg(1)) == 400
    finally:
        rmtree(d)


def test_reset_without_flush_loses_at_most_the_ram_block():
    d = tmpdir("ring")
    try:
        fs = PosixFS(d)
        r = ReadingRing(fs, "ring", ram_capacity=16, unsent_spill=16)
        _fill(r, 0, 40)  # 32 spilled, 8 in RAM
        r.mark_sent(0, 39)
        r2 = ReadingRing(fs, "ring", ram_capacity=16, unsent_spill=16)  # sudden reset
        assert len(r2) == 32 and r2.newest_seq() == 31
        new = r2.append(T0, Agg(0))
        assert new >= 40  # never reuses a seq that may have been sent
        gaps = r2.gaps(0, new + 5)
        assert gaps[0] == (32, new - 1, LOST), gaps
        assert gaps[-1] == (new + 1, new + 5, AHEAD), gaps
    finally:
        rmtree(d)


def test_unsent_readings_spill_early_without_route():
    d = tmpdir("ring")
    try:
        fs = PosixFS(d)
        r = ReadingRing(fs, "ring", ram_capacity=64, unsent_spill=4)
        _fill(r, 0, 10)  # nothing marked sent: no route
        r2 = ReadingRing(fs, "ring", ram_capacity=64, unsent_spill=4)
        assert len(r2) == 8  # at most unsent_spill - 1 unsent readings lost at a cut
        # with a route (each reading sent at once) the block is written only when full
        r3 = ReadingRing(fs, "ring", ram_capacity=64, unsent_spill=4)
        before = r3.spills
        for i in range(40):
            s = r3.append(T0 + i, Agg(i))
            r3.mark_sent(s, s)
        assert r3.spills == before
    finally:
        rmtree(d)


def test_cut_segment_tail_recovers_earlier_readings():
    d = tmpdir("ring")
    try:
        fs = PosixFS(d)
        r = ReadingRing(fs, "ring", ram_capacity=16, unsent_spill=16)
        _fill(r, 0, 200)
        r.flush()
        name = _seg_files(d)[-1]
        path = d + "/ring/" + name
        with open(path, "rb") as f:
            data = f.read()
        assert len(data) == 30 * REC_SIZE
        # a power cut in the middle of the last record of an append
        with open(path, "wb") as f:
            f.write(data[:29 * REC_SIZE + 10])
        r2 = ReadingRing(fs, "ring", ram_capacity=16, unsent_spill=16)
        assert len(r2) == 199 and r2.newest_seq() == 198 and r2.corrupt == 1
        with open(path, "rb") as f:
            assert f.read() == data[:29 * REC_SIZE]  # truncated to whole valid records
        # garbage tail (erased flash, a torn record of the right length)
        with open(path, "ab") as f:
            f.write(b"\xff" * REC_SIZE + b"\x00" * 7)
        r3 = ReadingRing(fs, "ring", ram_capacity=16, unsent_spill=16)
        assert len(r3) == 199 and r3.corrupt == 1
        assert _all_seqs(r3, 0, 300) == list(range(199))
        s = r3.append(T0, Agg(5))
        assert s > 199
        r3.flush()
        r4 = ReadingRing(fs, "ring", ram_capacity=16, unsent_spill=16)
        assert len(r4) == 200 and r4.newest_seq() == s and r4.corrupt == 0
    finally:
        rmtree(d)


def test_damaged_record_inside_an_old_segment_is_skipped():
    d = tmpdir("ring")
    try:
        fs = PosixFS(d)
        r = ReadingRing(fs, "ring", ram_capacity=16, unsent_spill=16)
        _fill(r, 0, 200)
        r.flush()
        path = d + "/ring/" + _seg_files(d)[0]
        with open(path, "rb") as f:
            data = bytearray(f.read())
        data[50 * REC_SIZE + 9] ^= 0x40  # one flipped bit in reading 50's pm25
        with open(path, "wb") as f:
            f.write(data)
        r2 = ReadingRing(fs, "ring", ram_capacity=16, unsent_spill=16)
        got = r2.get_range(45, 55, 100)
        assert [x[0] for x in got] == [45, 46, 47, 48, 49, 51, 52, 53, 54, 55]
        assert r2.corrupt == 1
    finally:
        rmtree(d)


def test_capacity_bound_and_dropped():
    d = tmpdir("ring")
    try:
        fs = PosixFS(d)
        r = ReadingRing(fs, "ring", ram_capacity=10, flash_capacity=2 * SEG_RECORDS, unsent_spill=10)
        assert r.flash_capacity == 340 and r.max_segments == 2
        _fill(r, 0, 1000)  # no route: nothing sent
        assert len(_seg_files(d)) <= 2
        assert len(r) <= r.flash_capacity + r.ram_capacity
        assert r.aged == 1000 - len(r) and r.dropped == r.aged
        assert r.newest_seq() == 999 and r.oldest_seq() == 1000 - len(r)
        assert r.backlog() == len(r)
        # the oldest readings are gone: get_range returns what is left, gaps says why
        got = r.get_range(0, r.oldest_seq() + 2, 100)
        assert [x[0] for x in got] == [r.oldest_seq(), r.oldest_seq() + 1, r.oldest_seq() + 2]
        assert r.gaps(0, r.oldest_seq() + 2) == [(0, r.oldest_seq() - 1, AGED)]
        assert r.pending(1)[0][0] == r.oldest_seq()
        # everything sent: ageing out drops no unsent reading
        r.mark_sent(0, 999)
        aged, dropped = r.aged, r.dropped
        for i in range(400):
            s = r.append(T0 + i, Agg(i))
            r.mark_sent(s, s)
        assert r.dropped == dropped
        assert r.aged > aged and r.backlog() == 0
        # a reload sees the same bound
        r.flush()
        r2 = ReadingRing(fs, "ring", ram_capacity=10, flash_capacity=2 * SEG_RECORDS)
        assert len(r2) == len(r) and r2.backlog() == 0
    finally:
        rmtree(d)


def test_mark_sent_out_of_order_and_pipelining():
    d = tmpdir("ring")
    try:
        r = ReadingRing(PosixFS(d), "ring", ram_capacity=64, unsent_spill=64)
        _fill(r, 0, 30)
        first = r.pending(12)
        second = r.pending(12, after_seq=first[-1][0])
        assert [x[0] for x in second] == list(range(12, 24))
        r.mark_sent(12, 23)  # the second frame got through first
        assert [x[0] for x in r.pending(12)] == list(range(0, 12))
        assert [x[0] for x in r.pending(30)] == list(range(0, 12)) + list(range(24, 30))
        assert r.backlog() == 18
        r.mark_sent(0, 11)
        assert [x[0] for x in r.pending(12)] == list(range(24, 30))
        assert r.backlog() == 6
        r.mark_sent(0, 5)  # a late duplicate report changes nothing
        assert r.backlog() == 6
        r.mark_sent(29, 1 << 30)  # a bogus report never marks future readings as sent
        s = r.append(T0, Agg(1))
        assert [x[0] for x in r.pending(12)] == list(range(24, 29)) + [s]
    finally:
        rmtree(d)


def test_sent_state_survives_reset_and_gaps_are_skipped():
    d = tmpdir("ring")
    try:
        fs = PosixFS(d)
        r = ReadingRing(fs, "ring", ram_capacity=8, unsent_spill=8)
        _fill(r, 0, 20)  # 16 on flash, 4 in RAM
        r.mark_sent(0, 9)
        # sudden reset: the watermark persisted with the last spill (before 0..9 were marked)
        r2 = ReadingRing(fs, "ring", ram_capacity=8, unsent_spill=8)
        assert r2.pending(1)[0][0] == 0  # re-sent: duplicates, never losses
        # readings after the reboot continue past a gap; the watermark crosses it
        s = r2.append(T0, Agg(1))
        assert s >= 20
        r2.mark_sent(0, 15)
        assert r2.pending(12)[0][0] == s
        r2.mark_sent(s, s)
        assert r2.backlog() == 0 and r2.pending(12) == []
        r2.flush()
        r3 = ReadingRing(fs, "ring", ram_capacity=8, unsent_spill=8)
        assert r3.backlog() == 0
    finally:
        rmtree(d)


def test_get_range_bounds_and_gaps():
    d = tmpdir("ring")
    try:
        fs = PosixFS(d)
        r = ReadingRing(fs, "ring", ram_capacity=16, unsent_spill=16)
        _fill(r, 0, 50)
        assert [x[0] for x in r.get_range(10, 20, 5)] == [10, 11, 12, 13, 14]
        assert [x[0] for x in r.get_range(45, 100, 50)] == [45, 46, 47, 48, 49]
        assert r.get_range(60, 70, 5) == []
        assert r.gaps(10, 20) == []
        assert r.gaps(45, 55) == [(50, 55, AHEAD)]
    finally:
        rmtree(d)


def test_every_power_cut_point_keeps_flushed_readings_and_never_reuses_a_seq():
    def scenario(fs, log):
        r = ReadingRing(fs, "ring", ram_capacity=8, flash_capacity=SEG_RECORDS, unsent_spill=4)
        for i in range(30):
            log["seqs"].append(r.append(T0 + i, Agg(i)))
            if i % 3 == 0:
                r.mark_sent(log["seqs"][-1] - 1, log["seqs"][-1])
            if i == 14:
                r.flush()
                log["durable"] = r.get_range(0, 1 << 30, 20)

    d = tmpdir("ringcut")
    try:
        fs = CutFS(d)
        log = {"seqs": [], "durable": []}
        scenario(fs, log)
        total = fs.ops
        assert total > 10
        for k in range(1, total + 1):
            for torn in (None, 5):
                sub = d + "/c%d_%s" % (k, torn)
                import os

                os.mkdir(sub)
                fs = CutFS(sub, cut_at=k, torn=torn)
                log = {"seqs": [], "durable": []}
                try:
                    scenario(fs, log)
                except PowerCut:
                    pass
                r = ReadingRing(PosixFS(sub), "ring", ram_capacity=8, flash_capacity=SEG_RECORDS,
                                unsent_spill=4)
                for x in log["durable"]:
                    got = r.get_range(x[0], x[0], 1)
                    assert got and got[0] == x, (k, torn, x)
                s = r.append(T0, Agg(0))
                if log["seqs"]:
                    assert s > max(log["seqs"]), (k, torn, s, log["seqs"][-3:])
                rmtree(sub)
    finally:
        rmtree(d)


def test_flash_full_keeps_working_and_counts_errors():
    d = tmpdir("ringfull")
    try:
        fs = CutFS(d)
        r = ReadingRing(fs, "ring", ram_capacity=8, flash_capacity=3 * SEG_RECORDS, unsent_spill=8)
        _fill(r, 0, 403)  # 3 readings in the RAM block
        fs.full = True
        fs.full_partial = 30  # one whole record and part of the next reach the file
        try:
            r.flush()
            raise AssertionError("flush must report a flash that takes nothing")
        except OSError:
            pass
        assert r.write_errors >= 1
        fs.full = False
        r.flush()
        r2 = ReadingRing(PosixFS(d), "ring", ram_capacity=8, flash_capacity=3 * SEG_RECORDS)
        seqs = _all_seqs(r2)
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert seqs[-1] == 402
        assert r2.newest_seq() == 402 and r2.corrupt == 1  # the cut record was cut off
    finally:
        rmtree(d)


def test_packer_respects_250_bytes_and_consecutive_seqs():
    d = tmpdir("ring")
    try:
        r = ReadingRing(PosixFS(d), "ring", ram_capacity=64, unsent_spill=64)
        for i in range(20):  # worst-case values: every field at its widest encoding
            a = Agg(i, pm25=65535)
            a.pm1 = a.pm10 = a.n = a.flags = 65535
            a.temp = -400
            a.rh = 100
            r.append(1000, a)
        now = 1000 + 4000000000  # dt_s needs 5 bytes
        b, n = build_telemetry(77, r.pending(20), now, K, NK)
        assert 1 <= n < protocol.MAX_READINGS
        # encoded once, at the largest hops/cost a forwarder writes: it fits after any number of hops
        assert len(b) <= protocol.MAX_FRAME
        f = protocol.decode(b, K, NK)
        assert f.seq == 0 and f.origin == 77 and f.time_s == now and len(f.readings) == n
        assert (f.hops, f.cost) == (255, protocol.COST_INFINITE)
        assert f.readings[0].pm25 == 65535 and f.readings[0].dt_s == 4000000000
        # a smaller budget holds fewer readings
        g = build_telemetry(77, r.pending(20), now, K, NK, max_bytes=120)
        assert g[1] < n and len(g[0]) <= 120
        # small readings: the frame takes the protocol's maximum
        r2 = ReadingRing(PosixFS(d), "ring2", ram_capacity=64, unsent_spill=64)
        first, _ = _fill(r2, 0, 20)
        h = protocol.decode(build_telemetry(5, r2.pending(20), T0 + 3600, K, NK)[0], K, NK)
        assert len(h.readings) == protocol.MAX_READINGS
        assert h.readings[0].dt_s == 3600 and h.readings[1].dt_s == 3540
        # only consecutive seqs go in one frame
        recs = r2.pending(20)
        holey = recs[:3] + recs[4:8]
        f3 = protocol.decode(build_telemetry(5, holey, T0 + 3600, K, NK)[0], K, NK)
        assert f3.seq == first and len(f3.readings) == 3
        assert build_telemetry(5, [], T0, K, NK) is None
        try:  # a missing node key is said as it is, not as a reading too large to fit
            build_telemetry(5, recs[:3], T0 + 3600, K, None)
        except ValueError as e:
            assert "node key" in str(e), str(e)
        else:
            raise AssertionError("a frame was built without its end-to-end tag")
        # unknown reading time (0) packs as dt 0
        r2.append(0, Agg(1))
        last = r2.pending(30)[-1]
        assert protocol.decode(build_telemetry(5, [last], T0, K, NK)[0], K, NK).readings[0].dt_s == 0
    finally:
        rmtree(d)


class _FileBdev:
    """littlefs block device over a host file (heap stays small: nothing cached in RAM)."""

    def __init__(self, path, nblocks):
        self.f = open(path, "w+b")
        erased = b"\xff" * 4096
        for _ in range(nblocks):
            self.f.write(erased)
        self.n = nblocks

    def readblocks(self, b, buf, off=0):
        self.f.seek(b * 4096 + off)
        self.f.readinto(buf)

    def writeblocks(self, b, buf, off=0):
        self.f.seek(b * 4096 + off)
        self.f.write(buf)

    def ioctl(self, op, arg):
        if op == 4:
            return self.n
        if op == 5:
            return 4096
        return 0


def test_on_littlefs_one_block_per_segment():
    # MicroPython only (the ESP32's and the virtual board's filesystem); CPython has no vfs.
    try:
        import vfs
    except ImportError:
        return
    import os

    d = tmpdir("ringlfs")
    mnt = "/rm_lfs_%d" % len(d)
    bd = _FileBdev(d + "/flash.img", 32)
    try:
        vfs.VfsLfs2.mkfs(bd)
        vfs.mount(vfs.VfsLfs2(bd), mnt)
        try:
            fs = PosixFS(mnt)
            free0 = os.statvfs(mnt)[3]
            r = ReadingRing(fs, "ring", ram_capacity=16, flash_capacity=4 * SEG_RECORDS, unsent_spill=16)
            _fill(r, 0, 2000)
            r.flush()
            assert len(r) == 3 * SEG_RECORDS + 2000 % SEG_RECORDS  # the oldest segments went
            used = free0 - os.statvfs(mnt)[3]
            # 4 segments of 4,080 bytes: one 4 KB block each, plus littlefs metadata
            assert 4 <= used <= 8, used
            r2 = ReadingRing(fs, "ring", ram_capacity=16, flash_capacity=4 * SEG_RECORDS)
            assert len(r2) == len(r) and r2.newest_seq() == 1999 and r2.corrupt == 0
            assert r2.get_range(0, 2000 - len(r) - 1, 16) == []
            assert _seqs_are(r2, 2000 - len(r), 2000)
        finally:
            vfs.umount(mnt)
    finally:
        bd.f.close()
        rmtree(d)


def test_matches_a_simple_model_across_resets_with_gaps():
    # Segments with holes (reboots mid-segment) exercise the binary search; every answer is
    # compared with a plain list model of what must be held.
    from firmware.counters import Counters

    d = tmpdir("ringmodel")
    try:
        fs = PosixFS(d)

        def open_ring():
            return ReadingRing(fs, "ring", ram_capacity=8, flash_capacity=2 * SEG_RECORDS, unsent_spill=8,
                               counters=Counters(fs, "ctr", block=5))

        r = open_ring()
        held = []  # seqs on flash (model)
        ram = []  # seqs in the RAM block (model)
        x = 7
        for step in range(60):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
            n = x % 13
            for _ in range(n):
                s = r.append(T0 + step, Agg(step))
                assert not held or s > (ram or held)[-1]
                ram.append(s)
                if len(ram) == 8:
                    held.extend(ram)
                    ram = []
            if x % 5 == 0:  # sudden reset: the RAM block is lost
                r = open_ring()
                ram = []
            elif x % 7 == 0:
                r.flush()
                held.extend(ram)
                ram = []
        model = held + ram
        got = _all_seqs(r)
        assert got == model[len(model) - len(got):]  # only the oldest aged out
        assert len(got) >= SEG_RECORDS
        gappy = [i for i in range(len(r._sno)) if r._slast[i] - r._sfirst[i] + 1 != r._scount[i]]
        assert gappy, "the scenario must leave holes inside a segment"
        model = got
        for a, b in ((model[0], model[-1]), (model[5] + 1, model[40] - 1), (model[17], model[17]),
                     (model[-9] - 2, model[-1] + 3)):
            want = [s for s in model if a <= s <= b]
            assert _all_seqs(r, a, b) == want, (a, b)
            holes = r.gaps(a, b, 100)
            covered = list(want)
            for lo, hi, _ in holes:
                covered.extend(range(lo, hi + 1))
            covered.sort()
            assert covered == list(range(a, b + 1)), (a, b, holes)
        # send in frames of consecutive seqs, as the shell does
        r.mark_sent(0, model[9])
        assert r.backlog() == len(model) - 10
        assert r.pending(1)[0][0] == model[10]
        sent = 10
        while True:
            p = r.pending(12)
            if not p:
                break
            n = build_telemetry(1, p, T0 + 10000, K, NK)[1]
            r.mark_sent(p[0][0], p[0][0] + n - 1)
            sent += n
        assert sent == len(model) and r.backlog() == 0
    finally:
        rmtree(d)
