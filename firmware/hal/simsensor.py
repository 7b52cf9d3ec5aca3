"""Simulated Plantower PMS5003(T): real sensor byte frames from a plausible PM2.5 series.

Everything is integer arithmetic on 32-bit hashes, so CPython and MicroPython produce the
same bytes. The series is a pure function of (seed, node_id, unix time in seconds):

- diurnal baseline for Medellin (local time = UTC-5): night ~11-13 ug/m3, rush-hour peaks
  07-09 (~38) and 17-19 (~34); Saturdays x0.85, Sundays x0.70; a day-to-day factor 0.80-1.25
  (interpolated across the day so midnight has no step);
- city-wide pollution episodes (valley inversions): on ~35 % of days in Feb-Apr and Oct-Nov,
  ~8 % otherwise, PM2.5 rises by 42-65 ug/m3 on top of 1.3x the baseline for 4-12 hours from
  a start between 05:00 and 14:45 (one-hour ramps), i.e. well above 55 ug/m3 for hours;
- per node: a factor 0.85-1.20 and an offset -2..+3 ug/m3; per second: +-8 % noise;
- PM1 = 0.60-0.70 x PM2.5, PM10 = 1.30-1.80 x PM2.5 (ratios drift hourly);
- PMS5003T (th=True): temperature 17-28 C and RH 50-86 % with the usual inverse diurnal swing.

Line noise: with probability noise_per_mille/1000 per frame, one of: random garbage before the
frame, a corrupted data byte (checksum error), a truncated frame, or garbage holding a false
0x42 0x4D header. Which second gets noise is also a pure function of (seed, node_id, time).

The sensor's command side is modelled too (sleep/wake, active/passive, read), so the real
driver commands can drive it: `write(cmd_bytes, unix_s)`, then `poll(unix_s)` returns what
the sensor sent since the previous poll. Sans-IO: the caller supplies the time.
"""

_MASK = 0xFFFFFFFF
_LOCAL_OFFSET_S = -5 * 3600  # Colombia, UTC-5, no daylight saving

# Salts keep the hash streams of different quantities independent.
_S_DAY = 1
_S_EPISODE = 2
_S_NODE = 3
_S_NOISE = 4
_S_RATIO = 5
_S_LINE = 6
_S_TH = 7

# PM2.5 baseline by local hour on a weekday, 0.1 ug/m3.
_PM25_PROFILE = (
    130, 120, 115, 110, 120, 170, 260, 360, 380, 300, 230, 200,
    190, 180, 170, 175, 210, 300, 340, 290, 220, 180, 160, 145,
)
# Medellin: coolest and most humid before dawn, warmest early afternoon. 0.1 C and %.
_TEMP_PROFILE = (
    190, 185, 180, 177, 175, 173, 175, 190, 210, 230, 245, 258,
    268, 274, 276, 272, 262, 248, 232, 220, 210, 203, 198, 194,
)
_RH_PROFILE = (
    82, 83, 84, 85, 86, 86, 85, 80, 72, 65, 60, 56,
    53, 51, 50, 52, 56, 61, 67, 72, 76, 78, 80, 81,
)
_WARMUP_S = 30
_POLL_BACKLOG_S = 8  # a UART FIFO holds only a few frames


def _mix(x):
    # "lowbias32" integer hash (C. Wellons): full avalanche, 32-bit in and out.
    x &= _MASK
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK
    x ^= x >> 16
    return x


def _hash(seed, salt, a, b=0):
    return _mix(_mix(_mix(_mix(seed ^ 0x9E3779B9) ^ salt) + (a & _MASK)) ^ (b & _MASK))


class XorShift32:
    """Marsaglia's xorshift32 PRNG: identical streams on CPython and MicroPython."""

    def __init__(self, seed):
        self.state = (seed & _MASK) or 0x6D2B79F5

    def next(self):
        """Return the next 32-bit value."""
        x = self.state
        x ^= (x << 13) & _MASK
        x ^= x >> 17
        x ^= (x << 5) & _MASK
        self.state = x
        return x

    def randbytes(self, n):
        """Return n pseudo-random bytes."""
        out = bytearray(n)
        for i in range(n):
            out[i] = self.next() & 0xFF
        return bytes(out)


def _lerp_profile(table, sec_of_day):
    h = sec_of_day // 3600
    a = table[h]
    b = table[(h + 1) % 24]
    return a + (b - a) * (sec_of_day % 3600) // 3600


def _month_of(days):
    # Civil month (1..12) from days since 1970-01-01 (H. Hinnant's civil_from_days).
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    return mp + 3 if mp < 10 else mp - 9


def _checksum_tail(frame, n):
    total = 0
    for i in range(n):
        total += frame[i]
    frame[n] = (total >> 8) & 0xFF
    frame[n + 1] = total & 0xFF


class SimPMS5003:
    """A deterministic PMS5003 (th=False) or PMS5003T (th=True) for node `node_id`.

    SimPMS5003(seed, node_id, noise_per_mille=5, th=False). Raises ValueError for a
    noise_per_mille outside 0..1000.
    """

    def __init__(self, seed, node_id, noise_per_mille=5, th=False):
        if not 0 <= noise_per_mille <= 1000:
            raise ValueError("noise_per_mille must be 0..1000, got %r" % (noise_per_mille,))
        self.seed = seed & _MASK
        self.node_id = node_id
        self.noise_per_mille = noise_per_mille
        self.th = th
        h = _hash(self.seed, _S_NODE, node_id)
        self._node_pct = 85 + h % 36  # 85..120 %
        self._node_offset_dug = (h >> 8) % 51 - 20  # -2.0..+3.0 ug/m3
        # Command side: a PMS5003 powers up awake, in active mode.
        self.awake = True
        self.passive = False
        self._wake_s = None
        self._read_pending = False
        self._out = bytearray()
        self._cmd = bytearray()
        self._last_poll_s = None

    # -- the series ----------------------------------------------------------------------

    def _day_pct(self, day):
        return 80 + _hash(self.seed, _S_DAY, day) % 46  # 80..125 %

    def episode(self, day):
        """Return (start_s, duration_s, extra_dug) of the episode on local `day`, or None.

        day counts local days since 1970-01-01; start_s is seconds after local midnight.
        """
        h = _hash(self.seed, _S_EPISODE, day)
        month = _month_of(day)
        chance = 350 if month in (2, 3, 4, 10, 11) else 80
        if h % 1000 >= chance:
            return None
        start_s = (5 + (h >> 10) % 10) * 3600 + ((h >> 14) % 4) * 900
        duration_s = (4 + (h >> 16) % 9) * 3600
        extra_dug = 420 + (h >> 20) % 231
        return start_s, duration_s, extra_dug

    def _episode_ramp(self, day, sec):
        # Returns (ramp 0..3600, extra_dug) for the episode covering local (day, sec), if any.
        for d, rel in ((day, sec), (day - 1, sec + 86400)):
            ep = self.episode(d)
            if ep is None:
                continue
            t = rel - ep[0]
            if 0 <= t < ep[1]:
                ramp = t
                if ep[1] - t < ramp:
                    ramp = ep[1] - t
                if ramp > 3600:
                    ramp = 3600
                return ramp, ep[2]
        return 0, 0

    def pm25_dug(self, unix_s):
        """Return the PM2.5 the sensor sees at unix_s, in 0.1 ug/m3 (int, >= 0)."""
        local = unix_s + _LOCAL_OFFSET_S
        day = local // 86400
        sec = local % 86400
        v = _lerp_profile(_PM25_PROFILE, sec)
        wd = (day + 4) % 7  # 1970-01-01 was a Thursday; 0 = Sunday
        if wd == 0:
            v = v * 70 // 100
        elif wd == 6:
            v = v * 85 // 100
        d0 = self._day_pct(day)
        d1 = self._day_pct(day + 1)
        v = v * (d0 + (d1 - d0) * sec // 86400) // 100
        v = v * self._node_pct // 100 + self._node_offset_dug
        ramp, extra = self._episode_ramp(day, sec)
        if ramp:
            v += (v * 30 // 100 + extra) * ramp // 3600
        noise = _hash(self.seed, _S_NOISE, self.node_id, unix_s) % 161 - 80  # per mille
        v += v * noise // 1000
        return v if v > 0 else 0

    def temp_rh(self, unix_s):
        """Return (temperature in 0.1 C, RH in 0.1 %) at unix_s (PMS5003T words)."""
        local = unix_s + _LOCAL_OFFSET_S
        day = local // 86400
        sec = local % 86400
        hd = _hash(self.seed, _S_TH, day)
        hn = _hash(self.seed, _S_NOISE, self.node_id, unix_s) >> 8
        temp = _lerp_profile(_TEMP_PROFILE, sec) + hd % 31 - 15 + hn % 5 - 2
        rh = _lerp_profile(_RH_PROFILE, sec) + (hd >> 8) % 17 - 8
        rh = rh * 10 + (hn >> 4) % 10
        if rh < 200:
            rh = 200
        elif rh > 990:
            rh = 990
        return temp, rh

    # -- frames ----------------------------------------------------------------------------

    def frame_at(self, unix_s, scale_pct=100):
        """Return the clean 32-byte data frame the sensor sends at unix_s (pure function)."""
        pm25_dug = self.pm25_dug(unix_s) * scale_pct // 100
        hr = _hash(self.seed, _S_RATIO, self.node_id, unix_s // 3600)
        r1 = 60 + hr % 11  # PM1/PM2.5, %
        r10 = 130 + (hr >> 8) % 51  # PM10/PM2.5, %
        pm25 = (pm25_dug + 5) // 10
        pm1 = (pm25_dug * r1 + 500) // 1000
        pm10 = (pm25_dug * r10 + 500) // 1000
        n03 = 200 + 110 * pm25 + 40 * pm1
        n05 = n03 * 30 // 100
        n10 = n05 * 20 // 100 + pm1
        n25 = n10 * 12 // 100 + (pm10 - pm25)
        words = [
            _cf1(pm1), _cf1(pm25), _cf1(pm10), pm1, pm25, pm10,
            n03, n05, n10, n25, n25 * 30 // 100, n25 * 9 // 100, 0x9700,
        ]
        if self.th:
            temp, rh = self.temp_rh(unix_s)
            words[10] = temp & 0xFFFF
            words[11] = rh
        frame = bytearray(32)
        frame[0] = 0x42
        frame[1] = 0x4D
        frame[3] = 28
        for i in range(13):
            w = words[i]
            if w > 0xFFFF:
                w = 0xFFFF
            frame[4 + 2 * i] = w >> 8
            frame[5 + 2 * i] = w & 0xFF
        _checksum_tail(frame, 30)
        return bytes(frame)

    def noise_kind(self, unix_s):
        """Return the line fault injected at unix_s: None, "garbage", "corrupt", "truncate",
        or "false_header" (pure function of seed, node and time)."""
        h = _hash(self.seed, _S_LINE, self.node_id, unix_s)
        if h % 1000 >= self.noise_per_mille:
            return None
        return ("garbage", "corrupt", "truncate", "false_header")[(h >> 10) % 4]

    def bytes_for(self, unix_s, scale_pct=100):
        """Return the bytes on the line for the frame at unix_s, line noise included."""
        frame = self.frame_at(unix_s, scale_pct)
        kind = self.noise_kind(unix_s)
        if kind is None:
            return frame
        rng = XorShift32(_hash(self.seed, _S_LINE + 100, self.node_id, unix_s))
        if kind == "garbage":
            return rng.randbytes(1 + rng.next() % 24) + frame
        if kind == "corrupt":
            # Flip bits of one data byte: the 16-bit sum must then differ.
            out = bytearray(frame)
            i = 4 + rng.next() % 26
            out[i] ^= 1 + rng.next() % 255
            return bytes(out)
        if kind == "truncate":
            return frame[:1 + rng.next() % 31]
        # A false header claiming a full data frame, then a little garbage.
        return b"\x42\x4d\x00\x1c" + rng.randbytes(rng.next() % 12) + frame

    # -- the command side --------------------------------------------------------------

    def write(self, data, unix_s=0):
        """Receive command bytes from the host (7-byte 0x42 0x4D frames); bad ones are ignored."""
        for b in data:
            cmd = self._cmd
            if not cmd and b != 0x42:
                continue
            cmd.append(b)
            if len(cmd) == 2 and b != 0x4D:
                self._cmd = bytearray(b"\x42") if b == 0x42 else bytearray()
                continue
            if len(cmd) == 7:
                self._cmd = bytearray()
                if ((cmd[0] + cmd[1] + cmd[2] + cmd[3] + cmd[4]) & 0xFFFF) == (cmd[5] << 8 | cmd[6]):
                    self._command(cmd[2], cmd[3] << 8 | cmd[4], unix_s)

    def _command(self, op, data, unix_s):
        if op == 0xE4:
            if data == 0:
                self.awake = False
                self._reply(op, data)
            elif not self.awake:
                self.awake = True
                self._wake_s = unix_s
        elif op == 0xE1:
            self.passive = data == 0
            self._reply(op, data)
        elif op == 0xE2 and self.passive and self.awake:
            self._read_pending = True

    def _reply(self, op, data):
        r = bytearray(8)
        r[0] = 0x42
        r[1] = 0x4D
        r[3] = 4
        r[4] = op
        r[5] = data & 0xFF
        _checksum_tail(r, 6)
        self._out += r

    def poll(self, unix_s):
        """Return the bytes the sensor sent since the previous poll, up to unix_s.

        Active mode: one frame per second (the last few seconds only, like a UART FIFO).
        Passive mode: one frame per read command. Asleep: nothing. During the first 30 s
        after a wake the readings ramp up from half their value (an unsettled fan).
        """
        out = bytes(self._out)
        self._out = bytearray()
        last = self._last_poll_s
        self._last_poll_s = unix_s
        if not self.awake:
            return out
        if self.passive:
            if self._read_pending:
                self._read_pending = False
                out += self.bytes_for(unix_s, self._scale(unix_s))
            return out
        first = unix_s if last is None else last + 1
        if first < unix_s - _POLL_BACKLOG_S + 1:
            first = unix_s - _POLL_BACKLOG_S + 1
        if self._wake_s is not None and first <= self._wake_s:
            first = self._wake_s + 1  # the first frame comes a second after the fan starts
        for t in range(first, unix_s + 1):
            out += self.bytes_for(t, self._scale(t))
        return out

    def _scale(self, unix_s):
        if self._wake_s is None:
            return 100
        dt = unix_s - self._wake_s
        if dt >= _WARMUP_S or dt < 0:
            return 100
        return 50 + 50 * dt // _WARMUP_S


def _cf1(atm):
    # CF=1 ("factory") equals atmospheric at low loads and reads higher above ~30 ug/m3.
    return atm if atm <= 30 else atm + (atm - 30) * 4 // 10
