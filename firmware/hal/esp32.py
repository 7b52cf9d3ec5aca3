"""The ESP32 adapter: real espnow, UART, WDT, RTC, flash and reset behind the HAL shape the
shell (firmware/node.py) expects. Thin on purpose; nothing is created at import time.

HAL shape (shared with firmware/hal/sim.py):
    hal.radio            AIOESPNow-like: active(), add_peer(mac), del_peer(mac), asend(mac, msg)
                         -> bool, arecv() -> (mac, msg), peers_table {mac: [rssi, time_ms]},
                         config(rxbuf=n), stats() -> (tx, tx_responses, tx_failures, rx, rx_dropped)
    hal.mac              this node's 6-byte MAC
    hal.uart             sensor UART: write(bytes), async read_some(timeout_ms) -> bytes (b"" on timeout)
    hal.fs               firmware.fsutil.PosixFS at the flash root
    hal.wdt_start(timeout_ms), hal.wdt_feed()   the one WDT boot.py started (firmware/boot.py
                         start_watchdog: its timeout holds; machine.WDT cannot be re-created)
    hal.reset_cause()    machine.reset_cause(): firmware/boot.py RESET_CAUSES names it
    hal.time_s()         unix seconds from the RTC (0 when never set)
    hal.set_time_s(s)    set the RTC
    hal.mem_free()       free heap, bytes
    hal.reset()          power-cycle-like reset, planned by the app (clears the crash count)
    hal.wifi()           gateway only: the Wi-Fi station (firmware/hal/esp32_wifi.py, imported
                         on first use): async join(ssid, password, timeout_ms) -> bool (then
                         PM_NONE), isconnected(), channel() (ESP-NOW sends and hears only
                         there), ntp() -> unix seconds set (raises on failure)
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
        self._wifi = None
        self.mac = self._sta.config("mac")
        self.radio = aioespnow.AIOESPNow()
        # before active(True), which allocates the ring: firmware/hal/__init__.py says why 8 frames
        self.radio.config(rxbuf=ESPNOW_RXBUF)
        self.radio.active(True)
        self.uart = _Uart(uart_pins[0], uart_pins[1], uart_pins[2], baud)
        self._wdt = None
        self._rtc = machine.RTC()

    def wdt_start(self, timeout_ms):
        from firmware.compat import boot_call

        self._wdt = boot_call("start_watchdog", timeout_ms)

    def wdt_feed(self):
        if self._wdt is not None:
            self._wdt.feed()  # pyright: ignore[reportAttributeAccessIssue] (a machine.WDT)

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
        from firmware import boot

        boot.clear_crashes(self.fs)  # a planned reset: the boots before it were no crash loop
        machine.reset()

    def reset_cause(self):
        return machine.reset_cause()

    def wifi(self):
        """The Wi-Fi station (a gateway's uplink): firmware/hal/esp32_wifi.py Esp32Wifi."""
        if self._wifi is None:
            from firmware.hal.esp32_wifi import Esp32Wifi

            self._wifi = Esp32Wifi(self, self._sta, self._channel)
        return self._wifi
