"""The virtual rig's HAL: the same shape as firmware/hal/esp32.py, on the MicroPython unix
port. The radio is firmware/hal/sim_radio.py (loopback UDP to the medium), the sensor UART is
a simulated PMS5003 emitting real byte frames (firmware/hal/simsensor.py), flash is the
process's directory, and the watchdog resets the "board" by ending the process — the rig's
launcher restarts it, as a power cycle would.

Clock and Wi-Fi, as strict as the board:
- The RTC starts unset at every start (a power cycle): time_s() and time_ms() read 0 (the port's
  epoch) until set_time_s() or ntp() sets them. Nodes learn wall time from the mesh's beacons.
- The station (a gateway's uplink) is down until uplink() joins the simulated access point.
  The AP is the rig's: config sim.ap_file names a small control file ("1 6": up on channel 6,
  "0 6": down; written by fleet/sim/rig.py Rig.set_ap), read when the station connects and
  whenever the link is checked. Without sim.ap_file (a lone virtual board) the AP is always up
  on the config's radio_channel. An AP that goes down or moves to another channel drops the
  station; joining it again puts the station on the AP's channel.
- ESP-NOW works only on the station's channel: the HAL tells the medium its channel (datagram
  b"C" channel(1), see fleet/sim/medium.py), which then carries frames only between nodes on the
  same channel. A gateway whose station follows an AP to another channel no longer hears its mesh.
- ntp() answers from the host clock (the rig's "NTP server", nothing leaves the machine) only
  while the station is connected, and sets whole seconds as micropython-lib's ntptime does.
"""
import asyncio
import gc
import sys
import time

from firmware.compat import ticks_diff, ticks_ms
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
        self.radio.config(rxbuf=ESPNOW_RXBUF)  # as the board's HAL; the node's run() activates it
        seed = sim.get("seed", 1)
        noise = sim.get("sensor_noise_per_mille", 5)
        self.uart = SimUart(SimPMS5003(seed, cfg.node_id, noise, th=(cfg.sensor == "pms5003t")))
        self._wdt_timeout_ms = None
        self._wdt_fed = ticks_ms()
        self._init_clock_wifi(cfg)

    def wdt_start(self, timeout_ms):
        self._wdt_timeout_ms = timeout_ms
        self._wdt_fed = ticks_ms()
        asyncio.create_task(self._wdt_task())

    def wdt_feed(self):
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
        # SystemExit is not an Exception: it leaves asyncio's loop and ends the process; the
        # launcher sees the exit and starts the node again from its flash (a power cycle).
        sys.exit(3)

    # ---- Wi-Fi station and NTP (a gateway's uplink) -------------------------------------------

    def _init_clock_wifi(self, cfg):
        self._rtc_offset_ms = None  # unset RTC: it reads its epoch until something sets it
        sim = cfg.sim
        self._ap_file = sim.get("ap_file")
        self._mesh_channel = cfg.radio_channel
        self._sta_connected = False
        self._sta_ap_channel = 0  # the AP channel the station joined
        self.channel = 0
        self._set_channel(cfg.radio_channel)  # the station starts on the configured channel

    def _set_channel(self, ch):
        if ch == self.channel:
            return
        self.channel = ch
        r = self.radio
        try:
            r._sock.sendto(b"C" + bytes((ch,)), r._medium)  # the medium carries ESP-NOW per channel
        except OSError:
            pass  # the medium is gone: nothing is heard on any channel anyway

    def _ap(self):
        """The simulated access point: (up, channel)."""
        if self._ap_file is None:
            return True, self._mesh_channel
        try:
            with open(self._ap_file) as f:
                parts = f.read().split()
            ch = int(parts[1])
            return parts[0] == "1" and 1 <= ch <= 14, ch
        except (OSError, ValueError, IndexError, TypeError):
            return False, 0  # no control file (yet), or a torn one: no AP on the air

    def uplink_up(self):
        """True while the station is connected to the AP (network.WLAN.isconnected())."""
        if self._sta_connected:
            up, ch = self._ap()
            if not up or ch != self._sta_ap_channel:
                self._sta_connected = False  # beacons lost: the station is disconnected
        return self._sta_connected

    def uplink_channel(self):
        """The station's channel (WLAN.config("channel")): ESP-NOW sends and hears only there."""
        return self.channel

    async def uplink(self, ssid, password, timeout_ms=20000):
        """Join the AP (a gateway's uplink); return True when connected. Credentials are not
        checked by the simulated AP."""
        if self.uplink_up():
            return True
        waited = 0
        while True:
            await asyncio.sleep_ms(200)  # association and DHCP take time on a board too
            waited += 200
            up, ch = self._ap()
            if up:
                self._sta_connected = True
                self._sta_ap_channel = ch
                self._set_channel(ch)  # the station follows its AP's channel, ESP-NOW with it
                return True
            if waited >= timeout_ms:
                return False

    def ntp(self):
        """Set the RTC from the rig's NTP server (the host clock); return the unix seconds set.
        Raises OSError while the uplink is down (no server reachable)."""
        if not self.uplink_up():
            raise OSError(110, "ETIMEDOUT: NTP needs the Wi-Fi uplink")
        t = _host_ms() // 1000  # ntptime sets whole seconds
        self.set_time_s(t)
        return t

    async def open_connection(self, host, port):
        """asyncio.open_connection through the station: refused while the uplink is down, as a
        board's socket has no route then (the rig's broker is on loopback either way)."""
        if not self.uplink_up():
            raise OSError(113, "EHOSTUNREACH: the Wi-Fi uplink is down")
        return await asyncio.open_connection(host, port)


def _host_ms():
    return time.time_ns() // 1000000
