"""The store interface and what both backends share.

`Store` is the interface (plain data in, plain data out). `SqlStore` holds the SQL both backends
run (SQLite in fleet/store/sqlite.py, PostgreSQL in fleet/store/postgres.py): statements are
written with `?` parameters and standard upserts (INSERT ... ON CONFLICT ... DO UPDATE, RETURNING);
a backend supplies the connection (`self.db`: execute / executemany returning a cursor), its
transaction, and the few dialect hooks below. Units follow the wire: PM in 0.1 ug/m3, RH in %,
temperature in 0.1 C, times in unix seconds.

Theory of operation
- readings: one row per (node, seq), unique (node, seq); `add_readings` inserts a batch skipping
  rows already stored (SQLite INSERT OR IGNORE, PostgreSQL ON CONFLICT DO NOTHING), so QoS-1
  redeliveries, mesh duplicates and gap-repair resends are stored once and counted as duplicates.
  The batch runs in one transaction (DESIGN: the dedup index is the cost; 10,000 rows per commit
  run ~2.5x faster than 1,000).
- node_state: one row per node holding the LATEST of everything (last heard, last reading, last
  status, delivered and duplicate counts, lowest and highest seq stored). `add_readings`
  updates it in the same transaction from the rows actually inserted (INSERT ... RETURNING), so
  `fleet status` reads one row per node and never scans readings. A resend of an old reading
  (seq below last_seq) adds to `delivered` but does not replace the latest values.
- status frames carry their own counter (status_seq): the upsert takes a status only when its
  counter is above the stored one, so a late status never overwrites a newer one.
- hourly: per node and UTC hour, the count and sums of PM; every inserted reading adds to its
  hour in the same transaction (late and repaired ones too, each once).
- delivery ratio of a node = delivered / (last_seq - min_seq + 1): readings stored out of the
  counter range seen. Missing counters are gaps: the collector records them (`add_gap`), asks
  the node to resend, and marks them requested / recovered / lost.
- Several collectors on one store (`fleet collect --share GROUP`, fleet/collector.py): each
  stores what the broker deals it and appends what the repair leader must see to `journal` (runs
  of reading seqs, status reports, command replies) in the same transaction; the leader (the
  holder of `lead(GROUP)`: a PostgreSQL advisory lock / a lock file beside the SQLite file, freed
  when its process dies) takes the committed journal rows (`take_journal`: DELETE ... RETURNING, so
  a row is taken once, and only when committed) and writes what it made of them - gaps and its
  per-node view (`repair_nodes`: highest and lowest seq tracked, last status applied) - in the
  same transaction. A new leader starts from `repair_nodes` and the open gaps: nothing a journal
  row says is lost or applied twice across a failover.
- Several writers: SQLite takes the write lock at BEGIN IMMEDIATE (a second writer waits);
  PostgreSQL lets writers run together, so a batch writes its rows in (node, seq) / node / hour
  order: two batches lock the same rows in the same order and cannot deadlock.
"""
import json

from fleet.errors import FleetError

SCHEMA_VERSION = 9

READING_FIELDS = (
    "node", "seq", "ts", "rx_ts", "pm1", "pm25", "pm10", "rh", "temp", "n", "flags", "hops", "gateway", "rssi",
)
# What a status frame (protocol StatusBody) and the uplink path report; update_state() takes these.
STATE_FIELDS = (
    "parent", "link_etx", "path_cost", "uptime_s", "heap_free", "heap_min", "backlog", "gateway", "rssi",
    "hops", "fw_version", "fw_seq", "boot_count", "ota_state", "ota_progress", "errors", "radio_drops",
    "readings_lost", "epoch",
)
NODE_FIELDS = ("node", "mac", "role", "pole", "lat", "lon", "fw_version", "fw_seq", "registered_at")
ROLES = ("node", "gateway")
GAP_STATES = ("open", "requested", "recovered", "lost")
# A journal row (collectors sharing a store, see above): kind 'r' readings a..b (c: hops), 's' a
# status (a: its counter, c: hops, detail: JSON of what the leader acts on), 'y' a command reply
# (a: cseq, b: code, detail: JSON result); at_s: when received; gateway: which one carried it.
JOURNAL_FIELDS = ("kind", "node", "at_s", "gateway", "a", "b", "c", "detail")
# The repair leader's view of a node, kept across failovers.
# reply_top/reply_bits: the leader's replay window over a node's reply counter (protocol.auth.ReplayWindow,
# its 64-bit bitmap stored as a signed 64-bit integer): a new leader keeps refusing what was applied.
REPAIR_FIELDS = ("node", "max_seq", "min_seq", "status_seq", "boot_count", "parent", "fw_version", "reply_top",
                 "reply_bits")

# Columns of status_rows(), in order.
STATUS_FIELDS = (
    "node", "role", "pole", "registered_fw", "last_heard", "status_at", "last_seq", "last_ts", "pm1", "pm25",
    "pm10", "rh", "temp", "delivered", "duplicates", "min_seq",
) + STATE_FIELDS



# Hourly sums, kept as readings are stored (late and repaired ones included: every stored row
# adds to the hour of its reading time, and (node, seq) is stored once, so it adds once).
_HOURLY_ADD = (
    "INSERT INTO hourly (node, hour, n, pm1_sum, pm25_sum, pm10_sum) VALUES (?,?,?,?,?,?) "
    "ON CONFLICT (node, hour) DO UPDATE SET n = hourly.n + excluded.n, "
    "pm1_sum = coalesce(hourly.pm1_sum, 0) + coalesce(excluded.pm1_sum, 0), "
    "pm25_sum = hourly.pm25_sum + excluded.pm25_sum, "
    "pm10_sum = coalesce(hourly.pm10_sum, 0) + coalesce(excluded.pm10_sum, 0)"
)
EVERY = {"1h": 3600, "1d": 86400}
MEAN_FIELDS = ("node", "start", "n", "pm1", "pm25", "pm10")

# Rows per INSERT ... VALUES (...),(...) statement: 14 columns x 1,000 rows stays well under
# SQLite's 32,766 bound-variable limit; a batch is several such statements in one transaction.
_CHUNK_ROWS = 1000


class StoreError(FleetError):
    """The store cannot be opened or used; the message says what to do."""


class StoreBusy(StoreError):
    """Another process holds a lock on the store; it is healthy: retry later."""



class Store:
    """The store interface. Every method takes and returns plain data (ints, strs, tuples,
    lists, dicts). Implementations: SQLiteStore, PostgresStore."""

    def close(self):
        raise NotImplementedError

    def transaction(self):
        """Context manager: the calls inside commit together (or not at all)."""
        raise NotImplementedError

    # nodes
    def register_node(self, node, *, mac=None, role="node", pole=None, lat=None, lon=None, fw_version=None,
                      fw_seq=None, registered_at=None):
        raise NotImplementedError

    def register_nodes(self, nodes):
        raise NotImplementedError

    def node(self, node):
        raise NotImplementedError

    def nodes(self):
        raise NotImplementedError

    def node_ids(self):
        raise NotImplementedError

    # readings and state
    def add_readings(self, rows):
        raise NotImplementedError

    def update_state(self, node, heard_s, **fields):
        raise NotImplementedError

    def update_states(self, items):
        raise NotImplementedError

    def node_state(self, node):
        raise NotImplementedError

    def readings(self, node, since=None, until=None, limit=None):
        raise NotImplementedError

    def iter_readings(self, node, since=None, until=None, limit=None):
        raise NotImplementedError

    def missing_seqs(self, node, first_seq, last_seq):
        raise NotImplementedError

    # gaps, events, rejects, commands
    def add_gap(self, node, first_seq, last_seq, now_s):
        raise NotImplementedError

    def open_gaps(self, node=None, limit=None):
        raise NotImplementedError

    def mark_gap(self, gap_id, state, now_s):
        raise NotImplementedError

    def gap_counts(self):
        raise NotImplementedError

    def record_event(self, ts, kind, node=None, detail=None):
        raise NotImplementedError

    def events(self, since=None, node=None, kind=None, limit=1000):
        raise NotImplementedError

    def count_reject(self, cause, now_s, n=1):
        raise NotImplementedError

    def rejects(self):
        raise NotImplementedError

    def next_cseq(self, target, floor=0):
        raise NotImplementedError

    # views
    def status_rows(self, nodes=None, gateway=None, fields=None, tuples=False, ordered=True):
        raise NotImplementedError

    def add_journal(self, rows):
        raise NotImplementedError

    def take_journal(self, limit=10000):
        raise NotImplementedError

    def repair_nodes(self):
        raise NotImplementedError

    def save_repair_nodes(self, rows):
        raise NotImplementedError

    def lead(self, group):
        raise NotImplementedError

    def prune(self, before_ts, now_s=None, stop=None, on_step=None):
        raise NotImplementedError

    def reopen(self):
        """Return a new store object on the same store, with a connection of its own (for
        another thread: the collector's pruner)."""
        raise NotImplementedError

    def summary(self):
        raise NotImplementedError

    def pm25_means(self, since, until=None):
        raise NotImplementedError

    def reading_means(self, node, since, until, every_s):
        raise NotImplementedError


def _newer(col, key="last_seq"):
    """SQL: take the incoming value of `col` when the incoming row is newer by `key`."""
    return (f"{col} = CASE WHEN excluded.{key} > coalesce(node_state.{key}, -1) "
            f"THEN excluded.{col} ELSE node_state.{col} END")


# One upsert per node per batch; SET expressions see the OLD row, so their order is irrelevant.
_STATE_FROM_READINGS = (
    "INSERT INTO node_state (node, last_heard, last_seq, last_ts, pm1, pm25, pm10, rh, temp, hops, gateway, "
    "rssi, delivered, duplicates, min_seq) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (node) DO UPDATE SET "
    "last_heard = CASE WHEN node_state.last_heard IS NULL OR excluded.last_heard > node_state.last_heard "
    "THEN coalesce(excluded.last_heard, node_state.last_heard) ELSE node_state.last_heard END, "
    # path fields describe the most recently heard copy (duplicates included)
    "hops = CASE WHEN excluded.last_heard >= coalesce(node_state.last_heard, 0) "
    "THEN coalesce(excluded.hops, node_state.hops) ELSE node_state.hops END, "
    "gateway = CASE WHEN excluded.last_heard >= coalesce(node_state.last_heard, 0) "
    "THEN coalesce(excluded.gateway, node_state.gateway) ELSE node_state.gateway END, "
    "rssi = CASE WHEN excluded.last_heard >= coalesce(node_state.last_heard, 0) "
    "THEN coalesce(excluded.rssi, node_state.rssi) ELSE node_state.rssi END, "
    + ", ".join(_newer(c) for c in ("last_ts", "pm1", "pm25", "pm10", "rh", "temp")) + ", "
    "last_seq = CASE WHEN excluded.last_seq > coalesce(node_state.last_seq, -1) "
    "THEN excluded.last_seq ELSE node_state.last_seq END, "
    "min_seq = CASE WHEN node_state.min_seq IS NULL OR excluded.min_seq < node_state.min_seq "
    "THEN coalesce(excluded.min_seq, node_state.min_seq) ELSE node_state.min_seq END, "
    "delivered = node_state.delivered + excluded.delivered, "
    "duplicates = node_state.duplicates + excluded.duplicates"
)


def _later(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a if a >= b else b



class SqlStore(Store):
    """The SQL both backends run. A subclass sets `self.db` (an object with execute(sql, args)
    and executemany(sql, rows) taking `?` parameters and returning a DB-API cursor) and
    implements transaction(); the hooks below cover the dialects' differences."""

    _INSERT_OR_SKIP = ("INSERT OR IGNORE INTO readings", "")  # SQL before the column list, after VALUES
    _GREATEST = "max"  # the two-argument maximum
    _ORDERED_WRITES = False  # write rows in key order (concurrent writers: no deadlock)
    _depth = 0

    def _ids_in(self, col, ids):
        """Return (SQL condition, its one argument): `col` is one of the node ids `ids`."""
        return f"{col} IN (SELECT value FROM json_each(?))", json.dumps([int(n) for n in ids])

    def _mappings(self, sql, args):
        """Run `sql` and return its rows as read-only mappings (r['col'], r.keys(), dict(r))."""
        raise NotImplementedError

    def _iter_rows(self, sql, args):
        """Rows of `sql` as tuples, such that the caller may write to the store while iterating
        (here: fetched whole)."""
        return self.db.execute(sql, args).fetchall()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def register_node(self, node, *, mac=None, role="node", pole=None, lat=None, lon=None, fw_version=None,
                      fw_seq=None, registered_at=None):
        """Add or update node `node`'s registration (provisioning data). Returns None."""
        self.register_nodes([{
            "node": node, "mac": mac, "role": role, "pole": pole, "lat": lat, "lon": lon,
            "fw_version": fw_version, "fw_seq": fw_seq, "registered_at": registered_at,
        }])

    def register_nodes(self, nodes):
        """Add or update many registrations (dicts with NODE_FIELDS keys; missing keys = None,
        role defaults to 'node') in one transaction. Raises ValueError on a bad role."""
        rows = []
        for n in nodes:
            role = n.get("role") or "node"
            if role not in ROLES:
                raise ValueError(f"node {n.get('node')}: role must be one of {ROLES}, got {role!r}")
            rows.append((int(n["node"]), n.get("mac"), role, n.get("pole"), n.get("lat"), n.get("lon"),
                         n.get("fw_version"), n.get("fw_seq"), n.get("registered_at")))
        with self.transaction():
            self.db.executemany(
                "INSERT INTO nodes (node, mac, role, pole, lat, lon, fw_version, fw_seq, registered_at) "
                "VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (node) DO UPDATE SET mac = excluded.mac, "
                "role = excluded.role, pole = excluded.pole, lat = excluded.lat, lon = excluded.lon, "
                "fw_version = coalesce(excluded.fw_version, nodes.fw_version), "
                "fw_seq = coalesce(excluded.fw_seq, nodes.fw_seq), "
                "registered_at = coalesce(nodes.registered_at, excluded.registered_at)",
                rows,
            )

    def node(self, node):
        """Return node `node`'s registration as a dict (NODE_FIELDS), or None if unknown."""
        row = self.db.execute(f"SELECT {', '.join(NODE_FIELDS)} FROM nodes WHERE node = ?", (node,)).fetchone()
        return dict(zip(NODE_FIELDS, row, strict=True)) if row else None

    def nodes(self):
        """Return every registration as a list of dicts, by node id."""
        cur = self.db.execute(f"SELECT {', '.join(NODE_FIELDS)} FROM nodes ORDER BY node")
        return [dict(zip(NODE_FIELDS, r, strict=True)) for r in cur]

    def node_ids(self):
        """Return the set of registered node ids (for the collector's unknown-node check)."""
        return {r[0] for r in self.db.execute("SELECT node FROM nodes")}

    # -------------------------------------------------------------------------------- readings
    def _insert_stmt(self, n):
        sql = self._insert_sql.get(n)
        if sql is None:
            one = "(" + ",".join("?" * len(READING_FIELDS)) + ")"
            before, after = self._INSERT_OR_SKIP
            sql = (f"{before} ({', '.join(READING_FIELDS)}) VALUES "
                   + ",".join([one] * n) + after
                   + " RETURNING node, seq, ts, pm1, pm25, pm10, rh, temp")
            self._insert_sql[n] = sql
        return sql

    def _insert_readings(self, rows):
        """Insert reading tuples skipping (node, seq) already stored; return the rows inserted
        as (node, seq, ts, pm1, pm25, pm10, rh, temp) tuples."""
        stored = []
        for i in range(0, len(rows), _CHUNK_ROWS):
            chunk = rows[i:i + _CHUNK_ROWS]
            flat = [v for r in chunk for v in r]
            stored.extend(self.db.execute(self._insert_stmt(len(chunk)), flat).fetchall())
        return stored

    def _upsert_many(self, sql, rows):
        """Run the one-row upsert `sql` (INSERT ... VALUES (?, ...) ON CONFLICT ...) for every
        row of `rows` (each key at most once)."""
        self.db.executemany(sql, rows)

    def add_readings(self, rows):
        """Store a batch of readings and update node_state from it, in one transaction.

        `rows`: tuples in READING_FIELDS order, or dicts with those keys (missing = None).
        Returns (stored, duplicates): rows inserted, and rows ignored because (node, seq) was
        already stored (or repeated within the batch). Raises ValueError on a malformed row."""
        if not rows:
            return 0, 0
        width = len(READING_FIELDS)
        if isinstance(rows[0], dict):
            rows = [tuple(r.get(f) for f in READING_FIELDS) for r in rows]
        else:
            for r in rows:
                if len(r) != width:
                    raise ValueError(f"a reading row has {len(r)} fields, expected {width}: {READING_FIELDS}")
        # Per node over the whole batch: copies seen, latest rx time and the path of that copy.
        seen = {}
        for r in rows:
            node, rx_ts = r[0], r[3]
            if node is None or r[1] is None or r[2] is None:
                # checked here: SQLite's INSERT OR IGNORE would silently skip a NOT NULL violation
                raise ValueError(f"a reading needs node, seq and ts; got {dict(zip(READING_FIELDS, r, strict=True))}")
            s = seen.get(node)
            if s is None:
                seen[node] = [1, rx_ts, r[11], r[12], r[13]]
            else:
                s[0] += 1
                if rx_ts is not None and (s[1] is None or rx_ts >= s[1]):
                    s[1], s[2], s[3], s[4] = rx_ts, r[11], r[12], r[13]
        if self._ORDERED_WRITES:
            rows = sorted(rows, key=lambda r: (r[0], r[1]))
        stored = []
        with self.transaction():
            stored = self._insert_readings(rows)
            # node -> [count, min_seq, last row (seq, ts, pm1, pm25, pm10, rh, temp)]
            agg = {}
            for node, seq, ts, pm1, pm25, pm10, rh, temp in stored:
                a = agg.get(node)
                if a is None:
                    agg[node] = [1, seq, (seq, ts, pm1, pm25, pm10, rh, temp)]
                else:
                    a[0] += 1
                    if seq < a[1]:
                        a[1] = seq
                    if seq > a[2][0]:
                        a[2] = (seq, ts, pm1, pm25, pm10, rh, temp)
            upserts = []
            for node, (copies, heard, hops, gateway, rssi) in seen.items():
                a = agg.get(node)
                if a is None:  # only duplicates of this node: still heard
                    upserts.append((node, heard, None, None, None, None, None, None, None, hops, gateway, rssi,
                                    0, copies, None))
                else:
                    count, min_seq, (seq, ts, pm1, pm25, pm10, rh, temp) = a
                    upserts.append((node, heard, seq, ts, pm1, pm25, pm10, rh, temp, hops, gateway, rssi,
                                    count, copies - count, min_seq))
            if self._ORDERED_WRITES:
                upserts.sort(key=lambda u: u[0])
            self._upsert_many(_STATE_FROM_READINGS, upserts)
            hours = {}
            for node, _seq, ts, pm1, pm25, pm10, _rh, _temp in stored:
                if pm25 is None:
                    continue
                h = hours.get((node, ts // 3600))
                if h is None:
                    hours[(node, ts // 3600)] = [1, pm1 or 0, pm25, pm10 or 0]
                else:
                    h[0] += 1
                    h[1] += pm1 or 0
                    h[2] += pm25
                    h[3] += pm10 or 0
            self._upsert_many(_HOURLY_ADD, [k + tuple(v) for k, v in sorted(hours.items())])
        return len(stored), len(rows) - len(stored)

    def recent_means(self, now_s, nodes=None):
        """Return {node: (n_1h, pm25_sum_1h, n_24h, pm25_sum_24h)} over the last complete hour
        and the 24 complete hours before `now_s` (UTC hours; PM2.5 in 0.1 ug/m3), for every
        node with readings in them (or only `nodes`)."""
        hour = int(now_s) // 3600
        # CAST: PostgreSQL's sum of a bigint is a numeric, ~1.5 us a value to load
        sql = ("SELECT node, CAST(sum(CASE WHEN hour = ? THEN n ELSE 0 END) AS BIGINT), "
               "CAST(sum(CASE WHEN hour = ? THEN pm25_sum ELSE 0 END) AS BIGINT), CAST(sum(n) AS BIGINT), "
               "CAST(sum(pm25_sum) AS BIGINT) FROM hourly WHERE hour BETWEEN ? AND ?")
        args = [hour - 1, hour - 1, hour - 24, hour - 1]
        if nodes:
            cond, arg = self._ids_in("node", nodes)
            sql += " AND " + cond
            args.append(arg)
        sql += " GROUP BY node"
        return {r[0]: r[1:] for r in self.db.execute(sql, args)}

    def means(self, node, every="1h", since=None, until=None):
        """Return node `node`'s mean PM per period as dicts (MEAN_FIELDS: start = the period's
        first second, UTC; n = readings in it; pm in 0.1 ug/m3 as floats), oldest first, for
        periods starting in [since, until). `every` is '1h' or '1d' (UTC days)."""
        if every not in EVERY:
            raise ValueError(f"every must be one of {tuple(EVERY)}, got {every!r}")
        span = EVERY[every] // 3600
        sql = ("SELECT node, (hour / ?) * ? * 3600 AS start, sum(n), sum(pm1_sum), sum(pm25_sum), sum(pm10_sum) "
               "FROM hourly WHERE node = ?")
        args = [span, span, node]
        if since is not None:
            sql += " AND hour >= ?"
            args.append(-(-int(since) // 3600) if span == 1 else -(-int(since) // EVERY[every]) * span)
        if until is not None:
            sql += " AND hour < ?"
            args.append(-(-int(until) // EVERY[every]) * span)
        sql += " GROUP BY node, start ORDER BY start"
        return [{"node": nd, "start": st, "n": n, "pm1": p1 / n, "pm25": p25 / n, "pm10": p10 / n}
                for nd, st, n, p1, p25, p10 in self.db.execute(sql, args)]

    def _state_stmt(self, keys):
        sql = self._state_sql.get(keys)
        if sql is None:
            cols = ("node", "last_heard", "status_at") + keys
            sets = ["last_heard = CASE WHEN node_state.last_heard IS NULL OR excluded.last_heard > "
                    "node_state.last_heard THEN coalesce(excluded.last_heard, node_state.last_heard) "
                    "ELSE node_state.last_heard END"]
            if "status_seq" in keys:
                # a status frame older (by its own counter) than the one stored changes nothing
                # but last_heard: several collectors, or a redelivery after a restart, may
                # bring statuses out of order
                newer = "(node_state.status_seq IS NULL OR excluded.status_seq > node_state.status_seq)"
                sets += [f"{k} = CASE WHEN {newer} THEN excluded.{k} ELSE node_state.{k} END"
                         for k in ("status_at",) + keys]
            else:
                sets.append("status_at = coalesce(excluded.status_at, node_state.status_at)")
                sets += [f"{k} = excluded.{k}" for k in keys]
            sql = (f"INSERT INTO node_state ({', '.join(cols)}) VALUES ({','.join('?' * len(cols))}) "
                   f"ON CONFLICT (node) DO UPDATE SET {', '.join(sets)}")
            self._state_sql[keys] = sql
        return sql

    def update_state(self, node, heard_s, **fields):
        """Record a node's reported state (a status frame): `fields` among STATE_FIELDS, plus
        optionally `status_seq` (the frame's counter: then a status older than the stored one
        is ignored, except that the node counts as heard); the node counts as heard at
        `heard_s`. Raises ValueError on an unknown field."""
        self.update_states([(node, heard_s, fields)])

    def update_states(self, items):
        """Many update_state calls in one transaction: `items` = iterable of
        (node, heard_s, fields dict)."""
        groups = {}
        for node, heard_s, fields in items:
            keys = tuple(sorted(fields))
            for k in keys:
                if k not in STATE_FIELDS and k != "status_seq":
                    raise ValueError(f"unknown node state field {k!r}; expected some of {STATE_FIELDS}")
            groups.setdefault(keys, []).append((node, heard_s, heard_s) + tuple(fields[k] for k in keys))
        with self.transaction():
            for keys, rows in groups.items():
                self.db.executemany(self._state_stmt(keys), rows)

    def node_state(self, node):
        """Return the node_state row of `node` as a dict, or None if never heard."""
        cur = self.db.execute("SELECT * FROM node_state WHERE node = ?", (node,))
        row = cur.fetchone()
        return dict(zip([d[0] for d in cur.description], row, strict=True)) if row else None

    def iter_readings(self, node, since=None, until=None, limit=None):
        """Yield node `node`'s readings as dicts (READING_FIELDS) in seq order, with reading
        time `ts` in [since, until) when given."""
        sql = f"SELECT {', '.join(READING_FIELDS)} FROM readings WHERE node = ?"
        args = [node]
        if since is not None:
            sql += " AND ts >= ?"
            args.append(int(since))
        if until is not None:
            sql += " AND ts < ?"
            args.append(int(until))
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        for r in self._iter_rows(sql, args):
            yield dict(zip(READING_FIELDS, r, strict=True))

    def readings(self, node, since=None, until=None, limit=None):
        """Return node `node`'s readings as a list of dicts (see iter_readings)."""
        return list(self.iter_readings(node, since, until, limit))

    def missing_seqs(self, node, first_seq, last_seq):
        """Return the ranges [(a, b), ...] of seq in [first_seq, last_seq] not stored for `node`."""
        missing = []
        expect = first_seq
        cur = self.db.execute(
            "SELECT seq FROM readings WHERE node = ? AND seq BETWEEN ? AND ? ORDER BY seq", (node, first_seq, last_seq)
        )
        for (seq,) in cur:
            if seq > expect:
                missing.append((expect, seq - 1))
            expect = seq + 1
        if expect <= last_seq:
            missing.append((expect, last_seq))
        return missing

    # ------------------------------------------------------------------------------------ gaps
    def add_gap(self, node, first_seq, last_seq, now_s):
        """Record missing seqs first_seq..last_seq of `node` as an open gap; return its id."""
        if last_seq < first_seq:
            raise ValueError(f"gap {first_seq}..{last_seq} is empty")
        with self.transaction():
            cur = self.db.execute(
                "INSERT INTO gaps (node, first_seq, last_seq, state, created_at, updated_at) "
                "VALUES (?, ?, ?, 'open', ?, ?) RETURNING id", (node, first_seq, last_seq, now_s, now_s))
            return cur.fetchone()[0]

    _GAP_FIELDS = ("id", "node", "first_seq", "last_seq", "state", "created_at", "updated_at", "requests")

    def open_gaps(self, node=None, limit=None):
        """Return gaps still pending (state 'open' or 'requested') as dicts, oldest first."""
        sql = f"SELECT {', '.join(self._GAP_FIELDS)} FROM gaps WHERE state IN ('open', 'requested')"
        args = []
        if node is not None:
            sql += " AND node = ?"
            args.append(node)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [dict(zip(self._GAP_FIELDS, r, strict=True)) for r in self.db.execute(sql, args)]

    def mark_gap(self, gap_id, state, now_s):
        """Set gap `gap_id` to `state` (GAP_STATES); 'requested' also counts one more request.
        Raises ValueError on a bad state, KeyError on an unknown gap."""
        if state not in GAP_STATES:
            raise ValueError(f"gap state must be one of {GAP_STATES}, got {state!r}")
        with self.transaction():
            cur = self.db.execute(
                "UPDATE gaps SET state = ?, updated_at = ?, requests = requests + ? WHERE id = ?",
                (state, now_s, 1 if state == "requested" else 0, gap_id))
            if cur.rowcount == 0:
                raise KeyError(f"no gap with id {gap_id}")

    def gap_counts(self):
        """Return {node: {state: count}} over every gap."""
        out = {}
        for node, state, count in self.db.execute("SELECT node, state, count(*) FROM gaps GROUP BY node, state"):
            out.setdefault(node, {})[state] = count
        return out

    # ------------------------------------------------------------------------ events, rejects
    def record_event(self, ts, kind, node=None, detail=None):
        """Append an event (e.g. 'reboot', 'reparent', 'gap_lost'); `detail` str or JSON-able."""
        if detail is not None and not isinstance(detail, str):
            detail = json.dumps(detail, sort_keys=True)
        with self.transaction():
            self.db.execute("INSERT INTO events (ts, node, kind, detail) VALUES (?, ?, ?, ?)", (ts, node, kind, detail))

    def events(self, since=None, node=None, kind=None, limit=1000):
        """Return events as dicts (id, ts, node, kind, detail), oldest first."""
        sql, args = "SELECT id, ts, node, kind, detail FROM events WHERE 1 = 1", []
        for col, op, val in (("ts", ">=", since), ("node", "=", node), ("kind", "=", kind)):
            if val is not None:
                sql += f" AND {col} {op} ?"
                args.append(val)
        sql += " ORDER BY id LIMIT ?"
        args.append(int(limit))
        return [dict(zip(("id", "ts", "node", "kind", "detail"), r, strict=True)) for r in self.db.execute(sql, args)]

    def count_reject(self, cause, now_s, n=1):
        """Count `n` rejected inputs of `cause` (e.g. 'bad_tag', 'replay', 'unknown_node')."""
        with self.transaction():
            self.db.execute(
                "INSERT INTO rejects (cause, count, last_ts) VALUES (?, ?, ?) ON CONFLICT (cause) "
                "DO UPDATE SET count = rejects.count + excluded.count, last_ts = excluded.last_ts", (cause, n, now_s))

    def rejects(self):
        """Return {cause: {'count': n, 'last_ts': t}}."""
        return {c: {"count": n, "last_ts": t} for c, n, t in self.db.execute("SELECT cause, count, last_ts FROM rejects")}

    def next_cseq(self, target, floor=0):
        """Return the next command sequence number for `target` (0 = broadcast): 1, 2, ...,
        never below `floor` (to jump past counters a node already saw)."""
        with self.transaction():
            return self.db.execute(
                f"INSERT INTO command_counters (target, cseq) VALUES (?, {self._GREATEST}(1, ?)) ON CONFLICT (target) "
                f"DO UPDATE SET cseq = {self._GREATEST}(command_counters.cseq + 1, excluded.cseq) RETURNING cseq",
                (target, floor)).fetchone()[0]

    # ---------------------------------------------------------------------------------- views
    def status_rows(self, nodes=None, gateway=None, fields=None, tuples=False, ordered=True):
        """Return one row per node joining registration and latest state: registered nodes
        (heard or not) and heard-but-unregistered ones, ordered by node id unless not `ordered`
        (a caller that sorts anyway spares the server a sort: ~0.15 s at 100k nodes on
        PostgreSQL). Each row is a read-only mapping (r['pm25'], r.keys(), dict(r)) of `fields`
        (default STATUS_FIELDS; fewer fields read faster: 100k rows x 37 columns take ~0.7 s to
        fetch), or with `tuples` a plain tuple in `fields` order (~10 % faster to fetch).
        Filters: `nodes` (ids), `gateway` (last gateway heard through)."""
        fields = STATUS_FIELDS if fields is None else tuple(fields)
        for f in fields:
            if f not in STATUS_FIELDS:
                raise ValueError(f"unknown status field {f!r}; expected some of {STATUS_FIELDS}")
        state_cols = [f for f in fields if f not in ("node", "role", "pole", "registered_fw")]
        if gateway is not None and "gateway" not in state_cols:
            state_cols.append("gateway")
        cols = "".join(f", s.{c}" for c in state_cols)
        where, args = [], []
        if nodes:
            cond, arg = self._ids_in("x.node", nodes)
            where.append(cond)
            args.append(arg)
        if gateway is not None:
            where.append("x.gateway = ?")
            args.append(int(gateway))
        cond = (" WHERE " + " AND ".join(where)) if where else ""
        sql = (
            f"SELECT {', '.join('x.' + f for f in fields)} FROM ("
            f"SELECT n.node AS node, n.role AS role, n.pole AS pole, n.fw_version AS registered_fw{cols} "
            f"FROM nodes n LEFT JOIN node_state s ON s.node = n.node "
            f"UNION ALL "
            f"SELECT s.node, 'node', NULL, NULL{cols} "
            f"FROM node_state s WHERE NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node = s.node)"
            f") x{cond}" + (" ORDER BY x.node" if ordered else "")
        )
        return list(self._iter_rows(sql, args)) if tuples else self._mappings(sql, args)

    def summary(self):
        """Return store-wide totals: nodes, heard, readings (stored), duplicates, expected
        (sum of seq ranges seen), gaps by state, rejects (total and by cause)."""
        with self.transaction(write=False):
            nodes = self.db.execute(
                "SELECT (SELECT count(*) FROM nodes) + (SELECT count(*) FROM node_state s "
                "WHERE NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node = s.node))").fetchone()[0]
            heard, readings, dups, expected = self.db.execute(
                "SELECT count(last_heard), coalesce(sum(delivered), 0), coalesce(sum(duplicates), 0), "
                "coalesce(sum(last_seq - min_seq + 1), 0) FROM node_state").fetchone()
            gaps = {s: 0 for s in GAP_STATES}
            for state, count in self.db.execute("SELECT state, count(*) FROM gaps GROUP BY state"):
                gaps[state] = count
            rejects = self.rejects()
        return {
            "nodes": nodes,
            "heard": heard,
            "readings": readings,
            "duplicates": dups,
            "expected": expected,
            "gaps": gaps,
            "rejects": sum(r["count"] for r in rejects.values()),
            "rejects_by_cause": {c: r["count"] for c, r in rejects.items()},
        }

    # ------------------------------------------------------------------------------ aggregates
    def pm25_means(self, since, until=None):
        """Return {node: (mean PM2.5 in 0.1 ug/m3 rounded, readings)} over readings with `ts` in
        [since, until) (for map and open-data means: the 1 h and 24 h averages)."""
        sql = "SELECT node, avg(pm25), count(pm25) FROM readings WHERE ts >= ? AND pm25 IS NOT NULL"
        args = [int(since)]
        if until is not None:
            sql += " AND ts < ?"
            args.append(int(until))
        return {n: (round(a), c) for n, a, c in self.db.execute(sql + " GROUP BY node", args)}

    def reading_means(self, node, since, until, every_s):
        """Return node `node`'s readings in [since, until) averaged in buckets of `every_s`
        seconds (aligned to the epoch), oldest first, as dicts: start (bucket time), n, pm1,
        pm25, pm10 (0.1 ug/m3), rh, temp (0.1 C), as floats."""
        every = int(every_s)
        cur = self.db.execute(
            "SELECT (ts / ?) * ?, count(*), avg(pm1), avg(pm25), avg(pm10), avg(rh), avg(temp) "
            "FROM readings WHERE node = ? AND ts >= ? AND ts < ? GROUP BY 1 ORDER BY 1",
            (every, every, node, int(since), int(until)))
        keys = ("start", "n", "pm1", "pm25", "pm10", "rh", "temp")
        return [{k: (v if i < 2 or v is None else round(float(v), 1)) for i, (k, v) in enumerate(zip(keys, r, strict=True))}
                for r in cur]


    # ----------------------------------------------------------------- collector, verify, admin
    def write_gaps(self, rows, now_s):
        """Persist gap rows (tuples in GAP_ROW order: id, node, first_seq, last_seq, state,
        requests, created_at) inside the caller's transaction.

        id None: insert (unless state is 'gone'); state 'gone' with an id: delete the row (a gap
        filled by late frames before any request is not a loss); otherwise update range, state
        and request count. Returns the ids in row order (None for a 'gone' row never stored)."""
        db = self.db
        now = int(now_s)
        ids = []
        with self.transaction():
            for gap_id, node, first, last, state, requests, created_s in rows:
                if gap_id is None:
                    if state == "gone":
                        ids.append(None)
                        continue
                    cur = db.execute(
                        "INSERT INTO gaps (node, first_seq, last_seq, state, created_at, updated_at, requests) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id", (node, first, last, state, int(created_s), now, requests))
                    ids.append(cur.fetchone()[0])
                elif state == "gone":
                    db.execute("DELETE FROM gaps WHERE id = ?", (gap_id,))
                    ids.append(None)
                else:
                    db.execute("UPDATE gaps SET first_seq = ?, last_seq = ?, state = ?, requests = ?, "
                               "updated_at = ? WHERE id = ?", (first, last, state, requests, now, gap_id))
                    ids.append(gap_id)
        return ids

    # ------------------------------------------------------------- collectors sharing a store
    def add_journal(self, rows):
        """Append journal rows (tuples in JOURNAL_FIELDS order, without id) inside the caller's
        transaction: what the repair leader must see of a batch another collector stored."""
        if rows:
            self.db.executemany("INSERT INTO journal (kind, node, at_s, gateway, a, b, c, detail) "
                                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def take_journal(self, limit=10000):
        """Remove and return up to `limit` committed journal rows, oldest first (tuples in
        ("id",) + JOURNAL_FIELDS order). Inside the caller's transaction: rolled back, the rows
        stay for the next taker."""
        rows = self.db.execute(
            "DELETE FROM journal WHERE id IN (SELECT id FROM journal ORDER BY id LIMIT ?) "
            "RETURNING id, kind, node, at_s, gateway, a, b, c, detail", (int(limit),)).fetchall()
        return sorted(tuple(r) for r in rows)

    def repair_nodes(self):
        """The repair leader's persisted view: {node: row dict of REPAIR_FIELDS}."""
        return {r[0]: dict(zip(REPAIR_FIELDS, r, strict=True)) for r in self.db.execute(
            f"SELECT {', '.join(REPAIR_FIELDS)} FROM repair_nodes")}

    def save_repair_nodes(self, rows):
        """Upsert the repair leader's view of nodes (tuples in REPAIR_FIELDS order), inside the
        caller's transaction."""
        if rows:
            rows = sorted(rows, key=lambda r: r[0])  # one lock order for every writer
            cols = ", ".join(REPAIR_FIELDS)
            sets = ", ".join(f"{f} = excluded.{f}" for f in REPAIR_FIELDS[1:])
            self.db.executemany(f"INSERT INTO repair_nodes ({cols}) VALUES ({', '.join('?' * len(REPAIR_FIELDS))}) "
                                f"ON CONFLICT (node) DO UPDATE SET {sets}", rows)

    def delivery_counts(self, with_seqs=False):
        """What a delivery audit (fleet.sim.verify) reads, in one snapshot: a dict with
        registered (nodes registered), per_node [(node, stored, min_seq, max_seq)],
        stored_twice ((node, seq) stored more than once: 0 unless the unique key broke),
        duplicates_received (sum over node_state), gaps {node: {state: count}}, latency rows
        [(hops, rx_ts - ts, flags)], rejects {cause: count}, and with `with_seqs` also
        seqs {node: set of stored seqs}."""
        db = self.db
        with self.transaction(write=False):
            out = {
                "registered": db.execute("SELECT count(*) FROM nodes").fetchone()[0],
                "per_node": db.execute(
                    "SELECT node, count(*), min(seq), max(seq) FROM readings GROUP BY node").fetchall(),
                "stored_twice": db.execute(
                    "SELECT count(*) FROM (SELECT node, seq FROM readings GROUP BY node, seq "
                    "HAVING count(*) > 1) AS twice").fetchone()[0],
                "duplicates_received": db.execute(
                    "SELECT coalesce(sum(duplicates), 0) FROM node_state").fetchone()[0],
                "gaps": self.gap_counts(),
                "latency": db.execute(
                    "SELECT hops, rx_ts - ts, flags FROM readings WHERE rx_ts IS NOT NULL").fetchall(),
                "rejects": {c: r["count"] for c, r in self.rejects().items()},
            }
            if with_seqs:
                seqs = {}
                for node, seq in db.execute("SELECT node, seq FROM readings"):
                    seqs.setdefault(node, set()).add(seq)
                out["seqs"] = seqs
        return out

    def query(self, sql, *args):
        """Run one read-only SQL statement of this backend's dialect (`?` parameters; PostgreSQL takes them too)
        and return its rows as tuples. For tests and diagnostics, not for the fleet's code."""
        return self.db.execute(sql, args).fetchall()



# Methods that only read (their errors say "cannot read the store").
_READS = {"means", "recent_means", "node", "nodes", "node_ids", "node_state", "readings", "iter_readings",
          "missing_seqs", "open_gaps", "gap_counts", "events", "rejects", "status_rows", "summary",
          "delivery_counts", "query", "info", "schema_version", "pm25_means", "reading_means",
          "migrations", "repair_nodes"}


def wrap_errors(cls, exc_types, make_error):
    """Make every public method of `cls` (its own and inherited) raise the store's own error
    instead of the driver's `exc_types`: `make_error(self, e, doing)` returns it (doing is
    'read' or 'write'). So no caller needs to know the backend. Generators are wrapped as
    generators (an error may come while iterating)."""
    import functools
    import inspect

    def wrap(name, fn):
        doing = "read" if name in _READS else "write"
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen(self, *a, **k):
                try:
                    yield from fn(self, *a, **k)
                except exc_types as e:
                    raise make_error(self, e, doing) from e
            return gen

        @functools.wraps(fn)
        def call(self, *a, **k):
            try:
                return fn(self, *a, **k)
            except exc_types as e:
                raise make_error(self, e, doing) from e
        return call

    for name in dir(cls):
        fn = getattr(cls, name)
        if name.startswith("_") or name in ("transaction", "close") or not inspect.isfunction(fn):
            continue
        setattr(cls, name, wrap(name, fn))
    return cls
