"""The collector's core: MQTT messages in; verified readings, node state, gaps, events and reject
counts into the store; resend commands out. No sockets and no clock of its own (time comes in
as `now_s`, or from `now_fn`), so tests drive it directly; fleet/collector_mqtt.py runs it on MQTT.

Theory of operation
- Topics: protocol/envelope.py spells them (up/<gw> uplink envelopes, state/<gw> online/offline,
  down/<gw> and down/all downlinks).
- Every air frame is decoded with the mesh key (hop tag) and its origin's node key (end-to-end
  tag). Only registered nodes have keys here: an unregistered origin is rejected.
- Telemetry takes a fast path (`fast_telemetry`): cbor2 (C) parses the frame, then the same
  checks as protocol.decode - shape, every field range, deterministic encoding (each item in its
  shortest form, proven by the total length) and both tags. Anything it does not accept goes
  through protocol.decode, which then rejects it with the precise reason (or accepts it: the
  fast path may decline, never disagree). protocol.decode's pure-Python parser costs ~30-80 us
  a frame; the fast path a fraction of it.
- Telemetry: one row per reading, keyed (node, seq); the store ignores a (node, seq) it holds,
  so QoS-1 redeliveries, mesh duplicates and resends are stored once and counted as duplicates.
  A replayed telemetry frame can only ever be such a duplicate.
- Status and reply frames carry their own per-node counters, checked with a ReplayWindow:
  an exact repeat inside the window is a duplicate (ignored); a status older than the newest
  applied one, or a counter below the window, is rejected as a replay.
- Bad input never raises: each rejected message or frame is counted under one cause (REJECT_CAUSES),
  logged the first time, then summarised at most once per `log_interval_s` per cause.
- Writes are batched: readings, state updates, gap changes, reject counts and events go to the
  store in one transaction every `batch_rows` readings or `flush_interval_s`. A failed write keeps
  the batch and is retried at the next flush: the first failure is logged as an error, then one
  line per `log_interval_s` while it lasts, and one when the store is writable again (no
  traceback). On MQTT (fleet/collector_mqtt.py) a message is acknowledged only once what it
  carried is committed, so the broker keeps everything a failing or killed collector held.
- Gateway clocks: each gateway's envelope receive times must not go back. When they do by more
  than `clock_tolerance_s`, the gateway's clock jumped back: the collector warns (log, and a
  `clock_back` event), keeps storing everything, and re-stamps that gateway's times forward by
  the jump (readings whose node time agrees with the gateway's wrong clock too), each such
  reading flagged FLAG_TIME_RESTAMPED (a bit above the 16 wire bits: never a node's); the
  correction ends (`clock_restored` event) when the gateway's own times catch up again.
- Revoked nodes (`fleet keys revoke`, the keystore's revocation list, re-read within
  `revoked_recheck_s` of a change): their frames are refused and counted under `revoked`, never
  stored, and no resend command is sent to them (counted in stats.commands_withheld).
- Gaps in each node's reading counters are tracked by fleet/repair.py; `poll()` turns due gaps
  into OP_RESEND commands (authenticated with the node's key, counter from store.next_cseq).
- Several collectors on one store (`CollectorConfig.share` = GROUP): each stores what it is
  dealt and journals what gap repair must see (reading runs, status reports, replies) in the
  same transaction; the holder of the group's lease (`store.lead`) takes the committed journal,
  applies it to the one gap tracker and writes gaps, its per-node view and events in the same
  transaction (`_take_journal`); only it sends commands. A new leader loads the view (`_load`).
- Retention (`retention_days`): the repairing collector (the only one, or the group's leader)
  starts a prune of raw readings once every prune_every_s (an hour) on a thread of its own with
  a store connection of its own (Pruner), so batches, their commits and the MQTT acknowledgements
  go on meanwhile. The store prunes in bounded steps, each a transaction that leaves it
  consistent (fleet/store/postgres.py, sqlite.py), so a prune stopped anywhere - the collector
  stopped (close() asks it to stop after the step in hand and waits at most prune_stop_s), the
  store failing, the leadership lost - is resumed by the next.
- Downward routes (RPL non-storing mode): the parent in each node's newest status report is
  kept; a resend request's first two attempts go down the source route compiled from those
  parents (protocol/routed.py `compile_path`), as a Routed frame to the gateway at its root,
  which unicasts it hop by hop (firmware/downroute.py): no flood, no per-descendant table on a
  node. No known route (counted route_fallbacks) or a later retry down the path already tried
  (it may be stale): flooded, scoped to a few hops beyond the node's last distance
  (fleet/repair.py flood_start_hops), wider each attempt. A later retry after status reports
  moved the path (a node on it reported a new parent) goes down the new path (counted
  route_retries_rerouted).
"""
import hmac
import json
import logging
import os
import signal
import threading
import time

import protocol
from firmware.mesh_params import DEFAULTS as MESH_DEFAULTS
from fleet import devstrings
from fleet.repair import LOST, GapTracker, RepairConfig, SourceRoutes, flood_start_hops
from protocol import auth
from protocol.envelope import downlink_topic, parse_topic
from protocol.routed import Routed

try:
    import cbor2
except ImportError:  # pragma: no cover - cbor2 is a dependency; the strict decoder suffices
    cbor2 = None

_BITS64 = (1 << 64) - 1  # a ReplayWindow's bitmap (64 counters), kept signed in the store
log = logging.getLogger("fleet.collector")

# Set by the collector in a reading's flags: its time was re-stamped because the gateway's clock
# went back (above the 16 bits a node's flags have on the wire, so never confused with them).
FLAG_TIME_RESTAMPED = 1 << 16
# Fault injection for the fault campaign (bench/fault_campaign.py): REDMESH_FAULT_STOP_BEFORE_COMMIT=N
# makes the process SIGSTOP itself inside its Nth batch transaction that holds readings, after the
# INSERTs and before the COMMIT, having logged FAULT_STOP_MARK; the test then SIGKILLs it there.
FAULT_STOP_MARK = "fault hook: stopped before COMMIT"
# A resend request's attempts (since the gap's last progress) that go down the node's source
# route whatever the earlier ones found; after them a retry is routed only down a path that
# moved, else flooded (scoped): see Ingest._commands
ROUTED_SAME_PATH_TRIES = 2
U32 = 0xFFFFFFFF

REJECT_CAUSES = (
    "wrong_topic",       # not an uplink/state topic of this network
    "oversize",          # payload above protocol.MAX_ENVELOPE
    "garbage",           # payload is not a protocol envelope
    "gateway_mismatch",  # envelope names another gateway than its topic
    "malformed_frame",   # an air frame that does not decode
    "bad_hop_tag",       # hop tag wrong: not from this mesh, or corrupted
    "unknown_node",      # origin not registered in the store
    "revoked",           # origin revoked (`fleet keys revoke`: a stolen pole); frames refused
    "bad_tag",           # end-to-end tag wrong: forged or corrupted
    "unexpected_type",   # a frame type that has no business on the uplink
    "replay",            # status/reply counter already passed
    "bad_state",         # gateway state payload other than online/offline
    "internal_error",    # a collector bug met this input (logged with its traceback once)
)


class CollectorConfig:
    """Collector settings: batching (batch_rows, flush_interval_s), logging (log_interval_s),
    unknown-node re-check (unknown_recheck_s), downlink batching (downlink_max_frames),
    node key cache size (key_cache), revocation-list re-check (revoked_recheck_s), `repair` (a
    fleet.repair.RepairConfig) and route_commands: a resend request's first attempt goes down the
    source route compiled from the parents nodes report (False: every request is flooded, e.g.
    for a mesh whose firmware predates routed frames); key_answer_s: a node that reports an old
    key epoch is sent the key in force once per this (its answer may be lost; it asks again);
    mesh_ttl: the nodes' TTL (firmware/mesh_params.py max_hops; None: this firmware's), which a
    scoped flood's starting hop count is reckoned from - 32 while any node runs firmware from
    before the TTL of 48 (its relays would not pass a flood that starts past 32)."""

    def __init__(self, batch_rows=5000, flush_interval_s=0.5, log_interval_s=60.0, unknown_recheck_s=10.0,
                 downlink_max_frames=8, key_cache=50000, repair=None, max_unacked=64, clock_tolerance_s=60,
                 revoked_recheck_s=1.0, route_commands=True, key_answer_s=50.0, share=None, lead_retry_s=3.0,
                 lead_check_s=2.0, journal_take=20000, retention_days=0, prune_every_s=3600.0, prune_stop_s=10.0,
                 mesh_ttl=None):
        self.batch_rows = int(batch_rows)
        self.flush_interval_s = float(flush_interval_s)
        self.log_interval_s = float(log_interval_s)
        self.unknown_recheck_s = float(unknown_recheck_s)
        self.downlink_max_frames = int(downlink_max_frames)
        self.key_cache = int(key_cache)
        self.repair = repair or RepairConfig()
        # MQTT messages held unacknowledged (received, not yet committed) before a flush is forced:
        # below the broker's in-flight window (mosquitto: max_inflight_messages 100 in ours).
        self.max_unacked = int(max_unacked)
        self.clock_tolerance_s = int(clock_tolerance_s)
        self.revoked_recheck_s = float(revoked_recheck_s)  # how soon a `fleet keys revoke` takes hold
        self.route_commands = bool(route_commands)
        self.key_answer_s = float(key_answer_s)
        # Several collectors on one store (fleet collect --share GROUP): each stores what the broker
        # deals it and journals what gap repair must see; the holder of the group's lease (tried
        # every lead_retry_s, checked every lead_check_s) repairs from the journal, journal_take
        # rows at a time.
        self.share = str(share) if share else None
        self.lead_retry_s = float(lead_retry_s)
        self.lead_check_s = float(lead_check_s)
        self.journal_take = int(journal_take)
        # raw readings older than retention_days (0: kept for ever) are pruned every prune_every_s
        # by the collector that repairs gaps (the only one, or the group's leader)
        self.retention_days = int(retention_days)
        self.prune_every_s = float(prune_every_s)
        self.prune_stop_s = float(prune_stop_s)  # what close() waits for a prune to stop after its step in hand
        self.mesh_ttl = MESH_DEFAULTS["max_hops"] if mesh_ttl is None else int(mesh_ttl)
        if self.batch_rows < 1 or self.flush_interval_s <= 0 or self.downlink_max_frames < 1:
            raise ValueError("batch_rows, flush_interval_s and downlink_max_frames must be positive")
        if not 1 <= self.mesh_ttl <= 255:
            raise ValueError("mesh_ttl must be 1..255")

    @classmethod
    def from_home(cls, home, **overrides):
        """Settings from a FleetHome's [collector] section, then `overrides` (None = not given).
        Repair settings are RepairConfig keyword arguments among the overrides."""
        c = home.config.get("collector", {})
        kw = {"batch_rows": c.get("batch_rows", 5000),
              "retention_days": home.config.get("store", {}).get("retention_days", 0),
              "flush_interval_s": c.get("flush_interval_ms", 500) / 1000.0,
              "route_commands": c.get("route_commands", True),
              "mesh_ttl": c.get("mesh_ttl")}
        repair_kw = {}
        for k, v in overrides.items():
            if v is None:
                continue
            if k in RepairConfig.FIELDS:
                repair_kw[k] = v
            else:
                kw[k] = v
        return cls(repair=RepairConfig(**repair_kw), **kw)


class _RateLog:
    """Log each cause the first time, then at most one summary per interval."""

    def __init__(self, logger, interval_s):
        self.logger = logger
        self.interval_s = interval_s
        self._seen = {}  # cause -> [last log time, suppressed count, latest detail]

    def note(self, cause, detail, now_s):
        e = self._seen.get(cause)
        if e is None:
            self._seen[cause] = [now_s, 0, None]
            self.logger.warning("rejected (%s): %s [further %s rejects are summarised every %d s]",
                                cause, detail, cause, self.interval_s)
        else:
            e[1] += 1
            e[2] = detail

    def tick(self, now_s):
        for cause, e in self._seen.items():
            if e[1] and now_s - e[0] >= self.interval_s:
                self.logger.warning("rejected (%s): %d more in the last %d s; latest: %s",
                                    cause, e[1], now_s - e[0], e[2])
                e[0], e[1], e[2] = now_s, 0, None


class Stats:
    """Running totals of one Ingest (plain ints; `as_dict()` for JSON)."""

    FIELDS = ("messages", "envelopes", "frames", "readings", "stored", "duplicates", "status", "status_duplicates",
              "replies", "reply_duplicates", "commands", "rejects", "flushes", "flush_errors", "clock_jumps",
              "restamped", "commands_withheld", "commands_routed", "commands_flooded", "commands_scoped",
              "route_fallbacks", "route_retries_rerouted", "key_requests", "key_answers", "journal_taken",
              "lead_gained", "lead_lost", "probes_sent")

    def __init__(self):
        for f in self.FIELDS:
            setattr(self, f, 0)
        self.rejects_by_cause = {}

    def as_dict(self):
        d = {f: getattr(self, f) for f in self.FIELDS}
        d["rejects_by_cause"] = dict(self.rejects_by_cause)
        return d


# Reading field ranges, unpacked from the spec so the checks below are plain comparisons (a
# change in the number of fields fails here, at import, rather than passing bad data).
((_DT_LO, _DT_HI), (_PM1_LO, _PM1_HI), (_PM25_LO, _PM25_HI), (_PM10_LO, _PM10_HI), (_RH_LO, _RH_HI),
 (_T_LO, _T_HI), (_N_LO, _N_HI), (_FL_LO, _FL_HI)) = ((lo, hi) for _, lo, hi in protocol.Reading.SPEC)
_U8, _U16 = 0xFF, 0xFFFF


def _ulen(v):
    """Bytes of the shortest CBOR encoding of unsigned int v (< 2**32), head included."""
    return 1 if v < 24 else 2 if v < 256 else 3 if v < 65536 else 5


def _fast_head(fb, ftype):
    """The items of an uplink frame of type `ftype` [v, type, origin, seq, time_s, body, hops,
    cost, etag, htag] parsed with cbor2, their types and ranges checked, with `want`: the
    canonical length of everything but the body's items (array head, version, type, the head
    fields, the body's one-byte head, hops, cost, etag 1 + 8, hop tag 1 + 4). None when it is
    not such a frame: the caller's strict decoder then says what is wrong."""
    n = len(fb)
    if cbor2 is None or n > protocol.MAX_FRAME or n < 30 or fb[0] != 0x8A or fb[1] != 1 or fb[2] != ftype:
        return None
    try:
        obj = cbor2.loads(fb)
    except Exception:  # noqa: BLE001 - any parse problem: the strict decoder explains it
        return None
    if type(obj) is not list or len(obj) != 10:
        return None
    _, _, origin, seq, time_s, body, hops, cost, etag, htag = obj
    if (type(origin) is not int or type(seq) is not int or type(time_s) is not int or type(hops) is not int
            or type(cost) is not int or type(body) is not list or type(etag) is not bytes or type(htag) is not bytes):
        return None
    if (not (0 <= origin <= U32 and 0 <= seq <= U32 and 0 <= time_s <= U32 and 0 <= hops <= _U8
             and 0 <= cost <= _U16) or len(etag) != 8 or len(htag) != 4):
        return None
    want = 3 + _ulen(origin) + _ulen(seq) + _ulen(time_s) + 1 + _ulen(hops) + _ulen(cost) + 14
    return origin, seq, time_s, body, hops, cost, etag, htag, want


def _fast_tags_ok(fb, want, origin, hops, cost, etag, htag, mesh_hmac, key_for):
    """The end of a fast path: every item was in its shortest form (the frame is `want` bytes
    long, no indefinite length) and both tags verify (key_for(origin) -> Hmac or None)."""
    if want != len(fb):
        return False
    key = key_for(origin)
    if key is None or not hmac.compare_digest(mesh_hmac.tag(fb[:-4], 4), htag):
        return False
    end = len(fb) - 14 - _ulen(cost) - _ulen(hops)
    return hmac.compare_digest(key.tag(fb[1:end], 8), etag)


def fast_telemetry(fb, mesh_hmac, key_for):
    """Decode and verify a telemetry frame with cbor2. Returns (origin, seq, time_s, readings,
    hops), readings being lists [dt_s, pm1, pm25, pm10, rh, temp, n, flags], when the frame is
    valid exactly as protocol.decode(fb, mesh, node_key) would find it; else None (the caller
    then uses protocol.decode, which says what is wrong). key_for(origin) -> Hmac or None."""
    head = _fast_head(fb, protocol.T_TELEMETRY)
    if head is None:
        return None
    origin, seq, time_s, body, hops, cost, etag, htag, want = head
    count = len(body)
    if not 1 <= count <= protocol.MAX_READINGS or seq + count - 1 > U32:
        return None
    for r in body:
        if type(r) is not list or len(r) != 8:
            return None
        for v in r:
            if type(v) is not int:
                return None
            # shortest CBOR length of v: every reading field fits 32 bits
            want += 1 if -25 < v < 24 else 2 if -257 < v < 256 else 3 if -65537 < v < 65536 else 5
        dt_s, pm1, pm25, pm10, rh, temp, n_s, flags = r
        if not (_DT_LO <= dt_s <= _DT_HI and _PM1_LO <= pm1 <= _PM1_HI and _PM25_LO <= pm25 <= _PM25_HI
                and _PM10_LO <= pm10 <= _PM10_HI and _RH_LO <= rh <= _RH_HI and _T_LO <= temp <= _T_HI
                and _N_LO <= n_s <= _N_HI and _FL_LO <= flags <= _FL_HI):
            return None
        want += 1  # the reading's array head
    if not _fast_tags_ok(fb, want, origin, hops, cost, etag, htag, mesh_hmac, key_for):
        return None
    return origin, seq, time_s, body, hops


_STATUS_FIELDS = protocol.StatusBody.FIELDS
_STATUS_SPEC = protocol.StatusBody.SPEC
_STATUS_COUNTS = (protocol.StatusBody.LEGACY_FIELDS, protocol.StatusBody.LEGACY_FIELDS + 2, len(_STATUS_FIELDS))


def fast_status(fb, mesh_hmac, key_for):
    """Decode and verify a status frame with cbor2, as fast_telemetry does a telemetry frame.
    Returns (origin, seq, hops, body) - body a dict of the StatusBody fields, None for those an
    older firmware does not report - when the frame is valid exactly as protocol.decode(fb, mesh,
    node_key) would find it; else None (the caller then uses protocol.decode, which says what is
    wrong). key_for(origin) -> Hmac or None."""
    head = _fast_head(fb, protocol.T_STATUS)
    if head is None:
        return None
    origin, seq, _, body, hops, cost, etag, htag, want = head
    count = len(body)
    if count not in _STATUS_COUNTS:  # the body's array head is then one byte (at most 17 items)
        return None
    for (_, lo, hi), v in zip(_STATUS_SPEC, body, strict=False):  # body: the first count fields
        if lo is None:  # a text string (cbor2 checked its UTF-8): at most hi (< 24) bytes, a 1-byte head
            if type(v) is not str:
                return None
            k = len(v.encode("utf-8"))
            if k > hi:
                return None
            want += 1 + k
        else:
            if type(v) is not int or not lo <= v <= hi:
                return None
            want += 1 if -25 < v < 24 else 2 if -257 < v < 256 else 3 if -65537 < v < 65536 else 5
    if not _fast_tags_ok(fb, want, origin, hops, cost, etag, htag, mesh_hmac, key_for):
        return None
    out = dict(zip(_STATUS_FIELDS, body, strict=False))
    for f in _STATUS_FIELDS[count:]:
        out[f] = None  # not reported by an older firmware
    return origin, seq, hops, out


class Ingest:
    """The collector core for network `net_id`: `on_message()` for every MQTT message,
    `poll()` regularly (it flushes batches and returns downlink messages to publish),
    `close()` at the end.

    store: a fleet.store.Store (SQLiteStore); keys: a fleet.keys.Keystore (or any object with
    mesh_key() and node_key(node_id)); now_fn: the clock used when no now_s is given.

    on_readings: None, or a function called as on_readings(node, first, last, gateway, hops,
    now_s) for each telemetry frame accepted (verified, before it is stored; a duplicate too),
    for an observer that must see every arrival as it happens (the simulator's measurements,
    fleet/sim/_des_app.py). It must not raise."""

    def __init__(self, store, keys, net_id, now_fn=time.time, config=None):
        self.store = store
        self.keys = keys
        self.net_id = int(net_id)
        self.now_fn = now_fn
        self.cfg = config or CollectorConfig()
        self.stats = Stats()
        self.tracker = GapTracker(self.cfg.repair)
        self.on_readings = None
        self._mesh = (auth.Hmac(keys.mesh_key()), None)  # hop keys by key phase (_check_epoch)
        self._phase = 0  # the key phase of the epoch in force: the collector's own commands
        self._epoch = 0  # the epoch in force (a node whose status reports an older one is re-keyed)
        self._other = None  # the other epoch accepted (the next one while a rotation distributes, the
        # previous one in its grace window): frames e2e-tagged with its node keys verify too
        self._epoch_stamp = None
        self._key_asks = {}  # node -> gateway: status reported an old epoch, answer not sent yet
        self._key_answered = {}  # node -> (when its last key answer went out, answers sent): one per key_answer_s
        self._node_hmacs = {}
        self._ratelog = _RateLog(log, self.cfg.log_interval_s)
        self._rows = []
        self._status = {}  # node -> (heard_s, fields): latest status per node in this batch
        self._rejects = {}  # cause -> count, not yet in the store
        self._events = []  # (ts, kind, node, detail), not yet in the store
        self._status_windows = {}
        self._reply_windows = {}
        self._last_status = {}  # node -> (boot_count, parent, fw_version) last applied
        self._gateways = {}  # gateway -> "online" / "offline"
        self._gw_ids = set()  # every gateway heard of (state or uplink): the roots of source routes
        self._routes = SourceRoutes()  # the parents nodes report; the rule for routing a command down them
        self._hops = {}  # node -> hop count of its newest frame (the scope of a flooded command)
        self._unknown_checked = {}  # node -> when the store last said "not registered"
        self._cur_now = 0.0
        self._cur_unknown = None
        self._clocks = {}  # gateway -> [latest corrected receive time, correction in s]
        self._store_down = None  # [since, last logged, failures] while store writes fail
        self._fault_commits = int(os.environ.get("REDMESH_FAULT_STOP_BEFORE_COMMIT", "0") or 0)
        self._shared = self.cfg.share is not None
        self._runs = {}  # shared: node -> [[first, last, gateway, hops, rx_s]] reading runs of this batch
        self._jrows = []  # shared: status and reply journal rows of this batch
        self._status_seq = {}  # node -> counter of the newest status applied
        self._lead_replies = {}  # shared, leading: node -> ReplayWindow of the replies applied (in repair_nodes)
        self._lease = None  # shared: the group's repair lease while this collector leads
        self._lead_tried = None
        self._lead_checked = None
        self._last_take = None
        self._pruned_at = None
        self.pruner = Pruner(store)
        now = self._now(None)
        self._last_flush = now
        self._known = set(store.node_ids())
        self._revoked = frozenset()
        self._revoked_stamp = None
        self._revoked_checked = None
        self._cur_revoked = None
        self._check_revoked(now)  # and the key epochs
        if not self._shared:
            self._load(now)

    # ---- start-up -------------------------------------------------------------------------------

    def _load(self, now_s):
        """Seed counters and gaps from the store, so a restart continues where the last run stopped.

        Shared (a new repair leader): from one snapshot, each node's view as the last leader left
        it (repair_nodes: written with the journal rows it took), so what the journal still holds is
        applied on top of it, once. A node no leader has seen yet is seeded from node_state below
        its first journal row (readings stored before the store was shared), or not at all."""
        fields = ("node", "last_seq", "min_seq", "boot_count", "parent", "fw_version")
        store = self.store
        with store.transaction(write=False):
            rows = store.status_rows(fields=fields)
            gaps = store.open_gaps()
            view = store.repair_nodes() if self._shared else {}
            low = dict(store.query("SELECT node, min(a) FROM journal WHERE kind = 'r' GROUP BY node")) \
                if self._shared else {}
        for r in rows:
            node = r["node"]
            v = view.get(node)
            if v is not None:
                self.tracker.load_node(node, v["max_seq"], v["min_seq"])
                if v["boot_count"] is not None:
                    self._last_status[node] = (v["boot_count"], v["parent"], v["fw_version"])
                if v["status_seq"] is not None:
                    self._status_seq[node] = v["status_seq"]
                if v["reply_top"] is not None:  # the last leader's reply window: replays stay refused
                    w = self._lead_replies[node] = auth.ReplayWindow(64)
                    w.top, w.bits = v["reply_top"], v["reply_bits"] & _BITS64
                self._routes.report(node, v["parent"])
                continue
            last, first = r["last_seq"], r["min_seq"]
            if node in low and last is not None:
                last = min(last, low[node] - 1)  # the rest is in the journal
                if first is None or last < first:
                    last = first = None
            if last is not None or not self._shared:
                self.tracker.load_node(node, last, first)
            if r["boot_count"] is not None and not self._shared:
                self._last_status[node] = (r["boot_count"], r["parent"], r["fw_version"])
            self._routes.report(node, r["parent"])
        for g in gaps:
            self.tracker.load_gap(g["id"], g["node"], g["first_seq"], g["last_seq"], g["state"], g["requests"],
                                  g["created_at"] or now_s, now_s)

    def _now(self, now_s):
        return self.now_fn() if now_s is None else now_s

    # ---- input ----------------------------------------------------------------------------------

    def on_message(self, topic, payload, now_s=None):
        """Handle one MQTT message. Never raises. Returns a dict of what it did: frames
        (accepted), readings (queued for storage), rejects ({cause: n})."""
        now = self._now(now_s)
        self.stats.messages += 1
        res = {"frames": 0, "readings": 0, "rejects": {}}
        try:
            self._message(res, topic, payload, now)
        except Exception as e:  # noqa: BLE001 - a bug here must not stop the collector
            if not self.stats.rejects_by_cause.get("internal_error"):
                log.exception("internal error on a message from %r (counted as internal_error)", str(topic)[:80])
            self._reject(res, "internal_error", f"{type(e).__name__}: {e}", now)
        return res

    def _message(self, res, topic, payload, now):
        parsed = parse_topic(topic, self.net_id) if isinstance(topic, str) else None
        if parsed is None:
            self._reject(res, "wrong_topic", f"topic {str(topic)[:80]!r}", now)
            return
        kind, gw = parsed
        self._check_revoked(now)
        if isinstance(payload, str):
            payload = payload.encode("utf-8", "replace")
        elif isinstance(payload, (bytes, bytearray, memoryview)):
            payload = bytes(payload)
        else:  # MQTT libraries may hand over None or numbers for odd payloads
            payload = b""
        if kind == "state":
            self._gateway_state(res, gw, payload, now)
            return
        if len(payload) > protocol.MAX_ENVELOPE:
            self._reject(res, "oversize", f"{len(payload)} bytes on {topic} (at most {protocol.MAX_ENVELOPE})",
                         now)
            return
        try:
            env = protocol.decode(payload)
        except protocol.ProtocolError as e:
            self._reject(res, "garbage", f"on {topic}: {e}", now)
            return
        if env.type != protocol.T_ENVELOPE:
            self._reject(res, "garbage", f"on {topic}: a {protocol.TYPE_NAMES[env.type]} frame, not an envelope",
                         now)
            return
        if env.gateway != gw:
            self._reject(res, "gateway_mismatch", f"envelope from gateway {env.gateway} on {topic}", now)
            return
        self._envelope(res, gw, env.items, now)

    def on_envelope(self, gateway, items, now_s=None):
        """Handle the content of one uplink envelope of gateway `gateway` - items [(rx_ms, rssi,
        air frame bytes)] - exactly as on_message() does once it has decoded the MQTT message:
        for a caller that holds the frames already (the simulator, fleet/sim/_des_app.py, which
        would otherwise encode an envelope only for it to be decoded here). Never raises;
        returns what on_message() returns."""
        now = self._now(now_s)
        self.stats.messages += 1
        res = {"frames": 0, "readings": 0, "rejects": {}}
        try:
            self._check_revoked(now)
            self._envelope(res, int(gateway), items, now)
        except Exception as e:  # noqa: BLE001 - a bug here must not stop the collector
            if not self.stats.rejects_by_cause.get("internal_error"):
                log.exception("internal error on an envelope of gateway %r (counted as internal_error)", gateway)
            self._reject(res, "internal_error", f"{type(e).__name__}: {e}", now)
        return res

    def _envelope(self, res, gw, items, now):
        self.stats.envelopes += 1
        self._gw_ids.add(gw)
        corr = self._gateway_clock(gw, items, now)
        for rx_ms, rssi, fb in items:
            self._frame(res, gw, rx_ms, rssi, fb, now, corr)
        if len(self._rows) >= self.cfg.batch_rows:
            self.flush(now)

    def _gateway_clock(self, gw, items, now):
        """Return the correction (s) to add to gateway `gw`'s times, after checking this
        envelope's receive stamps against the gateway's previous ones (see the module notes)."""
        stamps = [rx_ms // 1000 for rx_ms, _, _ in items if rx_ms]
        if not stamps:
            return self._clocks[gw][1] if gw in self._clocks else 0
        lo, hi = min(stamps), max(stamps)
        c = self._clocks.get(gw)
        if c is None:
            self._clocks[gw] = [hi, 0]
            return 0
        last, corr = c
        tol = self.cfg.clock_tolerance_s
        if corr and lo >= last - tol:
            log.warning("gateway %d clock is right again (stamps %d, the re-stamped times had reached %d): "
                        "its times are no longer corrected (the correction was +%d s)", gw, lo, last, corr)
            self._events.append((int(now), "clock_restored", gw, {"stamp": lo, "expected": last, "corr_s": corr}))
            corr = 0
        elif lo + corr < last - tol:
            back = last - (lo + corr)
            corr += back
            self.stats.clock_jumps += 1
            log.warning("gateway %d clock went back %d s (stamped %d after %d): its readings are stored, "
                        "re-stamped +%d s and flagged TIME_RESTAMPED until its clock is right again",
                        gw, back, lo, last, corr)
            self._events.append((int(now), "clock_back", gw, {"back_s": back, "stamp": lo, "expected": last,
                                                             "corr_s": corr}))
        c[0], c[1] = max(last, hi + corr), corr
        return corr

    def _times(self, gw_rx_s, time_s, corr):
        """(reading base time, flags to add) of a frame: the node's time (or the receive time when
        the node has none), re-stamped when the gateway's clock is corrected and the node's time
        agrees with the gateway's wrong one."""
        if not corr:
            return (time_s or gw_rx_s), 0
        if not time_s:
            return gw_rx_s + corr, FLAG_TIME_RESTAMPED
        if abs(time_s - gw_rx_s) <= self.cfg.clock_tolerance_s:
            return time_s + corr, FLAG_TIME_RESTAMPED
        return time_s, 0  # the node's clock is not the gateway's wrong one: kept

    def _reject(self, res, cause, detail, now_s):
        self.stats.rejects += 1
        self.stats.rejects_by_cause[cause] = self.stats.rejects_by_cause.get(cause, 0) + 1
        self._rejects[cause] = self._rejects.get(cause, 0) + 1
        res["rejects"][cause] = res["rejects"].get(cause, 0) + 1
        self._ratelog.note(cause, detail, now_s)

    def _gateway_state(self, res, gw, payload, now_s):
        state = payload.decode("ascii", "replace").strip().lower()
        if state not in ("online", "offline"):
            self._reject(res, "bad_state", f"gateway {gw} state {payload[:40]!r}", now_s)
            return
        self._gw_ids.add(gw)
        if self._gateways.get(gw) != state:
            self._gateways[gw] = state
            self._events.append((int(now_s), "gateway_" + state, gw, None))
            log.info("gateway %d is %s", gw, state)

    def _is_known(self, node):
        if node in self._known:
            return True
        now = self._cur_now
        t = self._unknown_checked.get(node)
        if t is not None and now - t < self.cfg.unknown_recheck_s:
            return False
        try:  # registered since we started (e.g. by `fleet sim up`)?
            registered = self.store.node(node) is not None
        except Exception:  # noqa: BLE001 - a busy store must not stop ingestion
            registered = False
        if registered:
            self._known.add(node)
            self._unknown_checked.pop(node, None)
            return True
        if len(self._unknown_checked) > 100000:  # a flood of invented ids: keep memory bounded
            self._unknown_checked.clear()
        self._unknown_checked[node] = now
        return False

    def _node_hmac(self, node):
        h = self._node_hmacs.get(node)
        if h is None:
            if len(self._node_hmacs) >= self.cfg.key_cache:
                self._node_hmacs.pop(next(iter(self._node_hmacs)))
            h = self._node_hmacs[node] = auth.Hmac(self._node_key_at(node, self._epoch))
        return h

    def _node_key_at(self, node, epoch):
        """Node `node`'s end-to-end key in key epoch `epoch` (protocol/keywrap.py epoch_node_key;
        a keys object without epochs has the provisioned key only)."""
        fn = getattr(self.keys, "node_key_at", None)
        return fn(node, epoch) if fn is not None else self.keys.node_key(node)

    def _check_revoked(self, now):
        """Re-read the revocation list and the key epochs (_check_epoch) when they changed
        (checked at most every revoked_recheck_s). A damaged list keeps the last good one and is
        logged (rate-limited), never ignored."""
        if self._revoked_checked is not None and now - self._revoked_checked < self.cfg.revoked_recheck_s:
            return
        self._revoked_checked = now
        self._check_epoch(now)
        stamp_fn = getattr(self.keys, "revoked_stamp", None)
        if stamp_fn is None:
            return
        stamp = stamp_fn()
        if stamp == self._revoked_stamp:
            return
        try:
            rev = frozenset(self.keys.revoked())
        except Exception as e:  # noqa: BLE001 - KeystoreError; the collector keeps running
            self._ratelog.note("revocation_list", str(e), now)
            return
        self._revoked_stamp = stamp
        added = rev - self._revoked
        if added:
            log.warning("revoked node(s) %s: their frames are refused from now on", ", ".join(map(str, sorted(added))))
            for n in sorted(added):
                self._events.append((int(now), "revoked", n, None))
        self._revoked = rev

    def _check_epoch(self, now):
        """Take the mesh key epochs in force (fleet/keys.py epoch.json, written by `fleet keys
        rotate`) when they changed: hop tags of the epoch in force and of the one other accepted
        epoch verify; commands are tagged in the epoch in force. Checked with the revocation
        list. A damaged file keeps the last good keys and is logged (rate-limited)."""
        stamp_fn = getattr(self.keys, "epoch_stamp", None)
        if stamp_fn is None:
            return
        stamp = stamp_fn()
        if stamp == self._epoch_stamp:
            return
        try:
            pair, phase = self.keys.mesh_keys()
            st = self.keys.epoch_state()
        except Exception as e:  # noqa: BLE001 - KeystoreError; the collector keeps running
            self._ratelog.note("epoch_file", str(e), now)
            return
        if self._epoch_stamp is not None:
            log.warning("mesh key epochs changed: now accepting key phase(s) %s, tagging in phase %d",
                        ", ".join(str(i) for i in (0, 1) if pair[i] is not None), phase)
        self._epoch_stamp = stamp
        self._mesh = tuple(None if k is None else auth.Hmac(k) for k in pair)
        self._phase = phase
        if st["epoch"] != self._epoch:
            self._node_hmacs.clear()  # node keys carry the epoch (of the epoch in force)
        self._epoch, self._other = st["epoch"], st["other"]

    def _key_for(self, origin):
        # decode() calls this with the frame's origin; None makes it raise "unknown node".
        if origin in self._revoked:
            self._cur_revoked = origin
            return None
        if not self._is_known(origin):
            self._cur_unknown = origin
            return None
        return self._node_hmac(origin)

    def _frame(self, res, gw, rx_ms, rssi, fb, now, corr=0):
        self._cur_now = now
        self._cur_unknown = None
        self._cur_revoked = None
        mesh = self._mesh[0]
        if mesh is not None and len(fb) > 2:
            if fb[2] == protocol.T_TELEMETRY:
                fast = fast_telemetry(fb, mesh, self._key_for)
                if fast is not None:
                    self._fast_rows(res, fast, gw, rx_ms // 1000 if rx_ms else int(now), rssi, now,
                                    corr if rx_ms else 0)
                    self.stats.frames += 1
                    res["frames"] += 1
                    return
            elif fb[2] == protocol.T_STATUS:
                fast = fast_status(fb, mesh, self._key_for)
                if fast is not None:
                    origin, seq, hops, body = fast
                    self._status_frame(res, origin, seq, hops, body, gw,
                                       (rx_ms // 1000 + corr) if rx_ms else int(now), rssi, now)
                    self.stats.frames += 1
                    res["frames"] += 1
                    return
        self._cur_unknown = None
        f = None
        try:
            f = protocol.decode(fb, self._mesh, self._key_for)
        except protocol.ProtocolError as e:
            msg = str(e)
            if self._cur_revoked is not None:
                cause = "revoked"
                msg = f"node {self._cur_revoked} is revoked"
            elif self._cur_unknown is not None:
                cause = "unknown_node"
            elif msg.startswith("end-to-end tag mismatch"):
                cause = "bad_tag"
                f = self._other_epoch(fb, gw, False)
            elif msg.startswith("hop tag"):  # a mismatch, or a key epoch not accepted (fleet keys rotate)
                cause = "bad_hop_tag"
                f = self._other_epoch(fb, gw, True)
            else:
                cause = "malformed_frame"
            if f is None:
                self._reject(res, cause, f"frame via gateway {gw}: {msg}", now)
                return
        t = f.type
        rx_s = rx_ms // 1000 if rx_ms else int(now)
        if t == protocol.T_TELEMETRY:
            self._telemetry(res, f, gw, rx_s, rssi, now, corr if rx_ms else 0)
        elif t == protocol.T_STATUS:
            b = f.body
            self._status_frame(res, f.origin, f.seq, f.hops, {k: getattr(b, k) for k in _STATUS_FIELDS}, gw,
                               rx_s + (corr if rx_ms else 0), rssi, now)
        elif t == protocol.T_REPLY:
            self._reply(res, f, rx_s + (corr if rx_ms else 0), now)
        else:
            self._reject(res, "unexpected_type", f"a {protocol.TYPE_NAMES[t]} frame via gateway {gw}", now)
            return
        self.stats.frames += 1
        res["frames"] += 1

    def _other_epoch(self, fb, gw, hop):
        """A frame whose end-to-end tag (hop False) or hop tag (hop True) failed, tried in the
        other key epochs it may honestly come from; returns it decoded, or None.
        - End-to-end tag: node keys carry the epoch. While a rotation runs, a node may still tag
          with the other accepted epoch's node key (frames in flight at activation, a node that
          missed the activation); and a status frame may come from a node that missed a rotation
          or two (its key request: it holds the node key of an older epoch).
        - Hop tag: a gateway's own status frame tagged in one of the two epochs before the one in
          force: the key request of a gateway that missed a rotation (a node's comes re-tagged by
          the neighbour that passed it on; a gateway's goes straight to MQTT)."""
        try:
            status = protocol.peek_type(fb) == protocol.T_STATUS
        except protocol.ProtocolError:
            return None
        older = [e for e in (self._epoch - 1, self._epoch - 2) if e >= 0] if status else []
        if hop:
            if not older or gw not in self._gw_ids:
                return None
            epochs = older
        else:
            epochs = ([self._other] if self._other is not None else []) + [e for e in older if e != self._other]
        for e in epochs:
            mesh = self._mesh
            if hop:
                pair = [None, None]
                pair[e & 1] = self.keys.mesh_key(e)
                mesh = tuple(pair)
            try:
                f = protocol.decode(fb, mesh, lambda o, e=e: self._key_for(o) and auth.Hmac(self._node_key_at(o, e)))
            except protocol.ProtocolError:
                continue
            return f if not hop or f.origin == gw else None
        return None

    def _telemetry(self, res, f, gw, rx_s, rssi, now, corr=0):
        node, seq, hops = f.origin, f.seq, f.hops
        self._hops[node] = hops
        base, extra = self._times(rx_s, f.time_s, corr)  # time_s 0: the node has no wall clock yet
        rx_s += corr
        if extra:
            self.stats.restamped += len(f.readings)
        rows = self._rows
        for i, r in enumerate(f.readings):
            ts = base - r.dt_s
            rows.append((node, seq + i, ts if ts > 0 else 0, rx_s, r.pm1, r.pm25, r.pm10, r.rh, r.temp, r.n,
                         r.flags | extra, hops, gw, rssi))
        n = len(f.readings)
        self.stats.readings += n
        res["readings"] += n
        made = base - f.readings[-1].dt_s if f.time_s and not extra and n else None
        self._seqs(node, seq, seq + n - 1, now, gw, hops, made)

    def _fast_rows(self, res, fast, gw, rx_s, rssi, now, corr=0):
        node, seq, time_s, body, hops = fast
        self._hops[node] = hops
        base, extra = self._times(rx_s, time_s, corr)
        rx_s += corr
        if extra:
            self.stats.restamped += len(body)
        rows = self._rows
        for i, (dt_s, pm1, pm25, pm10, rh, temp, n, flags) in enumerate(body):
            ts = base - dt_s
            rows.append((node, seq + i, ts if ts > 0 else 0, rx_s, pm1, pm25, pm10, rh, temp, n, flags | extra, hops,
                         gw, rssi))
        n = len(body)
        self.stats.readings += n
        res["readings"] += n
        made = base - body[-1][0] if time_s and not extra and n else None
        self._seqs(node, seq, seq + n - 1, now, gw, hops, made)

    def _seqs(self, node, first, last, now, gw, hops, made_s=None):
        """Readings first..last of `node` arrived (`made_s`: the node's time of `last`, when it
        has a clock): the gap tracker's input (shared: the journal's, without made_s - no
        overdue probes in a group)."""
        if self.on_readings is not None:
            self.on_readings(node, first, last, gw, hops, now)
        if not self._shared:
            self.tracker.on_readings(node, first, last, now, gw, made_s)
            return
        runs = self._runs.get(node)
        if runs is None:
            self._runs[node] = [[first, last, gw, hops, now]]
        elif runs[-1][1] + 1 == first and runs[-1][2] == gw:
            runs[-1][1] = last
        else:
            runs.append([first, last, gw, hops, now])

    def _window(self, windows, node):
        w = windows.get(node)
        if w is None:
            w = windows[node] = auth.ReplayWindow(64)
        return w

    def _status_frame(self, res, node, seq, hops, b, gw, rx_s, rssi, now):
        """A verified status frame of `node` (counter `seq`, `hops` so far; b: its body as a dict
        of the StatusBody fields), received at rx_s through gateway `gw` with `rssi`."""
        w = self._window(self._status_windows, node)
        c = w.check(seq)
        if c == auth.DUPLICATE:
            self.stats.status_duplicates += 1
            return
        if c == auth.OLD or seq < w.top:
            self._reject(res, "replay", f"status seq {seq} of node {node}, newest applied {w.top}", now)
            return
        w.update(seq)
        self.stats.status += 1
        fields = dict(b)
        # the path this frame took (body rssi, the parent link, is summarised by link_etx); the
        # store keeps the newest status_seq: a late status never overwrites it
        fields.update(gateway=gw, hops=hops, rssi=rssi, status_seq=seq)
        self._status[node] = (rx_s, fields)
        what = {"boot_count": b["boot_count"], "uptime_s": b["uptime_s"], "parent": b["parent"],
                "fw_version": b["fw_version"], "epoch": b["epoch"]}
        if self._shared:
            self._jrows.append(("s", node, rx_s, gw, seq, None, hops, json.dumps(what)))
        else:
            self._apply_status(node, seq, rx_s, gw, hops, what, self._events, now)

    def _apply_status(self, node, seq, rx_s, gw, hops, what, events, now):
        """A status report reaches gap repair: events for what changed since the last one applied
        (reboot, reparent, firmware), a key request when its epoch is old, the node's parent
        for source routes (`now`: the collector's clock, when repairs waiting for a path look
        again). A report not newer than the newest applied is not applied again."""
        if seq <= self._status_seq.get(node, -1):
            return
        self._status_seq[node] = seq
        self._hops[node] = hops
        boot_count, parent, fw_version, epoch = what["boot_count"], what["parent"], what["fw_version"], what["epoch"]
        prev = self._last_status.get(node)
        if prev is not None:
            boot, was, fw = prev
            if boot_count > boot:
                events.append((rx_s, "reboot", node, {"boot_count": boot_count, "uptime_s": what["uptime_s"]}))
            if parent != was:
                events.append((rx_s, "reparent", node, {"from": was, "to": parent}))
            if fw is not None and fw_version != fw:
                events.append((rx_s, "firmware", node, {"from": fw, "to": fw_version}))
        self._last_status[node] = (boot_count, parent, fw_version)
        if epoch is not None and epoch < self._epoch:
            # a node that missed a key rotation (off, or its re-keys lost): its status is its key
            # request; it is answered in poll() (a revoked node's frames never get here)
            self.stats.key_requests += 1
            self._key_asks[node] = (gw, epoch)
        if self._routes.report(node, parent):
            self.tracker.routes_changed(now)  # a path may be whole now: the repairs waiting for one

    def _reply(self, res, f, rx_s, now):
        node = f.origin
        w = self._window(self._reply_windows, node)
        c = w.check(f.seq)
        if c == auth.DUPLICATE:
            self.stats.reply_duplicates += 1
            return
        if c == auth.OLD:
            self._reject(res, "replay", f"reply seq {f.seq} of node {node}, window top {w.top}", now)
            return
        w.update(f.seq)
        self.stats.replies += 1
        # a node's texts come coded (fleet/devstrings.py): stored as the operator reads them
        result = [devstrings.expand(x) if isinstance(x, str) else x for x in f.result]
        if self._shared:
            self._jrows.append(("y", node, rx_s, None, f.cseq, f.code, f.seq, json.dumps(result)))
        else:
            self._apply_reply(node, f.cseq, f.code, result, rx_s, now, self._events)

    def _apply_reply(self, node, cseq, code, result, rx_s, now, events):
        """A command reply reaches gap repair (a resend reply moves its gap on) and the events."""
        req = self.tracker.on_reply(node, cseq, code, result, now)
        detail = {"cseq": cseq, "code": code, "result": result}
        if req is not None:
            detail["resend"] = [req.a, req.b]
        events.append((rx_s, "reply", node, detail))

    # ---- output ---------------------------------------------------------------------------------

    def _cseq(self, node):
        try:
            return self.store.next_cseq(node)
        except Exception as e:  # noqa: BLE001 - the store may be busy; the gap waits
            self._ratelog.note("store", f"no command counter for node {node}: {e}", self._cur_now)
            return None

    def _gateway_online(self, gw):
        return self._gateways.get(gw) != "offline"

    def poll(self, now_s=None, send=True):
        """Flush the batch when due; turn due gaps into resend commands (unless `send` is False:
        the downlink is down, the gaps wait). Returns a list of (topic, payload) downlink
        messages to publish with QoS 1."""
        now = self._now(now_s)
        self._cur_now = now
        self._check_revoked(now)
        if now - self._last_flush >= self.cfg.flush_interval_s:
            self.flush(now)
        if self._shared:
            self._lead(now)
        if self.cfg.retention_days and self.leading:
            self._maybe_prune(now)
        if self._shared and self._lease is None:  # another collector repairs
            self._ratelog.tick(now)
            return []
        if not send:
            self._ratelog.tick(now)
            return []
        reqs = self.tracker.due_requests(now, self._cseq, self._gateway_online,
                                         self._path_broken if self.cfg.route_commands else None)
        if self.cfg.route_commands and not self._shared and self.cfg.repair.overdue_s:
            reqs += self.tracker.due_probes(now, self._cseq, self._routable)
        out = self._commands(reqs, now) if reqs else []
        if self._key_asks:
            out += self._key_answers(now)
        self._ratelog.tick(now)
        return out

    # ---- several collectors on one store: the repair leader ---------------------------------------

    def _lead(self, now):
        """Shared: hold or seek the group's repair lease; while held, take the journal."""
        if self._lease is None:
            if self._lead_tried is not None and now - self._lead_tried < self.cfg.lead_retry_s:
                return
            self._lead_tried = now
            try:
                lease = self.store.lead(self.cfg.share)
            except Exception as e:  # noqa: BLE001 - StoreError: the store is down; try again later
                self._ratelog.note("store", f"cannot seek the repair lease: {e}", now)
                return
            if lease is None:
                return
            self._lease, self._lead_checked, self._last_take = lease, now, None
            try:
                self._load(now)
            except Exception as e:  # noqa: BLE001 - the store failed mid-load: let go, try again later
                self._step_down(now, f"could not load the repair state: {e}")
                return
            self.stats.lead_gained += 1
            log.info("collector: leading gap repair of group %r (%d nodes tracked, %d gaps open)", self.cfg.share,
                     len(self.tracker.nodes), self.tracker.pending)
        elif now - self._lead_checked >= self.cfg.lead_check_s:
            self._lead_checked = now
            if not self._lease.check():
                self._step_down(now, "its lease is gone (the store restarted or the connection broke)")
                return
        if self._last_take is None or now - self._last_take >= self.cfg.flush_interval_s:
            self._last_take = now
            self._take_journal(now)

    def _maybe_prune(self, now):
        """Start pruning raw readings older than the retention on the pruner's thread, once every
        prune_every_s (the store keeps the hourly sums; fleet/store); take what a finished prune
        reports."""
        self._prune_done(now)
        if self._pruned_at is not None and now - self._pruned_at < self.cfg.prune_every_s:
            return
        if self.pruner.start(int(now) - self.cfg.retention_days * 86400, int(now)):
            self._pruned_at = now

    def _prune_done(self, now):
        for ok, result in self.pruner.results():
            if not ok:  # StoreError, StoreBusy: the next prune resumes where this one stopped
                self._ratelog.note("store", f"pruning raw readings failed: {result}", now)
                continue
            horizon, dropped = result
            if dropped:
                log.info("collector: %d raw readings older than %s pruned (retention %d days)", dropped,
                         time.strftime("%Y-%m-%d", time.gmtime(horizon)), self.cfg.retention_days)
                self._events.append((int(now), "pruned", None, {"before": horizon, "readings": dropped}))

    def _step_down(self, now, why):
        """Stop leading: release the lease and forget the repair state (the next leader, maybe
        this collector again, loads it from the store)."""
        self.pruner.stop()  # only the leader prunes; a prune stopped part way is resumed by the next
        if self._lease is not None:
            self._lease.release()
            self._lease = None
            self.stats.lead_lost += 1
            log.warning("collector: no longer leading gap repair of group %r: %s", self.cfg.share, why)
        self._lead_tried = now
        self.tracker = GapTracker(self.cfg.repair)
        self._last_status, self._status_seq, self._key_asks, self._lead_replies = {}, {}, {}, {}
        self._routes = SourceRoutes()

    def _take_journal(self, now):
        """Apply the committed journal rows to gap repair and persist what came of it (gaps, the
        per-node view, events) in the transaction that takes them: all or nothing. A failure
        ends the leadership (the state in memory may be ahead of the store)."""
        store, tr = self.store, self.tracker
        events = []
        dups = replays = 0
        try:
            with store.transaction():
                rows = store.take_journal(self.cfg.journal_take)
                touched = set()
                for _id, kind, node, at_s, gw, a, b, c, detail in rows:
                    touched.add(node)
                    if gw is not None:
                        self._gw_ids.add(gw)
                    if kind == "r":
                        self._hops[node] = c
                        tr.on_readings(node, a, b, now, gw)
                    elif kind == "s":
                        self._apply_status(node, a, int(at_s), gw, c, json.loads(detail), events, now)
                    elif kind == "y":
                        # the group's replay window (a replay may be dealt to another member than the
                        # original was): kept in repair_nodes, so a new leader refuses what was applied
                        r = self._window(self._lead_replies, node).accept(c) if c is not None else auth.NEW
                        if r == auth.DUPLICATE:
                            dups += 1
                        elif r == auth.OLD:
                            replays += 1
                        else:
                            self._apply_reply(node, a, b, json.loads(detail), int(at_s), now, events)
                gaps = tr.take_dirty()
                ids = store.write_gaps([g.row() for g in gaps], now) if gaps else []
                view = []
                for node in touched:
                    status = self._last_status.get(node, (None, None, None))
                    w = self._lead_replies.get(node)
                    window = (None, None) if w is None else (w.top, w.bits - (1 << 64) if w.bits >> 63 else w.bits)
                    view.append((node, *tr.seq_bounds(node), self._status_seq.get(node), *status, *window))
                store.save_repair_nodes(view)
                if replays:
                    store.count_reject("replay", now, replays)
                for ts, kind, node, detail in events + self._lost_events(gaps, now):
                    store.record_event(ts, kind, node=node, detail=detail)
        except Exception as e:  # noqa: BLE001 - the journal stays; whoever leads next applies it
            self._step_down(now, f"the store failed ({type(e).__name__}: {e})")
            return
        self.stats.journal_taken += len(rows)
        self.stats.reply_duplicates += dups
        if replays:
            self.stats.rejects += replays
            self.stats.rejects_by_cause["replay"] = self.stats.rejects_by_cause.get("replay", 0) + replays
            self._ratelog.note("replay", f"{replays} replayed reply frame(s) dealt to other members", now)
        self._gaps_written(gaps, ids, now)

    def _lost_events(self, gaps, now):
        return [(int(now), "gap_lost", g.node, {"first": g.first, "last": g.last, "readings": g.size,
                                                 "reason": g.reason}) for g in gaps if g.state == LOST]

    def _gaps_written(self, gaps, ids, now):
        for g, gap_id in zip(gaps, ids, strict=True):
            g.id = gap_id
        for g in gaps:
            if g.state == LOST:
                self._ratelog.note("gap_lost", f"node {g.node} readings {g.first}..{g.last} lost ({g.reason})", now)

    def _key_answers(self, now):
        """OP_REKEY [epoch in force, the key wrapped with the node's own key, 1] (taken at once,
        no grace window: protocol/keywrap.py) to each node whose status reported an older epoch,
        one per node every cfg.key_answer_s. Flooded from the gateway that heard it, scoped to a
        few hops beyond the node, wider for each answer the node asked again after, the whole
        mesh from the fourth (fleet/repair.py flood_start_hops; the path its parents describe is
        of the old epoch, where its parent may be a stolen pole); a gateway's own goes to its
        topic. Counted key_answers, recorded as "key_answer" events."""
        from protocol.keywrap import OP_REKEY, to_args, wrap

        asks, self._key_asks = self._key_asks, {}
        by_topic = {}
        epoch = self._epoch
        for node, (gw, old) in sorted(asks.items()):
            last, n = self._key_answered.get(node, (None, 0))
            if node in self._revoked or (last is not None and now - last < self.cfg.key_answer_s):
                continue
            cseq = self._cseq(node)
            if cseq is None:
                continue
            try:
                nk = self._node_key_at(node, old)  # the node key of the epoch the node is in
                args = to_args(epoch, wrap(nk, self.net_id, node, epoch, self.keys.mesh_key(epoch)), True)
            except Exception as e:  # noqa: BLE001 - KeystoreError: logged, asked again by the node
                self._ratelog.note("keystore", f"no key answer for node {node}: {e}", now)
                continue
            own = node in self._gw_ids
            scope = 0 if own else flood_start_hops(self._hops.get(node), n + 1, self.cfg.mesh_ttl)
            cmd = protocol.Command(target=node, cseq=cseq, op=OP_REKEY, args=args, hops=scope)
            fb = protocol.encode(cmd, self._mesh, auth.Hmac(nk), phase=self._phase)
            topic = downlink_topic(self.net_id, node if own else gw)
            by_topic.setdefault(topic, []).append(fb)
            self._key_answered[node] = (now, n + 1)
            self.stats.key_answers += 1
            self._events.append((int(now), "key_answer", node, {"cseq": cseq, "epoch": epoch,
                                                                 "via": "gateway" if own else gw}))
        return self._pack(by_topic)

    def _commands(self, reqs, now):
        """Resend commands as downlink messages. The first two attempts go down the node's source
        route (a Routed frame to the gateway at its root); with no usable route (unknown or looping
        parents, its gateway offline: counted route_fallbacks), or on a later retry (two routed
        attempts went unanswered: the path may be stale) unless the path moved since, the command
        is flooded from the gateway that last heard the node, or from every gateway, scoped to a
        few hops beyond the node's last distance (fleet/repair.py flood_start_hops; counted
        commands_scoped). A command for a gateway goes to its own topic (it consumes a command
        for itself, never floods it). An overdue probe (a Request without a gap) goes down a
        route or not at all (probes_sent). Counted commands_routed / commands_flooded."""
        by_topic = {}
        for req in reqs:
            if req.node in self._revoked:  # never a command to a revoked node
                self.stats.commands_withheld += 1
                continue
            own = req.node in self._gw_ids  # a gateway's own readings: it takes the command off MQTT
            route = None
            if self.cfg.route_commands and not own:
                if req.gap is None:  # an overdue probe (fleet/repair.py): down a route or not at all
                    route = self._routes.choose(req.node, self._gw_ids, self._gateway_online)[0]
                    if route is None:
                        continue
                else:
                    # the first retry goes down the same path again (a routed hop or the reply
                    # lost at 20 % loss, not a stale path, more often than not); later ones only
                    # down a path that moved. A flood costs ~one transmission per node (DES, 5,000
                    # nodes at 20 % loss with a gateway failure: floods were 71 % of all repair
                    # transmissions, 31 of the 39 floods first retries). attempts: this one included
                    route = self._route(req.node, retry=req.via_all,
                                        same_ok=req.gap.attempts <= ROUTED_SAME_PATH_TRIES)
            routed = None
            if route is not None:
                try:
                    routed = protocol.encode(Routed(path=route[1], at=0, cmd=self._resend_bytes(req, 0)), self._mesh,
                                             phase=self._phase)
                except ValueError:  # a path longer than one frame carries (protocol/routed_scan.py)
                    route = None
                    if req.gap is None:
                        continue
                    if not req.via_all:
                        self.stats.route_fallbacks += 1
            if req.gap is None:
                self.stats.probes_sent += 1
            scope = 0
            if route is None and not own:
                scope = flood_start_hops(self._hops.get(req.node), req.gap.attempts if req.gap else None,
                                         self.cfg.mesh_ttl)
            fb = routed if routed is not None else self._resend_bytes(req, scope)
            if own:
                topic, via = downlink_topic(self.net_id, req.node), "gateway"
                self.stats.commands_routed += 1
            elif route is not None:
                gw, path = route
                topic, via = downlink_topic(self.net_id, gw), "route"
                self.stats.commands_routed += 1
            else:
                topic = downlink_topic(self.net_id, None if req.via_all else req.gateway)
                via = "all" if req.via_all else req.gateway
                self.stats.commands_flooded += 1
                if scope:
                    self.stats.commands_scoped += 1
            by_topic.setdefault(topic, []).append(fb)
            detail = {"cseq": req.cseq, "first": req.a, "last": req.b, "via": via}
            if req.gap is None:
                detail["probe"] = True
            if route is not None:
                detail["gateway"], detail["path"] = route
            elif scope:
                detail["scope"] = self.cfg.mesh_ttl - scope  # hops from a gateway it can reach
            self._events.append((int(now), "resend_request", req.node, detail))
        return self._pack(by_topic)

    def _resend_bytes(self, req, scope):
        """The resend command frame for request `req`, starting with hop count `scope`."""
        cmd = protocol.Command(target=req.node, cseq=req.cseq, op=protocol.OP_RESEND, args=[req.a, req.b],
                               hops=scope)
        return protocol.encode(cmd, self._mesh, self._node_hmac(req.node), phase=self._phase)

    def _pack(self, by_topic):
        """Downlink messages [(topic, payload)] of the command frames by topic (counted commands)."""
        out = []
        step = self.cfg.downlink_max_frames
        for topic, frames in by_topic.items():
            for i in range(0, len(frames), step):
                out.append((topic, protocol.encode(protocol.Downlink(frames[i:i + step]))))
        self.stats.commands += sum(len(f) for f in by_topic.values())
        return out

    def _path_broken(self, node):
        """Is the path `node` reported broken for now (fleet/repair.py route_wait_s)? Never for a
        gateway's own or a revoked node's: they are not routed, nothing to wait for."""
        if node in self._gw_ids or node in self._revoked:
            return False
        return self._routes.broken(node, self._gw_ids, self._gateway_online)

    def _routable(self, node):
        """Can an overdue probe reach `node` now: its gateway's own readings (the gateway online),
        or a whole source route down to it - probes are never flooded."""
        if node in self._revoked:
            return False
        if node in self._gw_ids:
            return self._gateway_online(node)
        return self._routes.path(node, self._gw_ids, self._gateway_online) is not None

    def _route(self, node, retry=False, same_ok=False):
        """(gateway, path) down to `node` compiled from the reported parents, or None (counted
        route_fallbacks) when the chain is unknown, loops, is too long or ends at an offline gateway.
        A retry (the last attempt went unanswered) is routed only down a path other than the one
        last tried (reports moved it since: counted route_retries_rerouted), unless same_ok; else
        None. A retry's None is not counted."""
        r, why = self._routes.choose(node, self._gw_ids, self._gateway_online, retry and not same_ok)
        if why == "fallback" and not retry:
            self.stats.route_fallbacks += 1
        elif why == "rerouted":
            self.stats.route_retries_rerouted += 1
        return r

    def next_deadline_s(self):
        """When poll() next has work: the flush deadline or the earliest due gap."""
        t = self._last_flush + self.cfg.flush_interval_s
        for d in (self.tracker.next_due_s(), self.tracker.next_probe_s()):
            if d is not None and d < t:
                t = d
        return t

    def pending_rows(self):
        return len(self._rows)

    def flush(self, now_s=None):
        """Write the batch (readings, state, gaps, rejects, events) in one transaction. Returns
        (stored, duplicates). On a store error the batch is kept for the next flush and (0, 0)
        is returned; the error is logged, never raised."""
        now = self._now(now_s)
        self._last_flush = now
        rows, status, rejects, events = self._rows, self._status, self._rejects, self._events
        gaps = [] if self._shared else self.tracker.take_dirty()  # shared: the leader writes gaps
        journal = self._journal_rows()
        if not (rows or status or rejects or events or gaps or journal):
            return 0, 0
        lost_events = self._lost_events(gaps, now)
        store = self.store
        try:
            with store.transaction():
                stored, dups = store.add_readings(rows) if rows else (0, 0)
                if status:
                    store.update_states([(node, heard, fields) for node, (heard, fields) in status.items()])
                ids = store.write_gaps([g.row() for g in gaps], now) if gaps else []
                store.add_journal(journal)
                for cause, n in rejects.items():
                    store.count_reject(cause, int(now), n)
                for ts, kind, node, detail in events + lost_events:
                    store.record_event(ts, kind, node=node, detail=detail)
                if rows and self._fault_commits:
                    self._fault_point()
        except Exception as e:  # noqa: BLE001 - keep the batch, try again at the next flush
            self.tracker.restore_dirty(gaps)
            self.stats.flush_errors += 1
            down = self._store_down
            if down is None:
                self._store_down = [now, now, 1]
                log.error("store write failed (%s: %s): holding %d readings unacknowledged (the broker keeps "
                          "the rest); retrying at every flush, nothing is dropped", type(e).__name__, e, len(rows))
            else:
                down[2] += 1
                if now - down[1] >= self.cfg.log_interval_s:
                    down[1] = now
                    log.error("store still failing after %d s (%s: %s): holding %d readings unacknowledged, "
                              "%d failed attempts", now - down[0], type(e).__name__, e, len(rows), down[2])
            return 0, 0
        if self._store_down is not None:
            log.warning("store writable again after %.1f s (%d failed attempts): %d held readings stored",
                        now - self._store_down[0], self._store_down[2], len(rows))
            self._store_down = None
        self._gaps_written(gaps, ids, now)
        self._rows, self._status, self._rejects, self._events = [], {}, {}, []
        self._runs, self._jrows = {}, []
        self.stats.stored += stored
        self.stats.duplicates += dups
        self.stats.flushes += 1
        return stored, dups

    def _journal_rows(self):
        """Shared: this batch's journal rows (JOURNAL_FIELDS order), reading runs by node first."""
        if not self._shared:
            return []
        out = [("r", node, rx_s, gw, a, b, hops, None)
               for node, runs in sorted(self._runs.items()) for a, b, gw, hops, rx_s in runs]
        return out + self._jrows

    def _fault_point(self):
        """REDMESH_FAULT_STOP_BEFORE_COMMIT (see FAULT_STOP_MARK): count this batch; at the Nth,
        log and SIGSTOP this process with the transaction open (a test SIGKILLs it there)."""
        self._fault_commits -= 1
        if self._fault_commits == 0:
            log.warning("%s (%d readings inserted, not committed)", FAULT_STOP_MARK, len(self._rows))
            for h in logging.getLogger().handlers + log.handlers:
                h.flush()
            os.kill(os.getpid(), signal.SIGSTOP)

    def has_pending(self):
        """True while something received is not yet committed to the store (rows, states,
        reject counts, events, gap changes): an MQTT message may be acknowledged only when False."""
        held = self._rows or self._status or self._rejects or self._events
        if self._shared:  # gap changes are the leader's, committed with the journal rows it takes
            return bool(held or self._runs or self._jrows)
        return bool(held or self.tracker.has_dirty())

    def close(self, now_s=None):
        """Flush what is pending (call at shutdown) and let go of the repair lease. Returns
        (stored, duplicates). A prune running is asked to stop after its step in hand and waited
        for at most cfg.prune_stop_s (still running then: logged, left to end with the process)."""
        now = self._now(now_s)
        if not self.pruner.stop(self.cfg.prune_stop_s):
            log.warning("collector: the prune did not stop within %.0f s; leaving it (its open transaction "
                        "rolls back when the process ends; the next prune resumes)", self.cfg.prune_stop_s)
        self._prune_done(now)
        out = self.flush(now_s)
        if self._lease is not None:
            self._take_journal(self._now(now_s))  # what is committed, applied before letting go
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        return out

    @property
    def routes(self):
        """The fleet.repair.SourceRoutes commands go down: the parent each node's newest applied
        status reported (read it; the collector updates it)."""
        return self._routes

    @property
    def leading(self):
        """True while this collector repairs gaps: always alone, or holding its group's lease."""
        return not self._shared or self._lease is not None

    # ---- views ----------------------------------------------------------------------------------

    def snapshot(self):
        """Plain-data totals: Stats plus gap figures (pending, lost, recovered, readings_lost,
        requests) and rows waiting for the next flush."""
        d = self.stats.as_dict()
        t = self.tracker
        d.update({"gaps_pending": t.pending, "gaps_lost": t.lost, "gaps_recovered": t.recovered,
                  "gaps_reordered": t.reordered, "gaps_opened": t.opened, "readings_lost": t.readings_lost,
                  "resend_requests": t.requests_sent, "outstanding": len(t.outstanding),
                  "route_waits": t.route_waits, "probes": t.probes_sent,
                  "pending_rows": len(self._rows), "leading": self.leading,
                  "store_failing_s": int(self._now(None) - self._store_down[0]) if self._store_down else 0})
        return d


class Pruner:
    """Retention pruning off the ingest path: `store.prune` on a thread of its own, with a store
    connection of its own (`store.reopen()`), so batches, their commits and the MQTT
    acknowledgements go on while it runs. The store prunes in bounded steps (a transaction each,
    fleet/store) and checks the stop flag between them, so stop() takes effect within one step.

    start() begins a prune unless one runs; results() hands over what finished ones returned;
    `on_step(what)`, when set, is called on the pruner's thread after each committed step (tests
    use it to interleave ingest with a prune); `stop_requested` is set by stop()."""

    def __init__(self, store):
        self._store = store
        self._thread = None
        self.stop_requested = threading.Event()
        self._lock = threading.Lock()
        self._results = []  # (True, (horizon, dropped)) or (False, the exception)
        self.on_step = None

    def running(self):
        return self._thread is not None and self._thread.is_alive()

    def start(self, before_ts, now_s):
        """Start pruning readings older than `before_ts` on the pruner's thread. Returns False
        (nothing started) while a prune still runs."""
        if self.running():
            return False
        self.stop_requested.clear()
        self._thread = threading.Thread(target=self._run, args=(before_ts, now_s), name="redmesh-prune", daemon=True)
        self._thread.start()
        return True

    def _run(self, before_ts, now_s):
        try:
            store = self._store.reopen()
            try:
                out = (True, store.prune(before_ts, now_s=now_s, stop=self.stop_requested.is_set, on_step=self.on_step))
            finally:
                store.close()
        except Exception as e:  # noqa: BLE001 - handed to the collector, which logs it
            out = (False, e)
        with self._lock:
            self._results.append(out)

    def results(self):
        """What the prunes finished since the last call returned: [(ok, (horizon, dropped) or error)]."""
        with self._lock:
            out, self._results = self._results, []
        return out

    def stop(self, timeout_s=0.0):
        """Ask a running prune to stop after its step in hand; wait for it at most `timeout_s`.
        Returns True when no prune runs any more."""
        self.stop_requested.set()
        t = self._thread
        if t is None:
            return True
        if timeout_s:
            t.join(timeout_s)
        return not t.is_alive()

    def join(self, timeout_s):
        """Wait at most `timeout_s` for a running prune to end; True when none runs."""
        t = self._thread
        if t is not None:
            t.join(timeout_s)
        return not self.running()


def progress_line(prev, cur, dt_s):
    """One line for stderr from two snapshots `dt_s` seconds apart."""
    rate = (cur["messages"] - prev["messages"]) / dt_s if dt_s > 0 else 0.0
    frate = (cur["frames"] - prev["frames"]) / dt_s if dt_s > 0 else 0.0
    rej = ", ".join(f"{c} {n}" for c, n in sorted(cur["rejects_by_cause"].items()))
    return (f"collector: stored {cur['stored']} dup {cur['duplicates']} rejects {cur['rejects']}"
            f"{' (' + rej + ')' if rej else ''} gaps open {cur['gaps_pending']} lost {cur['gaps_lost']}"
            f" recovered {cur['gaps_recovered']} resends {cur['resend_requests']}"
            f" | {rate:.0f} msg/s {frate:.0f} frames/s"
            + (f" | STORE FAILING for {cur['store_failing_s']} s, holding {cur['pending_rows']} readings"
               if cur.get("store_failing_s") else ""))
