"""The node's OTA shell: joins the OTA engine (firmware/ota.py), the page store and the A/B slots
(firmware/slots.py) to the node (firmware/node.py). Built by firmware/main.py only when the app
runs from a slot (a /active pointer exists); a node run from a build directory has no OTA.

Rules
- Dissemination is unconditional: every node fetches, verifies, stores and serves a newer
  bundle (its neighbours may need it). Installing is gated: a node stages a complete bundle only
  when the fleet allowed that bseq (command OP_SET "ota_allow" <bseq>, HMAC'd to one node or
  Ed25519-signed to all, kept in the counters file so it survives a reset). This is how a
  campaign targets nodes and orders them (canary first, leaves before relays, gateways last).
- complete + allowed -> slots.stage() (unpack, verify every file, switch the pointer on trial),
  flush the ring and counters, hal.reset(). A staging failure is a refusal (reported).
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
"""
import gc

from firmware import ota as ota_mod
from firmware import slots as slots_mod
from protocol.frames import T_OTA_ADV, T_OTA_DATA

_REPORT_CODE = 0


class OtaShell:
    """node: firmware.node.Node; slots: SlotManager; air: ota.OtaAir around the engine."""

    def __init__(self, node, slots, air, log):
        self.node = node
        self.slots = slots
        self.air = air
        self.engine = air.engine
        self.log = log
        self.refused = None  # (bseq, reason) refused during this boot
        self.probe_token = None
        self.probe_ok = False
        self.confirmed_now = False
        self._last_state = -1
        self._last_quarter = -1
        self.reported = False
        self._bad_pages = 0

    # ---- the interface node.py drives (same as OtaAir) --------------------------------------

    def on_air(self, mac, msg, now_ms):
        e = self.engine
        t = msg[2]
        if (t == T_OTA_ADV and not e.t_bseq and e.state != ota_mod.ST_RECEIVING) or (t == T_OTA_DATA and e.t_bseq):
            # the engine may now allocate its 3.5 KB receive buffer or copy and parse the signed
            # manifest: collect first so a fragmented heap still has a block that size
            gc.collect()
        try:
            self.air.on_air(mac, msg, now_ms)
        except MemoryError:
            # the engine's state is not to be trusted after a failed allocation: reset; the
            # verified pages are on flash and the fetch resumes from them
            self.log("ota", "out of memory while receiving: resetting (progress is kept on flash)")
            self.node.shutdown_for_reset()
            self.node.hal.reset()
        self._drain()

    def tick(self, now_ms):
        self.air.tick(now_ms)
        self._drain()

    def poll_tx(self):
        return self.air.poll_tx()

    @property
    def next_deadline_ms(self):
        return self.air.next_deadline_ms

    @property
    def state(self):
        s = self.engine.state
        if s != ota_mod.ST_IDLE:
            return s
        if self.slots.in_trial():
            return slots_mod.ST_TRIAL
        if self.refused is not None:
            return slots_mod.ST_REFUSED
        return self.slots.status()

    @property
    def progress_pct(self):
        return self.engine.progress_pct

    # ---- events ------------------------------------------------------------------------------

    def _drain(self):
        while True:
            ev = self.air.poll_event()
            if ev is None:
                break
            if ev[0] == "complete":
                self.log("ota", "bundle bseq %d complete and verified" % ev[1])
                self.maybe_stage()
            elif ev[0] == "refused":
                self.on_refused(ev[1], ev[2])
        bad = self.engine.bad_pages
        if bad != self._bad_pages:
            # the engine dropped a page (digest mismatch) and distrusts its senders: a neighbour
            # serving pages no honest node stores is worth a line on the console
            first = self._bad_pages == 0
            self._bad_pages = bad
            self.log("ota", "dropped a page of bseq %d that does not match the manifest (%d so far); its senders "
                     "are ignored for a while" % (self.engine.m.bseq, bad))
            if first:  # the fleet hears of it once per boot: a polluting neighbour is worth a look
                self._report("bad_page", self.engine.m.bseq, "page digest mismatch")
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
        q = self.engine.progress_pct // 25
        if force or st != self._last_state or (st == ota_mod.ST_RECEIVING and q != self._last_quarter):
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
        """Stage, switch and reset when the stored bundle is complete, newer and allowed.
        Unpacking needs a few contiguous KB (a page, the inflate window): a long-running node's
        heap may be too fragmented, so a MemoryError while running resets the node and main.py
        stages again at boot (at_boot=True), before the node's tasks fill the heap."""
        e = self.engine
        if not e.complete() or e.m.bseq <= self.slots.floor_bseq() or e.m.bseq > self.allowed():
            return False
        if self.slots.in_trial():
            return False  # confirm or roll back the running trial first
        m = e.m
        gc.collect()
        try:
            slot = self.slots.stage(m, e.store.get_page)
        except (slots_mod.SlotError, MemoryError) as err:
            if not at_boot and ("memory" in str(err) or isinstance(err, MemoryError)):
                self.log("ota", "staging bseq %d ran out of memory: resetting to stage at boot" % m.bseq)
                self.node.shutdown_for_reset()
                self.node.hal.reset()
                return False
            self.on_refused(m.bseq, str(err))
            return False
        except OSError as err:  # flash full or failing: the active slot is untouched
            self.on_refused(m.bseq, "staging failed: %s" % err)
            return False
        e.set_running(m.bseq)
        self.log("ota", "staged bseq %d version %s in slot %s: resetting into the trial" % (m.bseq, m.version, slot))
        self.node.shutdown_for_reset()
        self.node.hal.reset()
        return True

    # ---- trial -------------------------------------------------------------------------------------

    def on_sent(self, token, ok):
        """The router's outcome of a frame this shell originated; True when it was ours."""
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
        back an expired one (resets the node), report a past roll back once."""
        if self.slots.in_trial():
            node = self.node
            joined = node.router.has_route()
            sensor = node.last_frame_ms is not None
            if joined and sensor and self._uplink_proven():
                if self.slots.confirm():
                    self.confirmed_now = True
                    self.log("ota", "trial of %s confirmed (route, sensor, uplink)" % self.slots.running()[1])
                    self._maybe_status(force=True)
                    return
            if self.slots.check_trial(now_ms):
                self.log("ota", "trial not confirmed in time: rolled back, resetting")
                node.shutdown_for_reset()
                node.hal.reset()
            return
        if not self.reported and self.node.router.has_route():
            self.reported = True
            r = self.slots.last_result() or {}
            if r.get("result") in ("rolled_back", "refused"):
                bseq = r.get("bseq", 0)
                if isinstance(bseq, int) and bseq > self.node.counters.peek("ota_rep"):
                    self._report(str(r["result"]), bseq, str(r.get("reason", "")))
                    self.node.counters.set_min("ota_rep", bseq)

    def _report(self, what, bseq, reason):
        try:
            self.node.send_reply(0, _REPORT_CODE, ["ota", what, bseq, reason[:32]])
        except Exception as e:  # noqa: BLE001 - a report must never take the node down
            self.log("ota", "cannot report: %s" % e)
