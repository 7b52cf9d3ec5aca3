# Sampler duty cycle and aggregation. Runs under CPython (pytest) and MicroPython.
from firmware.drivers import SensorSample
from firmware.sampler import (
    SAMPLE,
    SLEEP,
    WARMUP,
    Sampler,
    SamplerConfig,
)
from protocol.frames import FLAG_CHECKSUM, FLAG_HIGH_RH, FLAG_SENSOR_ERROR, FLAG_WARMUP_SHORT

WAKE = [("wake",)]
SLEEP_A = [("sleep",)]


def duty(interval=300, warmup=30, window=60):
    return Sampler(SamplerConfig(report_interval_s=interval, warmup_s=warmup, sample_window_s=window))


def s(pm25, rh=None, temp=None, pm1=None, pm10=None):
    return SensorSample(pm1, pm25, pm10 if pm10 is not None else pm25 * 2, rh, temp)


def expect_value_error(fn, *words):
    try:
        fn()
    except ValueError as e:
        for w in words:
            assert w in str(e), (w, str(e))
        return
    raise AssertionError("no ValueError")


def test_config_validation_messages():
    expect_value_error(lambda: SamplerConfig(warmup_s=10), "warmup_s", "30")
    expect_value_error(lambda: SamplerConfig(report_interval_s=0), "report_interval_s")
    expect_value_error(lambda: SamplerConfig(report_interval_s=60, sample_window_s=40), "<= report_interval_s")
    expect_value_error(lambda: SamplerConfig(sample_window_s=0), "sample_window_s")
    expect_value_error(lambda: SamplerConfig(report_interval_s="300"), "int")
    expect_value_error(lambda: SamplerConfig(report_interval_s=30.5), "int")
    expect_value_error(lambda: SamplerConfig(continuous=1), "continuous")
    expect_value_error(lambda: SamplerConfig(report_interval_s=30, continuous=True), "exceed warmup_s")
    expect_value_error(lambda: SamplerConfig.from_dict({"interval": 5}), "unknown", "interval")
    c = SamplerConfig(report_interval_s=60, warmup_s=30, sample_window_s=30)
    assert SamplerConfig.from_dict(c.as_dict()).as_dict() == c.as_dict()
    assert c.replace("continuous", 1).continuous is True
    expect_value_error(lambda: c.replace("warmup_s", 45), "warmup_s + sample_window_s")


def test_duty_cycle_actions_and_deadlines():
    sm = duty()
    assert sm.next_deadline_ms is None
    assert sm.tick(1000) == WAKE
    assert (sm.state, sm.next_deadline_ms) == (WARMUP, 31000)
    assert sm.tick(20000) == []
    assert sm.tick(31000) == []
    assert (sm.state, sm.next_deadline_ms) == (SAMPLE, 91000)
    assert sm.poll_report(90999) is None
    assert sm.tick(91000) == SLEEP_A
    assert (sm.state, sm.next_deadline_ms) == (SLEEP, 301000)
    agg = sm.poll_report(91000)
    assert (agg.start_ms, agg.end_ms) == (31000, 91000)
    assert sm.poll_report(92000) is None  # once per interval
    assert sm.tick(301000) == WAKE
    assert sm.next_deadline_ms == 331000


def test_warmup_samples_are_discarded():
    sm = duty()
    sm.tick(0)
    for t in range(1000, 30000, 1000):
        assert sm.on_sample(s(999), t) is False
    assert sm.on_sample(s(100), 30000) is True
    sm.tick(90000)
    agg = sm.poll_report(90000)
    assert agg.n == 1 and agg.pm25 == 100 and agg.pm25_max == 100
    assert sm.samples_discarded == 29
    assert sm.on_sample(s(5), 95000) is False  # asleep


def test_aggregation_mean_min_max_count():
    sm = duty()
    sm.tick(0)
    values = [100, 250, 175, 121]
    for i, v in enumerate(values):
        sm.on_sample(s(v, rh=60, temp=201 + i, pm1=v // 2, pm10=v * 3), 30000 + i * 1000)
    sm.tick(90000)
    agg = sm.poll_report(90000)
    assert agg.n == 4
    assert agg.pm25 == 162  # 646 / 4 = 161.5, rounded half up
    assert (agg.pm25_min, agg.pm25_max) == (100, 250)
    assert agg.pm1 == (50 + 125 + 87 + 60 + 2) // 4
    assert agg.pm10 == 485  # 1938 / 4 = 484.5
    assert (agg.rh, agg.temp) == (60, 203)  # 201..204 -> 202.5 -> 203
    assert agg.flags == 0


def test_missing_pm1_rh_temp_report_zero():
    sm = duty()
    sm.tick(0)
    sm.on_sample(SensorSample(None, 80, 160, None, None), 40000)
    sm.tick(90000)
    agg = sm.poll_report(90000)
    assert (agg.pm1, agg.pm25, agg.pm10, agg.rh, agg.temp, agg.flags) == (0, 80, 160, 0, 0, 0)


def test_negative_temperature_mean_rounds_consistently():
    sm = duty()
    sm.tick(0)
    sm.on_sample(s(10, temp=-15), 40000)
    sm.on_sample(s(10, temp=-20), 41000)
    sm.tick(90000)
    assert sm.poll_report(90000).temp == -17  # -17.5 rounds half up


def test_high_rh_flag():
    for rhs, flagged in (([76, 76], True), ([75, 75], False), ([75, 76], True), ([75, 75, 75, 76], True), ([80, 70, 75], False)):
        sm = duty()
        sm.tick(0)
        for i, rh in enumerate(rhs):
            sm.on_sample(s(100, rh=rh), 40000 + i)
        sm.tick(90000)
        agg = sm.poll_report(90000)
        assert bool(agg.flags & FLAG_HIGH_RH) == flagged, rhs


def test_missing_sensor_sets_sensor_error():
    sm = duty()
    sm.tick(0)
    sm.tick(90000)
    agg = sm.poll_report(90000)
    assert agg.n == 0 and agg.flags & FLAG_SENSOR_ERROR
    assert (agg.pm25, agg.pm25_min, agg.pm25_max) == (0, 0, 0)
    assert sm.windows_without_data == 1 and sm.windows == 1


def test_checksum_errors_flag_only_inside_the_window():
    sm = duty()
    sm.tick(0)
    sm.on_checksum_errors(2, 5000)  # warm-up: counted, not flagged
    sm.on_sample(s(50), 40000)
    sm.tick(90000)
    assert sm.poll_report(90000).flags == 0
    sm.tick(300000)
    sm.on_checksum_errors(1, 340000)
    sm.on_sample(s(50), 341000)
    sm.tick(390000)
    assert sm.poll_report(390000).flags == FLAG_CHECKSUM
    assert sm.checksum_errors == 3


def test_samples_arriving_without_tick_close_the_window():
    sm = duty()
    sm.tick(0)
    sm.on_sample(s(70), 40000)
    assert sm.on_sample(s(999), 95000) is False  # window closed at 90000
    assert sm.poll_report(95000).pm25 == 70
    assert sm.tick(95000) == SLEEP_A  # queued action delivered on the next tick


def test_late_wake_keeps_full_warmup_when_window_allows():
    sm = duty()
    sm.tick(0)
    sm.tick(90000)
    sm.poll_report(90000)
    assert sm.tick(310000) == WAKE  # 10 s late
    assert sm.next_deadline_ms == 340000  # full warm-up from the real wake
    sm.on_sample(s(10), 341000)
    sm.tick(390000)  # window end stays on the grid
    agg = sm.poll_report(390000)
    assert (agg.start_ms, agg.end_ms, agg.flags) == (340000, 390000, 0)


def test_very_late_wake_shortens_warmup_and_flags_it():
    sm = duty()
    sm.tick(0)
    sm.tick(90000)
    sm.poll_report(90000)
    assert sm.tick(350000) == WAKE  # 50 s late: a full warm-up would leave 10 s of 60
    assert sm.next_deadline_ms == 360000  # half the window kept
    sm.on_sample(s(10), 361000)
    sm.tick(390000)
    agg = sm.poll_report(390000)
    assert agg.flags == FLAG_WARMUP_SHORT and agg.n == 1


def test_missed_cycles_are_skipped_and_grid_kept():
    sm = duty()
    sm.tick(0)
    sm.tick(90000)
    assert sm.tick(1000000) == []  # 3 cycles later, past this cycle's window (900000..990000)
    assert sm.state == SLEEP and sm.next_deadline_ms == 1200000
    assert sm.cycles_skipped == 3
    assert sm.tick(1200000) == WAKE


def test_on_time_counts_awake_seconds():
    sm = duty()
    for k in range(3):
        t0 = k * 300000
        sm.tick(t0)
        sm.tick(t0 + 30000)
        sm.tick(t0 + 90000)
    assert sm.on_time_s(900000) == 270
    sm.tick(900000)
    assert sm.on_time_s(915500) == 285
    c = sm.counters(915500)
    assert c["on_time_s"] == 285 and c["windows"] == 3 and c["windows_without_data"] == 3
    sm2 = Sampler(SamplerConfig(), counters=c)
    assert sm2.counters(0) == c


def test_continuous_mode_reports_every_interval_without_sleeping():
    sm = Sampler(SamplerConfig(report_interval_s=60, continuous=True))
    assert sm.tick(0) == WAKE
    assert sm.next_deadline_ms == 30000
    sm.on_sample(s(1), 10000)  # warm-up
    actions = []
    for t in range(30000, 240001, 1000):
        actions += sm.tick(t)
        sm.on_sample(s(t // 1000), t)
    assert actions == []
    reports = []
    while True:
        r = sm.poll_report(240000)
        if r is None:
            break
        reports.append(r)
    assert [(r.start_ms, r.end_ms) for r in reports] == [(30000, 60000), (60000, 120000),
                                                          (120000, 180000), (180000, 240000)]
    assert [r.n for r in reports] == [30, 60, 60, 60]
    assert reports[1].pm25_min == 60 and reports[1].pm25_max == 119
    assert sm.samples_discarded == 1
    assert sm.on_time_s(240000) == 240


def test_configure_takes_effect_at_next_cycle():
    sm = duty()
    sm.tick(0)
    sm.configure(SamplerConfig(report_interval_s=120, warmup_s=40, sample_window_s=20))
    assert sm.next_deadline_ms == 30000  # current cycle unchanged
    sm.tick(30000)
    sm.tick(90000)
    assert sm.next_deadline_ms == 300000
    sm.tick(300000)
    assert sm.next_deadline_ms == 340000
    sm.tick(340000)
    assert sm.tick(360000) == SLEEP_A
    assert sm.next_deadline_ms == 420000


def test_switch_continuous_to_duty_at_a_report_boundary():
    sm = Sampler(SamplerConfig(report_interval_s=60, continuous=True))
    sm.tick(0)
    sm.tick(30000)
    sm.configure(SamplerConfig(report_interval_s=120, warmup_s=30, sample_window_s=30))
    assert sm.tick(60000) == []  # sensor already on: no wake needed
    assert sm.state == WARMUP and sm.next_deadline_ms == 90000
    sm.tick(90000)
    assert sm.tick(120000) == SLEEP_A
    assert sm.next_deadline_ms == 180000


def test_phase_puts_the_grid_at_a_random_phase():
    # poles that boot together must not report together for ever: the first window is longer
    # by the node's phase (samples - and the self-test - come as quick as ever), then the grid
    # runs from there
    sm = duty()
    sm.phase_ms = 100000
    assert sm.tick(1000) == WAKE
    assert (sm.state, sm.next_deadline_ms) == (WARMUP, 31000)
    sm.tick(31000)
    assert sm.state == SAMPLE and sm.next_deadline_ms == 191000
    assert sm.tick(191000) == SLEEP_A and sm.poll_report(191000) is not None
    assert (sm.state, sm.next_deadline_ms, sm.phase_ms) == (SLEEP, 401000, 0)
    assert sm.tick(401000) == WAKE
    sm.tick(431000)
    assert sm.tick(491000) == SLEEP_A and sm.poll_report(491000) is not None
    assert sm.next_deadline_ms == 701000  # on a 300 s grid from 101 s


def test_phase_in_continuous_mode_lengthens_the_first_window_once():
    sm = Sampler(SamplerConfig(report_interval_s=60, warmup_s=30, continuous=True))
    sm.phase_ms = 20000
    assert sm.tick(0) == WAKE
    sm.tick(30000)
    assert sm.poll_report(60000) is None and sm.next_deadline_ms == 80000
    sm.tick(80000)
    assert sm.poll_report(80000) is not None and sm.next_deadline_ms == 140000
