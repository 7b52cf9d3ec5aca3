"""The node's asyncio shell: wires the sans-IO cores (sampler, sensor parser, router, ring,
counters, OTA) to a HAL (firmware/hal/esp32.py or firmware/hal/sim.py) and, on a gateway, to
the MQTT uplink (firmware/gateway.py). The cores never see a clock or a socket: this file reads
the clock, moves bytes and calls the cores with `now_ms`.

Tasks
- radio_rx:  radio.arecv() -> router.on_recv (or the OTA engine for OTA frames)
- pump:      router/OTA deadlines and output queues -> radio.asend -> on_send_done; events
- sensor:    UART bytes -> parser -> sampler; sampler wake/sleep -> UART commands; reports -> ring
- uplink:    ring backlog -> telemetry frames -> router.originate while a route exists
- status:    a health report 20 s after boot, then every STATUS_INTERVAL_S from a random phase,
             and one soon after the parent changes (parent_report_ms: the fleet's source routes)
- health:    feeds the watchdog only on evidence of health (see _healthy)
Console lines start with a tag ("node", "selftest", "cmd", ...) so a technician's serial
monitor and `fleet node logs` stay readable.
"""
import asyncio
import gc

# A collection after each large import: loading a module leaves garbage (its dicts regrown,
# the loader's buffers) between the objects it keeps; collected before the next module loads,
# those holes are filled by it, and the heap keeps the contiguous room the ring's RAM block
# and the frames need. Without them a 32-bit node failed to allocate its 1.5 KB ring block at
# a 136 KB heap with 25 KB free (bench/heap_bench.py); with them it boots at 120 KB.
gc.collect()
import protocol  # noqa: E402

gc.collect()
from firmware import counters as counters_mod  # noqa: E402
from firmware import fsutil  # noqa: E402
from firmware import ring as ring_mod  # noqa: E402

gc.collect()
from firmware.app import NodeApp  # noqa: E402
from firmware.compat import ticks_diff, ticks_ms  # noqa: E402
from firmware.drivers import command_bytes, make_parser  # noqa: E402
from firmware.mesh import PeerTable, Router  # noqa: E402

gc.collect()
from firmware.sampler import Sampler, SamplerConfig  # noqa: E402
from protocol import auth  # noqa: E402

gc.collect()

FW_VERSION = "1.0.0"
FW_SEQ = 1

STATUS_INTERVAL_S = 300
# A new parent is reported early, as RPL sends a DAO when a node's parent changes: the fleet
# compiles the source routes of its commands from the parents in status reports, and a path
# up to STATUS_INTERVAL_S old sends a command to where the node was (issue 15). The report
# waits until the parent has held PARENT_REPORT_DELAY_MS plus a random part of it (each change
# restarts the wait: a node still moving reports once it settles, and a subtree re-parented at
# once by a gateway's death reports spread out), and comes at most once per
# PARENT_REPORT_GAP_MS. DES, 2,000 nodes x 1 h, 20 % loss + a gateway failure (seeds 1, 2):
# control transmissions (beacons + repair) per reading 25.9 / 26.4 -> 21.7 / 18.7, fewer stale
# routes flooded; status 15.1 / 15.9 -> 18.4 / 18.0. Clean links: status 10.0 per reading, as
# before. (A gap of 300 s, the status interval, made the report no earlier than the periodic one.)
# The wait is most of a gateway failure's repair latency: a gap's request waits for the
# reports that mend its node's path. DES, 20 % loss + a gateway failure, repair latency p50
# at 60 s: 115-132 s for 2,000 nodes (seeds 1-8) and 147-176 s for 5,000 (seeds 1-4); at 30 s
# 77-91 s and 87-124 s, every gap repaired, at most 2.84 repair transmissions per gap hop, and
# in the 2,000-node storm control 5.32 -> 5.20 and parent changes 6.04 -> 5.56 (means). 30 s
# became the default once a gap's retry waits for a whole path (fleet/repair.py route_wait_s):
# before that, two storm runs of 12 flooded the whole mesh for a node whose path ran past the
# TTL. Its price: status transmissions ~1 % more on clean links (fewer changes share a
# report); control 1.912 -> 1.924 per reading (2,000 nodes, seeds 1-6), within the noise - the
# same runs with the wait at 60,001 ms (nothing physical changed, the random stream moved) gave
# 1.912 with seeds moving by up to 0.031; at 5,000 nodes in the storm control 3.91 -> 4.11
# (seeds 1-4, chaotic). Halving the wait only for a parent on another root (the subtree of a
# dead gateway moving) met repair p50 too, but left 5,000-node seeds 1 and 3 with readings
# not yet repaired (and seed 3 flooded stale routes); 45 s (before the retry wait): 92-112 s
# for 2,000, 123-163 s at 5,000.
# (PARENT_REPORT_DELAY_MS is the default of the config's parent_report_delay_ms: a board keeps
# it, the virtual rig may shorten it.)
PARENT_REPORT_DELAY_MS = 30000
PARENT_REPORT_GAP_MS = 60000
UPLINK_POLL_MS = 500
_SENSOR_READ_MAX_MS = 1000  # the sampler also ticks at least this often (late config changes)
_WDT_TIMEOUT_MS = 60000
_HEALTH_GRACE_MS = 600000  # a node may take 10 min to find a route before the WDT cares
# a node that has heard beacons of a key epoch it has no key for since it last asked, and has no
# parent or heard more of them than of its own epoch (its parent may be a stolen pole of the old
# one), missed a rotation (issue 14): it asks the fleet for the key, this often at most (the
# config's key_ask_ms, firmware/config.py: a minute by default)
# Readings held while the wall clock is unknown (an RTC starts at its epoch; a gateway's NTP
# time reaches nodes in beacons), as 24-byte ring records: 48 bytes of heap each on 32 bits in
# small blocks (an Aggregate and its tuple took ~140), 3 KB when full; 64 = 5 h at a 5-minute
# report interval. When full the oldest goes, counted in readings_lost and logged (never
# silently).
UNSTAMPED_MAX = 64


def log(tag, msg):
    print(tag, msg)


def parent_report_ms(now_ms, last_status_ms, jitter_ms, delay_ms=PARENT_REPORT_DELAY_MS):
    """When to report a parent that changed at now_ms (jitter_ms: random, 0..delay_ms; delay_ms:
    the config's parent_report_delay_ms)."""
    t = now_ms + delay_ms + jitter_ms
    if last_status_ms is not None and t < last_status_ms + PARENT_REPORT_GAP_MS:
        t = last_status_ms + PARENT_REPORT_GAP_MS
    return t


class Node(NodeApp):
    """One node (or gateway) running on a HAL with a validated config: the asyncio shell around
    the application core (firmware/app.py NodeApp) and the other sans-IO cores."""

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
        # reports at a random phase of the interval (poles boot together: firmware/sampler.py)
        self.sampler.phase_ms = self.router.rng.below(cfg.report_interval_s * 1000)
        self.gateway = gateway  # firmware.gateway.Gateway or None
        self.epoch = 0  # mesh key epoch (issue 14); a rotated node holds its keys in mesh_keys.bin
        self._grace = None  # when it ends its grace window by itself (uptime ms; firmware/rekey.py node_op)
        self.fleet_pub = cfg.fleet_pub
        self._ask = [0, 0, 0]  # key requests: last check, alien_rx and beacons_rx at the last request
        try:
            # rotated (its keys on flash) or provisioned in a later epoch (config mesh_epoch)
            if cfg.mesh_epoch or fsutil.exists(fs, "mesh_keys.bin"):
                self._epoch_op(None)
        except OSError:
            pass
        self.cmd_window = auth.ReplayWindow(32)
        # every counter up to the persisted highest counts as seen: a command accepted before a
        # reboot must not be accepted again after it
        self.cmd_window.restore(self.counters.peek("cseq"))
        self.ota = None  # firmware.ota_node.OtaShell, set by main when the app runs from a slot
        self.fw_version = FW_VERSION  # main sets the running slot's version and bseq
        self.fw_seq = FW_SEQ
        self.last_frame_ms = None  # last valid sensor frame (OTA trial health: "sensor read")
        self._last_ticks = ticks_ms()
        self._mono = 0
        self.wake = asyncio.Event()
        self.status_wake = asyncio.Event()
        self.parent_report_ms = None  # when a changed parent is reported (None: nothing to report)
        self.last_status_ms = None
        self.readings_lost = 0  # readings the node had to discard since boot (status frames)
        self.heap_min = 1 << 29  # lowest free heap seen right after a collection (heap_sample)
        self.heap_sample()
        self.last_sample_ms = None
        self.last_report_ms = None
        self.last_pump_ms = 0
        self.last_route_ms = None
        self.unstamped = []  # readings waiting for wall-clock time: ring records, oldest first
        self.app_init()
        self.errors = 0
        self.selftest_done = False
        self.radio_ok = False
        self.peers = PeerTable(20)  # ESP-NOW holds at most 20 peers (broadcast: firmware/startup.py tasks())

    # ---- time ----------------------------------------------------------------------------

    def now_ms(self):
        """Milliseconds since boot, never wrapping: ticks_ms wraps (every ~12 days on the unix
        port, ~298 h on the ESP32), so the cores get a count accumulated from ticks_diff."""
        t = ticks_ms()
        self._mono += ticks_diff(t, self._last_ticks)
        self._last_ticks = t
        return self._mono

    def wall_s(self, now=None):
        """Unix seconds by the mesh's clock (a gateway's: its NTP-set RTC) or the RTC; 0 if
        unknown. now: this node's now_ms (default: read it)."""
        t = self.router.wall_time_s(self.now_ms() if now is None else now)
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
            self.on_sent(ev[1], ev[2])
        elif kind == "parent":
            log("mesh", "parent %s" % ev[1])
            if ev[1]:
                now = self.now_ms()
                d = self.cfg.parent_report_delay_ms
                self.parent_report_ms = parent_report_ms(now, self.last_status_ms, self.router.rng.below(d), d)
                self.status_wake.set()
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
            # bounded by the sampler's next deadline: a sleeping sensor sends nothing, and the
            # wake command must still go out on time
            dl = self.sampler.next_deadline_ms
            wait_ms = _SENSOR_READ_MAX_MS if dl is None else max(1, min(_SENSOR_READ_MAX_MS, dl - now))
            data = await uart.read_some(wait_ms)
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
            self._stamp(agg, now)

    def _stamp(self, agg, now):
        """Put a new report (agg, or None) into the ring stamped with wall-clock time, after any
        readings held before time was known; without wall time hold it instead (firmware/hold.py,
        loaded for the call: a node with time carries none of it)."""
        wall = self.wall_s(now)
        if (agg is not None and not wall) or (wall and self.unstamped):  # not on every idle pass
            from firmware import hold
            from firmware.compat import unload

            try:
                if not wall:
                    if agg is not None:
                        hold.hold(self, agg, now, UNSTAMPED_MAX, log)
                    return
                hold.release(self, wall, now, log)
            finally:
                hold = None
                unload("firmware.hold")
        if agg is not None and wall:
            self._store(wall, agg)

    def _store(self, t_s, agg):
        seq = self._append(t_s, agg)
        log("node", "reading seq=%d pm25=%d.%d n=%d" % (seq, agg.pm25 // 10, agg.pm25 % 10, agg.n))
        self.wake.set()

    def _append(self, t_s, agg):
        """Store a reading in the ring; a spill to flash is one of the heap's worst moments."""
        spills = self.ring.spills
        seq = self.ring.append(t_s, agg)
        if self.ring.spills != spills:
            self.heap_sample()
        return seq

    async def uplink(self):
        """Move readings from the ring into the mesh while a route exists."""
        while True:
            await asyncio.sleep_ms(UPLINK_POLL_MS)
            self._uplink_poll()

    def _uplink_poll(self):
        self.poll_uplink(self.now_ms())

    def woke(self):
        self.wake.set()

    def wall_ms(self):
        """Unix milliseconds by the RTC (a gateway's NTP) or the mesh's clock; 0 if unknown."""
        t = self.hal.time_ms()
        if t:
            return t
        return self.router.wall_time_ms(self.now_ms())

    async def status(self):
        await asyncio.sleep_ms(20000)
        self.send_status()
        # the next ones at a random phase of the interval: the poles of a lighting circuit boot
        # in the same second, and a status from each of them in the same second every 5 minutes
        # overflows the relays' queues near a gateway (fleet sim des --status-interval 300). A
        # parent report (parent_report_ms) comes in between and leaves that phase as it is.
        periodic = self.now_ms() + self.router.rng.below(STATUS_INTERVAL_S * 1000)
        while True:
            now = self.now_ms()
            due = periodic
            pr = self.parent_report_ms
            if pr is not None and pr < due:
                due = pr
            if now < due:
                self.status_wake.clear()
                try:
                    await asyncio.wait_for_ms(self.status_wake.wait(), due - now)
                except asyncio.TimeoutError:
                    pass
                continue
            self.send_status()
            if now >= periodic:
                periodic = now + STATUS_INTERVAL_S * 1000

    def send_status(self, probe=False, ask=False):
        """Originate a status frame. With probe, it carries an app token whose ("sent", token,
        ok) outcome goes to the OTA shell (trial health); returns that token (else None).
        With ask (a key request: its epoch is what the fleet reads), a node broadcasts it to
        every neighbour instead of sending it to its parent (which may be a stolen pole of the
        old epoch; a neighbour of the new one passes it on: firmware/mesh.py _rx_up)."""
        r = self.router
        free = self.heap_sample()
        body = protocol.StatusBody(
            fw_seq=self.fw_seq, fw_version=self.fw_version, uptime_s=self.now_ms() // 1000, heap_free=free,
            heap_min=self.heap_min, backlog=self.ring.backlog(), parent=r.parent or 0,
            link_etx=min(r.parent_etx, 0xFFFF), path_cost=min(r.cost, 0xFFFF), rssi=max(-128, min(0, r.parent_rssi)),
            boot_count=self.boot_count, ota_state=self.ota.state if self.ota else 0,
            ota_progress=self.ota.progress_pct if self.ota else 0, errors=self.errors,
            radio_drops=self.hal.radio.stats()[4], readings_lost=self.readings_lost, epoch=self.epoch)
        return self.send_status_body(body, probe, ask)

    def heap_sample(self):
        """Collect, then return the free heap: what the live objects leave (before a collection
        the figure mostly measures garbage). A new low is kept in heap_min (status frames) and
        logged ("heap low FREE"), so a console shows when the worst moment came."""
        gc.collect()
        free = self.hal.mem_free()
        if free < self.heap_min:
            self.heap_min = free
            log("heap", "low %d" % free)
        return free

    def shutdown_for_reset(self):
        """Persist what a planned reset must not lose (ring, exact counters)."""
        try:
            self.ring.flush()
            self.counters.sync()
        except OSError as e:
            log("node", "flush before reset failed: %s" % e)

    # ---- commands ----------------------------------------------------------------------------

    async def on_command(self, cmd):
        why = self.accept_command(cmd)
        if why is not None:
            if why:
                log("cmd", "refused: %s (cseq %d)" % (why, cmd.cseq))
            return
        # What a command does (firmware/node_cmd.py, ~2 KB of bytecode on a 32-bit node) is
        # loaded for the command and dropped after it: commands come a few times a day.
        from firmware import node_cmd
        from firmware.compat import unload

        try:
            await node_cmd.run(self, cmd, log)
        finally:
            node_cmd = None
            unload("firmware.node_cmd")

    def _epoch_op(self, cmd):
        """Mesh key epochs (issue 14): firmware/rekey.py (node_op) is imported for this command,
        or for the boot-time load when cmd is None, and unloaded after. Returns (code, result)."""
        from firmware import rekey
        from firmware.compat import unload

        try:
            return rekey.node_op(self, cmd, log)
        finally:
            rekey = None
            unload("firmware.rekey", "protocol.keywrap")

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
            self.heap_sample()
            # counted since the last request (neighbours beacon every Imax = 512 s when all is
            # quiet: a window of a minute would often see none)
            a = self._ask
            if now - a[0] >= self.cfg.key_ask_ms:
                a[0] = now
                st = self.router.stats
                n = st["alien_rx"] - a[1]
                if n and (self.router._par is None or n > st["beacons_rx"] - a[2]):
                    log("keys", "%d beacons of a key epoch this node holds no key for: asking for it (epoch %d)"
                        % (n, self.epoch))
                    self.send_status(False, True)
                    a[1], a[2] = st["alien_rx"], st["beacons_rx"]
            g = self._grace
            if g is not None and now >= g:
                log("keys", "grace window of epoch %d not ended by the fleet: ending it" % self.epoch)
                self._epoch_op(protocol.Command(target=self.node_id, op=7, args=[self.epoch, 1]))
            if self.ota is not None:
                self.ota.health(now)
            if not self.selftest_done and self.last_sample_ms is not None:
                self.selftest_done = True
                log("selftest", "ok node=%d role=%s sensor=1 radio=1 config=1 fw=%s" % (
                    self.node_id, self.cfg.role, self.fw_version))
            await asyncio.sleep_ms(5000)
