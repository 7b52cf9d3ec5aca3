"""Sensor duty cycle and aggregation (sans-IO).

Rules
-----
- Time comes in as `now_ms`: a monotonically increasing int from the shell (the shell
  unwraps ticks). Nothing here reads a clock, sleeps or touches the UART.
- Every entry point (`tick`, `on_sample`, `on_checksum_errors`, `poll_report`) first advances
  the state machine to `now_ms`; actions produced on the way queue until the next `tick`.
- Duty cycle: a cycle of `report_interval_s` starts at t0 with a wake; samples are taken from
  t0 + warmup_s to t0 + warmup_s + sample_window_s, then the sensor sleeps and the window's
  `Aggregate` is ready. Cycles stay on their grid (t0 + k * interval) even when ticks are late.
- `phase_ms` (set before the first tick; 0..interval) puts the grid at a random phase: the
  poles of a lighting circuit boot in the same second, and without it every one of them
  reports in the same second, every interval, for as long as they run (the relays near a
  gateway overflow). The first window is longer by phase_ms (the grid runs from t0 +
  phase_ms): samples, and the node's self-test, come as quick as ever after boot; the first
  report up to one interval later (the sensor stays on that much longer, once per boot).
- Continuous: one wake, one warm-up, then the sensor stays on; a report closes every interval.
- Samples outside the sampling window (asleep, warming up) are discarded and counted.
- A late wake (the shell ticked late) still leaves a full warm-up when it can; when waiting
  the full warm-up would leave less than half the window, sampling starts earlier and the
  report carries FLAG_WARMUP_SHORT.

State table
-----------

| state  | when                          | next   | actions    | and                       |
|--------|-------------------------------|--------|------------|---------------------------|
| IDLE   | first call                    | WARMUP | ("wake",)  | cycle t0 = now            |
| SLEEP  | now >= next cycle start       | WARMUP | ("wake",)  | pending config applied    |
| WARMUP | now >= sample start           | SAMPLE |            | window opens              |
| SAMPLE | now >= window end (duty)      | SLEEP  | ("sleep",) | report ready              |
| SAMPLE | now >= window end (continuous)| SAMPLE |            | report ready, next window |

All arithmetic is integer: PM in 0.1 ug/m3, RH in %, temperature in 0.1 C.
"""
from firmware.compat import const
from protocol.frames import FLAG_CHECKSUM, FLAG_HIGH_RH, FLAG_SENSOR_ERROR, FLAG_WARMUP_SHORT

HIGH_RH_PCT = const(75)
MIN_WARMUP_S = const(30)  # the PMS5003 needs 30 s after wake for stable readings
MAX_WARMUP_S = const(600)
MAX_REPORT_INTERVAL_S = const(86400)

IDLE = "idle"
SLEEP = "sleep"
WARMUP = "warmup"
SAMPLE = "sample"

ACTION_WAKE = ("wake",)
ACTION_SLEEP = ("sleep",)

_CONFIG_KEYS = ("report_interval_s", "warmup_s", "sample_window_s", "continuous")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


class SamplerConfig:
    """Validated sampler settings.

    report_interval_s: one report per interval (1..86400); warmup_s: seconds between wake and
    the first sample kept (30..600); sample_window_s: seconds of sampling per cycle (>= 1; duty
    cycle needs warmup_s + sample_window_s <= report_interval_s); continuous: keep the sensor
    on (sample_window_s is then unused, report_interval_s must exceed warmup_s).
    Raises ValueError naming the bad value and the allowed range.
    """

    def __init__(self, report_interval_s=300, warmup_s=30, sample_window_s=60, continuous=False):
        for name, v in (("report_interval_s", report_interval_s), ("warmup_s", warmup_s),
                        ("sample_window_s", sample_window_s)):
            if not _is_int(v):
                raise ValueError("%s must be an int number of seconds, got %r" % (name, v))
        if not isinstance(continuous, bool):
            raise ValueError("continuous must be True or False, got %r" % (continuous,))
        if not 1 <= report_interval_s <= MAX_REPORT_INTERVAL_S:
            raise ValueError("report_interval_s must be 1..%d, got %d" % (MAX_REPORT_INTERVAL_S, report_interval_s))
        if not MIN_WARMUP_S <= warmup_s <= MAX_WARMUP_S:
            raise ValueError("warmup_s must be %d..%d (the PMS5003 needs 30 s after wake), got %d"
                             % (MIN_WARMUP_S, MAX_WARMUP_S, warmup_s))
        if sample_window_s < 1:
            raise ValueError("sample_window_s must be >= 1, got %d" % sample_window_s)
        if continuous:
            if report_interval_s <= warmup_s:
                raise ValueError("report_interval_s (%d) must exceed warmup_s (%d) in continuous mode"
                                 % (report_interval_s, warmup_s))
        elif warmup_s + sample_window_s > report_interval_s:
            raise ValueError("warmup_s + sample_window_s (%d + %d) must be <= report_interval_s (%d); "
                             "lengthen the interval or use continuous mode"
                             % (warmup_s, sample_window_s, report_interval_s))
        self.report_interval_s = report_interval_s
        self.warmup_s = warmup_s
        self.sample_window_s = sample_window_s
        self.continuous = continuous

    @classmethod
    def from_dict(cls, d):
        """Build a config from a dict of the constructor's keyword names; raises ValueError."""
        for k in d:
            if k not in _CONFIG_KEYS:
                raise ValueError("unknown sampler setting %r (known: %s)" % (k, ", ".join(_CONFIG_KEYS)))
        return cls(**d)

    def as_dict(self):
        """Return the settings as a dict (for persisting, and for `from_dict`)."""
        return {
            "report_interval_s": self.report_interval_s,
            "warmup_s": self.warmup_s,
            "sample_window_s": self.sample_window_s,
            "continuous": self.continuous,
        }

    def replace(self, key, value):
        """Return a new validated config with one setting changed (e.g. from an OP_SET command).

        `continuous` accepts 0/1 as well as False/True. Raises ValueError.
        """
        d = self.as_dict()
        if key not in d:
            raise ValueError("unknown sampler setting %r (known: %s)" % (key, ", ".join(_CONFIG_KEYS)))
        if key == "continuous" and _is_int(value) and value in (0, 1):
            value = value == 1
        d[key] = value
        return SamplerConfig.from_dict(d)


class Aggregate:
    """One report: the samples of one window reduced to integers.

    pm1, pm25, pm10: means in 0.1 ug/m3 (0 when unknown); pm25_min, pm25_max; rh: mean % (0 if
    unknown); temp: mean 0.1 C (0 if unknown); n: samples; flags: FLAG_* bits; start_ms, end_ms:
    the sampling window in the shell's now_ms clock.
    """

    def __init__(self, pm1, pm25, pm10, pm25_min, pm25_max, rh, temp, n, flags, start_ms, end_ms):
        self.pm1 = pm1
        self.pm25 = pm25
        self.pm10 = pm10
        self.pm25_min = pm25_min
        self.pm25_max = pm25_max
        self.rh = rh
        self.temp = temp
        self.n = n
        self.flags = flags
        self.start_ms = start_ms
        self.end_ms = end_ms

    def __repr__(self):
        return ("Aggregate(pm1=%d, pm25=%d, pm10=%d, pm25_min=%d, pm25_max=%d, rh=%d, temp=%d, n=%d, "
                "flags=%d, start_ms=%d, end_ms=%d)" % (
                    self.pm1, self.pm25, self.pm10, self.pm25_min, self.pm25_max, self.rh, self.temp,
                    self.n, self.flags, self.start_ms, self.end_ms))


def _mean(total, n):
    # Round half up, correct for negative totals too (floor division).
    return (2 * total + n) // (2 * n) if n else 0


class _Window:
    """Running sums of one sampling window."""

    def __init__(self, start_ms, warmup_short):
        self.start_ms = start_ms
        self.warmup_short = warmup_short
        self.n = 0
        self.pm1_sum = 0
        self.pm1_n = 0
        self.pm25_sum = 0
        self.pm10_sum = 0
        self.pm10_n = 0
        self.pm25_min = 0
        self.pm25_max = 0
        self.rh_sum = 0
        self.rh_n = 0
        self.temp_sum = 0
        self.temp_n = 0
        self.checksum_errors = 0

    def add(self, s):
        pm25 = s.pm25
        if self.n == 0 or pm25 < self.pm25_min:
            self.pm25_min = pm25
        if self.n == 0 or pm25 > self.pm25_max:
            self.pm25_max = pm25
        self.n += 1
        self.pm25_sum += pm25
        if s.pm1 is not None:
            self.pm1_sum += s.pm1
            self.pm1_n += 1
        if s.pm10 is not None:
            self.pm10_sum += s.pm10
            self.pm10_n += 1
        if s.rh is not None:
            self.rh_sum += s.rh
            self.rh_n += 1
        if s.temp is not None:
            self.temp_sum += s.temp
            self.temp_n += 1

    def close(self, end_ms):
        flags = 0
        if self.n == 0:
            flags |= FLAG_SENSOR_ERROR
        if self.rh_n and self.rh_sum > HIGH_RH_PCT * self.rh_n:
            flags |= FLAG_HIGH_RH
        if self.checksum_errors:
            flags |= FLAG_CHECKSUM
        if self.warmup_short:
            flags |= FLAG_WARMUP_SHORT
        return Aggregate(
            _mean(self.pm1_sum, self.pm1_n), _mean(self.pm25_sum, self.n), _mean(self.pm10_sum, self.pm10_n),
            self.pm25_min, self.pm25_max, _mean(self.rh_sum, self.rh_n), _mean(self.temp_sum, self.temp_n),
            self.n, flags, self.start_ms, end_ms)


class Sampler:
    """Duty-cycles the PM sensor and reduces its samples to one `Aggregate` per interval.

    Sampler(config=None, counters=None): config is a SamplerConfig (default: 300 s interval,
    30 s warm-up, 60 s window); counters a dict from `counters()` saved before a power loss.
    phase_ms: see the module docstring (the node sets it from its own random generator).
    """

    def __init__(self, config=None, counters=None):
        self.config = config if config is not None else SamplerConfig()
        self._pending = None
        self.state = IDLE
        self.next_deadline_ms = None  # None: tick as soon as possible
        self._actions = []
        self._reports = []
        self._window = None
        self._cycle_ms = 0  # start of the current/next cycle (duty) or current window end (continuous)
        self.phase_ms = 0  # the grid's phase, taken at the first tick (then 0)
        self._sample_ms = 0
        self._end_ms = 0
        self._awake_since_ms = None
        self._short = False
        # Health counters (survive power loss through counters()/restore_counters()).
        self.on_time_ms = 0
        self.checksum_errors = 0
        self.windows = 0
        self.windows_without_data = 0
        self.samples_discarded = 0
        self.cycles_skipped = 0
        if counters:
            self.restore_counters(counters)

    # -- inputs ---------------------------------------------------------------------------

    def tick(self, now_ms):
        """Advance to now_ms; return the list of actions to carry out ([("wake",)], ...).

        Afterwards `next_deadline_ms` says when to tick again.
        """
        self._advance(now_ms)
        actions = self._actions
        self._actions = []
        return actions

    def on_sample(self, sample, now_ms):
        """Take one sensor sample (pm1/pm25/pm10/rh/temp attributes). Returns True if kept.

        Samples while asleep or warming up, or without a pm25 value, are discarded.
        """
        self._advance(now_ms)
        w = self._window
        if self.state != SAMPLE or w is None or not _is_int(sample.pm25):
            self.samples_discarded += 1
            return False
        w.add(sample)
        return True

    def on_checksum_errors(self, count, now_ms):
        """Record `count` new checksum errors seen by the parser (the shell passes the delta)."""
        if count <= 0:
            return
        self._advance(now_ms)
        self.checksum_errors += count
        w = self._window
        if self.state == SAMPLE and w is not None:
            w.checksum_errors += count

    def configure(self, config):
        """Use `config` (a SamplerConfig) from the next cycle (duty) or report (continuous) on."""
        self._pending = config

    # -- outputs --------------------------------------------------------------------------

    def poll_report(self, now_ms):
        """Return the next finished `Aggregate`, or None. Each window is returned once."""
        self._advance(now_ms)
        if self._reports:
            return self._reports.pop(0)
        return None

    def on_time_s(self, now_ms):
        """Total seconds the sensor has been awake (its on-hours), including now."""
        ms = self.on_time_ms
        if self._awake_since_ms is not None:
            ms += now_ms - self._awake_since_ms
        return ms // 1000

    def counters(self, now_ms):
        """Return the health counters as a dict of ints (persist it; pass back on boot)."""
        return {
            "on_time_s": self.on_time_s(now_ms),
            "checksum_errors": self.checksum_errors,
            "windows": self.windows,
            "windows_without_data": self.windows_without_data,
            "samples_discarded": self.samples_discarded,
            "cycles_skipped": self.cycles_skipped,
        }

    def restore_counters(self, d):
        """Load counters saved by `counters()`; missing keys count from zero."""
        self.on_time_ms = d.get("on_time_s", 0) * 1000
        self.checksum_errors = d.get("checksum_errors", 0)
        self.windows = d.get("windows", 0)
        self.windows_without_data = d.get("windows_without_data", 0)
        self.samples_discarded = d.get("samples_discarded", 0)
        self.cycles_skipped = d.get("cycles_skipped", 0)

    # -- the state machine ----------------------------------------------------------------

    def _apply_pending(self):
        if self._pending is not None:
            self.config = self._pending
            self._pending = None

    def _wake(self, now_ms, t0):
        cfg = self.config
        warmup_ms = cfg.warmup_s * 1000
        if self._awake_since_ms is None:
            self._awake_since_ms = now_ms
            self._actions.append(ACTION_WAKE)
        self._cycle_ms = t0
        if cfg.continuous:
            self._sample_ms = now_ms + warmup_ms
            self._end_ms = t0 + cfg.report_interval_s * 1000 + self.phase_ms
            self.phase_ms = 0
            short = False
            if self._sample_ms >= self._end_ms:
                # Woken late in the interval: the first window runs to the following boundary.
                self._end_ms += cfg.report_interval_s * 1000
        else:
            window_ms = cfg.sample_window_s * 1000
            self._end_ms = t0 + warmup_ms + window_ms + self.phase_ms
            self._cycle_ms = t0 + self.phase_ms  # the grid from there on
            self.phase_ms = 0
            full = now_ms + warmup_ms
            latest = self._end_ms - window_ms // 2
            start = full if full < latest else latest
            nominal = t0 + warmup_ms
            self._sample_ms = start if start > nominal else nominal
            short = self._sample_ms < full
        self._short = short
        self.state = WARMUP

    def _sleep(self, now_ms):
        if self._awake_since_ms is not None:
            self.on_time_ms += now_ms - self._awake_since_ms
            self._awake_since_ms = None
        self._actions.append(ACTION_SLEEP)

    def _close(self, end_ms):
        w = self._window
        if w is None:  # cannot happen in SAMPLE; keeps the type checker honest
            return
        agg = w.close(end_ms)
        self._window = None
        self.windows += 1
        if agg.n == 0:
            self.windows_without_data += 1
        self._reports.append(agg)
        # Bounded: a shell that never polls keeps only the latest few reports.
        if len(self._reports) > 4:
            self._reports.pop(0)

    def _advance(self, now_ms):
        while True:
            st = self.state
            if st == IDLE:
                self._apply_pending()
                self._wake(now_ms, now_ms)
            elif st == SLEEP:
                if now_ms < self._cycle_ms:
                    break
                self._apply_pending()
                cfg = self.config
                interval_ms = cfg.report_interval_s * 1000
                t0 = self._cycle_ms
                if cfg.continuous:
                    self._wake(now_ms, t0)
                    continue
                # Late by whole cycles (the shell was blocked): skip them, stay on the grid.
                skip = (now_ms - t0) // interval_ms
                if skip:
                    t0 += skip * interval_ms
                    self.cycles_skipped += skip
                if now_ms >= t0 + (cfg.warmup_s + cfg.sample_window_s) * 1000:
                    # Too late to sample anything this cycle.
                    self.cycles_skipped += 1
                    self._cycle_ms = t0 + interval_ms
                    continue
                self._wake(now_ms, t0)
            elif st == WARMUP:
                if now_ms < self._sample_ms:
                    break
                self._window = _Window(self._sample_ms, self._short)
                self.state = SAMPLE
            else:  # SAMPLE
                if now_ms < self._end_ms:
                    break
                end_ms = self._end_ms
                cfg = self.config
                if cfg.continuous:
                    interval_ms = cfg.report_interval_s * 1000
                    # Reports stay on the grid; a late shell merges the missed intervals.
                    while end_ms + interval_ms <= now_ms:
                        end_ms += interval_ms
                    self._close(end_ms)
                    if self._pending is not None and not self._pending.continuous:
                        self._apply_pending()
                        self.state = SLEEP
                        self._cycle_ms = end_ms
                        continue
                    self._apply_pending()
                    self._end_ms = end_ms + self.config.report_interval_s * 1000
                    self._window = _Window(end_ms, False)
                else:
                    self._close(end_ms)
                    self._sleep(now_ms)
                    self.state = SLEEP
                    self._cycle_ms = self._cycle_ms + cfg.report_interval_s * 1000
        self._set_deadline()

    def _set_deadline(self):
        st = self.state
        if st == SLEEP:
            self.next_deadline_ms = self._cycle_ms
        elif st == WARMUP:
            self.next_deadline_ms = self._sample_ms
        else:
            self.next_deadline_ms = self._end_ms
