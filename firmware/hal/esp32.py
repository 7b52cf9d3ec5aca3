"""The ESP32 adapter: real espnow, UART, WDT, RTC, flash and reset behind the HAL shape the
shell (firmware/node.py) expects. Thin on purpose; nothing is created at import time.

HAL shape (shared with firmware/hal/sim.py):
    hal.radio            AIOESPNow-like: active(), add_peer(mac), del_peer(mac), asend(mac, msg)
                         -> bool, arecv() -> (mac, msg), peers_table {mac: [rssi, time_ms]},
                         config(rxbuf=n), stats() -> (tx, tx_responses, tx_failures, rx, rx_dropped)
    hal.mac              this node's 6-byte MAC
    hal.uart             sensor UART: write(bytes), async read_some(timeout_ms) -> bytes (b"" on timeout)
    hal.fs               firmware.fsutil.PosixFS at the flash root
    hal.wdt_start(timeout_ms), hal.wdt_feed()
    hal.time_s()         unix seconds from the RTC (0 when never set)
    hal.set_time_s(s)    set the RTC
    hal.mem_free()       free heap, bytes
    hal.reset()          power-cycle-like reset
    hal.uplink(ssid, password, timeout_ms)  gateway only: join Wi-Fi (then PM_NONE); True when
                         connected
    hal.uplink_up()      gateway only: the station is connected now
    hal.uplink_channel() the station's channel (ESP-NOW sends and hears only there)
    hal.ntp()            gateway only: set the RTC by NTP, return unix seconds; OSError on failure
    hal.virtual          False here
"""
import asyncio
import gc
import time

import machine
import network

from firmware.hal import ESPNOW_RXBUF

# Seconds from 1970 to the port's epoch: MicroPython on ESP32 has counted from 2000-01-01;
# asked of the port itself, so a build that counts from 1970 is right too.
_EPOCH_OFFSET = 946684800 if time.gmtime(0)[0] == 2000 else 0


class _Uart:
    def __init__(self, uart_id, tx, rx, baud):
        self._u = machine.UART(uart_id, baudrate=baud, tx=tx, rx=rx, timeout=0, rxbuf=512)
        self._sreader = asyncio.StreamReader(self._u)

    def write(self, data):
        self._u.write(data)

    async def read_some(self, timeout_ms=None):
        """Bytes the sensor sent (up to 64), or b"" when none came within timeout_ms: a sleeping
        PMS5003 sends nothing, and a read without a timeout would never return to write the
        wake command. Cancelling the read leaves unread bytes in the UART's buffer."""
        if timeout_ms is None:
            return await self._sreader.read(64)
        try:
            return await asyncio.wait_for_ms(self._sreader.read(64), timeout_ms)
        except asyncio.TimeoutError:
            return b""


class Esp32Hal:
    virtual = False

    def __init__(self, fs, uart_pins=(1, 17, 16), baud=9600, channel=1):
        import aioespnow  # only on the board

        self.fs = fs
        self._sta = network.WLAN(network.STA_IF)
        self._sta.active(True)
        self._sta.config(channel=channel)
        self._channel = channel
        self.mac = self._sta.config("mac")
        self.radio = aioespnow.AIOESPNow()
        # before active(True), which allocates the ring: firmware/hal/__init__.py says why 8 frames
        self.radio.config(rxbuf=ESPNOW_RXBUF)
        self.radio.active(True)
        self.uart = _Uart(uart_pins[0], uart_pins[1], uart_pins[2], baud)
        self._wdt = None
        self._rtc = machine.RTC()

    def wdt_start(self, timeout_ms):
        self._wdt = machine.WDT(timeout=timeout_ms)

    def wdt_feed(self):
        if self._wdt is not None:
            self._wdt.feed()

    def time_s(self):
        t = time.time() + _EPOCH_OFFSET
        return t if t > 1600000000 else 0  # an RTC that was never set reads its epoch year

    def time_ms(self):
        t = time.time_ns() // 1000000 + _EPOCH_OFFSET * 1000  # the ESP32 RTC counts microseconds
        return t if t > 1600000000000 else 0

    def set_time_s(self, unix_s):
        tm = time.gmtime(unix_s - _EPOCH_OFFSET)
        self._rtc.datetime((tm[0], tm[1], tm[2], tm[6] + 1, tm[3], tm[4], tm[5], 0))

    def mem_free(self):
        return gc.mem_free()

    def reset(self):
        machine.reset()

    async def uplink(self, ssid, password, timeout_ms=20000):
        """Connect the station interface to Wi-Fi (a gateway's uplink); return True when
        connected. ESP-NOW then works only on the AP's channel (the caller checks it against the
        mesh's), and power save is turned off: with it, ESP-NOW reception is unreliable."""
        sta = self._sta
        if sta.isconnected():
            return True
        try:
            sta.config(reconnects=0)  # our caller retries with backoff: no endless driver scans
        except (OSError, ValueError):
            pass  # an older port without the option
        sta.connect(ssid, password)
        waited = 0
        while not sta.isconnected() and waited < timeout_ms:
            await asyncio.sleep_ms(200)
            waited += 200
        if not sta.isconnected():
            try:
                sta.disconnect()  # stop scanning, and come back to the mesh's channel
                sta.config(channel=self._channel)
            except OSError:
                pass
            return False
        sta.config(pm=sta.PM_NONE)
        return True

    def uplink_up(self):
        return self._sta.isconnected()

    def uplink_channel(self):
        return self._sta.config("channel")

    def ntp(self):
        """Set the RTC from NTP (ntptime: pool.ntp.org, blocking, ~1 s timeout); return the
        unix seconds it set. Raises OSError (or another error of the socket layer) on failure."""
        import ntptime

        ntptime.settime()
        return self.time_s()
