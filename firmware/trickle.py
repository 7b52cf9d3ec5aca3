"""Trickle timer (RFC 6206) and the small PRNG the mesh core draws its jitter from (sans-IO).

Rules (RFC 6206 section 4.2), with I the current interval:
1. start(now) begins an interval of I = Imin.
2. At the start of each interval: c = 0 and t is drawn uniformly from [I/2, I).
3. heard_consistent() increments c.
4. At time t the timer fires: poll() returns True once, when c < k (k = 0 means never
   suppress: RFC 6206's k = infinity, what link estimation wants - see firmware/mesh.py).
5. When the interval ends, I doubles up to Imax = Imin * 2**doublings and a new one starts.
6. reset(now) on an inconsistency: when I > Imin, I = Imin and a new interval starts now;
   when I == Imin nothing happens (the timer is already as fast as it goes).

Time is an argument (`now_ms`, monotonic int); nothing here reads a clock. The PRNG is
xorshift32 so CPython and MicroPython draw the same numbers from the same seed (on an ESP32
values above 2**30 are heap ints: a few allocations per beacon interval, harmless).
"""

_MASK32 = 0xFFFFFFFF


class Xorshift32:
    """Marsaglia xorshift32. `next()` returns 1..2**32-1; `below(n)` returns 0..n-1."""

    def __init__(self, seed):
        s = seed & _MASK32
        self.state = s if s else 0x9E3779B9  # zero is the one state xorshift cannot leave

    def next(self):
        """Return the next 32-bit value (never 0)."""
        x = self.state
        x ^= (x << 13) & _MASK32
        x ^= x >> 17
        x ^= (x << 5) & _MASK32
        self.state = x
        return x

    def below(self, n):
        """Return an int in 0..n-1 (n >= 1); multiply-shift, no modulo bias worth noting."""
        return (self.next() * n) >> 32


class Trickle:
    """RFC 6206 timer. Fields read by callers: interval_ms (current I), next_fire_ms (the
    earliest time poll() has something to do), count (c), started."""

    def __init__(self, imin_ms, doublings, k, rng):
        if imin_ms < 2 or doublings < 0 or k < 0:
            raise ValueError("trickle: expected imin_ms >= 2, doublings >= 0, k >= 0; got %d, %d, %d"
                             % (imin_ms, doublings, k))
        self.imin_ms = imin_ms
        self.imax_ms = imin_ms << doublings
        self.k = k
        self.rng = rng if isinstance(rng, Xorshift32) else Xorshift32(rng)
        self.interval_ms = imin_ms
        self.count = 0
        self.started = False
        self._t_ms = 0  # fire time of the current interval
        self._end_ms = 0  # end of the current interval
        self._fired = True
        self.due = 0  # a one-off transmission's time (wake()), 0 = none
        self.next_fire_ms = 0

    def _begin(self, now_ms):
        i = self.interval_ms
        half = i >> 1
        self.count = 0
        self._t_ms = now_ms + half + self.rng.below(i - half)
        self._end_ms = now_ms + i
        self._fired = False
        self.next_fire_ms = self._t_ms

    def start(self, now_ms):
        """(Re)start with I = Imin now, whatever the state (boot, or a forced restart)."""
        self.started = True
        self.interval_ms = self.imin_ms
        self._begin(now_ms)

    def reset(self, now_ms):
        """Inconsistency heard (rule 6): back to Imin unless already there. Starts the timer
        when it was not started."""
        if not self.started:
            self.start(now_ms)
        elif self.interval_ms > self.imin_ms:
            self.interval_ms = self.imin_ms
            self._begin(now_ms)

    def wake(self, now_ms):
        """News worth one transmission but no inconsistency (not in RFC 6206): transmit once
        within [Imin/2, Imin) unless the timer fires by then anyway; I is unchanged, so the
        steady rate stays. Starts the timer when it was not started."""
        if not self.started:
            self.start(now_ms)
            return
        half = self.imin_ms >> 1
        t = now_ms + half + self.rng.below(self.imin_ms - half)
        if (not self._fired and self._t_ms <= t) or (self.due and self.due <= t):
            return
        self.due = t
        if t < self.next_fire_ms:
            self.next_fire_ms = t

    def heard_consistent(self):
        """A consistent transmission was heard (rule 3)."""
        self.count += 1

    def poll(self, now_ms):
        """Advance to now_ms; return True when it is time to transmit (at most once per call)."""
        if not self.started or now_ms < self.next_fire_ms:
            return False
        send = False
        x = self.due
        if x and now_ms >= x:
            self.due = x = 0
            send = True
        if not self._fired and now_ms >= self._t_ms:
            self._fired = True
            send = self.k == 0 or self.count < self.k
        while now_ms >= self._end_ms:
            # Late polls skip whole intervals: they fire at most once, which is what a
            # timer that could not run would have done anyway.
            i = self.interval_ms << 1
            self.interval_ms = i if i < self.imax_ms else self.imax_ms
            self._begin(self._end_ms)
            if now_ms >= self._t_ms:
                self._fired = True
                if not send:
                    send = self.k == 0 or self.count < self.k
        i = self._end_ms if self._fired else self._t_ms
        self.next_fire_ms = x if x and x < i else i
        return send
