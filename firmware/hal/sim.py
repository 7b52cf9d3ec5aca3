"""The virtual rig's HAL: the same shape as firmware/hal/esp32.py, on the MicroPython unix
port. The radio is firmware/hal/sim_radio.py (loopback UDP to the medium), the sensor UART is
a simulated PMS5003 emitting real byte frames (firmware/hal/simsensor.py), flash is the
process's directory. Watchdog, reset and reset cause are the board's `machine` module, as on
an ESP32: on the virtual rig fleet/sim/node_fs/_rignode.py (the rig keeps the watchdog and
restarts the node with the cause), on a virtual board fleet/sim/board_fs/_vmachine.py. On a bare
unix port without machine.WDT, an in-process task stands in (it ends the process).

Clock and Wi-Fi, as strict as the board:
- The RTC starts unset at every start (a power cycle): time_s() and time_ms() read 0 (the port's
  epoch) until set_time_s() or ntp() sets them. Nodes learn wall time from the mesh's beacons.
- The Wi-Fi station (a gateway's uplink, hal.wifi(): firmware/hal/sim_wifi.py, imported by
  gateways only) is down until it joins the simulated access point of the rig.
- ESP-NOW works only on the station's channel: the HAL tells the medium its channel (datagram
  b"C" channel(1), see fleet/sim/medium.py), which then carries frames only between nodes on the
  same channel. A gateway whose station follows an AP to another channel no longer hears its mesh.
"""
import asyncio
import gc
import time

from firmware.compat import boot_call, ticks_diff, ticks_ms
from firmware.hal import ESPNOW_RXBUF
from firmware.hal.sim_radio import SimRadio
from firmware.hal.simsensor import SimPMS5003


async def _sleep_ms(ms):
    if hasattr(asyncio, "sleep_ms"):
        await asyncio.sleep_ms(ms)
    else:  # CPython: the device-side tests drive SimUart there too
        await asyncio.sleep(ms / 1000)


class SimUart:
    """The sensor's UART: commands go to the simulated sensor; read_some() waits, as a read on a
    real UART does, until the sensor has sent something (a frame each second in active mode, a
    reply to a command; nothing at all while it sleeps) and returns those bytes."""

    def __init__(self, sensor):
        self.sensor = sensor

    def write(self, data):
        self.sensor.write(data, int(time.time()))

    async def read_some(self, timeout_ms=None):
        """Return the bytes the sensor sent, waiting for some; after timeout_ms without any,
        b"" (timeout_ms None: wait for as long as it takes, like a bare StreamReader read)."""
        start = ticks_ms()
        while True:
            out = self.sensor.poll(int(time.time()))
            if out:
                return out
            wait_ms = 1005 - time.time_ns() // 1000000 % 1000  # just past the sensor's next second
            if timeout_ms is not None:
                left = timeout_ms - ticks_diff(ticks_ms(), start)
                if left <= 0:
                    return b""
                wait_ms = min(wait_ms, left)
            await _sleep_ms(wait_ms)


class SimHal:
    virtual = True

    def __init__(self, cfg, fs, root="."):
        sim = cfg.sim
        self.fs = fs
        self.mac = bytes(sim["mac"])
        self.radio = SimRadio(self.mac, sim["my_port"], sim["medium_port"])
        self.radio.config(rxbuf=ESPNOW_RXBUF)  # as the board's HAL; firmware/startup.py activates it
        seed = sim.get("seed", 1)
        noise = sim.get("sensor_noise_per_mille", 5)
        self.uart = SimUart(SimPMS5003(seed, cfg.node_id, noise, th=(cfg.sensor == "pms5003t")))
        self._wdt = None
        self._wdt_timeout_ms = None
        self._wdt_fed = ticks_ms()
        self._init_clock_wifi(cfg)

    def wdt_start(self, timeout_ms):
        self._wdt = boot_call("start_watchdog", timeout_ms)
        if self._wdt is not None:
            return
        self._wdt_timeout_ms = timeout_ms
        self._wdt_fed = ticks_ms()
        asyncio.create_task(self._wdt_task())

    def wdt_feed(self):
        if self._wdt is not None:
            self._wdt.feed()  # pyright: ignore[reportAttributeAccessIssue] (a machine.WDT)
        self._wdt_fed = ticks_ms()

    async def _wdt_task(self):
        while True:
            await asyncio.sleep_ms(1000)
            if ticks_diff(ticks_ms(), self._wdt_fed) > (self._wdt_timeout_ms or 0):
                print("wdt", "watchdog expired: resetting")
                self.reset()

    def time_s(self):
        """Unix seconds from the RTC; 0 while it was never set (it reads the port's epoch)."""
        return self.time_ms() // 1000

    def time_ms(self):
        """Unix milliseconds from the RTC; 0 while it was never set."""
        if self._rtc_offset_ms is None:
            return 0
        return _host_ms() + self._rtc_offset_ms

    def set_time_s(self, unix_s):
        """Set the RTC to whole unix seconds (as the ESP32 HAL's RTC.datetime() does)."""
        self._rtc_offset_ms = int(unix_s) * 1000 - _host_ms()

    def mem_free(self):
        return gc.mem_free()

    def reset(self):
        from firmware import boot

        boot.clear_crashes(self.fs)  # a planned reset: the boots before it were no crash loop
        boot.hard_reset()  # machine.reset(); SystemExit where the port has none

    def reset_cause(self):
        return boot_call("reset_cause")

    # ---- clock and channel; the Wi-Fi station is firmware/hal/sim_wifi.py (gateways only) ----

    def _init_clock_wifi(self, cfg):
        self._rtc_offset_ms = None  # unset RTC: it reads its epoch until something sets it
        self._cfg = cfg
        self._wifi = None
        self.channel = 0
        self._set_channel(cfg.radio_channel)  # the station starts on the configured channel

    def _set_channel(self, ch):
        """Put the station (and ESP-NOW with it) on channel ch; the medium is told."""
        if ch == self.channel:
            return
        self.channel = ch
        r = self.radio
        try:
            r._sock.sendto(b"C" + bytes((ch,)), r._medium)  # the medium carries ESP-NOW per channel
        except OSError:
            pass  # the medium is gone: nothing is heard on any channel anyway

    def wifi(self):
        """The Wi-Fi station (a gateway's uplink): firmware/hal/sim_wifi.py SimWifi."""
        if self._wifi is None:
            from firmware.hal.sim_wifi import SimWifi

            self._wifi = SimWifi(self, self._cfg.sim.get("ap_file"), self._cfg.radio_channel)
        return self._wifi


def _host_ms():
    """The host clock, unix ms: the rig's stand-in for true time (and its NTP server's)."""
    return time.time_ns() // 1000000
