"""Gateway role: the node's router plus an MQTT uplink.

- Every frame that reaches the root ("uplink" router events) is batched into a protocol
  Envelope (receive time, RSSI, bytes) and published with QoS 1 to redmesh/<net>/up/<gw>.
  A batch closes at MAX_ITEMS frames or BATCH_MS after its first frame, whichever first:
  batching is what lets one broker and one collector carry a district (DESIGN: the MQTT
  client, not the broker, is the bottleneck).
- Downlink from redmesh/<net>/down/<gw> and redmesh/<net>/down/all: a protocol Downlink whose
  air frames are injected into the mesh (commands are flooded by the router).
- redmesh/<net>/state/<gw>: retained "online", and "offline" as the MQTT last will.
- redmesh/<net>/ota: OTA seeding (firmware/ota_seed.py), one manifest or page per message,
  handed to the gateway's OTA engine (OtaSeedSink below), which then seeds the mesh.
- While the broker is unreachable the MQTT client's outbox (RAM, spilled to flash, bounded)
  keeps envelopes and sends them later, in order.
"""
import asyncio
import gc

import protocol
import protocol.envelope  # noqa: F401 - the MQTT messages (protocol.Envelope, protocol.Downlink)
from firmware import ota_seed
from firmware.mqtt import MQTTClient
from firmware.outbox import Outbox

MAX_ITEMS = 40
BATCH_MS = 1000


def topics(net_id, gw_id):
    base = "redmesh/%d/" % net_id
    return base + "up/%d" % gw_id, base + "down/%d" % gw_id, base + "down/all", base + "state/%d" % gw_id


class Gateway:
    def __init__(self, cfg, fs_root, ota_sink=None):
        up = cfg.uplink
        self.cfg = cfg
        self.up_topic, self.down_topic, self.down_all, self.state_topic = topics(cfg.net_id, cfg.node_id)
        self.ota_topic = "redmesh/%d/ota" % cfg.net_id
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
        self.stats = {"frames_up": 0, "envelopes": 0, "downlink_frames": 0, "bad_downlink": 0}

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
            dl = protocol.decode(payload)
            if not isinstance(dl, protocol.Downlink):
                raise protocol.ProtocolError("expected a downlink message, got %s" % protocol.TYPE_NAMES[dl.type])
        except protocol.ProtocolError as e:
            self.stats["bad_downlink"] += 1
            print("gw", "bad downlink on %s: %s" % (topic, e))
            return
        if self.node is None:
            return
        for fb in dl.frames:
            self.stats["downlink_frames"] += 1
            self.node.router.inject_downlink(fb, self.node.now_ms())
        self.node.wake.set()

    async def _clock(self):
        # The gateway knows wall-clock time (NTP on a real board, the host clock on the rig);
        # beacons carry it to the mesh.
        while True:
            t = self.node.hal.time_s()
            if t:
                self.node.router.set_time(t, self.node.now_ms())
            await asyncio.sleep_ms(60000)

    async def run(self, node):
        self.node = node
        await asyncio.gather(self.client.run(), self._batcher(), self._clock())


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
