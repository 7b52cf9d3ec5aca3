"""The ESP32 adapter: real espnow, UART, WDT, RTC, flash and reset behind the HAL shape the
shell (firmware/node.py) expects. Thin on purpose; nothing is created at import time.

HAL shape (shared with firmware/hal/sim.py):
    hal.radio            AIOESPNow-like: active(), add_peer(mac), del_peer(mac), asend(mac, msg)
                         -> bool, arecv() -> (mac, msg), peers_table {mac: [rssi, time_ms]}
    hal.mac              this node's 6-byte MAC
    hal.uart             sensor UART: write(bytes), async read_some() -> bytes
    hal.fs               firmware.fsutil.PosixFS at the flash root
    hal.wdt_start(timeout_ms), hal.wdt_feed()   the one WDT boot.py started (firmware/boot.py
                         start_watchdog: its timeout holds; machine.WDT cannot be re-created)
    hal.reset_cause()    machine.reset_cause(): firmware/boot.py RESET_CAUSES names it
    hal.time_s()         unix seconds from the RTC (0 when never set)
    hal.set_time_s(s)    set the RTC
    hal.mem_free()       free heap, bytes
    hal.reset()          power-cycle-like reset, planned by the app (clears the crash count)
    hal.uplink()         gateway only: bring the WiFi uplink up; return True when connected
    hal.virtual          False here
"""
import asyncio
import gc
import time

import machine
import network

# Seconds from 1970 to the port's epoch: MicroPython on ESP32 has counted from 2000-01-01;
# asked of the port itself, so a build that counts from 1970 is right too.
_EPOCH_OFFSET = 946684800 if time.gmtime(0)[0] == 2000 else 0


class _Uart:
    def __init__(self, uart_id, tx, rx, baud):
        self._u = machine.UART(uart_id, baudrate=baud, tx=tx, rx=rx, timeout=0, rxbuf=512)
        self._sreader = asyncio.StreamReader(self._u)

    def write(self, data):
        self._u.write(data)

    async def read_some(self):
        return await self._sreader.read(64)


class Esp32Hal:
    virtual = False

    def __init__(self, fs, uart_pins=(1, 17, 16), baud=9600, channel=1):
        import aioespnow  # only on the board

        self.fs = fs
        self._sta = network.WLAN(network.STA_IF)
        self._sta.active(True)
        self._sta.config(channel=channel)
        self.mac = self._sta.config("mac")
        self.radio = aioespnow.AIOESPNow()
        self.radio.active(True)
        self.uart = _Uart(uart_pins[0], uart_pins[1], uart_pins[2], baud)
        self._wdt = None
        self._rtc = machine.RTC()

    def wdt_start(self, timeout_ms):
        from firmware import boot

        self._wdt = boot.start_watchdog(timeout_ms)

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
        from firmware import boot

        boot.clear_crashes(self.fs)  # a planned reset: the boots before it were no crash loop
        machine.reset()

    def reset_cause(self):
        return machine.reset_cause()

    async def uplink(self, ssid, password, timeout_ms=20000):
        """Connect the station interface to WiFi (a gateway's uplink). ESP-NOW keeps working
        on the AP's channel, so every node of a gateway's mesh must use that channel."""
        if self._sta.isconnected():
            return True
        self._sta.connect(ssid, password)
        waited = 0
        while not self._sta.isconnected() and waited < timeout_ms:
            await asyncio.sleep_ms(200)
            waited += 200
        return self._sta.isconnected()
