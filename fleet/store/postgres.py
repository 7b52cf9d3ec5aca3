"""The PostgreSQL store backend (psycopg 3): the same tables and semantics as the SQLite store,
for a store that readers on other hosts share and several collectors write.

- Exactly once per (node, seq): readings is partitioned by month of reading time (range on ts,
  `readings_pYYYYMM`; `readings_p0` before 2020 - a node without a clock yet - and `readings_p9`
  from 2100 - a clock gone wrong), and a partitioned table's unique keys must hold its partition
  key, so (node, seq) alone cannot be one. The keys are kept apart, in generations: plain tables
  `reading_keys_gN` (PRIMARY KEY (node, seq), with the reading's ts; `key_gens` lists them, one
  current, the others sealed). (ts cannot serve in the key, nor choose a key's month: a reading
  of a node without a wall clock is stamped from the gateway's receive time, so a resend of it
  can carry another ts.) A batch inserts its keys into the current generation with ON CONFLICT
  and, in the same statement, only the readings whose key went in; only those update node_state
  and the hourly sums. A row whose (node, seq) has a live key in a sealed generation is left out
  first: sealed generations take no new keys, so that lookup cannot race, and concurrent
  batches meet in the current one's primary key. It is made only for a seq not above the node's
  highest at the last seal (`sealed_seqs`): a new reading probes one small table, a resend the
  sealed generations. Partitions are made ahead (this month and the next at opening) and on
  demand, on a connection of their own under an advisory lock.
- Retention (prune(before_ts), in steps of a transaction each, resumable at every step):
  a key is live while its ts is at or above the horizon (store_meta 'pruned_before'); no reading
  below the horizon is stored (refused, counted 'beyond_retention'), nor kept. Batches hold the
  retention lock (advisory, LOCK_KEY/2) shared for their transaction; a step that changes the
  horizon or the generations takes it alone, waiting at most PRUNE_LOCK_TIMEOUT (2 s; ingest
  waits with it; else StoreBusy, and the next prune resumes), so a batch sees one horizon and one
  set of generations. The steps: (1) once a month, seal the current generation and start the
  next (sealed_seqs from node_state: the step took 0.7 s at 100,000 nodes, bench/prune_bench.py); (2) per month that ended by
  `before_ts`, oldest first: raise the horizon to its end and DROP its partition (with
  readings_p0's rows) in one transaction - no row-by-row delete, no bloat; (3) per generation
  sealed by the horizon: move its live keys (a clock ahead, readings_p9) into the current one,
  50,000 per transaction (few: a key's ts is mostly before its insertion), then DROP it whole.
  Dead keys never block: a sealed generation's are not looked up, and a new copy of a pruned
  reading (stamped later) takes over a dead key in the current one. The hourly sums stay for
  ever. One prune at a time per store (a session advisory lock; a second returns at once).
  Schema 8 made schema 7's reading_keys generation 0 by renaming it (instant at any size).
- A late status never overwrites a newer one: the node_state upsert takes a status frame's
  fields only when its status_seq is above the stored one (the same SQL as SQLite's).
- Concurrent writers: every batch writes its rows in key order (readings by (node, seq),
  node_state by node, hourly by (node, hour)), so two collectors' transactions take row locks
  in the same order and cannot deadlock; a deadlock or serialization failure the server still
  reports is StoreBusy (retry), which the collector does by keeping its batch.
- Schema versions: the table redmesh_schema holds one row per applied version (version,
  applied_at, description); the store's version is the highest. A new store gets the base
  schema (version 3) and then every migration after it, in one transaction under an advisory
  lock, so two processes opening a new store at once do not both create it. A schema holding
  tables but no redmesh_schema is refused (it is something else's).
- Tables live in the connection's current schema (search_path), so one database can hold
  several stores (`?options=-csearch_path%3Dcity2`).
- Connections: autocommit, one per store object; statements outside transaction() commit
  alone; transaction() is BEGIN ... COMMIT (a read snapshot is REPEATABLE READ READ ONLY). A
  connection lost (server restart) is reopened at the next transaction or call. Web requests
  that open a store each take a connection from a psycopg_pool pool per URL (`pooled=True`).

Every psycopg error reaches callers as StoreError / StoreBusy, with the URL's password masked.
"""
import calendar
import contextlib
import functools
import re
import threading
import time
import zlib

import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus
from psycopg.types.numeric import NumericBinaryLoader, NumericLoader

from fleet.store.base import READING_FIELDS, SCHEMA_VERSION, SqlStore, StoreBusy, StoreError, wrap_errors

BASE_VERSION = 3  # a new store gets _SCHEMA (this version), then _MIGRATIONS[4 ..]
LOCK_KEY = 0x524D5348  # 'RMSH': the advisory lock taken while creating or migrating the schema
CONNECT_TIMEOUT_S = 10
EPOCH_2020 = 1577836800  # readings stamped before it (no clock yet) go to readings_p0
EPOCH_2100 = 4102444800  # and from it on (a clock gone wrong) to readings_p9

_SCHEMA = """
CREATE TABLE redmesh_schema (
    version INTEGER PRIMARY KEY,
    applied_at BIGINT NOT NULL,
    description TEXT NOT NULL
);
CREATE TABLE nodes (
    node BIGINT PRIMARY KEY,
    mac TEXT,
    role TEXT NOT NULL DEFAULT 'node' CHECK (role IN ('node', 'gateway')),
    pole TEXT,
    lat DOUBLE PRECISION,
    lon DOUBLE PRECISION,
    fw_version TEXT,
    fw_seq BIGINT,
    registered_at BIGINT
);
CREATE TABLE readings (
    node BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    rx_ts BIGINT,
    pm1 BIGINT, pm25 BIGINT, pm10 BIGINT,
    rh BIGINT, temp BIGINT,
    n BIGINT, flags BIGINT,
    hops BIGINT, gateway BIGINT, rssi BIGINT,
    PRIMARY KEY (node, seq)
);
CREATE TABLE node_state (
    node BIGINT PRIMARY KEY,
    last_heard BIGINT,
    status_at BIGINT,
    last_seq BIGINT,
    last_ts BIGINT,
    pm1 BIGINT, pm25 BIGINT, pm10 BIGINT, rh BIGINT, temp BIGINT,
    delivered BIGINT NOT NULL DEFAULT 0,
    duplicates BIGINT NOT NULL DEFAULT 0,
    min_seq BIGINT,
    parent BIGINT, link_etx BIGINT, path_cost BIGINT, uptime_s BIGINT,
    heap_free BIGINT, heap_min BIGINT, backlog BIGINT,
    gateway BIGINT, rssi BIGINT, hops BIGINT,
    fw_version TEXT, fw_seq BIGINT, boot_count BIGINT,
    ota_state BIGINT, ota_progress BIGINT, errors BIGINT,
    radio_drops BIGINT, readings_lost BIGINT,
    status_seq BIGINT
);
CREATE TABLE gaps (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    node BIGINT NOT NULL,
    first_seq BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    state TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'requested', 'recovered', 'lost')),
    created_at BIGINT,
    updated_at BIGINT,
    requests BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX gaps_node ON gaps (node, first_seq);
CREATE INDEX gaps_pending ON gaps (state) WHERE state IN ('open', 'requested');
CREATE TABLE events (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    ts BIGINT NOT NULL,
    node BIGINT,
    kind TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX events_ts ON events (ts);
CREATE TABLE rejects (
    cause TEXT PRIMARY KEY,
    count BIGINT NOT NULL DEFAULT 0,
    last_ts BIGINT
);
CREATE TABLE command_counters (
    target BIGINT PRIMARY KEY,
    cseq BIGINT NOT NULL
)
"""

# What turns a store of version N - 1 into version N: (description, statements).
_MIGRATIONS = {
    4: ("hourly PM sums per node, kept as readings arrive", (
        "CREATE TABLE hourly (node BIGINT NOT NULL, hour BIGINT NOT NULL, n BIGINT NOT NULL, "
        "pm1_sum BIGINT, pm25_sum BIGINT, pm10_sum BIGINT, PRIMARY KEY (node, hour))",
        "INSERT INTO hourly SELECT node, ts / 3600, count(*), sum(pm1), sum(pm25), sum(pm10) FROM readings "
        "WHERE pm25 IS NOT NULL GROUP BY node, ts / 3600",
        "CREATE INDEX hourly_hour ON hourly (hour, node, n, pm25_sum)",
    )),
    5: ("the mesh key epoch each node reports", ("ALTER TABLE node_state ADD COLUMN epoch BIGINT",)),
    6: ("the collectors' journal and the repair leader's view of each node", (
        "CREATE TABLE journal (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, kind TEXT NOT NULL, "
        "node BIGINT NOT NULL, at_s DOUBLE PRECISION, gateway BIGINT, a BIGINT, b BIGINT, c BIGINT, detail TEXT)",
        "CREATE TABLE repair_nodes (node BIGINT PRIMARY KEY, max_seq BIGINT, min_seq BIGINT, status_seq BIGINT, "
        "boot_count BIGINT, parent BIGINT, fw_version TEXT)",
    )),
    7: ("readings partitioned by month of reading time; (node, seq) kept once by reading_keys; store_meta", (
        "ALTER TABLE readings RENAME TO readings_unpartitioned",
        "CREATE TABLE reading_keys (node BIGINT NOT NULL, seq BIGINT NOT NULL, ts BIGINT NOT NULL, "
        "PRIMARY KEY (node, seq))",
        "INSERT INTO reading_keys SELECT node, seq, ts FROM readings_unpartitioned",
        "CREATE INDEX reading_keys_ts ON reading_keys (ts)",
        "CREATE TABLE readings (node BIGINT NOT NULL, seq BIGINT NOT NULL, ts BIGINT NOT NULL, rx_ts BIGINT, "
        "pm1 BIGINT, pm25 BIGINT, pm10 BIGINT, rh BIGINT, temp BIGINT, n BIGINT, flags BIGINT, hops BIGINT, "
        "gateway BIGINT, rssi BIGINT, PRIMARY KEY (node, seq, ts)) PARTITION BY RANGE (ts)",
        f"CREATE TABLE readings_p0 PARTITION OF readings FOR VALUES FROM (MINVALUE) TO ({EPOCH_2020})",
        f"CREATE TABLE readings_p9 PARTITION OF readings FOR VALUES FROM ({EPOCH_2100}) TO (MAXVALUE)",
        "CREATE TABLE store_meta (key TEXT PRIMARY KEY, value BIGINT)",
        lambda store: store._partitions_for(
            [m for (m,) in store.db.execute("SELECT DISTINCT ts FROM readings_unpartitioned").fetchall()]),
        "INSERT INTO readings SELECT * FROM readings_unpartitioned",
        "DROP TABLE readings_unpartitioned",
    )),
    8: ("(node, seq) keys in generations (reading_keys_gN) dropped whole by retention; key_gens, sealed_seqs", (
        # instant at any size: the keys stay where they are, as generation 0 (the current one)
        "ALTER TABLE reading_keys RENAME TO reading_keys_g0",
        "CREATE TABLE key_gens (gen INTEGER PRIMARY KEY, started_at BIGINT NOT NULL, sealed_at BIGINT)",
        "CREATE UNIQUE INDEX key_gens_current ON key_gens ((sealed_at IS NULL)) WHERE sealed_at IS NULL",
        "INSERT INTO key_gens VALUES (0, extract(epoch FROM now())::bigint, NULL)",
        "CREATE TABLE sealed_seqs (node BIGINT PRIMARY KEY, max_seq BIGINT NOT NULL)",
    )),
    9: ("the repair leader's reply replay windows in repair_nodes", (
        "ALTER TABLE repair_nodes ADD COLUMN reply_top BIGINT",
        "ALTER TABLE repair_nodes ADD COLUMN reply_bits BIGINT",
    )),
}

TABLES = ("nodes", "readings", "hourly", "node_state", "gaps", "events", "rejects",
          "command_counters", "journal", "repair_nodes", "store_meta", "key_gens", "sealed_seqs")
PRUNE_LOCK = 3  # pg_try_advisory_lock(LOCK_KEY, 3): one prune at a time (a session lock, freed if it dies)
RETENTION_LOCK = 2  # pg_advisory_xact_lock(LOCK_KEY, 2): batches share it, a retention step takes it alone
PRUNE_ROWS = 50000  # keys moved per transaction by prune()
PRUNE_LOCK_TIMEOUT = "2s"  # what a prune step waits for a lock (ingest waits with it) before giving up


# A batch in one statement: one bigint array per column (sent in binary), unnested into rows (a
# fixed, small statement per set of key generations: psycopg parses and the server plans it once,
# whatever the batch size). The keys go into the current generation; a row whose (node, seq) has
# a live key (ts at or above the horizon) in a sealed generation is left out first - looked up
# only when its seq is not above the node's highest at the last seal (sealed_seqs), so a new
# reading costs one probe of a small table, not one per sealed generation. Then only the
# readings whose key went in are inserted, in the same statement.
_READINGS_CTE = (
    "WITH r AS (SELECT DISTINCT ON (node, seq) * FROM unnest("
    + ", ".join(["%b::bigint[]"] * len(READING_FIELDS))
    + f") AS r ({', '.join(READING_FIELDS)})), "
)
_READINGS_INSERT = (
    f"INSERT INTO readings ({', '.join(READING_FIELDS)}) SELECT r.* FROM r JOIN k USING (node, seq) "
    "RETURNING node, seq, ts, pm1, pm25, pm10, rh, temp"
)


def _key_table(gen):
    return f"reading_keys_g{int(gen)}"


@functools.lru_cache(maxsize=32)
def _insert_readings_sql(current, sealed, takeover):
    """The batch insert (arguments: the READING_FIELDS arrays, then the horizon once per sealed
    generation, then once more when `takeover`) with keys in generation `current`, sealed
    generations `sealed` probed. `takeover`: the current generation holds dead keys (ts below the
    horizon: their readings are pruned), which a new copy of the reading replaces."""
    where = ""
    if sealed:
        probes = " OR ".join(f"EXISTS (SELECT 1 FROM {_key_table(g)} o WHERE o.node = r.node AND o.seq = r.seq "
                             f"AND o.ts >= %s)" for g in sealed)
        where = (" WHERE r.seq > coalesce((SELECT s.max_seq FROM sealed_seqs s WHERE s.node = r.node), -1) "
                 f"OR NOT ({probes})")
    conflict = "DO UPDATE SET ts = excluded.ts WHERE k.ts < %s" if takeover else "DO NOTHING"
    return (_READINGS_CTE
            + f"k AS (INSERT INTO {_key_table(current)} AS k (node, seq, ts) SELECT node, seq, ts FROM r{where} "
            f"ORDER BY node, seq ON CONFLICT (node, seq) {conflict} RETURNING node, seq) "
            + _READINGS_INSERT)


def month_start(ts):
    """The first second (UTC) of the month holding unix time `ts` (>= 2020)."""
    t = time.gmtime(ts)
    return calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))


def next_month(start):
    t = time.gmtime(start)
    y, m = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return calendar.timegm((y, m, 1, 0, 0, 0))
_VALUES = re.compile(r"VALUES \((\?(?:,\s*\?)*)\)")


@functools.lru_cache(maxsize=64)
def _unnest(sql):
    """The one-row upsert `sql` (INSERT ... VALUES (?,...) ...) taking one bigint array per column."""
    m = _VALUES.search(sql)
    n = m.group(1).count("?")
    return _pg(sql[:m.start()]) + "SELECT * FROM unnest(" + ", ".join(["%b::bigint[]"] * n) + ")" + _pg(sql[m.end():])


def _ints(col):
    """A column as a list of int or None (a float or bool stored in a bigint column as SQLite would take it)."""
    return [v if v is None or type(v) is int else int(v) for v in col]


@functools.lru_cache(maxsize=512)
def _pg(sql):
    """The store's `?` parameters in psycopg's spelling (a literal % doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _IntOrFloat(NumericLoader):
    """numeric (sum() of bigint, avg()) as int when whole, else float: never a Decimal, so the
    store returns the same plain numbers as SQLite's."""

    def load(self, data):
        d = super().load(data)
        return int(d) if d.is_finite() and d == d.to_integral_value() else float(d)


class _IntOrFloatBinary(NumericBinaryLoader):
    def load(self, data):
        d = super().load(data)
        return int(d) if d.is_finite() and d == d.to_integral_value() else float(d)


class _Row(tuple):
    """A row as the SQLite backend gives it: unpacks by position, and r['col'], r.keys(), dict(r)."""

    __slots__ = ()
    _names = ()
    _index = {}

    def __getitem__(self, key):
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self):
        return list(self._names)


class _Db:
    """The connection as SqlStore uses it: execute / executemany with `?` parameters."""

    def __init__(self, store):
        self._store = store

    def execute(self, sql, args=()):
        conn = self._store._conn_for_call()
        cur = conn.cursor()
        if args:
            cur.execute(_pg(sql), tuple(args))
        else:
            cur.execute(sql)
        return cur

    def executemany(self, sql, rows):
        rows = list(rows)
        conn = self._store._conn_for_call()
        cur = conn.cursor()
        if rows:
            cur.executemany(_pg(sql), rows)
        return cur


class Lease:
    """The repair leadership of one group: an advisory lock held by a connection of its own."""

    def __init__(self, conn, group):
        self._conn = conn
        self.group = group

    def check(self):
        """True while the lock's connection is alive (a round trip to the server; False, and
        the connection closed, once it is not: the server has freed the lock)."""
        conn = self._conn
        if conn is None:
            return False
        try:
            conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            self.release()
            return False

    def release(self):
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()  # the session ends: the server frees the lock
            self._conn = None


_pools = {}
_pools_lock = threading.Lock()
_ready = set()  # URLs whose schema this process found current (pooled stores skip the check)


def _pool(url):
    """The connection pool (psycopg_pool) of this process for `url`, made at first use."""
    from psycopg_pool import ConnectionPool

    with _pools_lock:
        pool = _pools.get(url)
        if pool is None:
            pool = ConnectionPool(url, min_size=1, max_size=8, open=False, timeout=CONNECT_TIMEOUT_S,
                                  kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S,
                                          "application_name": "redmesh-fleet"},
                                  configure=_configure, check=ConnectionPool.check_connection,
                                  name="redmesh-store")
            pool.open(wait=False)
            _pools[url] = pool
        return pool


def _configure(conn):
    conn.adapters.register_loader("numeric", _IntOrFloat)
    conn.adapters.register_loader("numeric", _IntOrFloatBinary)


class PostgresStore(SqlStore):
    """The store in a PostgreSQL database. Opening creates or migrates the schema. Raises
    StoreError when the server cannot be reached, the schema is not a Red Mesh store's, or it
    is newer than this code."""

    _INSERT_OR_SKIP = ("INSERT INTO readings", " ON CONFLICT (node, seq) DO NOTHING")
    _GREATEST = "greatest"
    _ORDERED_WRITES = True

    def __init__(self, url, pooled=False):
        from fleet.store import mask_url, url_password

        self._url = url
        self._masked = mask_url(url)
        self._secret = url_password(url)
        self._pooled = pooled
        self._conn = None
        self._depth = 0
        self._insert_sql = {}
        self._state_sql = {}
        self._months = None
        self.db = _Db(self)
        try:
            self._connect()
            if pooled and url in _ready:  # this process checked the schema already
                self._opened_at_version = SCHEMA_VERSION
            else:
                self._opened_at_version = self._setup()
                if pooled:
                    _ready.add(url)
            if not pooled:  # a writer: this month's partition and the next are there before they are needed
                self._months = self._known_months()
                now = month_start(max(time.time(), EPOCH_2020))
                want = {now, next_month(now)} - self._months
                if want:
                    self._ensure_partitions(want)
        except psycopg.Error as e:
            self.close()
            raise self._error(e, "open") from None
        except StoreError:
            self.close()
            raise

    # ------------------------------------------------------------------------- connection
    def _connect(self):
        if self._pooled:
            self._conn = _pool(self._url).getconn()
        else:
            self._conn = psycopg.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                         application_name="redmesh-fleet")
            _configure(self._conn)

    def _conn_for_call(self):
        """The connection, reopened when the server dropped it (outside a transaction only:
        a transaction cut off must fail so its caller retries it whole)."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if self._depth:
                raise psycopg.OperationalError("the connection to the server was lost mid-transaction")
            self._drop()
            self._connect()
            conn = self._conn
        return conn

    def _drop(self):
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._pooled:
            with contextlib.suppress(Exception):
                _pool(self._url).putconn(conn)
        else:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self):
        """Close the connection (or give it back to the pool)."""
        self._drop()

    def _error(self, e, doing="read"):
        """The StoreError for psycopg error `e`: busy for lock waits, deadlocks and serialization
        failures (healthy, retry); otherwise what failed, with the URL's password masked."""
        text = " ".join(str(e).split()) or type(e).__name__
        if self._secret:
            text = text.replace(self._secret, "***")
        if isinstance(e, (pg_errors.LockNotAvailable, pg_errors.DeadlockDetected,
                          pg_errors.SerializationFailure, pg_errors.QueryCanceled)):
            return StoreBusy(f"the store {self._masked} is busy ({text}); retry")
        if doing == "open" or isinstance(e, psycopg.OperationalError):
            return StoreError(f"cannot {doing} the store {self._masked}: {text}; is the server up and the "
                              f"URL right (user, host, port, database)?")
        return StoreError(f"cannot {doing} the store {self._masked}: {text}")

    # ----------------------------------------------------------------------------- schema
    def _fetch1(self, sql, args=()):
        row = self.db.execute(sql, args).fetchone()
        return row[0] if row else None

    def _version(self):
        """The store's schema version: 0 when the current schema has no redmesh_schema table."""
        if self._fetch1("SELECT to_regclass('redmesh_schema')") is None:
            return 0
        return self._fetch1("SELECT coalesce(max(version), 0) FROM redmesh_schema") or 0

    def _setup(self):
        """Create or migrate the schema when needed; return the version found at opening."""
        schema = self._fetch1("SELECT current_schema()")
        if schema is None:
            raise StoreError(f"the store {self._masked} has no schema to use: the search_path names "
                             f"none that exists; create it (CREATE SCHEMA ...) or fix the URL's options")
        found = self._version()
        if found == SCHEMA_VERSION:
            return found
        if found > SCHEMA_VERSION:
            raise StoreError(f"the store {self._masked} has schema version {found}, newer than this fleet "
                             f"tool's ({SCHEMA_VERSION}); upgrade redmesh")
        with self.transaction():
            self.db.execute("SELECT pg_advisory_xact_lock(?)", (LOCK_KEY,))
            found = self._version()  # another process may have done it while we waited
            if found == 0:
                others = self._fetch1(
                    "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()")
                if others:
                    raise StoreError(
                        f"the store {self._masked} is not a Red Mesh store: schema {schema!r} holds "
                        f"{others} tables of something else; use an empty database or schema")
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        self.db.execute(stmt)
                self.db.execute("INSERT INTO redmesh_schema VALUES (?, ?, ?)",
                                (BASE_VERSION, int(time.time()), "base schema"))
                start = BASE_VERSION
            else:
                start = found
            for v in range(start + 1, SCHEMA_VERSION + 1):
                description, statements = _MIGRATIONS[v]
                for stmt in statements:
                    if callable(stmt):
                        stmt(self)
                    else:
                        self.db.execute(stmt)
                self.db.execute("INSERT INTO redmesh_schema VALUES (?, ?, ?)", (v, int(time.time()), description))
        return found

    # ------------------------------------------------------------------------ transaction
    @contextlib.contextmanager
    def transaction(self, write=True):
        """Group calls into one transaction; nests (only the outermost commits). `write=False`
        takes a read-only snapshot (REPEATABLE READ)."""
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        try:
            conn = self._conn_for_call()
            conn.execute("BEGIN" if write else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        except psycopg.Error as e:
            raise self._error(e, "write" if write else "read") from None
        self._depth = 1
        try:
            yield self
        except BaseException:
            self._depth = 0
            with contextlib.suppress(psycopg.Error):
                if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                    conn.execute("ROLLBACK")
            raise
        self._depth = 0
        try:
            conn.execute("COMMIT")
        except psycopg.Error as e:
            with contextlib.suppress(psycopg.Error):
                if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                    conn.execute("ROLLBACK")
            raise self._error(e, "write") from None

    # ------------------------------------------------------------------------------ hooks
    def _insert_readings(self, rows):
        # The shared side of the retention lock, held to the end of this transaction: the horizon
        # and the key generations read here cannot change before it commits (fleet/store/postgres.py
        # docstring, "Retention").
        self.db.execute("SELECT pg_advisory_xact_lock_shared(?, ?)", (LOCK_KEY, RETENTION_LOCK))
        horizon, current, sealed = self._retention_state()
        if horizon:
            keep = [r for r in rows if r[2] >= horizon]
            if len(keep) < len(rows):
                self.count_reject("beyond_retention", int(time.time()), len(rows) - len(keep))
            rows = keep
            if not rows:
                return []
        starts = {month_start(ts) for ts in {r[2] for r in rows} if EPOCH_2020 <= ts < EPOCH_2100}
        if self._months is None:
            self._months = self._known_months()
        if starts - self._months:
            self._ensure_partitions(starts)
        # dead keys in the current generation (late readings whose month was pruned since): rare
        takeover = bool(horizon) and self._fetch1(
            f"SELECT 1 FROM {_key_table(current)} WHERE ts < ? LIMIT 1", (horizon,)) is not None
        cols = [_ints(c) for c in zip(*rows, strict=True)]
        args = cols + [horizon] * (len(sealed) + (1 if takeover else 0))
        return self._run(_insert_readings_sql(current, sealed, takeover), args).fetchall()

    # ------------------------------------------------------------------ partitions, retention
    def _horizon(self):
        return self._fetch1("SELECT value FROM store_meta WHERE key = 'pruned_before'") or 0

    def _retention_state(self):
        """(horizon, current key generation, sealed generations as a sorted tuple)."""
        horizon, current, sealed = self.db.execute(
            "SELECT (SELECT value FROM store_meta WHERE key = 'pruned_before'), "
            "(SELECT gen FROM key_gens WHERE sealed_at IS NULL), "
            "(SELECT array_agg(gen ORDER BY gen) FROM key_gens WHERE sealed_at IS NOT NULL)").fetchone()
        return horizon or 0, current, tuple(sealed or ())

    def _known_months(self):
        """Month starts of the readings partitions that exist (read from the catalog)."""
        names = self.db.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'readings'::regclass").fetchall()
        out = set()
        for (name,) in names:
            m = re.fullmatch(r"readings_p(\d{4})(\d{2})", name)
            if m:
                out.add(calendar.timegm((int(m.group(1)), int(m.group(2)), 1, 0, 0, 0)))
        return out

    def _partitions_for(self, times):
        """Create (inside the caller's transaction) the month partitions holding `times`."""
        for start in sorted({month_start(t) for t in times if EPOCH_2020 <= t < EPOCH_2100} - self._known_months()):
            self._create_partition(self.db, start)

    @staticmethod
    def _create_partition(db, start):
        t = time.gmtime(start)
        db.execute(f"CREATE TABLE IF NOT EXISTS readings_p{t.tm_year:04d}{t.tm_mon:02d} PARTITION OF readings "
                   f"FOR VALUES FROM ({int(start)}) TO ({next_month(start)})")

    def _ensure_partitions(self, starts):
        """Make the month partitions `starts` that do not exist, on a connection of their own
        (creating one locks the parent table; never while this connection's transaction holds
        locks on it), one creator at a time (advisory lock)."""
        with psycopg.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                             application_name="redmesh-partitions") as conn:
            conn.execute("SET lock_timeout = '20s'")
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s, 1)", (LOCK_KEY,))
                for start in sorted(starts):
                    self._create_partition(conn, start)
        self._months |= set(starts)

    def prune(self, before_ts, now_s=None, stop=None, on_step=None):
        """Drop raw readings older than `before_ts`, a whole month at a time (the months that end
        by then), and the key generations whose keys are all dead; hourly sums stay. Every step
        is a transaction of its own, bounded (a partition dropped, at most PRUNE_ROWS keys moved),
        and leaves the store consistent: an interrupted prune is resumed by the next. `stop()`
        true: return after the step in hand; `on_step(what)` is called after each committed step.
        `now_s` (default: the clock) seals the current key generation when it began in an earlier
        UTC month. Returns (horizon, readings dropped): readings older than the horizon are not
        stored any more. Raises StoreBusy when a step waited PRUNE_LOCK_TIMEOUT for a lock."""
        if not self._fetch1("SELECT pg_try_advisory_lock(?, ?)", (LOCK_KEY, PRUNE_LOCK)):
            return self._horizon(), 0  # another process is pruning this store
        try:
            return self._prune(before_ts, int(time.time() if now_s is None else now_s), stop or (lambda: False),
                               on_step or (lambda what: None))
        finally:
            with contextlib.suppress(psycopg.Error):
                self._fetch1("SELECT pg_advisory_unlock(?, ?)", (LOCK_KEY, PRUNE_LOCK))

    def _prune(self, before_ts, now, stop, step):
        self._seal_key_gen(now, step)
        dropped = 0
        while not stop():
            months = sorted(m for m in self._known_months() if next_month(m) <= before_ts)
            if not months:
                break
            dropped += self._drop_month(months[0])
            step("readings")
        horizon = self._horizon()
        for gen, sealed_at in self.db.execute(
                "SELECT gen, sealed_at FROM key_gens WHERE sealed_at IS NOT NULL ORDER BY gen").fetchall():
            if stop() or sealed_at > horizon:
                break
            while not stop() and self._move_live_keys(gen) == PRUNE_ROWS:
                step("keys")
            if stop() or not self._drop_key_gen(gen):
                break
            step("keys")
        self._months = self._known_months()
        return self._horizon(), dropped

    @contextlib.contextmanager
    def _retention_step(self, exclusive=True):
        """A retention step's transaction: the retention lock taken alone (no batch in flight)
        or shared (batches run alongside), a lock waited for at most PRUNE_LOCK_TIMEOUT."""
        with self.transaction():
            self.db.execute(f"SET LOCAL lock_timeout = '{PRUNE_LOCK_TIMEOUT}'")
            fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
            self.db.execute(f"SELECT {fn}(?, ?)", (LOCK_KEY, RETENTION_LOCK))
            yield

    def _seal_key_gen(self, now, step):
        """Seal the current key generation when it began before this UTC month: new keys go to a
        new one from then on; sealed_seqs gets each node's highest seq (every seq a sealed
        generation holds is at most that)."""
        current, started = self.db.execute(
            "SELECT gen, started_at FROM key_gens WHERE sealed_at IS NULL").fetchone()
        if month_start(max(started, EPOCH_2020)) >= month_start(max(now, EPOCH_2020)):
            return
        table = _key_table(current + 1)
        with self.transaction():  # made first (or found, left by an interrupted prune): not yet in use
            self.db.execute(f"CREATE TABLE IF NOT EXISTS {table} (node BIGINT NOT NULL, seq BIGINT NOT NULL, "
                            f"ts BIGINT NOT NULL, PRIMARY KEY (node, seq))")
            self.db.execute(f"CREATE INDEX IF NOT EXISTS {table}_ts ON {table} (ts)")
        with self._retention_step():
            if self._fetch1("SELECT gen FROM key_gens WHERE sealed_at IS NULL") != current:
                return  # another prune sealed it
            self.db.execute("INSERT INTO sealed_seqs SELECT node, last_seq FROM node_state WHERE last_seq IS NOT NULL "
                            "ORDER BY node ON CONFLICT (node) DO UPDATE "
                            "SET max_seq = greatest(sealed_seqs.max_seq, excluded.max_seq)")
            self.db.execute("UPDATE key_gens SET sealed_at = ? WHERE gen = ?", (now, current))
            self.db.execute("INSERT INTO key_gens VALUES (?, ?, NULL)", (current + 1, now))
        step("seal")

    def _drop_month(self, start):
        """Drop the month partition `start` and raise the horizon to its end, in one transaction
        (with readings_p0's rows: older than any horizon). Returns the readings dropped: counted
        exactly up to a million, the planner's estimate above (a count reads the whole month)."""
        t = time.gmtime(start)
        name = f"readings_p{t.tm_year:04d}{t.tm_mon:02d}"
        dropped = self._rows_in(name)
        with self._retention_step():
            if self._fetch1("SELECT to_regclass(?)", (name,)) is None:
                return 0  # dropped by another prune
            self.db.execute("INSERT INTO store_meta VALUES ('pruned_before', ?) ON CONFLICT (key) DO UPDATE "
                            "SET value = greatest(store_meta.value, excluded.value)", (next_month(start),))
            p0 = self._fetch1("SELECT count(*) FROM readings_p0")
            if p0:  # readings without a clock, older than any month kept
                dropped += p0
                self.db.execute("TRUNCATE readings_p0")
            self.db.execute(f"DROP TABLE {name}")
        self._months = None
        return dropped

    def _rows_in(self, table):
        estimate = self._fetch1("SELECT reltuples::bigint FROM pg_class WHERE oid = ?::regclass", (table,))
        if estimate is not None and estimate >= 1_000_000:
            return estimate
        return self._fetch1(f"SELECT count(*) FROM {table}")  # noqa: S608 - a name we made

    def _move_live_keys(self, gen):
        """Move up to PRUNE_ROWS live keys (ts at or above the horizon: a reading still stored)
        of sealed generation `gen` into the current one (batches run alongside). Returns how many."""
        with self._retention_step(exclusive=False):
            horizon, current, _ = self._retention_state()
            table = _key_table(gen)
            return self._fetch1(
                f"WITH m AS (DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE ts >= ? "
                f"LIMIT {PRUNE_ROWS})) RETURNING node, seq, ts), "
                f"i AS (INSERT INTO {_key_table(current)} AS k SELECT node, seq, ts FROM m ORDER BY node, seq "
                f"ON CONFLICT (node, seq) DO UPDATE SET ts = excluded.ts WHERE k.ts < ?) "
                f"SELECT count(*) FROM m", (horizon, horizon))

    def _drop_key_gen(self, gen):
        """Drop sealed generation `gen` when it holds no live key (its keys are all of pruned
        readings): one DROP TABLE, whatever its size. Returns True when it is gone."""
        with self._retention_step():
            horizon = self._horizon()
            table = _key_table(gen)
            if self._fetch1(f"SELECT 1 FROM {table} WHERE ts >= ? LIMIT 1", (horizon,)) is not None:  # noqa: S608
                return False  # a key moved in meanwhile? not by design; left for the next prune
            self.db.execute("DELETE FROM key_gens WHERE gen = ?", (gen,))
            self.db.execute(f"DROP TABLE {table}")
        return True

    def _upsert_many(self, sql, rows):
        """Every row in one statement (the columns of these upserts are all bigint)."""
        if rows:
            self._run(_unnest(sql), [_ints(c) for c in zip(*rows, strict=True)])

    def _run(self, pg_sql, args):
        """Execute SQL already in psycopg's spelling (%s, %b: binary parameters)."""
        cur = self._conn_for_call().cursor()
        cur.execute(pg_sql, args)
        return cur

    def _ids_in(self, col, ids):
        return f"{col} = ANY(?)", [int(n) for n in ids]

    def _mappings(self, sql, args):
        cur = self.db.execute(sql, args)
        names = tuple(c.name for c in cur.description)
        row = type("Row", (_Row,), {"__slots__": (), "_names": names,
                                    "_index": {n: i for i, n in enumerate(names)}})
        return [row(t) for t in cur.fetchall()]

    # ------------------------------------------------------------------------------ admin
    @property
    def url(self):
        """The store's URL, its password masked."""
        return self._masked

    def schema_version(self):
        """Return the schema version stored in the store."""
        return self._version()

    def info(self):
        """Return {backend, url (password masked), schema_version, code_schema_version,
        rows {table: n}, size_bytes (tables with their indexes and TOAST)}."""
        rows = {}
        with self.transaction(write=False):
            for t in TABLES:
                rows[t] = self._fetch1(f"SELECT count(*) FROM {t}")  # noqa: S608 - fixed names
            rows["reading_keys"] = sum(self._fetch1(f"SELECT count(*) FROM {_key_table(g)}")  # noqa: S608
                                       for (g,) in self.db.execute("SELECT gen FROM key_gens").fetchall())
            version = self._version()
            size = self._fetch1(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')")
        return {"backend": "postgresql", "url": self._masked, "schema_version": version,
                "code_schema_version": SCHEMA_VERSION, "rows": rows, "size_bytes": int(size or 0)}

    def migrations(self):
        """Return the applied versions as [(version, applied_at, description)], oldest first."""
        return [tuple(r) for r in self.db.execute(
            "SELECT version, applied_at, description FROM redmesh_schema ORDER BY version").fetchall()]

    def reopen(self):
        """A new PostgresStore on the same URL, on a connection of its own."""
        return PostgresStore(self._url)

    def lead(self, group):
        """Try to become the repair leader of `group` on this store: return a Lease, or None
        when another session holds it. The lease is a session advisory lock on a connection of
        its own: the server frees it when that connection ends (the process died, the server
        restarted), and Lease.check() then says so."""
        key = zlib.crc32(f"{self._fetch1('SELECT current_schema()')}/{group}".encode())
        key = key - (1 << 32) if key >= 1 << 31 else key  # int4
        conn = psycopg.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                               application_name="redmesh-leader")
        try:
            got = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_KEY, key)).fetchone()[0]
        except BaseException:
            conn.close()
            raise
        if not got:
            conn.close()
            return None
        return Lease(conn, group)

    def migrate(self):
        """Bring the schema up to this code's version; return (version before, version after).
        Opening a store already migrates it (one transaction: all or nothing); this says what
        was done, for `fleet store migrate`."""
        return self._opened_at_version, self.schema_version()


wrap_errors(PostgresStore, psycopg.Error, lambda self, e, doing: self._error(e, doing))
