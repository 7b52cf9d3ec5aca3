# PMS5003 / PMS5003T parser and commands. Runs under CPython (pytest) and MicroPython.
from firmware.drivers import SensorSample, command_bytes, make_parser, pms5003
from firmware.drivers.pms5003 import PMS5003Parser, PMS5003TParser


def build_frame(pm1=1, pm25=2, pm10=3, cf1=None, counts=(0, 0, 0, 0, 0, 0), reserved=0, length=28,
                bad_sum=False):
    """A 32-byte frame laid out as in the Plantower manual (independent of the simulator)."""
    if cf1 is None:
        cf1 = (pm1, pm25, pm10)
    words = list(cf1) + [pm1, pm25, pm10] + list(counts) + [reserved]
    b = bytearray([0x42, 0x4D, length >> 8, length & 0xFF])
    for w in words:
        b.append((w >> 8) & 0xFF)
        b.append(w & 0xFF)
    s = sum(b)
    if bad_sum:
        s += 1
    b.append((s >> 8) & 0xFF)
    b.append(s & 0xFF)
    return bytes(b)


def build_t_frame(pm25, temp_dc, rh_dpct):
    # PMS5003T: data 11 = temperature x10 (signed), data 12 = RH x10.
    return build_frame(10, pm25, 30, counts=(100, 50, 20, 5, temp_dc & 0xFFFF, rh_dpct))


GARBAGE = bytes([0x00, 0x11, 0xFF, 0x4D, 0x4D, 0x99, 0x13, 0x37])  # holds no 0x42


def test_single_frame_uses_atmospheric_words_in_tenths():
    p = PMS5003Parser()
    f = build_frame(12, 25, 40, cf1=(99, 98, 97))
    assert len(f) == 32
    out = p.feed(f)
    assert out == [SensorSample(120, 250, 400, None, None)]
    assert (p.frames_ok, p.checksum_errors, p.bytes_discarded, p.buffered) == (1, 0, 0, 0)


def test_plain_5003_ignores_words_11_12():
    p = PMS5003Parser()
    out = p.feed(build_t_frame(25, 215, 653))
    assert out[0].rh is None and out[0].temp is None


def test_5003t_temperature_and_humidity():
    p = PMS5003TParser()
    out = p.feed(build_t_frame(25, 215, 653) + build_t_frame(7, -35, 996))
    assert len(out) == 2
    assert (out[0].pm25, out[0].temp, out[0].rh) == (250, 215, 65)
    assert (out[1].pm25, out[1].temp, out[1].rh) == (70, -35, 100)
    assert make_parser("pms5003t").th is True


def test_need_more_bytes_is_an_empty_list():
    p = PMS5003Parser()
    f = build_frame()
    assert p.feed(b"") == []
    assert p.feed(f[:31]) == []
    assert p.buffered == 31
    assert len(p.feed(f[31:])) == 1


def test_split_reads_at_every_offset():
    f1 = build_frame(1, 2, 3)
    f2 = build_frame(4, 5, 6)
    stream = GARBAGE + f1 + GARBAGE + f2
    for cut in range(len(stream) + 1):
        p = PMS5003Parser()
        out = p.feed(stream[:cut]) + p.feed(stream[cut:])
        assert [s.pm25 for s in out] == [20, 50], cut
        assert p.bytes_discarded == 2 * len(GARBAGE)
        assert p.checksum_errors == 0


def test_one_byte_at_a_time():
    f1 = build_frame(1, 2, 3)
    f2 = build_frame(4, 5, 6)
    p = PMS5003Parser()
    out = []
    for b in GARBAGE + f1 + f2 + GARBAGE:
        out += p.feed(bytes([b]))
    assert [s.pm10 for s in out] == [30, 60]
    assert p.frames_ok == 2


def test_false_header_in_garbage_does_not_lose_the_next_frame():
    # A header with a plausible length claims 32 bytes that include the real frame's start.
    real = build_frame(8, 9, 10)
    false = bytes([0x42, 0x4D, 0x00, 0x1C, 1, 2, 3, 4, 5])
    for chunk in (1, 3, 7, 64):
        p = PMS5003Parser()
        stream = false + real + real
        out = []
        for i in range(0, len(stream), chunk):
            out += p.feed(stream[i:i + chunk])
        assert [s.pm25 for s in out] == [90, 90], chunk
        assert p.checksum_errors == 1
        assert p.bytes_discarded == len(false)


def test_false_header_with_impossible_length_is_not_a_checksum_error():
    p = PMS5003Parser()
    out = p.feed(bytes([0x42, 0x4D, 0x12, 0x34, 0x42, 0x42]) + build_frame(5, 6, 7))
    assert [s.pm1 for s in out] == [50]
    assert p.checksum_errors == 0
    assert p.bytes_discarded == 6


def test_header_bytes_repeated_before_frame():
    p = PMS5003Parser()
    out = p.feed(b"\x42\x42\x42\x4d\x42" + build_frame())
    assert len(out) == 1
    assert p.bytes_discarded == 5


def test_checksum_error_counted_and_next_frame_kept():
    p = PMS5003Parser()
    out = p.feed(build_frame(1, 1, 1, bad_sum=True) + build_frame(2, 2, 2))
    assert [s.pm25 for s in out] == [20]
    assert p.checksum_errors == 1
    assert p.bytes_discarded == 32


def test_byte_accounting_balances():
    p = PMS5003Parser()
    stream = GARBAGE + build_frame() + b"\x42\x4d\x00" + build_frame(bad_sum=True) + build_frame() + b"\x42"
    n = len(p.feed(stream))
    assert n == 2
    assert 32 * p.frames_ok + p.bytes_discarded + p.buffered == len(stream)


def test_buffer_never_grows_beyond_one_frame():
    p = PMS5003Parser()
    junk = bytes([0x42, 0x4D, 0x00, 0x1C]) * 40
    for _ in range(20):
        assert p.feed(junk) == []
        assert p.buffered <= 32
    assert len(p._buf) == 32
    assert p.checksum_errors > 0
    assert len(p.feed(build_frame())) == 1


def test_command_reply_frames_are_counted_not_samples():
    # Reply to a sleep command: 0x42 0x4D 0x00 0x04 0xE4 0x00 + 16-bit sum.
    reply = bytes([0x42, 0x4D, 0x00, 0x04, 0xE4, 0x00, 0x01, 0x77])
    p = PMS5003Parser()
    out = p.feed(reply + build_frame())
    assert len(out) == 1
    assert p.replies == 1
    assert p.checksum_errors == 0


def test_command_frames_match_the_manual():
    assert pms5003.SLEEP == bytes([0x42, 0x4D, 0xE4, 0x00, 0x00, 0x01, 0x73])
    assert pms5003.WAKE == bytes([0x42, 0x4D, 0xE4, 0x00, 0x01, 0x01, 0x74])
    assert pms5003.PASSIVE_MODE == bytes([0x42, 0x4D, 0xE1, 0x00, 0x00, 0x01, 0x70])
    assert pms5003.ACTIVE_MODE == bytes([0x42, 0x4D, 0xE1, 0x00, 0x01, 0x01, 0x71])
    assert pms5003.READ_PASSIVE == bytes([0x42, 0x4D, 0xE2, 0x00, 0x00, 0x01, 0x71])
    assert command_bytes("pms5003", "wake") == pms5003.WAKE
    assert command_bytes("pms5003t", "sleep") == pms5003.SLEEP
    assert command_bytes("pms5003", "dance") is None


def test_unknown_kind_is_a_clear_error():
    for fn in (lambda: make_parser("bme280"), lambda: command_bytes("bme280", "wake")):
        try:
            fn()
        except ValueError as e:
            assert "pms5003" in str(e) and "bme280" in str(e)
        else:
            raise AssertionError("no ValueError")


def test_reset_drops_partial_frame():
    p = PMS5003Parser()
    p.feed(build_frame()[:20])
    p.reset()
    assert p.buffered == 0 and p.bytes_discarded == 20
    assert len(p.feed(build_frame())) == 1
