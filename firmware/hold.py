"""Readings made while the node has no wall-clock time (firmware/node.py _stamp): an RTC starts
at its epoch and a gateway's NTP time reaches nodes in beacons, so a reading stamped 0 would
look current at the collector. They wait as ring records (the seq field holds when each was
made, now_ms // 1000; t_s 0: 48 bytes of heap each in two small blocks, where an Aggregate takes
~140), at most UNSTAMPED_MAX of them; when full the oldest goes, counted in readings_lost and
logged, never silently. Once time is known they are stamped by when they were made, oldest
first, before the reading that found the time.

Imported only while readings wait (node.py drops it after each call): a node with time - all
of them, once a gateway is heard - keeps none of this in its heap."""
from firmware import ring as ring_mod


class _Held:
    """The fields ring.append reads, from a held ring record (reused while stamping)."""

    def load(self, rec):
        self.pm1, self.pm25, self.pm10, self.rh, self.temp, self.n, self.flags = rec[2:]


def hold(node, agg, now, cap, log):
    """Keep report `agg` (made at now_ms `now`) until wall time is known; at most `cap` wait."""
    held = node.unstamped
    if len(held) >= cap:
        held.pop(0)
        node.readings_lost += 1
        log("node", "no wall time yet and %d readings held: the oldest is lost (%d lost since boot)"
            % (cap, node.readings_lost))
    held.append(ring_mod.pack_record(now // 1000, 0, agg.pm1, agg.pm25, agg.pm10, agg.rh, agg.temp, agg.n,
                                     agg.flags))


def release(node, wall, now, log):
    """Wall time `wall` is known at now_ms `now`: store every held reading stamped by when it was made."""
    held = node.unstamped
    now_s = now // 1000
    h = _Held()
    for rec in held:
        r = ring_mod.unpack_record(rec)
        if r is not None:  # RAM: always intact
            h.load(r)
            node._store(wall - (now_s - r[0]), h)
    log("node", "wall time known: %d held readings stamped" % len(held))
    node.unstamped = []
