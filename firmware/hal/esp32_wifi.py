"""A gateway's Wi-Fi station on the ESP32 (returned by Esp32Hal.wifi(); imported by gateways
only, so nodes do not carry it). Shape shared with firmware/hal/sim_wifi.py:
    async join(ssid, password, timeout_ms) -> bool   isconnected() -> bool
    channel() -> int                                 ntp() -> unix seconds set (raises on failure)

ESP-NOW works only on the station's channel, which follows the AP once connected: the caller
(firmware/gateway.py) checks it against the mesh's. Power save is turned off after joining:
with it, ESP-NOW reception is unreliable. The driver's own reconnect loop is turned off: the
caller retries with a backoff, and endless scans would leave ESP-NOW deaf on the mesh channel.
"""
import asyncio


class Esp32Wifi:
    def __init__(self, hal, sta, mesh_channel):
        self._hal = hal
        self._sta = sta
        self._mesh_channel = mesh_channel

    async def join(self, ssid, password, timeout_ms=20000):
        """Connect the station to Wi-Fi; return True when connected."""
        sta = self._sta
        if sta.isconnected():
            return True
        try:
            sta.config(reconnects=0)
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
                sta.config(channel=self._mesh_channel)
            except OSError:
                pass
            return False
        sta.config(pm=sta.PM_NONE)
        return True

    def isconnected(self):
        return self._sta.isconnected()

    def channel(self):
        return self._sta.config("channel")

    def ntp(self):
        """Set the RTC from NTP (ntptime: pool.ntp.org, blocking, ~1 s socket timeout); return
        the unix seconds it set. Raises OSError (or another error of the socket layer)."""
        import ntptime

        ntptime.settime()
        return self._hal.time_s()
