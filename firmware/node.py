"""The node's asyncio shell: wires the sans-IO cores (sampler, sensor parser, router, ring,
counters, OTA) to a HAL (firmware/hal/esp32.py or firmware/hal/sim.py) and, on a gateway, to
the MQTT uplink (firmware/gateway.py). The cores never see a clock or a socket: this file reads
the clock, moves bytes and calls the cores with `now_ms`.

Tasks
- radio_rx:  radio.arecv() -> router.on_recv (or the OTA engine for OTA frames)
- pump:      router/OTA deadlines and output queues -> radio.asend -> on_send_done; events
- sensor:    UART bytes -> parser -> sampler; sampler wake/sleep -> UART commands; reports -> ring
- uplink:    ring backlog -> telemetry frames -> router.originate while a route exists
- status:    a health report every status_interval_s
- health:    feeds the watchdog only on evidence of health (see _healthy)
Console lines start with a tag ("node", "selftest", "cmd", ...) so a technician's serial
monitor and `fleet node logs` stay readable.
"""
import asyncio
import gc

import protocol
from firmware import counters as counters_mod
from firmware import ring as ring_mod
from firmware.compat import ticks_diff, ticks_ms
from firmware.drivers import command_bytes, make_parser
from firmware.mesh import BROADCAST, PeerTable, Router
from firmware.sampler import Sampler, SamplerConfig
from protocol import auth

FW_VERSION = "1.0.0"
FW_SEQ = 1

_STATUS_INTERVAL_S = 300
_UPLINK_POLL_MS = 500
_WDT_TIMEOUT_MS = 60000
_HEALTH_GRACE_MS = 600000  # a node may take 10 min to find a route before the WDT cares


def log(tag, msg):
    print(tag, msg)


class Node:
    """One node (or gateway) running on a HAL with a validated config."""

    def __init__(self, hal, cfg, gateway=None):
        self.hal = hal
        self.cfg = cfg
        self.node_id = cfg.node_id
        self.mesh_hmac = auth.Hmac(cfg.mesh_key)
        self.node_hmac = auth.Hmac(cfg.node_key)
        fs = hal.fs
        self.counters = counters_mod.Counters(fs, "counters.bin")
        self.boot_count = self.counters.next("boot")
        self.ring = ring_mod.ReadingRing(fs, "ring", counters=self.counters)
        self.sampler = Sampler(SamplerConfig(report_interval_s=cfg.report_interval_s, warmup_s=cfg.warmup_s,
                                             sample_window_s=cfg.sample_window_s, continuous=cfg.continuous))
        self.parser = make_parser(cfg.sensor)
        self.sensor_kind = cfg.sensor
        self.router = Router(cfg.node_id, hal.mac, cfg.role == "gateway", self.mesh_hmac,
                             seed=cfg.node_id ^ (self.boot_count << 16))
        self.gateway = gateway  # firmware.gateway.Gateway or None
        self.cmd_window = auth.ReplayWindow(32)
        self.cmd_window.update(self.counters.peek("cseq"))
        self.ota = None  # firmware.ota_node.OtaShell, set by main when the app runs from a slot
        self.fw_version = FW_VERSION  # main sets the running slot's version and bseq
        self.fw_seq = FW_SEQ
        self.last_frame_ms = None  # last valid sensor frame (OTA trial health: "sensor read")
        self._last_ticks = ticks_ms()
        self._mono = 0
        self.wake = asyncio.Event()
        gc.collect()
        self.heap_min = hal.mem_free()  # lowest free heap seen right after a collection
        self.last_sample_ms = None
        self.last_report_ms = None
        self.last_pump_ms = 0
        self.last_route_ms = None
        self.in_flight = {}  # app token -> (first seq, last seq)
        self.unstamped = []  # (now_ms, Aggregate) waiting for wall-clock time
        self.next_token = 1
        self.errors = 0
        self.selftest_done = False
        self.radio_ok = False

    # ---- time ----------------------------------------------------------------------------

    def now_ms(self):
        """Milliseconds since boot, never wrapping: ticks_ms wraps (every ~12 days on the unix
        port, ~298 h on the ESP32), so the cores get a count accumulated from ticks_diff."""
        t = ticks_ms()
        self._mono += ticks_diff(t, self._last_ticks)
        self._last_ticks = t
        return self._mono

    def wall_s(self):
        t = self.router.wall_time_s(self.now_ms())
        return t or self.hal.time_s()

    # ---- tasks -----------------------------------------------------------------------------

    async def radio_rx(self):
        radio = self.hal.radio
        while True:
            mac, msg = await radio.arecv()
            if msg is None:
                continue
            self.radio_ok = True
            now = self.now_ms()
            rssi = 0
            try:
                rssi = radio.peers_table[mac][0]
            except (KeyError, AttributeError, TypeError):
                rssi = -70
            if self.ota is not None and len(msg) > 2 and msg[2] in (protocol.T_OTA_ADV, protocol.T_OTA_REQ,
                                                                     protocol.T_OTA_DATA):
                self.ota.on_air(mac, msg, now)
            else:
                self.router.on_recv(mac, msg, rssi, now)
            self.wake.set()

    async def pump(self):
        """Run the router: tick at its deadline, send what it queued, handle its events."""
        radio = self.hal.radio
        while True:
            now = self.now_ms()
            self.last_pump_ms = now
            self.router.tick(now)
            if self.ota is not None:
                self.ota.tick(now)
            while True:
                out = self.router.poll_tx()
                if out is None and self.ota is not None:
                    out = self.ota.poll_tx()
                if out is None:
                    break
                token, dst, data = out
                ok = await self._send(radio, dst, data)
                if token is not None:
                    self.router.on_send_done(token, ok, self.now_ms())
            while True:
                ev = self.router.poll_event()
                if ev is None:
                    break
                await self._on_event(ev)
            wait_ms = 1000
            dl = self.router.next_deadline_ms
            if dl is not None:
                wait_ms = min(wait_ms, max(0, dl - self.now_ms()))
            if self.ota is not None and self.ota.next_deadline_ms is not None:
                wait_ms = min(wait_ms, max(0, self.ota.next_deadline_ms - self.now_ms()))
            self.wake.clear()
            try:
                await asyncio.wait_for_ms(self.wake.wait(), max(1, wait_ms))
            except asyncio.TimeoutError:
                pass

    async def _send(self, radio, dst, data):
        try:
            add, evicted = self.peers.use(dst)
            if evicted is not None:
                try:
                    radio.del_peer(evicted)
                except OSError:
                    pass  # already gone (ESP_ERR_ESPNOW_NOT_FOUND)
            if add:
                try:
                    radio.add_peer(dst)
                except OSError:
                    pass  # already a peer (ESP_ERR_ESPNOW_EXIST)
            return await radio.asend(dst, data)
        except OSError as e:
            self.errors |= 1
            log("radio", "send failed: %s" % e)
            return False

    async def _on_event(self, ev):
        kind = ev[0]
        if kind == "uplink":
            if self.gateway is not None:
                self.gateway.uplink(ev[1], ev[2], self.hal.time_ms() or self.wall_s() * 1000)
        elif kind == "command":
            await self.on_command(ev[1])
        elif kind == "sent":
            if self.ota is not None and self.ota.on_sent(ev[1], ev[2]):
                return
            first_last = self.in_flight.pop(ev[1], None)
            if first_last is not None and ev[2]:
                self.ring.mark_sent(first_last[0], first_last[1])
        elif kind == "parent":
            log("mesh", "parent %s" % ev[1])
        elif kind == "route":
            log("mesh", "route %s" % ("up" if ev[1] else "lost"))
            if ev[1]:
                self.last_route_ms = self.now_ms()

    async def sensor(self):
        uart = self.hal.uart
        while True:
            now = self.now_ms()
            for action in self.sampler.tick(now):
                cmd = command_bytes(self.sensor_kind, action[0])
                if cmd:
                    uart.write(cmd)
            data = await uart.read_some()
            now = self.now_ms()
            if data:
                before = self.parser.checksum_errors
                for s in self.parser.feed(data):
                    self.last_frame_ms = now
                    if self.sampler.on_sample(s, now):
                        self.last_sample_ms = now
                if self.parser.checksum_errors != before:
                    self.sampler.on_checksum_errors(self.parser.checksum_errors - before, now)
            agg = self.sampler.poll_report(now)
            if agg is not None:
                self.last_report_ms = now
                self.unstamped.append((now, agg))
                del self.unstamped[:-8]  # bounded: the oldest goes if time stays unknown
            wall = self.wall_s()
            while self.unstamped and wall:
                # Readings are stamped once wall-clock time is known (a gateway beacon or the
                # RTC): a reading stamped 0 would look current when it reaches the collector.
                at_ms, agg = self.unstamped.pop(0)
                seq = self.ring.append(wall - (now - at_ms) // 1000, agg)
                log("node", "reading seq=%d pm25=%d.%d n=%d" % (seq, agg.pm25 // 10, agg.pm25 % 10, agg.n))
                self.wake.set()

    async def uplink(self):
        """Move readings from the ring into the mesh while a route exists."""
        while True:
            await asyncio.sleep_ms(_UPLINK_POLL_MS)
            if not self.router.has_route() or len(self.in_flight) >= 2:
                continue
            after = None
            for first_last in self.in_flight.values():
                if after is None or first_last[1] > after:
                    after = first_last[1]
            pending = self.ring.pending(protocol.MAX_READINGS, after_seq=after)
            if not pending:
                continue
            self._originate_readings(pending)

    def _originate_readings(self, readings):
        frame = ring_mod.build_telemetry(self.node_id, readings, self.wall_s())
        if frame is None:
            return
        protocol.encode(frame, self.mesh_hmac, self.node_hmac)  # sets the end-to-end tag
        token = self.next_token
        self.next_token += 1
        self.in_flight[token] = (frame.seq, frame.seq + len(frame.readings) - 1)
        self.router.originate(frame, self.now_ms(), token)
        self.wake.set()

    async def load(self, interval_s, for_s=0):
        """Offered load for throughput verification (config sim.offered_interval_s, virtual rig
        only): one synthetic reading every interval_s, created on a whole wall-clock second so
        its timestamp is exact, marked FLAG_SYNTHETIC, through the same ring/mesh/uplink path."""
        phase = self.node_id % interval_s
        while not for_s or self.now_ms() < for_s * 1000:
            ms = self.hal.time_ms()
            sec = ms // 1000 + 1
            while sec % interval_s != phase:
                sec += 1
            await asyncio.sleep_ms(sec * 1000 - ms)
            agg = _Synthetic(sec)
            self.ring.append(sec, agg)
            self.wake.set()

    async def status(self):
        await asyncio.sleep_ms(20000)
        while True:
            self.send_status()
            await asyncio.sleep_ms(_STATUS_INTERVAL_S * 1000)

    def send_status(self, probe=False):
        """Originate a status frame. With probe, it carries an app token whose ("sent", token,
        ok) outcome goes to the OTA shell (trial health); returns that token (else None)."""
        r = self.router
        gc.collect()  # report what the live objects leave free, not the garbage since the last GC
        free = self.hal.mem_free()
        self.heap_min = min(self.heap_min, free)
        body = protocol.StatusBody(
            fw_seq=self.fw_seq, fw_version=self.fw_version, uptime_s=self.now_ms() // 1000, heap_free=free,
            heap_min=self.heap_min, backlog=self.ring.backlog(), parent=r.parent or 0,
            link_etx=min(r.parent_etx, 0xFFFF), path_cost=min(r.cost, 0xFFFF), rssi=max(-128, min(0, r.parent_rssi)),
            boot_count=self.boot_count, ota_state=self.ota.state if self.ota else 0,
            ota_progress=self.ota.progress_pct if self.ota else 0, errors=self.errors)
        f = protocol.Status(origin=self.node_id, seq=self.counters.next("status"), time_s=self.wall_s(), body=body)
        protocol.encode(f, self.mesh_hmac, self.node_hmac)
        token = None
        if probe:
            token = self.next_token
            self.next_token += 1
        self.router.originate(f, self.now_ms(), token)
        self.wake.set()
        return token

    def shutdown_for_reset(self):
        """Persist what a planned reset must not lose (ring, exact counters)."""
        try:
            self.ring.flush()
            self.counters.sync()
        except OSError as e:
            log("node", "flush before reset failed: %s" % e)

    # ---- commands ----------------------------------------------------------------------------

    async def on_command(self, cmd):
        if cmd.target == 0:
            from firmware.compat import verify_signature  # Ed25519: loaded for this check only

            if not verify_signature(self.cfg.fleet_pub, protocol.signed_bytes(cmd), cmd.auth):
                log("cmd", "refused: bad fleet signature (cseq %d)" % cmd.cseq)
                return
        elif cmd.target != self.node_id:
            return
        else:
            want = self.node_hmac.tag(protocol.signed_bytes(cmd), auth.E2E_TAG_LEN)
            if not auth.ct_equal(want, cmd.auth):
                log("cmd", "refused: bad tag (cseq %d)" % cmd.cseq)
                return
        if self.cmd_window.accept(cmd.cseq) != auth.NEW:
            log("cmd", "refused: replayed cseq %d" % cmd.cseq)
            return
        self.counters.set_min("cseq", cmd.cseq)
        code, result = 0, []
        op = cmd.op
        if op == protocol.OP_RESEND and len(cmd.args) == 2:
            code, result = self._resend(cmd.args[0], cmd.args[1])
        elif op == protocol.OP_SET and len(cmd.args) == 2:
            code = self._set(cmd.args[0], cmd.args[1])
        elif op == protocol.OP_STATUS:
            self.send_status()
        elif op == protocol.OP_PING:
            result = [self.now_ms() // 1000]
        elif op == protocol.OP_REBOOT:
            self._reply(cmd, 0, [])
            await asyncio.sleep_ms(2000)
            self.shutdown_for_reset()
            self.hal.reset()
        else:
            code = 2
        log("cmd", "op=%d cseq=%d code=%d" % (op, cmd.cseq, code))
        self._reply(cmd, code, result)

    def _resend(self, a, b):
        """Answer "resend readings a..b" from the ring: result = [first, last] actually resent
        and the first seq no longer held (a gap the collector must mark lost)."""
        if not isinstance(a, int) or not isinstance(b, int) or b < a:
            return 1, []
        held = self.ring.get_range(a, b, 4 * protocol.MAX_READINGS)
        if not held:
            # nothing held: say why per range ("aged" out of the ring, "lost" in a power cut or
            # never issued after a reboot skip) so the collector closes the gap honestly
            result = []
            for lo, hi, why in self.ring.gaps(a, b, 2):
                result.extend([lo, hi, why])
            return 3, result[:8]
        i = 0
        while i < len(held):
            chunk = held[i:i + protocol.MAX_READINGS]
            frame = ring_mod.build_telemetry(self.node_id, chunk, self.wall_s())
            if frame is None:
                break
            protocol.encode(frame, self.mesh_hmac, self.node_hmac)
            self.router.originate(frame, self.now_ms(), None)
            i += len(frame.readings)
        first = held[0][0]
        last = held[i - 1][0] if i else first
        return 0, [first, last]

    def _set(self, key, value):
        if key in ("report_interval_s", "warmup_s", "sample_window_s"):
            try:
                self.sampler.configure(self.sampler.config.replace(key, value))
            except ValueError as e:
                log("cmd", "set %s refused: %s" % (key, e))
                return 1
            return 0
        if key == "ota_allow":
            if self.ota is None or not isinstance(value, int) or value < 0:
                return 1
            self.ota.allow(value)  # may stage and reset the node (then there is no reply)
            return 0
        return 2

    def _reply(self, cmd, code, result):
        self.send_reply(cmd.cseq, code, result)

    def send_reply(self, cseq, code, result):
        """Originate a Reply frame (result: up to 8 ints or texts of <= 32 bytes)."""
        f = protocol.Reply(origin=self.node_id, seq=self.counters.next("reply"), time_s=self.wall_s(),
                           cseq=cseq, code=code, result=result)
        protocol.encode(f, self.mesh_hmac, self.node_hmac)
        self.router.originate(f, self.now_ms(), None)
        self.wake.set()

    # ---- health and watchdog ----------------------------------------------------------------

    def _healthy(self, now):
        """Evidence of health: the pump ran recently, the sensor produced samples within two
        reporting intervals, and (after a grace period) the node has a route or a backlog it is
        keeping. A wedged task or a dead sensor stops the feeding; the WDT then resets the node."""
        if now - self.last_pump_ms > 30000:
            return False
        report_ms = self.sampler.config.report_interval_s * 1000
        ref = self.last_sample_ms if self.last_sample_ms is not None else 0
        if now > _HEALTH_GRACE_MS and now - ref > 3 * report_ms + 60000:
            return False
        return True

    async def health(self):
        self.hal.wdt_start(_WDT_TIMEOUT_MS)
        while True:
            now = self.now_ms()
            if self._healthy(now):
                self.hal.wdt_feed()
            else:
                log("health", "not healthy: letting the watchdog reset the node")
            # free heap right after a collection: what the live objects leave (before one, the
            # figure mostly measures garbage not collected yet)
            gc.collect()
            free = self.hal.mem_free()
            if free < self.heap_min:
                self.heap_min = free
            if self.ota is not None:
                self.ota.health(now)
            if not self.selftest_done and self.last_sample_ms is not None:
                self.selftest_done = True
                log("selftest", "ok node=%d role=%s sensor=1 radio=1 config=1 fw=%s" % (
                    self.node_id, self.cfg.role, self.fw_version))
            await asyncio.sleep_ms(5000)

    async def run(self):
        log("node", "start id=%d role=%s fw=%s bseq=%d boot=%d" % (self.node_id, self.cfg.role, self.fw_version,
                                                                  self.fw_seq, self.boot_count))
        radio = self.hal.radio
        radio.active(True)
        # ESP-NOW sends only to registered peers, broadcast included (ESP_ERR_ESPNOW_NOT_FOUND
        # otherwise): ff:ff:ff:ff:ff:ff takes one of the driver's 20 slots for good
        try:
            radio.add_peer(BROADCAST)
        except OSError:
            pass  # already a peer after a soft reset (ESP_ERR_ESPNOW_EXIST)
        self.peers = PeerTable(20)
        tasks: list = [self.radio_rx(), self.pump(), self.sensor(), self.uplink(), self.status(), self.health()]
        if self.gateway is not None:
            tasks.append(self.gateway.run(self))
        sim = getattr(self.cfg, "sim", None) or {}
        if sim.get("offered_interval_s"):
            tasks.append(self.load(int(sim["offered_interval_s"]), int(sim.get("offered_for_s", 0))))
        await asyncio.gather(*tasks)


FLAG_SYNTHETIC = 0x8000


class _Synthetic:
    """A made-up aggregate for offered-load tests (values derived from the time)."""

    def __init__(self, t):
        self.pm1 = 100 + t % 50
        self.pm25 = 150 + t % 70
        self.pm10 = 200 + t % 90
        self.pm25_min = self.pm25_max = self.pm25
        self.rh = 60
        self.temp = 220
        self.n = 1
        self.flags = FLAG_SYNTHETIC
