# SDS011 parser and commands. Runs under CPython (pytest) and MicroPython.
from firmware.drivers import SensorSample, command_bytes, make_parser, sds011
from firmware.drivers.sds011 import SDS011Parser


def build_frame(pm25_dug, pm10_dug, dev_id=0xA1B2, kind=0xC0, bad_sum=False, tail=0xAB):
    """AA C0 PM25L PM25H PM10L PM10H ID1 ID2 CHK AB, checksum over the 6 data bytes."""
    data = [pm25_dug & 0xFF, pm25_dug >> 8, pm10_dug & 0xFF, pm10_dug >> 8, dev_id >> 8, dev_id & 0xFF]
    chk = sum(data) & 0xFF
    if bad_sum:
        chk = (chk + 1) & 0xFF
    return bytes([0xAA, kind] + data + [chk, tail])


GARBAGE = bytes([0x00, 0xC0, 0xAB, 0x55, 0xFF])  # holds no 0xAA


def test_single_frame_values_already_in_tenths():
    p = SDS011Parser()
    out = p.feed(build_frame(123, 4567))
    assert out == [SensorSample(None, 123, 4567, None, None)]
    assert (p.frames_ok, p.checksum_errors, p.bytes_discarded) == (1, 0, 0)


def test_split_reads_at_every_offset():
    stream = GARBAGE + build_frame(10, 20) + GARBAGE + build_frame(300, 600)
    for cut in range(len(stream) + 1):
        p = SDS011Parser()
        out = p.feed(stream[:cut]) + p.feed(stream[cut:])
        assert [s.pm25 for s in out] == [10, 300], cut
        assert p.bytes_discarded == 2 * len(GARBAGE)


def test_one_byte_at_a_time():
    p = SDS011Parser()
    out = []
    for b in build_frame(1, 2) + GARBAGE + build_frame(3, 4):
        out += p.feed(bytes([b]))
    assert [s.pm10 for s in out] == [2, 4]


def test_false_header_in_garbage_does_not_lose_the_next_frame():
    false = bytes([0xAA, 0xC0, 1, 2])
    p = SDS011Parser()
    out = p.feed(false + build_frame(55, 66) + build_frame(77, 88))
    assert [s.pm25 for s in out] == [55, 77]
    assert p.bytes_discarded == len(false)


def test_checksum_error_counted_and_next_frame_kept():
    p = SDS011Parser()
    out = p.feed(build_frame(1, 1, bad_sum=True) + build_frame(2, 2))
    assert [s.pm25 for s in out] == [2]
    assert p.checksum_errors == 1
    assert p.bytes_discarded == 10


def test_bad_tail_resyncs_without_checksum_error():
    p = SDS011Parser()
    out = p.feed(build_frame(1, 1, tail=0x00) + build_frame(2, 2))
    assert [s.pm25 for s in out] == [2]
    assert p.checksum_errors == 0


def test_reply_frames_are_counted_not_samples():
    p = SDS011Parser()
    reply = build_frame(0x0106, 0xFF00, kind=0xC5)  # a sleep/work reply: 06 01 00 00 ...
    out = p.feed(reply + build_frame(5, 6))
    assert len(out) == 1 and p.replies == 1


def test_buffer_never_grows_beyond_one_frame():
    p = SDS011Parser()
    for _ in range(50):
        assert p.feed(bytes([0xAA, 0xC0, 0x00]) * 7) == []
        assert p.buffered <= 10
    assert len(p._buf) == 10
    assert len(p.feed(build_frame(9, 9))) == 1


def test_commands_match_the_protocol_document():
    zeros = [0] * 10
    assert sds011.SLEEP == bytes([0xAA, 0xB4, 0x06, 0x01, 0x00] + zeros + [0xFF, 0xFF, 0x05, 0xAB])
    assert sds011.WORK == bytes([0xAA, 0xB4, 0x06, 0x01, 0x01] + zeros + [0xFF, 0xFF, 0x06, 0xAB])
    assert sds011.QUERY_DATA == bytes([0xAA, 0xB4, 0x04, 0x00, 0x00] + zeros + [0xFF, 0xFF, 0x02, 0xAB])
    assert sds011.QUERY_MODE == bytes([0xAA, 0xB4, 0x02, 0x01, 0x01] + zeros + [0xFF, 0xFF, 0x02, 0xAB])
    assert len(sds011.SLEEP) == 19
    assert command_bytes("sds011", "wake") == sds011.WORK
    assert isinstance(make_parser("sds011"), SDS011Parser)
