# Outbox: FIFO order, RAM bound, spill to flash segments, reload after a reset, checkpointed
# delivery progress, drop-oldest when full, compaction, damaged tails.
# Runs under CPython (pytest) and MicroPython (tests/mp_run.py): plain os + open(), no tempfile.
import os

from firmware.outbox import Outbox, OutboxError


def _tmpdir():
    d = "/tmp/rm_outbox_" + "".join("%02x" % b for b in os.urandom(6))
    os.mkdir(d)
    return d


def _rmtree(d):
    try:
        names = os.listdir(d)
    except OSError:
        return
    for n in names:
        os.remove(d + "/" + n)
    os.rmdir(d)


def _msg(i):
    return ("rm/t/%d" % (i % 3), b"payload-%d" % i, 1, i % 5 == 0)


def _fill(ob, start, n):
    for i in range(start, start + n):
        t, p, q, r = _msg(i)
        ob.put(t, p, q, r)


def _drain(ob):
    """Read and pop everything in order, as the MQTT client does; return the payloads."""
    out = []
    while len(ob):
        m = ob.get(ob.head_seq)
        assert m is not None, "head message not available"
        out.append(m)
        ob.pop()
    return out


def _ids(msgs):
    return [int(m[1].split(b"-")[1]) for m in msgs]


def test_ram_only_fifo_and_seq_numbers():
    ob = Outbox(ram_max_msgs=8)
    _fill(ob, 0, 5)
    assert len(ob) == 5 and ob.head_seq == 0
    assert ob.get(0) == _msg(0)
    assert ob.get(4) == _msg(4)
    assert ob.get(5) is None
    ob.pop(2)
    assert ob.head_seq == 2 and ob.get(1) is None and ob.get(2) == _msg(2)
    assert _ids(_drain(ob)) == [2, 3, 4]


def test_ram_only_drops_oldest_and_counts():
    ob = Outbox(ram_max_msgs=4)
    _fill(ob, 0, 10)
    assert len(ob) == 4 and ob.dropped == 6 and ob.head_seq == 6
    assert _ids(_drain(ob)) == [6, 7, 8, 9]


def test_spill_to_flash_keeps_order_with_few_writes():
    d = _tmpdir()
    try:
        ob = Outbox(d, ram_max_msgs=10, segment_bytes=512)
        _fill(ob, 0, 100)
        assert len(ob) == 100
        st = ob.stats()
        assert st["ram_msgs"] == 0 and st["segments"] >= 2
        assert ob.spills <= 20  # one append per spill of 10 messages (+ segment boundaries)
        for name in os.listdir(d):
            assert os.stat(d + "/" + name)[6] <= 512, name  # the head buffer's size
        assert _ids(_drain(ob)) == list(range(100))
        assert os.listdir(d) == []  # drained -> compacted: no file left
    finally:
        _rmtree(d)


def test_interleaved_put_and_pop_across_ram_and_flash():
    d = _tmpdir()
    try:
        ob = Outbox(d, ram_max_msgs=4, segment_bytes=128)
        got = []
        n = 0
        for _rnd in range(20):
            _fill(ob, n, 7)
            n += 7
            for _ in range(5):
                m = ob.get(ob.head_seq)
                if m is None:
                    break
                got.append(_ids([m])[0])  # ids only: keeps the test inside a 64k heap
                ob.pop()
        got += _ids(_drain(ob))
        assert got == list(range(n))
    finally:
        _rmtree(d)


def test_messages_beyond_the_loaded_head_segment_wait():
    d = _tmpdir()
    try:
        ob = Outbox(d, ram_max_msgs=2, segment_bytes=64)
        _fill(ob, 0, 8)
        first = ob.get(0)
        assert first == _msg(0)
        # The head segment is loaded; later segments are not read until the head drains.
        k = 0
        while ob.get(k) is not None:
            k += 1
        assert 0 < k < 8
        ob.pop(k)
        assert ob.get(k) is not None
    finally:
        _rmtree(d)


def test_reload_after_reset():
    d = _tmpdir()
    try:
        ob = Outbox(d, ram_max_msgs=4)
        _fill(ob, 0, 10)  # 8 spilled, 2 still in RAM
        ob.flush()  # the planned-reset path
        again = Outbox(d, ram_max_msgs=4)
        assert len(again) == 10
        assert _drain(again) == [_msg(i) for i in range(10)]
    finally:
        _rmtree(d)


def test_ram_tail_is_lost_without_flush():
    d = _tmpdir()
    try:
        ob = Outbox(d, ram_max_msgs=4)
        _fill(ob, 0, 10)  # two spills of 4; messages 8 and 9 only in RAM
        again = Outbox(d, ram_max_msgs=4)
        assert _ids(_drain(again)) == list(range(8))
    finally:
        _rmtree(d)


def test_checkpoint_bounds_resend_after_reset():
    d = _tmpdir()
    try:
        ob = Outbox(d, ram_max_msgs=1, segment_bytes=4096, checkpoint_every=4)
        _fill(ob, 0, 10)
        for _ in range(6):
            assert ob.get(ob.head_seq) is not None
            ob.pop()
        # 6 delivered, progress written at 4: after a reset 4..9 come again (6 and 7 twice).
        again = Outbox(d, ram_max_msgs=1, checkpoint_every=4)
        assert _ids(_drain(again)) == [4, 5, 6, 7, 8, 9]
        ob.flush()  # a flush records exact progress
    finally:
        _rmtree(d)


def test_flush_records_exact_progress():
    d = _tmpdir()
    try:
        ob = Outbox(d, ram_max_msgs=1, checkpoint_every=100)
        _fill(ob, 0, 10)
        for _ in range(3):
            ob.get(ob.head_seq)
            ob.pop()
        ob.flush()
        again = Outbox(d, ram_max_msgs=1)
        assert _ids(_drain(again)) == list(range(3, 10))
    finally:
        _rmtree(d)


def test_flash_full_drops_oldest_segment_and_counts():
    d = _tmpdir()
    try:
        ob = Outbox(d, ram_max_msgs=5, segment_bytes=100, flash_max_bytes=400)
        _fill(ob, 0, 200)
        st = ob.stats()
        assert st["flash_bytes"] <= 400
        assert ob.dropped > 0
        assert ob.dropped + len(ob) == 200
        ids = _ids(_drain(ob))
        assert ids == list(range(200 - len(ids), 200))  # the newest survive, in order
    finally:
        _rmtree(d)


def test_damaged_tail_is_cut_and_counted():
    d = _tmpdir()
    try:
        ob = Outbox(d, ram_max_msgs=3)
        _fill(ob, 0, 6)
        names = sorted(n for n in os.listdir(d) if n.endswith(".seg"))
        with open(d + "/" + names[-1], "ab") as f:
            f.write(b"\xa5\x01\x00\x05\x00\x40rm/t")  # a record cut short by a power loss
        again = Outbox(d, ram_max_msgs=3)
        assert again.corrupt == 1
        assert _ids(_drain(again)) == list(range(6))
        with open(d + "/00000099.seg", "wb") as f:
            f.write(b"garbage")
        third = Outbox(d)
        assert third.corrupt == 1 and len(third) == 0 and os.listdir(d) == []
    finally:
        _rmtree(d)


def test_too_big_and_bad_qos_refused():
    ob = Outbox(ram_max_bytes=100)
    for args in (("t", b"x" * 200, 1), ("t", b"x", 2)):
        try:
            ob.put(*args)
        except OutboxError:
            continue
        raise AssertionError("accepted %r" % (args,))
    assert len(ob) == 0


def test_utf8_topics_and_binary_payloads_survive_flash():
    d = _tmpdir()
    try:
        ob = Outbox(d, ram_max_msgs=1)
        ob.put("capteurs/é", bytes(range(256)), 0, True)
        again = Outbox(d)
        assert again.get(0) == ("capteurs/é", bytes(range(256)), 0, True)
    finally:
        _rmtree(d)


def test_record_bigger_than_a_segment():
    d = _tmpdir()
    try:
        ob = Outbox(d, ram_max_msgs=2, segment_bytes=64)
        ob.put("a", b"1", 1, False)
        ob.put("big", b"B" * 300, 1, False)
        ob.put("c", b"3", 1, False)
        ob.put("d", b"4", 1, False)
        again = Outbox(d, ram_max_msgs=2, segment_bytes=64)
        got = _drain(again)
        assert [m[0] for m in got] == ["a", "big", "c", "d"] and got[1][1] == b"B" * 300
    finally:
        _rmtree(d)
