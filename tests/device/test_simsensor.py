# Simulated PMS5003(T): determinism across interpreters, plausibility, line noise, commands.
# Runs under CPython (pytest) and MicroPython; the golden digest proves both emit the same bytes.
import binascii
import hashlib

from firmware.drivers import pms5003
from firmware.drivers.pms5003 import PMS5003Parser
from firmware.hal.simsensor import SimPMS5003, XorShift32

T0 = 1741496400  # 2025-03-09 00:00 local (UTC-5), a Sunday in the March episode season
DAY = 86400

# Computed once on CPython and checked equal under MicroPython 1.29 when written.
GOLDEN_SHA256 = "6a026a4428a925f4c8ef2ae056dcd53bdeb2a651f731b83ff1f6a156e1124064"
GOLDEN_FRAME = "424d001c00060008000d00060008000d0528018c0055000f00bd03169700036c"


def local_hour(t):
    return ((t - 5 * 3600) % DAY) // 3600


def test_xorshift32_reference_sequence():
    r = XorShift32(1)
    assert [r.next(), r.next(), r.next()] == [270369, 67634689, 2647435461]
    assert XorShift32(0).next() != 0  # zero state would stick at zero


def test_golden_bytes_identical_on_every_interpreter():
    s = SimPMS5003(2024, 17, noise_per_mille=50, th=True)
    h = hashlib.sha256()
    for t in range(1741500000, 1741500000 + 600):
        h.update(s.bytes_for(t))
    assert binascii.hexlify(h.digest()).decode() == GOLDEN_SHA256
    assert binascii.hexlify(s.frame_at(1741500000)).decode() == GOLDEN_FRAME


def test_pure_function_of_seed_node_time():
    a = SimPMS5003(1, 5)
    b = SimPMS5003(1, 5)
    assert a.frame_at(T0 + 123) == b.frame_at(T0 + 123)
    assert a.bytes_for(T0 + 77) == b.bytes_for(T0 + 77)
    assert SimPMS5003(1, 6).frame_at(T0 + 123) != a.frame_at(T0 + 123)
    assert SimPMS5003(2, 5).frame_at(T0 + 123) != a.frame_at(T0 + 123)


def test_series_stays_plausible_and_parses_back():
    s = SimPMS5003(7, 3, noise_per_mille=0, th=True)
    p = PMS5003Parser(th=True)
    n = 0
    for t in range(T0, T0 + 30 * DAY, 600):
        out = p.feed(s.frame_at(t))
        assert len(out) == 1
        x = out[0]
        n += 1
        assert 10 <= x.pm25 <= 1500, (t, x)
        assert x.pm1 <= x.pm25 <= x.pm10
        # PM1 ~ 0.6-0.7 x PM2.5, PM10 ~ 1.3-1.8 x PM2.5; each rounded to whole ug/m3 on the wire.
        assert 10 * x.pm1 >= 6 * x.pm25 - 100, x
        assert 10 * x.pm1 <= 7 * x.pm25 + 100, x
        assert 10 * x.pm10 <= 18 * x.pm25 + 150, x
        assert 10 * x.pm10 >= 13 * x.pm25 - 150, x
        assert 140 <= x.temp <= 320 and 20 <= x.rh <= 99, x
    assert p.frames_ok == n and p.checksum_errors == 0 and p.bytes_discarded == 0


def test_rush_hour_peak_above_night():
    s = SimPMS5003(11, 42, noise_per_mille=0)
    p = PMS5003Parser()
    rush = night = 0
    nr = nn = 0
    for t in range(T0, T0 + 14 * DAY, 300):
        h = local_hour(t)
        v = p.feed(s.frame_at(t))[0].pm25
        if 7 <= h < 9:
            rush += v
            nr += 1
        elif 1 <= h < 4:
            night += v
            nn += 1
    assert rush * nn > 2 * night * nr, (rush // nr, night // nn)


def test_episodes_exceed_55_ug_for_hours():
    s = SimPMS5003(11, 42, noise_per_mille=0)
    p = PMS5003Parser()
    day0 = (T0 - 5 * 3600) // DAY
    episodes = [(d, s.episode(d)) for d in range(day0, day0 + 30)]
    episodes = [(d, e) for d, e in episodes if e is not None]
    assert 3 <= len(episodes) <= 20  # March: episode season, not every day
    d, (start_s, dur_s, _extra) = episodes[0]
    assert dur_s >= 4 * 3600
    # Plateau: from one hour after start to one hour before the end, every 10 minutes.
    t_start = d * DAY + 5 * 3600 + start_s + 3600
    hours_above = 0
    for hour in range((dur_s - 7200) // 3600):
        vals = [p.feed(s.frame_at(t_start + hour * 3600 + k * 600))[0].pm25 for k in range(6)]
        if sum(vals) > 550 * len(vals):
            hours_above += 1
    assert hours_above >= 2


def test_noise_rate_matches_setting():
    s = SimPMS5003(3, 9, noise_per_mille=5)
    noisy = 0
    for t in range(T0, T0 + 20000):
        if s.noise_kind(t) is not None:
            noisy += 1
    assert 60 <= noisy <= 140, noisy
    assert SimPMS5003(3, 9, noise_per_mille=0).noise_kind(T0) is None


def test_parser_survives_line_noise_and_loses_only_damaged_frames():
    s = SimPMS5003(5, 8, noise_per_mille=80)
    p = PMS5003Parser()
    got = 0
    expected = 0
    kinds = {}
    for t in range(T0, T0 + 1500):
        kind = s.noise_kind(t)
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind not in ("corrupt", "truncate"):
            expected += 1
        got += len(p.feed(s.bytes_for(t)))
    assert len(kinds) == 5, kinds  # every fault kind exercised
    assert got == expected
    assert p.checksum_errors >= kinds["corrupt"]
    assert p.buffered <= 32


def test_invalid_noise_rate_rejected():
    try:
        SimPMS5003(1, 1, noise_per_mille=1001)
    except ValueError as e:
        assert "noise_per_mille" in str(e)
    else:
        raise AssertionError("no ValueError")


def test_command_side_sleep_wake_and_warmup_ramp():
    s = SimPMS5003(1, 2, noise_per_mille=0)
    p = PMS5003Parser()
    assert len(p.feed(s.poll(T0))) == 1  # powers up awake, active: one frame per second
    assert len(p.feed(s.poll(T0 + 3))) == 3
    s.write(pms5003.SLEEP, T0 + 3)
    assert p.feed(s.poll(T0 + 4)) == [] and p.replies == 1
    assert s.poll(T0 + 100) == b""
    s.write(pms5003.WAKE, T0 + 100)
    out = p.feed(s.poll(T0 + 103))
    assert len(out) == 3  # frames start a second after the fan
    first = out[0].pm25
    settled = p.feed(s.frame_at(T0 + 101))[0].pm25
    assert first < settled  # unsettled right after wake: why the sampler discards warm-up
    out = p.feed(s.poll(T0 + 200))
    assert len(out) == 8  # a UART FIFO keeps only the last few seconds
    assert p.checksum_errors == 0


def test_command_side_passive_mode_reads_on_request():
    s = SimPMS5003(1, 2, noise_per_mille=0)
    p = PMS5003Parser()
    s.write(pms5003.PASSIVE_MODE, T0)
    assert p.feed(s.poll(T0 + 1)) == [] and p.replies == 1
    assert s.poll(T0 + 5) == b""
    s.write(pms5003.READ_PASSIVE[:3], T0 + 5)  # split write
    s.write(pms5003.READ_PASSIVE[3:], T0 + 5)
    assert len(p.feed(s.poll(T0 + 6))) == 1
    assert s.poll(T0 + 7) == b""
    s.write(b"\x42\x4d\xe2\x00\x00\x00\x00", T0 + 8)  # bad LRC: ignored
    assert s.poll(T0 + 9) == b""
    s.write(pms5003.ACTIVE_MODE, T0 + 9)
    assert len(p.feed(s.poll(T0 + 10))) == 1
