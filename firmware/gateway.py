"""Gateway role: the node's router plus an MQTT uplink.

- Every frame that reaches the root ("uplink" router events) is batched into a protocol
  Envelope (receive time, RSSI, bytes) and published with QoS 1 to redmesh/<net>/up/<gw>.
  A batch closes at MAX_ITEMS frames or BATCH_MS after its first frame, whichever first:
  batching is what lets one broker and one collector carry a district (DESIGN: the MQTT
  client, not the broker, is the bottleneck).
- Downlink from redmesh/<net>/down/<gw> and redmesh/<net>/down/all: a protocol Downlink whose
  air frames are injected into the mesh: commands are flooded by the router, routed frames
  (a command for one node on its source route, compiled by the fleet) go down that route.
- redmesh/<net>/state/<gw>: retained "online", and "offline" as the MQTT last will.
- redmesh/<net>/ota: OTA seeding (firmware/ota_seed.py), one manifest or page per message,
  handed to the gateway's OTA engine (OtaSeedSink below), which then seeds the mesh.
- While the broker is unreachable the MQTT client's outbox (RAM, spilled to flash, bounded)
  keeps envelopes and sends them later, in order.
- Wi-Fi (`_wifi`): the station joins the uplink's network at start and again whenever the link
  drops, with a backoff from WIFI_BACKOFF_MIN_MS doubling to WIFI_BACKOFF_MAX_MS (jittered), so a
  failing AP is not hammered and ESP-NOW is not left deaf by endless scans. MQTT is attempted
  only while the link is up (MQTTClient link_up). After joining, the AP's channel is checked
  against the mesh's radio_channel: ESP-NOW follows the station, so an AP on another channel
  leaves this gateway deaf to its mesh; that is logged ("wifi ALERT ...") every
  CHANNEL_ALERT_MS, flagged in status frames (ERR_WIFI_CHANNEL) and a status is sent at once.
- Time: NTP (hal.wifi().ntp()) right after joining, then every NTP_EVERY_MS (a retry every
  NTP_RETRY_MS until one succeeds); the time goes to the router (Router.set_time), whose beacons
  carry it to the nodes. The RTC keeps counting across link outages; without a successful NTP
  since boot, the gateway and its mesh have no wall time and readings wait unstamped.
- Credentials (uplink.wifi_ssid, wifi_password) come from the config and are never printed.
"""
import asyncio
import gc
import os

import protocol
from firmware import ota_seed
from firmware.mqtt import MQTTClient
from firmware.outbox import Outbox
from protocol import envelope  # the MQTT messages (adds protocol.Envelope, .Downlink) and topics

MAX_ITEMS = 40
BATCH_MS = 1000
WIFI_TIMEOUT_MS = 20000  # one join attempt
WIFI_BACKOFF_MIN_MS = 2000
WIFI_BACKOFF_MAX_MS = 300000
WIFI_POLL_MS = 1000  # how often the link and the AP's channel are looked at
NTP_EVERY_MS = 4 * 3600 * 1000  # an ESP32 RTC drifts seconds a day: a few hours is plenty
NTP_RETRY_MS = 30000
CLOCK_TO_ROUTER_MS = 60000
CHANNEL_ALERT_MS = 600000
ERR_WIFI_CHANNEL = 2  # status errors bit: the AP is not on the mesh's channel


def downlink_frames(payload):
    """The air frames of a downlink message (a protocol Downlink, the payload of
    redmesh/<net>/down/<gw> or .../down/all). Raises ProtocolError when it is not one."""
    dl = protocol.decode(payload)
    if not isinstance(dl, protocol.Downlink):
        raise protocol.ProtocolError("expected a downlink message, got %s" % protocol.TYPE_NAMES[dl.type])
    return dl.frames


def inject(router, frames, now_ms):
    """Hand downlink air frames to the gateway's router: a routed frame (one node's command on
    the source route the fleet compiled) goes down that route, a command is flooded. Returns
    how many frames were handed over (the simulator, fleet/sim/des.py, calls this too)."""
    for fb in frames:
        if len(fb) > 2 and fb[2] == protocol.T_ROUTED:
            from firmware.downroute import inject_routed
            inject_routed(router, fb, now_ms)
        else:
            router.inject_downlink(fb, now_ms)
    return len(frames)


class Gateway:
    def __init__(self, cfg, fs_root, ota_sink=None):
        up = cfg.uplink
        self.cfg = cfg
        net, gw = cfg.net_id, cfg.node_id
        self.up_topic, self.state_topic = envelope.uplink_topic(net, gw), envelope.state_topic(net, gw)
        self.down_topic, self.down_all = envelope.downlink_topic(net, gw), envelope.downlink_topic(net)
        self.ota_topic = envelope.ota_topic(net)
        self.items = []
        self.first_ms = None
        self.eseq = 0
        self.ota_sink = ota_sink
        self.node = None
        self.flush_evt = asyncio.Event()
        outbox_dir = fs_root + "/outbox" if fs_root else None
        self.client = MQTTClient(
            up.get("client_id") or "gw-%d" % cfg.node_id, up["broker_host"], up.get("broker_port", 1883),
            keepalive_s=30, will_topic=self.state_topic, outbox=Outbox(outbox_dir, flash_max_bytes=256 * 1024),
            on_message=self._on_message, clean_session=False)
        self.client.subscribe(self.down_topic, 1)
        self.client.subscribe(self.down_all, 1)
        self.client.subscribe(self.ota_topic, 1)
        self.stats = {"frames_up": 0, "envelopes": 0, "downlink_frames": 0, "bad_downlink": 0, "wifi_joins": 0,
                      "wifi_failures": 0, "wifi_drops": 0, "ntp_ok": 0, "ntp_failures": 0}
        self.wifi_up = False
        self.channel_ok = True
        self.ntp_ms = None  # now_ms of the last successful NTP

    def uplink(self, frame_bytes, rssi, rx_ms):
        """Queue one frame that reached this gateway (called from the router's events);
        rx_ms: wall-clock receive time, unix ms."""
        rssi = max(-128, min(0, rssi))
        self.items.append((rx_ms, rssi, frame_bytes))
        self.stats["frames_up"] += 1
        if len(self.items) == 1:
            self.flush_evt.set()
        if len(self.items) >= MAX_ITEMS:
            self._close_batch()

    def _close_batch(self):
        if not self.items:
            return
        env = protocol.Envelope(gateway=self.cfg.node_id, eseq=self.eseq, items=self.items)
        self.eseq = (self.eseq + 1) & 0xFFFFFFFF
        self.items = []
        self.stats["envelopes"] += 1
        payload = protocol.encode(env)
        asyncio.create_task(self.client.publish(self.up_topic, payload, 1))

    async def _batcher(self):
        while True:
            await self.flush_evt.wait()
            self.flush_evt.clear()
            await asyncio.sleep_ms(BATCH_MS)
            self._close_batch()

    def _on_message(self, topic, payload):
        if topic not in (self.down_topic, self.down_all, self.ota_topic):
            return  # e.g. our own retained state topic echoed back: not downlink
        if topic == self.ota_topic:
            if self.ota_sink is not None:
                self.ota_sink(payload)
            return
        try:
            frames = downlink_frames(payload)
        except protocol.ProtocolError as e:
            self.stats["bad_downlink"] += 1
            print("gw", "bad downlink on %s: %s" % (topic, e))
            return
        if self.node is None:
            return
        self.stats["downlink_frames"] += inject(self.node.router, frames, self.node.now_ms())
        self.node.wake.set()

    async def _wifi(self):
        """Keep the Wi-Fi uplink joined, its channel checked and the clock set (see the module
        docstring)."""
        node = self.node
        hal = node.hal
        wifi = hal.wifi()
        up = self.cfg.uplink
        backoff_ms = WIFI_BACKOFF_MIN_MS
        tries = 0  # failed joins since the link was last up
        ntp_try_ms = None  # now_ms of the last NTP attempt
        alert_ms = None
        clock_ms = None
        while True:
            if not wifi.isconnected():
                if self.wifi_up:
                    self.wifi_up = False
                    self.stats["wifi_drops"] += 1
                    print("wifi", "uplink lost: MQTT paused, envelopes kept in the outbox; rejoining")
                ok = await wifi.join(up.get("wifi_ssid", ""), up.get("wifi_password", ""), WIFI_TIMEOUT_MS)
                if not ok:
                    self.stats["wifi_failures"] += 1
                    tries += 1
                    wait_ms = _jitter(backoff_ms)
                    print("wifi", "cannot join the Wi-Fi network (attempt %d): next try in %d s"
                          % (tries, wait_ms // 1000))
                    await asyncio.sleep_ms(wait_ms)
                    backoff_ms = min(backoff_ms * 2, WIFI_BACKOFF_MAX_MS)
                    continue
                backoff_ms = WIFI_BACKOFF_MIN_MS
                tries = 0
                self.wifi_up = True
                self.stats["wifi_joins"] += 1
                print("wifi", "joined the Wi-Fi network on channel %d (mesh channel %d)"
                      % (wifi.channel(), self.cfg.radio_channel))
                ntp_try_ms = None  # a fresh link: set the clock now
            now = node.now_ms()
            ch = wifi.channel()
            if ch != self.cfg.radio_channel:
                if self.channel_ok or alert_ms is None or now - alert_ms >= CHANNEL_ALERT_MS:
                    print("wifi", "ALERT: the Wi-Fi AP is on channel %d but the mesh uses channel %d: ESP-NOW "
                          "follows the station, so this gateway no longer hears its mesh; put the AP back on "
                          "channel %d (or move the mesh)" % (ch, self.cfg.radio_channel, self.cfg.radio_channel))
                    alert_ms = now
                if self.channel_ok:
                    self.channel_ok = False
                    node.errors |= ERR_WIFI_CHANNEL
                    node.send_status()  # tell the fleet now, over the uplink that still works
            elif not self.channel_ok:
                self.channel_ok = True
                node.errors &= ~ERR_WIFI_CHANNEL
                print("wifi", "the AP is back on the mesh channel %d" % ch)
                node.send_status()
            due = NTP_RETRY_MS if self.ntp_ms is None or (ntp_try_ms is not None and ntp_try_ms > self.ntp_ms) \
                else NTP_EVERY_MS
            if ntp_try_ms is None or now - ntp_try_ms >= due:
                ntp_try_ms = now
                self._ntp(now)
                clock_ms = None
            if clock_ms is None or now - clock_ms >= CLOCK_TO_ROUTER_MS:
                ms = hal.time_ms()
                if ms:  # the second and where in it we are: beacons carry whole seconds
                    node.router.set_time(ms // 1000, node.now_ms() - ms % 1000)
                    clock_ms = now
            await asyncio.sleep_ms(WIFI_POLL_MS)

    def _ntp(self, now):
        try:
            t = self.node.hal.wifi().ntp()
        except Exception as e:  # noqa: BLE001 - DNS, timeout, a short or bad reply: try again later
            self.stats["ntp_failures"] += 1
            print("wifi", "NTP failed (%r): the clock stays %s" % (e, "as it was" if self.ntp_ms else "unset"))
            return
        self.stats["ntp_ok"] += 1
        first = self.ntp_ms is None
        self.ntp_ms = now
        if first:
            print("wifi", "clock set by NTP: %d" % t)

    async def run(self, node):
        self.node = node
        wifi = node.hal.wifi()
        self.client.link_up = wifi.isconnected  # MQTT only while the Wi-Fi link is up
        if hasattr(wifi, "open_connection"):  # the rig's: refused while the link is down
            self.client.open_connection = wifi.open_connection
        await asyncio.gather(self.client.run(), self._batcher(), self._wifi())


def _jitter(ms):
    # half fixed, half random, so gateways that lost one AP do not rejoin in lockstep
    r = os.urandom(2)
    return ms // 2 + (((r[0] << 8) | r[1]) * (ms // 2) >> 16)


class OtaSeedSink:
    """Feeds OTA seeding messages to the gateway's OTA shell (firmware/ota_node.py): the
    manifest through offer_manifest, pages in order through offer_page (what it holds already
    or what comes out of order is ignored: the fleet publishes the run again). A manifest or
    page the engine refuses (bad signature, older bseq, wrong digest) is reported as refused."""

    def __init__(self, shell, node):
        self.shell = shell
        self.node = node
        self.ignored = 0

    def __call__(self, payload):
        try:
            kind, bseq, index, count, data = ota_seed.decode(payload)
        except ValueError as e:
            print("gw", "bad OTA seeding message: %s" % e)
            return
        eng = self.shell.engine
        now = self.node.now_ms()
        try:
            if kind == ota_seed.KIND_MANIFEST:
                eng.offer_manifest(bytes(data), now)
            else:
                m = eng.m
                if m is None or m.bseq != bseq or index != eng.have - eng.mpages:
                    self.ignored += 1
                    return
                eng.offer_page(index, data, now)
        except protocol.ProtocolError as e:
            self.shell.on_refused(bseq, str(e))
            return
        except OSError as e:
            print("gw", "OTA seeding: flash error %s" % e)
            return
        except MemoryError:
            # not a verdict on the bundle: the fleet seeds again (every seed_every_s) and a
            # collected heap will likely have room then
            gc.collect()
            print("gw", "OTA seeding: out of memory, waiting for the next seeding")
            return
        self.shell.tick(now)  # drain events (complete -> stage when allowed)
        self.node.wake.set()
