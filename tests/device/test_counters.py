# Counters: monotonic across resets and power cuts, reserve blocks keep flash writes rare,
# exact names (boot count), set_min for the command counter, sync before a planned reset.
# Runs under CPython (pytest) and MicroPython (tests/mp_run.py).
import os

from flashfakes import CutFS, PowerCut, rmtree, tmpdir

from firmware.counters import Counters
from firmware.fsutil import PosixFS


def test_next_peek_and_names():
    d = tmpdir("ctr")
    try:
        c = Counters(PosixFS(d), "counters.bin")
        assert c.peek("status") == 0
        assert [c.next("status") for _ in range(3)] == [0, 1, 2]
        assert c.peek("status") == 3 and c.next("reply") == 0
        assert c.names() == ["reply", "status"]
        assert c.writes == 2  # one reserve block per name so far
        assert not c.damaged
    finally:
        rmtree(d)


def test_never_repeats_across_100_resets():
    d = tmpdir("ctr")
    try:
        fs = PosixFS(d)
        seen_max = -1
        total = 0
        for boot in range(100):
            c = Counters(fs, "counters.bin", block=16)
            n = (boot * 37) % 50  # 0..49 values per boot, then a sudden reset (no sync)
            for _ in range(n):
                v = c.next("reading")
                assert v > seen_max, (boot, v, seen_max)
                seen_max = v
                total += 1
            # at most one block skipped per reset
            assert c.peek("reading") <= total + 16 * (boot + 1)
    finally:
        rmtree(d)


def test_power_cut_at_every_write_step_never_repeats():
    d = tmpdir("ctrcut")
    try:
        def scenario(fs, out):
            c = Counters(fs, "c.bin", block=4)
            for _ in range(10):
                out.append(c.next("status"))
            c.set_min("cseq", 7)
            out.append(c.next("status"))
            c.sync()

        fs = CutFS(d)
        ref = []
        scenario(fs, ref)
        total = fs.ops
        assert total >= 6
        for k in range(1, total + 1):
            for torn in (None, 3):
                sub = d + "/k%d_%s" % (k, torn)
                os.mkdir(sub)
                out = []
                try:
                    scenario(CutFS(sub, cut_at=k, torn=torn), out)
                except PowerCut:
                    pass
                c = Counters(PosixFS(sub), "c.bin", block=4)
                assert not c.damaged, (k, torn)  # the atomic rename never leaves a torn file
                v = c.next("status")
                if out:
                    assert v > max(out), (k, torn, v, out)
                rmtree(sub)
    finally:
        rmtree(d)


def test_wear_writes_per_10000_increments():
    d = tmpdir("ctr")
    try:
        c = Counters(PosixFS(d), "counters.bin", block=64)
        for _ in range(10000):
            c.next("reading")
        assert c.writes == (10000 + 63) // 64  # 157, not 10,000
        c2 = Counters(PosixFS(d), "counters.bin", block=64)
        assert c2.next("reading") == 157 * 64  # resumes from the reserve, skipping 48
    finally:
        rmtree(d)


def test_boot_count_is_exact():
    d = tmpdir("ctr")
    try:
        for boot in range(5):
            c = Counters(PosixFS(d), "counters.bin")
            assert c.next("boot") == boot
    finally:
        rmtree(d)


def test_set_min_persists_exactly_for_the_command_counter():
    d = tmpdir("ctr")
    try:
        c = Counters(PosixFS(d), "counters.bin")
        c.set_min("cseq", 500)
        assert c.peek("cseq") == 500
        w = c.writes
        c.set_min("cseq", 400)  # lower: no-op, no write
        assert c.peek("cseq") == 500 and c.writes == w
        c2 = Counters(PosixFS(d), "counters.bin")  # sudden reset
        assert c2.peek("cseq") == 500
        c2.set_min("reading", 1000)  # the ring raising its counter from flash evidence
        assert c2.next("reading") == 1000
    finally:
        rmtree(d)


def test_sync_before_planned_reset_skips_nothing():
    d = tmpdir("ctr")
    try:
        c = Counters(PosixFS(d), "counters.bin")
        for _ in range(10):
            c.next("status")
        c.sync()
        w = c.writes
        c.sync()  # nothing changed: no write
        assert c.writes == w
        c2 = Counters(PosixFS(d), "counters.bin")
        assert c2.next("status") == 10
    finally:
        rmtree(d)


def test_failed_write_hands_out_nothing():
    d = tmpdir("ctr")
    try:
        fs = CutFS(d)
        c = Counters(fs, "counters.bin", block=4)
        for _ in range(4):
            c.next("status")
        fs.full = True
        try:
            c.next("status")
            raise AssertionError("a value was handed out without a persisted reserve")
        except OSError:
            pass
        assert c.peek("status") == 4
        fs.full = False
        assert c.next("status") == 4
    finally:
        rmtree(d)


def test_damaged_file_is_flagged():
    d = tmpdir("ctr")
    try:
        with open(d + "/counters.bin", "wb") as f:
            f.write(b"\xa1\x63abc")  # CBOR map cut short
        c = Counters(PosixFS(d), "counters.bin")
        assert c.damaged and c.peek("status") == 0
        with open(d + "/c2.bin", "wb") as f:
            f.write(b"\xa1\x63abc\x20")  # {"abc": -1}: not a counter
        assert Counters(PosixFS(d), "c2.bin").damaged
        # a fresh node with a temp file cut short by a power cut is not damaged
        with open(d + "/c3.bin.tmp", "wb") as f:
            f.write(b"\xa1")
        c3 = Counters(PosixFS(d), "c3.bin")
        assert not c3.damaged and c3.next("x") == 0
    finally:
        rmtree(d)
