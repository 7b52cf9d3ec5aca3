"""The node's OTA shell: joins the OTA engine (firmware/ota.py), the page store and the A/B slots
(firmware/slots.py) to the node (firmware/node.py). Built by firmware/ota_attach.py only when the app
runs from a slot (a /active pointer exists); a node run from a build directory has no OTA.

Rules
- Dissemination is unconditional: every node fetches, verifies, stores and serves a newer
  bundle (its neighbours may need it). Installing is gated: a node stages a complete bundle only
  when the fleet allowed that bseq (command OP_SET "ota_allow" <bseq>, HMAC'd to one node or
  Ed25519-signed to all, kept in the counters file so it survives a reset). This is how a
  campaign targets nodes and orders them (canary first, leaves before relays, gateways last).
- complete + allowed -> flush the ring and counters, hal.reset(); at boot, before the node's
  tasks run, slots.stage() (unpack, verify every file, switch the pointer on trial) and
  hal.reset() into the trial. A staging failure is a refusal (reported).
- Trial boot: confirm when healthy — mesh joined (a route, or the gateway role), sensor read (a
  valid sensor frame parsed since boot) and uplink proven: on a gateway the MQTT session is up;
  on a node its parent acknowledged (MAC ACK) a status frame sent while it had a route. There is
  no end-to-end acknowledgement in the protocol, so the first hop of a working route is the
  strongest evidence a node itself can have that the collector is reachable.
  Not confirmed within the pointer's trial_ms -> roll back and reset; a crash loop is rolled
  back by boot.py (max_boots).
- Reporting: a page dropped for not matching the manifest is logged (the engine's bad_pages),
  and the first one per boot is reported as a Reply ["ota", "bad_page", bseq, reason].
  Status frames carry fw_seq/fw_version of the running slot and ota_state
  (1 receiving, 2 complete-waiting, 3 trial, 4 confirmed, 5 rolled back, 6 refused) with
  ota_progress; a status goes out at every change of state and every 25 % of progress. A roll
  back or a refusal is also reported once as an unsolicited Reply (cseq 0, code 0) with result
  ["ota", "rolled_back"|"refused", bseq, reason] (the collector stores replies as events).
- Heap (a board has ~112 KB): the engine, the page store, the manifest parser, Ed25519 and the
  slot manager cost ~35 KB of bytecode, so an idle node does not keep them. This shell is what
  stays: it builds the engine when an OTA frame needs it (a newer bundle advertised, a request
  for a page it holds, a neighbour's conflicting manifest), when the gateway seeds a bundle or
  a stage is due, and drops it (and unloads its modules) once it has been quiescent for
  IDLE_DROP_MS. Meanwhile it does the engine's idle part itself, with the engine's own Trickle,
  token bucket and neighbour table (OtaEngine.carry()): the same adverts at the same times,
  the same Trickle resets and suppressions. The engine's receive and send buffers (a page each,
  allocated by main.py before anything else OTA) go from engine to engine: a heap that has run
  for hours seldom has 3.5 KB in one piece. The slot manager is built for a stage, a confirm or a
  roll back only; Ed25519 is unloaded after every signature check; staging always follows a
  reset (fresh heap).
"""
import gc
import sys

import protocol
from firmware.compat import unload
from firmware.mesh import BROADCAST
from protocol.frames import T_OTA_ADV, T_OTA_DATA, T_OTA_REQ

_REPORT_CODE = 0
IDLE_DROP_MS = 60000  # an engine quiescent this long is dropped
_MAX_REPORTS = 3  # reports waiting for a route or an acknowledgement; the oldest goes first
_REPORT_TRIES = 8  # sends of a report before it is given up (a health tick, 5 s, apart)
MAX_STAGE_RESETS = 3  # resets to stage one bundle before it is refused (OtaShell._reset_to_stage)
_TOKEN = 1000  # milli-tokens per frame (firmware/ota.py)
# ota_state codes (status frames): firmware/ota.py ST_IDLE/ST_RECEIVING/ST_COMPLETE and
# firmware/slots.py ST_TRIAL..ST_REFUSED own them; mirrored here so the idle shell imports
# neither (tests/device/test_ota_core.py checks they agree)
ST_RECEIVING = 1
ST_REFUSED = 6
# heap_mark's phase for each ota_state (0 idle, 1 receiving, 2 complete, 3 trial, 4..6 after one)
_PHASES = ("steady", "receive", "complete", "trial", "steady", "steady", "steady")
_ENGINE_MODULES = ("firmware.ota", "firmware.ota_store", "protocol.manifest")
_SIG_MODULES = ("protocol.ed25519", "protocol.sha512")
_SLOT_MODULES = ("firmware.slots", "firmware.boot")


class OtaShell:
    """node: firmware.node.Node; make_air(carry, floor) -> firmware.ota.OtaAir around a new
    engine (carry: None at boot, else what the dropped engine's carry() returned; floor: the
    slots' running or failed bseq); make_slots() ->
    firmware.slots.SlotManager of this flash; mesh_key: OTA frames' key; log(tag, msg)."""

    def __init__(self, node, make_air, make_slots, mesh_key, log):
        self.node = node
        self._make_air = make_air
        self._make_slots = make_slots
        self.mesh_key = mesh_key
        self.log = log
        self.refused = None  # (bseq, reason) refused during this boot
        self.probe_token = None
        self.probe_ok = False
        self.confirmed_now = False
        self._last_state = -1
        self._last_quarter = -1
        self.reported = False
        self._reports = []  # [reply bytes, app token in flight or None, sends] not yet acknowledged
        self._bad_pages = 0
        self._heap_low = {}  # phase -> lowest free heap right after a collect (see heap_mark)
        self.rx_errors = 0
        self._dropped = False
        # the slots, read once: what they say changes only through this shell (or a reset)
        slots = make_slots()
        node.fw_seq, node.fw_version = slots.running()
        self._slots_read(slots)
        self.last_result = slots.last_result()
        # the engine (None while dropped) or, while dropped, what goes on without it
        self.air = None
        self.carry = None
        self.summary = None  # the stored bundle's (bseq, mlen, mid, npages, have), or None
        self._now = node.now_ms()
        self._adv_due = False
        # at boot: resume the stored bundle (signature and pages checked again); kept for
        # IDLE_DROP_MS (a fetch that ran out of heap and reset the node goes on from here)
        self._load()
        slots = None
        unload(*_SLOT_MODULES)

    def _slots_read(self, slots):
        self.floor = slots.floor_bseq()
        self.in_trial = slots.in_trial()
        self.slot_state = slots.status()
        p = slots.pointer() or {}
        self.trial_ms = p.get("trial_ms", slots.trial_ms)

    def _slots(self, fn, *args):
        """Build the slot manager, call its method `fn`, re-read the slots, unload it; return
        what fn returned (exceptions pass through, the manager unloaded all the same)."""
        gc.collect()
        slots = self._make_slots()
        try:
            return getattr(slots, fn)(*args)
        finally:
            self._slots_read(slots)
            slots = None
            unload(*_SLOT_MODULES)
            gc.collect()

    # ---- the engine, built when needed ---------------------------------------------------------

    def _load(self):
        if self.air is None:
            carry = self.carry
            self.carry = None
            self.air = self._make_air(carry, self.floor)
            self._unload_sig()
            self._bad_pages = self.air.engine.bad_pages
            self._active_ms = self._now
        return self.air

    @property
    def engine(self):
        """The OTA engine (built if it was dropped): gateway seeding feeds it directly."""
        return self._load().engine

    def _maybe_drop(self, now):
        e = self.air.engine
        if not e.quiescent():
            self._active_ms = now
            return
        if now - self._active_ms < IDLE_DROP_MS:
            return
        e = None
        self._drop()

    def _drop(self):
        e = self.air.engine
        self._dropped = True
        self.carry = e.carry()
        self.summary = e.summary()
        e = None
        self.air = None
        unload(*_ENGINE_MODULES)
        gc.collect()

    def _unload_sig(self):
        if "protocol.ed25519" in sys.modules:
            unload(*_SIG_MODULES)

    # ---- the interface node.py drives -------------------------------------------------------

    def on_air(self, mac, msg, now_ms):
        if now_ms > self._now:
            self._now = now_ms
        try:
            f = protocol.decode(msg, self.mesh_key)
        except protocol.ProtocolError:
            self.rx_errors += 1
            return
        if self.air is None and not self._needs_engine(f, now_ms):
            return
        if self.air is None or (f.type == T_OTA_ADV and not self.air.engine.t_bseq
                                and self.air.engine.state != ST_RECEIVING) or \
                (f.type == T_OTA_DATA and self.air.engine.t_bseq):
            # the engine may now be built, allocate its 3.5 KB receive buffer or copy and parse
            # the signed manifest: collect first so a fragmented heap still has a block that size
            gc.collect()
        try:
            self._load().engine.on_frame(f, mac, now_ms)
        except MemoryError as e:
            # the engine's state is not to be trusted after a failed allocation: reset; the
            # verified pages are on flash and the fetch resumes from them
            self.log("ota", "out of memory while receiving (%s): resetting (progress is kept on flash)" % e)
            if hasattr(sys, "print_exception"):
                sys.print_exception(e)  # pyright: ignore  (MicroPython) where: for fleet node logs
            self.node.shutdown_for_reset()
            self.node.hal.reset()
        self._unload_sig()
        self._drain()

    def tick(self, now_ms):
        if now_ms > self._now:
            self._now = now_ms
        if self.air is None:
            if self.carry["trickle"].poll(now_ms):
                self._adv_due = True
            return
        self.air.tick(now_ms)
        self._unload_sig()  # gateway seeding checks signatures outside on_air
        self._drain()
        if self.air is not None:
            self._maybe_drop(now_ms)

    def poll_tx(self):
        if self.air is not None:
            return self.air.poll_tx()
        if not self._adv_due:
            return None
        c = self._refill()
        if c["tokens"] < _TOKEN:
            return None
        self._adv_due = False
        c["tokens"] -= _TOKEN
        c["tx_frames"] += 1
        from protocol.frames_ota import OtaAdvert  # the OTA node's own: kept while the shell lives

        s = self.summary
        if s is None:
            a = OtaAdvert(self.node.node_id, c["floor"], 0, 0, 0, 0)
        else:
            a = OtaAdvert(self.node.node_id, s[0], s[1], s[2], s[3], s[4])
        return None, BROADCAST, protocol.encode(a, self.mesh_key)

    @property
    def next_deadline_ms(self):
        if self.air is not None:
            return self.air.next_deadline_ms
        c = self.carry
        d = c["trickle"].next_fire_ms
        if self._adv_due:
            want = self._now
            self._refill()
            if c["tokens"] < _TOKEN:
                rate = c["tx_rate_per_s"] or 1
                ready = self._now + (_TOKEN - c["tokens"] + rate - 1) // rate
                if ready > want:
                    want = ready
            if want < d:
                d = want
        return d

    @property
    def state(self):
        s = self._engine_state()
        if s:
            return s
        if self.in_trial:
            return self.slot_state
        if self.refused is not None:
            return ST_REFUSED
        return self.slot_state

    def _engine_state(self):
        if self.air is not None:
            return self.air.engine.state
        s = self.summary
        if s is not None and s[0] > self.carry["floor"]:
            return self.carry["complete_state"]  # a dropped engine held a complete bundle
        return 0

    @property
    def progress_pct(self):
        return self.air.engine.progress_pct if self.air is not None else self.carry["progress"]

    # ---- the engine's idle part, while it is dropped (firmware/ota.py OtaEngine: same rules) --

    def _refill(self):
        c = self.carry
        dt = self._now - c["tok_ms"]
        if dt > 0:
            c["tokens"] = min(c["tx_burst"] * _TOKEN, c["tokens"] + dt * c["tx_rate_per_s"])
            c["tok_ms"] = self._now
        return c

    def _needs_engine(self, f, now):
        """Handle frame f as the dropped engine would when that is only bookkeeping (an
        advert that fetches nothing, a frame for someone else); True when the engine must."""
        c = self.carry
        if f.src == self.node.node_id:
            return False
        until = c["distrust"].get(f.src)
        if until is not None:
            if now < until:
                return False
            del c["distrust"][f.src]
        s = self.summary
        t = f.type
        if t == T_OTA_REQ:  # a request for a unit we hold: serve it
            return f.dst == self.node.node_id and s is not None and f.bseq == s[0] and f.page < s[4]
        if t != T_OTA_ADV:
            return False  # data: nothing is fetched or served while the engine is dropped
        mine = s[0] if s is not None else 0
        if f.mlen > c["max_signed"]:
            return True
        newer = f.bseq > c["floor"] and f.bseq > mine and f.mlen
        if newer and (f.bseq, f.mid) not in c["refused"]:
            return True  # a newer bundle: fetch it
        if not newer and s is not None and f.bseq == mine and f.mlen and (f.mid != s[2] or f.have > s[4]):
            return True  # a conflicting manifest (refuse it), or more of ours than we hold
        nbs = c["nbs"]
        prev = nbs.get(f.src)
        changed = prev is None or prev[0] != f.bseq or prev[1] != f.mid or prev[4] != f.have
        if prev is None and len(nbs) >= c["max_neighbours"]:
            oldest = None
            for k in nbs:
                if oldest is None or nbs[k][5] < nbs[oldest][5]:
                    oldest = k
            del nbs[oldest]
        nbs[f.src] = [f.bseq, f.mid, f.mlen, f.npages, f.have, now]
        if changed:
            c["fails"].pop(f.src, None)
        tr = c["trickle"]
        if newer:
            pass  # a refused bundle: noted, nothing else
        elif s is not None and f.bseq < mine:
            if changed:
                tr.reset(now)  # behind us: let it hear our advert soon
        elif s is not None and f.bseq == mine and f.mlen and f.have < s[4]:
            if changed:
                tr.reset(now)
        else:
            tr.heard_consistent()
        return False

    # ---- events ------------------------------------------------------------------------------

    def _drain(self):
        if self.air is None:
            self._maybe_status()
            return
        while True:
            ev = self.air.poll_event()
            if ev is None:
                break
            if ev[0] == "complete":
                self.log("ota", "bundle bseq %d complete and verified" % ev[1])
                self.maybe_stage()
            elif ev[0] == "refused":
                self.on_refused(ev[1], ev[2])
            if self.air is None:
                return
        bad = self.air.engine.bad_pages
        if bad != self._bad_pages:
            # the engine dropped a page (digest mismatch) and distrusts its senders: a neighbour
            # serving pages no honest node stores is worth a line on the console
            first = self._bad_pages == 0
            self._bad_pages = bad
            self.log("ota", "dropped a page of bseq %d that does not match the manifest (%d so far); its senders "
                     "are ignored for a while" % (self.air.engine.m.bseq, bad))
            if first:  # the fleet hears of it once per boot: a polluting neighbour is worth a look
                self._report("bad_page", self.air.engine.m.bseq, "page digest mismatch")
        self._maybe_status()

    def on_refused(self, bseq, reason):
        """Record a refused bundle (engine or gateway seeding) and say so (once per cause)."""
        if self.refused == (bseq, reason):
            return
        self.refused = (bseq, reason)
        self.log("ota", "refused bseq %d: %s" % (bseq, reason))
        self._report("refused", bseq, reason)
        self._maybe_status(force=True)

    def _maybe_status(self, force=False):
        st = self.state
        q = self.progress_pct // 25
        if force or st != self._last_state or (st == ST_RECEIVING and q != self._last_quarter):
            self._last_state = st
            self._last_quarter = q
            self.node.send_status()

    # ---- installing -----------------------------------------------------------------------------

    def allowed(self):
        return self.node.counters.peek("ota_allow")

    def allow(self, bseq):
        """The fleet allows installing bundles up to `bseq` (persisted); stage now if ready."""
        self.node.counters.set_min("ota_allow", bseq)
        self.log("ota", "install of bseq <= %d allowed" % bseq)
        self.maybe_stage()

    def maybe_stage(self, at_boot=False):
        """When the stored bundle is complete, newer and allowed: while running, flush and reset;
        at boot (main.py, at_boot=True, before the node's tasks fill the heap) stage it, switch
        and reset into the trial. A failure to stage is a refusal (reported)."""
        s = self.summary
        if self.air is None and (s is None or s[4] < s[3] + 1 or s[0] <= self.floor or s[0] > self.allowed()):
            return False  # the dropped engine held nothing to stage (have counts the manifest unit too)
        bseq = s[0] if self.air is None else getattr(self.air.engine.m, "bseq", 0)
        try:
            e = self.engine
            if not e.complete() or e.m.bseq <= self.floor or e.m.bseq > self.allowed():
                return False
            if self.in_trial:
                return False  # confirm or roll back the running trial first
            if not at_boot:
                # unpacking wants a few KB in one piece (a page, the inflate window) and the slot
                # manager: a heap that has run for a while rarely has them, so stage right after
                # the reset, before the node is built (firmware/ota_attach.py stage_early)
                self._reset_to_stage(e.m.bseq, "complete and allowed")
                return False
            m = e.stage_manifest()
            store = e.store
            e = None
            # unpacking needs the slot manager, a page, the inflate window: the engine makes room
            # (a reset follows; after a failure it is built again when needed, and what it was
            # about to answer is asked again, as after that reset)
            self._drop()
            buf = self.carry["rx"]  # the engine's receive buffer: one page for the whole image
        except MemoryError as err:
            if at_boot:
                raise
            self._reset_to_stage(bseq, "no heap to look at it here (%s)" % err)
            return False

        def read_page(i):
            n = store.read_page_into(i, buf)
            return None if n < 0 else memoryview(buf)[:n]

        self.heap_mark("stage")  # collects
        try:
            slot = self._slots("stage", m, read_page)
        except OSError as err:  # flash full or failing: the active slot is untouched
            self.on_refused(m.bseq, "staging failed: %s" % err)
            return False
        except Exception as err:  # noqa: BLE001 - firmware.slots.SlotError (unloaded by now) or MemoryError
            if not isinstance(err, MemoryError) and type(err).__name__ != "SlotError":
                raise
            self.on_refused(m.bseq, str(err))
            return False
        self.carry["floor"] = m.bseq  # OtaEngine.set_running, for the engine built next
        self.log("ota", "staged bseq %d version %s in slot %s: resetting into the trial" % (m.bseq, m.version, slot))
        self.node.shutdown_for_reset()
        self.node.hal.reset()
        return True

    def _reset_to_stage(self, bseq, why):
        """Reset so the boot stages bundle `bseq` on a fresh heap, at most MAX_STAGE_RESETS
        times per bundle (counter "stage" = bseq * 16 + resets, persisted before the reset):
        a bundle that cannot be staged even then is refused (reported) instead of resetting the
        node for ever."""
        c = self.node.counters
        v = c.peek("stage")
        n = v % 16 if v // 16 == bseq else 0
        if n >= MAX_STAGE_RESETS:
            self.on_refused(bseq, "staging failed after %d resets (see the console at boot)" % n)
            return
        c.set_min("stage", bseq * 16 + n + 1)
        self.log("ota", "bseq %d %s: resetting to stage it on a fresh heap (%d of %d)" % (bseq, why, n + 1,
                                                                                      MAX_STAGE_RESETS))
        self.node.shutdown_for_reset()
        self.node.hal.reset()

    # ---- trial -------------------------------------------------------------------------------------

    def on_sent(self, token, ok):
        """The router's outcome of a frame this shell originated; True when it was ours."""
        if token is not None:
            for r in self._reports:
                if r[1] == token:
                    if ok:
                        self._reports.remove(r)
                    else:
                        r[1] = None  # sent again at the next health tick (_send_reports)
                    return True
        if token != self.probe_token:
            return False
        self.probe_token = None
        if ok:
            self.probe_ok = True
        return True

    def _uplink_proven(self):
        gw = self.node.gateway
        if gw is not None:
            return bool(gw.client.connected)
        if self.probe_ok:
            return True
        if self.probe_token is None and self.node.router.has_route():
            self.probe_token = self.node.send_status(probe=True)
        return False

    def health(self, now_ms):
        """Called by the node's health task (every few seconds): confirm a healthy trial, roll
        back an expired one (resets the node), report a past roll back once. The node's health
        task has just collected: the free heap now is what the live objects leave."""
        self.heap_mark(free=self.node.hal.mem_free())
        self._send_reports()
        if self.in_trial:
            node = self.node
            joined = node.router.has_route()
            sensor = node.last_frame_ms is not None
            if joined and sensor and self._uplink_proven():
                if self._slots("confirm"):
                    self.confirmed_now = True
                    self.log("ota", "trial of %s confirmed (route, sensor, uplink)" % node.fw_version)
                    self._maybe_status(force=True)
                    return
            if now_ms >= self.trial_ms and self._slots("check_trial", now_ms):
                self.log("ota", "trial not confirmed in time: rolled back, resetting")
                node.shutdown_for_reset()
                node.hal.reset()
            return
        if not self.reported and self.node.router.has_route():
            self.reported = True
            r = self.last_result or {}
            if r.get("result") in ("rolled_back", "refused"):
                bseq = r.get("bseq", 0)
                if isinstance(bseq, int) and bseq > self.node.counters.peek("ota_rep"):
                    self._report(str(r["result"]), bseq, str(r.get("reason", "")))
                    self.node.counters.set_min("ota_rep", bseq)

    def heap_mark(self, phase=None, free=None):
        """Note the free heap right after a collect in `phase` (default: from the OTA state) and
        log a line `ota heap PHASE FREE` at each new low of that phase (bench/ota_heap_bench.py
        reads them: the worst moment of boot, steady (idle, engine dropped), serve (idle, engine
        built to answer), receive, complete, stage, trial)."""
        if free is None:
            gc.collect()
            free = self.node.hal.mem_free()  # the HAL's figure, as the node's status frames report
        if phase is None:
            phase = _PHASES[self.state]
            if phase == "steady" and self.air is not None:
                # idle with the engine built: at boot (kept IDLE_DROP_MS), or answering requests
                phase = "serve" if self._dropped else "boot"
        low = self._heap_low.get(phase)
        if low is None or free < low:
            self._heap_low[phase] = free
            self.log("ota", "heap %s %d" % (phase, free))

    def _report(self, what, bseq, reason):
        """Make the report (a Reply) and send it now or once there is a route; it is sent again
        until its first hop acknowledges it (_send_reports)."""
        try:
            data = self.node.make_reply(0, _REPORT_CODE, ["ota", what, bseq, reason[:32]])
        except Exception as e:  # noqa: BLE001 - a report must never take the node down
            self.log("ota", "cannot report: %s" % e)
            return
        reps = self._reports
        if len(reps) >= _MAX_REPORTS:
            self.log("ota", "the oldest of %d waiting reports dropped unsent" % len(reps))
            del reps[0]
        reps.append([data, None, 0])
        self._send_reports()

    def _send_reports(self):
        """Send each waiting report not in flight, while the node has a route: a refusal made as
        the route went (a rebooted parent, a neighbour's bad bundle during a re-parent) would
        otherwise be lost, and the fleet never told. The same bytes each time (one reply seq:
        the collector stores it once); given up after _REPORT_TRIES failed first hops."""
        node = self.node
        if not self._reports or not node.router.has_route():
            return
        for r in list(self._reports):
            if r[1] is not None:
                continue
            if r[2] >= _REPORT_TRIES:
                self._reports.remove(r)
                self.log("ota", "report not acknowledged after %d sends: given up" % r[2])
                continue
            r[2] += 1
            try:
                r[1] = node.send_own(r[0])
            except Exception as e:  # noqa: BLE001 - a report must never take the node down
                self._reports.remove(r)
                self.log("ota", "cannot report: %s" % e)
