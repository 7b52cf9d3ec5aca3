"""The virtual rig's Wi-Fi station (a gateway's uplink), as strict as an ESP32's: the shape of
firmware/hal/esp32_wifi.py, returned by SimHal.wifi(). Imported by gateways only.

- The station is down until join() connects it to the simulated access point. The AP is the
  rig's: config sim.ap_file names a small control file ("1 6": up on channel 6, "0 6": down;
  written by fleet/sim/rig.py Rig.set_ap), read when the station joins and whenever the link
  is checked. Without sim.ap_file (a lone virtual board) the AP is always up on the config's
  radio_channel. An AP that goes down or moves to another channel drops the station; joining
  again puts the station, and ESP-NOW with it, on the AP's channel (SimHal._set_channel tells
  the medium).
- ntp() answers from the host clock (the rig's "NTP server", nothing leaves the machine) only
  while the station is connected, and sets whole seconds as micropython-lib's ntptime does.
- open_connection() is refused while the station is down, as a board's socket has no route then
  (the rig's broker is on loopback either way).
Credentials are not checked by the simulated AP.
"""
import asyncio

from firmware.hal.sim import _host_ms


class SimWifi:
    def __init__(self, hal, ap_file, mesh_channel):
        self._hal = hal
        self._ap_file = ap_file
        self._mesh_channel = mesh_channel
        self._connected = False
        self._ap_channel = 0  # the channel of the AP the station joined

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

    def isconnected(self):
        """True while the station is connected to the AP (network.WLAN.isconnected())."""
        if self._connected:
            up, ch = self._ap()
            if not up or ch != self._ap_channel:
                self._connected = False  # beacons lost: the station is disconnected
        return self._connected

    def channel(self):
        """The station's channel (WLAN.config("channel")): ESP-NOW sends and hears only there."""
        return self._hal.channel

    async def join(self, ssid, password, timeout_ms=20000):
        """Connect to the AP; return True when connected."""
        if self.isconnected():
            return True
        waited = 0
        while True:
            await asyncio.sleep_ms(200)  # association and DHCP take time on a board too
            waited += 200
            up, ch = self._ap()
            if up:
                self._connected = True
                self._ap_channel = ch
                self._hal._set_channel(ch)  # the station follows its AP's channel, ESP-NOW with it
                return True
            if waited >= timeout_ms:
                return False

    def ntp(self):
        """Set the RTC from the rig's NTP server (the host clock); return the unix seconds set.
        Raises OSError while the station is down (no server reachable)."""
        if not self.isconnected():
            raise OSError(110, "ETIMEDOUT: NTP needs the Wi-Fi uplink")
        t = _host_ms() // 1000  # ntptime sets whole seconds
        self._hal.set_time_s(t)
        return t

    async def open_connection(self, host, port):
        """asyncio.open_connection through the station; OSError while it is down."""
        if not self.isconnected():
            raise OSError(113, "EHOSTUNREACH: the Wi-Fi uplink is down")
        return await asyncio.open_connection(host, port)
