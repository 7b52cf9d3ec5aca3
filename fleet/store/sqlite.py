"""The SQLite store backend: the whole store in one file (WAL, synchronous=NORMAL), nothing to
install. The file is marked by PRAGMA application_id and carries its schema version in PRAGMA
user_version; opening an older store migrates it in one transaction. Nothing outside this
module touches sqlite3; every sqlite3 error reaches callers as StoreError (StoreBusy for a
lock another process holds)."""
import contextlib
import os
import sqlite3
import time

from fleet.store.base import (
    _CHUNK_ROWS,
    READING_FIELDS,
    SCHEMA_VERSION,
    SqlStore,
    StoreBusy,
    StoreError,
    wrap_errors,
)

APPLICATION_ID = 0x524D5348  # 'RMSH': marks a file as a Red Mesh store
PRUNE_ROWS = 50000  # readings deleted per transaction by prune()
TABLES = ("nodes", "readings", "hourly", "node_state", "gaps", "events", "rejects", "command_counters",
          "journal", "repair_nodes", "store_meta")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node INTEGER PRIMARY KEY,
    mac TEXT,
    role TEXT NOT NULL DEFAULT 'node' CHECK (role IN ('node', 'gateway')),
    pole TEXT,
    lat REAL,
    lon REAL,
    fw_version TEXT,
    fw_seq INTEGER,
    registered_at INTEGER
);
CREATE TABLE IF NOT EXISTS readings (
    node INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    rx_ts INTEGER,
    pm1 INTEGER, pm25 INTEGER, pm10 INTEGER,
    rh INTEGER, temp INTEGER,
    n INTEGER, flags INTEGER,
    hops INTEGER, gateway INTEGER, rssi INTEGER,
    UNIQUE (node, seq)
);
CREATE TABLE IF NOT EXISTS node_state (
    node INTEGER PRIMARY KEY,
    last_heard INTEGER,
    status_at INTEGER,
    last_seq INTEGER,
    last_ts INTEGER,
    pm1 INTEGER, pm25 INTEGER, pm10 INTEGER, rh INTEGER, temp INTEGER,
    delivered INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0,
    min_seq INTEGER,
    parent INTEGER, link_etx INTEGER, path_cost INTEGER, uptime_s INTEGER,
    heap_free INTEGER, heap_min INTEGER, backlog INTEGER,
    gateway INTEGER, rssi INTEGER, hops INTEGER,
    fw_version TEXT, fw_seq INTEGER, boot_count INTEGER,
    ota_state INTEGER, ota_progress INTEGER, errors INTEGER,
    radio_drops INTEGER, readings_lost INTEGER,
    status_seq INTEGER,
    epoch INTEGER
);
CREATE TABLE IF NOT EXISTS hourly (
    node INTEGER NOT NULL,
    hour INTEGER NOT NULL,
    n INTEGER NOT NULL,
    pm1_sum INTEGER, pm25_sum INTEGER, pm10_sum INTEGER,
    PRIMARY KEY (node, hour)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS hourly_hour ON hourly (hour, node, n, pm25_sum);
CREATE TABLE IF NOT EXISTS gaps (
    id INTEGER PRIMARY KEY,
    node INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'requested', 'recovered', 'lost')),
    created_at INTEGER,
    updated_at INTEGER,
    requests INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS gaps_node ON gaps (node, first_seq);
CREATE INDEX IF NOT EXISTS gaps_pending ON gaps (state) WHERE state IN ('open', 'requested');
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    node INTEGER,
    kind TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE TABLE IF NOT EXISTS rejects (
    cause TEXT PRIMARY KEY,
    count INTEGER NOT NULL DEFAULT 0,
    last_ts INTEGER
);
CREATE TABLE IF NOT EXISTS command_counters (
    target INTEGER PRIMARY KEY,
    cseq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    node INTEGER NOT NULL,
    at_s REAL,
    gateway INTEGER,
    a INTEGER, b INTEGER, c INTEGER,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS store_meta (
    key TEXT PRIMARY KEY,
    value INTEGER
);
CREATE TABLE IF NOT EXISTS repair_nodes (
    node INTEGER PRIMARY KEY,
    max_seq INTEGER, min_seq INTEGER,
    status_seq INTEGER, boot_count INTEGER, parent INTEGER, fw_version TEXT,
    reply_top INTEGER, reply_bits INTEGER
);
"""

# What turns a store of schema version N - 1 into version N (a fresh store gets _SCHEMA whole).
_MIGRATIONS = {
    2: ("ALTER TABLE node_state ADD COLUMN radio_drops INTEGER",  # status frames since firmware 1.0
        "ALTER TABLE node_state ADD COLUMN readings_lost INTEGER"),
    3: ("ALTER TABLE node_state ADD COLUMN status_seq INTEGER",),  # a late status never overwrites a newer one
    4: ("CREATE TABLE hourly (node INTEGER NOT NULL, hour INTEGER NOT NULL, n INTEGER NOT NULL, "
        "pm1_sum INTEGER, pm25_sum INTEGER, pm10_sum INTEGER, PRIMARY KEY (node, hour)) WITHOUT ROWID",
        "INSERT INTO hourly SELECT node, ts / 3600, count(*), sum(pm1), sum(pm25), sum(pm10) FROM readings "
        "WHERE pm25 IS NOT NULL GROUP BY node, ts / 3600",
        "CREATE INDEX hourly_hour ON hourly (hour, node, n, pm25_sum)"),
    5: ("ALTER TABLE node_state ADD COLUMN epoch INTEGER",),  # the mesh key epoch a node reports (issue 14)
    6: ("CREATE TABLE IF NOT EXISTS repair_nodes (node INTEGER PRIMARY KEY, max_seq INTEGER, min_seq INTEGER, "
        "status_seq INTEGER, boot_count INTEGER, parent INTEGER, fw_version TEXT)",),  # journal: made by _SCHEMA
    7: (),  # store_meta (the retention horizon): made by _SCHEMA
    8: (),  # PostgreSQL's key generations; nothing changes here
    9: ("ALTER TABLE repair_nodes ADD COLUMN reply_top INTEGER",  # the leader's reply replay windows
        "ALTER TABLE repair_nodes ADD COLUMN reply_bits INTEGER"),
}


class Lease:
    """The repair leadership of one group, held until release() or this process's death."""

    def __init__(self, fd, group):
        self._fd = fd
        self.group = group
        self._held = True

    def check(self):
        """True while held (a file lock cannot be lost while its descriptor is open)."""
        return self._held

    def release(self):
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
        self._held = False


def is_busy(e):
    """True when sqlite3 error `e` means another connection holds a lock (the store is healthy)."""
    text = str(e).lower()
    return isinstance(e, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def holders(path, limit=3):
    """Return 'pid N (name)' texts of the processes (other than this one) that have the file
    `path` open, best effort (Linux /proc; [] elsewhere or without permission)."""
    out = []
    want = os.path.realpath(path)
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    except OSError:
        return out
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") != want:
                    continue
            except OSError:
                continue
            try:
                with open(f"/proc/{pid}/comm") as f:
                    name = f.read().strip()
            except OSError:
                name = "?"
            out.append(f"pid {pid} ({name})")
            break
        if len(out) >= limit:
            break
    return out


def store_error(path, e, doing="read"):
    """Return the StoreError for sqlite3 error `e` on the store at `path`: a lock held by
    another process says so (retry later; which process) - never advice to discard a healthy
    store; anything else names the store and what to check."""
    if is_busy(e):
        who = holders(path)
        by = f" (held by {', '.join(who)})" if who else ""
        return StoreBusy(f"the store {path} is busy: another process holds a lock on it{by}; "
                         f"retry when it is done")
    return StoreError(f"cannot {doing} the store {path}: {e}; is it damaged? move it aside")



class SQLiteStore(SqlStore):
    """The store in one SQLite file (WAL, synchronous=NORMAL). Opening creates the schema.
    Raises StoreError when the file is not a Red Mesh store or cannot be opened."""

    def __init__(self, path):
        self.path = path
        self._depth = 0
        self._insert_sql = {}
        self._state_sql = {}
        try:
            self.db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the store {path}: {e}") from e
        try:
            self._opened_at_version = self.db.execute("PRAGMA user_version").fetchone()[0]
            self._setup()
        except sqlite3.DatabaseError as e:
            self.db.close()
            if is_busy(e):
                raise store_error(path, e, "open") from e
            raise StoreError(
                f"{path} is not a usable Red Mesh store ({e}); move it aside to start a new one, "
                f"or point --home at the right fleet home"
            ) from e

    def _setup(self):
        db = self.db
        db.execute("PRAGMA busy_timeout = 10000")
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if app_id not in (0, APPLICATION_ID):
            raise sqlite3.DatabaseError(f"application_id {app_id:#x} is not a Red Mesh store's")
        if app_id == 0:
            tables = db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
            if tables:
                raise sqlite3.DatabaseError("it is an SQLite database of something else")
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this fleet tool's ({SCHEMA_VERSION}); upgrade redmesh"
            )
        # WAL: readers (fleet status) never block the collector's writes. NORMAL sync in WAL mode
        # is durable against application crashes; a power cut may lose the last commits, which
        # gap repair then asks the nodes to resend.
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA temp_store = MEMORY")
        if app_id == 0 or version < SCHEMA_VERSION:
            with self.transaction():
                # one statement at a time: executescript() would COMMIT our transaction
                if app_id == APPLICATION_ID:  # an older store: bring its tables up to date
                    for v in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
                        for stmt in _MIGRATIONS.get(v, ()):
                            db.execute(stmt)
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        db.execute(stmt)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self):
        """Close the connection (checkpointing the WAL when last out)."""
        self.db.close()

    @contextlib.contextmanager
    def transaction(self, write=True):
        """Group calls into one transaction; nests (only the outermost commits). `write=False`
        takes a read snapshot instead of the write lock."""
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        try:
            self.db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.Error as e:
            raise store_error(self.path, e, "write" if write else "read") from e
        self._depth = 1
        try:
            yield self
        except BaseException:
            self._depth = 0
            if self.db.in_transaction:  # SQLite may have rolled back itself (e.g. SQLITE_FULL)
                self.db.execute("ROLLBACK")
            raise
        self._depth = 0
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error as e:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise store_error(self.path, e, "write") from e

    # ----------------------------------------------------------------------------------- nodes
    def _iter_rows(self, sql, args):
        # A separate cursor, streamed: a caller may write while iterating (WAL gives a snapshot).
        return self.db.cursor().execute(sql, args)

    def _mappings(self, sql, args):
        cur = self.db.cursor()
        # sqlite3.Row: built in C, ~30 % faster than dict(zip(...)) per row at 100k nodes
        cur.row_factory = sqlite3.Row
        return cur.execute(sql, args).fetchall()

    @property
    def url(self):
        return "sqlite:///" + self.path.lstrip("/") if os.path.isabs(self.path) else "sqlite://" + self.path

    def schema_version(self):
        """Return the schema version stored in the store."""
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def info(self):
        """Return {backend, url, schema_version, code_schema_version, rows {table: n}, size_bytes}
        (size: the database file with its WAL)."""
        rows = {}
        with self.transaction(write=False):
            for t in TABLES:
                rows[t] = self.db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: S608 - fixed names
            version = self.schema_version()
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                size += os.path.getsize(self.path + suffix)
        return {"backend": "sqlite", "url": self.url, "schema_version": version,
                "code_schema_version": SCHEMA_VERSION, "rows": rows, "size_bytes": size}

    def _insert_stmt(self, n):
        """INSERT of `n` rows (then the horizon as the last argument): a (node, seq) already
        stored is skipped, unless that row is dead - older than the horizon, left by a prune still
        deleting - when the new copy replaces it."""
        sql = self._insert_sql.get(n)
        if sql is None:
            one = "(" + ",".join("?" * len(READING_FIELDS)) + ")"
            sets = ", ".join(f"{f} = excluded.{f}" for f in READING_FIELDS[2:])
            sql = (f"INSERT INTO readings ({', '.join(READING_FIELDS)}) VALUES " + ",".join([one] * n)
                   + f" ON CONFLICT (node, seq) DO UPDATE SET {sets} WHERE readings.ts < ?"
                   + " RETURNING node, seq, ts, pm1, pm25, pm10, rh, temp")
            self._insert_sql[n] = sql
        return sql

    def _insert_readings(self, rows):
        row = self.db.execute("SELECT value FROM store_meta WHERE key = 'pruned_before'").fetchone()
        horizon = row[0] if row else 0
        if horizon:
            keep = [r for r in rows if r[2] >= horizon]
            if len(keep) < len(rows):
                self.count_reject("beyond_retention", int(time.time()), len(rows) - len(keep))
            rows = keep
        stored = []
        for i in range(0, len(rows), _CHUNK_ROWS):
            chunk = rows[i:i + _CHUNK_ROWS]
            flat = [v for r in chunk for v in r]
            flat.append(horizon)
            stored.extend(self.db.execute(self._insert_stmt(len(chunk)), flat).fetchall())
        return stored

    def prune(self, before_ts, now_s=None, stop=None, on_step=None):
        """Delete raw readings older than `before_ts` (hourly sums stay), PRUNE_ROWS rows per
        transaction, pausing between chunks as long as one took, so writers wait at most one
        chunk (2 million readings: ~6 s with a writer going on at full rate, bench/prune_bench.py). The horizon is raised first: from then
        on a reading older than it is refused, and the rows still to delete are dead (a new copy
        of one replaces it, _insert_stmt); an interrupted prune leaves only dead rows, which the
        next deletes. `stop()` true: return after the chunk in hand; `on_step(what)` is called
        after each committed transaction; `now_s` is unused (PostgreSQL's key generations).
        Returns (horizon, readings deleted): readings older than the horizon are not stored any
        more."""
        before_ts = int(before_ts)
        stop = stop or (lambda: False)
        chunk = PRUNE_ROWS
        with self.transaction():
            self.db.execute("INSERT INTO store_meta VALUES ('pruned_before', ?) ON CONFLICT (key) DO UPDATE "
                            "SET value = max(store_meta.value, excluded.value)", (before_ts,))
        horizon = self.db.execute("SELECT value FROM store_meta WHERE key = 'pruned_before'").fetchone()[0]
        deleted = 0
        while not stop():
            t0 = time.monotonic()
            with self.transaction():
                n = self.db.execute("DELETE FROM readings WHERE rowid IN (SELECT rowid FROM readings WHERE ts < ? "
                                    "LIMIT ?)", (horizon, chunk)).rowcount
            deleted += n
            if n and on_step:
                on_step("readings")
            if n < chunk:
                break
            # SQLite has one write lock and its busy handler polls: without a pause as long as the
            # chunk took, a waiting writer seldom gets in between two chunks
            time.sleep(min(time.monotonic() - t0, 0.5))
        return horizon, deleted

    def reopen(self):
        """A new SQLiteStore on the same file (its own connection). Raises StoreError for an
        in-memory store (another connection would see another database)."""
        if self.path == ":memory:":
            raise StoreError("an in-memory store cannot be opened a second time; use a file")
        return SQLiteStore(self.path)

    def lead(self, group):
        """Try to become the repair leader of `group` on this store: return a Lease, or None
        when another process holds it. The lease is an exclusive lock on a file beside the
        store (flock), freed by the kernel when its process dies."""
        import fcntl
        import hashlib

        if self.path == ":memory:":
            return Lease(None, group)  # nobody else can open this store
        name = f"{self.path}.lead-{hashlib.sha256(group.encode()).hexdigest()[:12]}"
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise StoreError(f"cannot open the leader lock file {name}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return Lease(fd, group)

    def migrate(self):
        """Bring the schema up to this code's version; return (version before, version after).
        Opening a store already migrates it (one transaction: all or nothing); this says what
        was done, for `fleet store migrate`."""
        return self._opened_at_version, self.schema_version()


wrap_errors(SQLiteStore, sqlite3.Error, lambda self, e, doing: store_error(self.path, e, doing))
