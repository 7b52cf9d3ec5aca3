"""The virtual rig's HAL: the same shape as firmware/hal/esp32.py, on the MicroPython unix
port. The radio is firmware/hal/sim_radio.py (loopback UDP to the medium), the sensor UART is
a simulated PMS5003 emitting real byte frames (firmware/hal/simsensor.py), flash is the
process's directory. Watchdog, reset and reset cause are the board's `machine` module, as on
an ESP32: on the virtual rig fleet/sim/node_fs/_rignode.py (the rig keeps the watchdog and
restarts the node with the cause), on a virtual board fleet/sim/board_fs/_vmachine.py. On a bare
unix port without machine.WDT, an in-process task stands in (it ends the process).
"""
import asyncio
import gc
import time

from firmware.compat import ticks_diff, ticks_ms
from firmware.hal.sim_radio import SimRadio
from firmware.hal.simsensor import SimPMS5003

_FRAME_PERIOD_MS = 1000  # a PMS5003 in active mode sends a frame about every second


class SimUart:
    """The sensor's UART: commands go to the simulated sensor; read_some() returns the bytes it
    sent since the last read, paced like a 9600-baud line."""

    def __init__(self, sensor):
        self.sensor = sensor

    def write(self, data):
        self.sensor.write(data, int(time.time()))

    async def read_some(self):
        await asyncio.sleep_ms(_FRAME_PERIOD_MS)
        return self.sensor.poll(int(time.time()))


class SimHal:
    virtual = True

    def __init__(self, cfg, fs, root="."):
        sim = cfg.sim
        self.fs = fs
        self.mac = bytes(sim["mac"])
        self.radio = SimRadio(self.mac, sim["my_port"], sim["medium_port"])
        seed = sim.get("seed", 1)
        noise = sim.get("sensor_noise_per_mille", 5)
        self.uart = SimUart(SimPMS5003(seed, cfg.node_id, noise, th=(cfg.sensor == "pms5003t")))
        self._wdt = None
        self._wdt_timeout_ms = None
        self._wdt_fed = ticks_ms()

    def wdt_start(self, timeout_ms):
        from firmware import boot

        self._wdt = boot.start_watchdog(timeout_ms)
        if self._wdt is not None:
            return
        self._wdt_timeout_ms = timeout_ms
        self._wdt_fed = ticks_ms()
        asyncio.create_task(self._wdt_task())

    def wdt_feed(self):
        if self._wdt is not None:
            self._wdt.feed()
        self._wdt_fed = ticks_ms()

    async def _wdt_task(self):
        while True:
            await asyncio.sleep_ms(1000)
            if ticks_diff(ticks_ms(), self._wdt_fed) > (self._wdt_timeout_ms or 0):
                print("wdt", "watchdog expired: resetting")
                self.reset()

    def time_s(self):
        return int(time.time())  # the unix port's epoch is 1970

    def time_ms(self):
        return time.time_ns() // 1000000

    def set_time_s(self, unix_s):
        pass  # the host clock is the RTC

    def mem_free(self):
        return gc.mem_free()

    def reset(self):
        from firmware import boot

        boot.clear_crashes(self.fs)  # a planned reset: the boots before it were no crash loop
        boot.hard_reset()  # machine.reset(); SystemExit where the port has none

    def reset_cause(self):
        from firmware import boot

        return boot.reset_cause()

    async def uplink(self, ssid, password, timeout_ms=20000):
        return True  # loopback: nothing to join
