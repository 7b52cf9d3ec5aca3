"""Offered load for throughput verification on the virtual rig (config sim.offered_interval_s):
one synthetic reading every interval_s, created on a whole wall-clock second so its timestamp
is exact, marked FLAG_SYNTHETIC (fleet/sim/verify.py counts them), through the node's own
ring/mesh/uplink path, once the node knows wall time. Imported by firmware/startup.py tasks()
only when the config asks for it: a board never carries it."""
import asyncio

from protocol.frames import FLAG_SYNTHETIC


class _Synthetic:
    """A made-up aggregate (values derived from the time)."""

    def __init__(self, t):
        self.pm1 = 100 + t % 50
        self.pm25 = 150 + t % 70
        self.pm10 = 200 + t % 90
        self.pm25_min = self.pm25_max = self.pm25
        self.rh = 60
        self.temp = 220
        self.n = 1
        self.flags = FLAG_SYNTHETIC


async def offered_load(node, interval_s, for_s=0):
    """Run for for_s seconds (0: for ever) from the moment the node knows wall time (from the
    mesh or its RTC): each reading is made on a whole second of the node's wall clock, so its
    timestamp is exact; `node` is a firmware.node.Node."""
    phase = node.node_id % interval_s
    while not node.wall_ms():
        await asyncio.sleep_ms(200)
    end_ms = node.now_ms() + for_s * 1000
    while not for_s or node.now_ms() < end_ms:
        ms = node.wall_ms()
        sec = ms // 1000 + 1
        while sec % interval_s != phase:
            sec += 1
        await asyncio.sleep_ms(sec * 1000 - ms)
        seq = node._append(sec, _Synthetic(sec))
        # one line per reading made, as for a sensor reading: the rig's independent count of
        # what each node issued (fleet/sim/verify.py made_by_node)
        print("load", "reading seq=%d" % seq)
        node.wake.set()
