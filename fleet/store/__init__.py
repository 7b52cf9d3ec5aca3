"""The fleet store: nodes, readings, per-node state, hourly sums, gaps, events, rejects, command
counters - behind one interface (fleet.store.base.Store), in one of two backends.

A store is named by a URL (`store.url` in fleet.toml, `--store URL`):
- `sqlite:///PATH`: the embedded default, one file (the home's fleet.db): fleet/store/sqlite.py;
- `postgresql://USER[:PASSWORD]@HOST[:PORT]/DB[?options]`: a PostgreSQL server (psycopg 3):
  fleet/store/postgres.py. Tables live in the connection's current schema (libpq's
  `options=-csearch_path=NAME` picks another), so one database may hold several stores.

`open_url` is the one place that maps a URL to a backend. Nothing outside the backends touches
a driver or a connection; every failure of a store reaches callers as StoreError (or its
subclass StoreBusy), and no message carries a URL's password (`mask_url`).
"""
import os
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from fleet.store.base import (  # noqa: F401 - the package's interface
    EVERY,
    GAP_STATES,
    MEAN_FIELDS,
    NODE_FIELDS,
    READING_FIELDS,
    ROLES,
    SCHEMA_VERSION,
    STATE_FIELDS,
    STATUS_FIELDS,
    SqlStore,
    Store,
    StoreBusy,
    StoreError,
)
from fleet.store.sqlite import APPLICATION_ID, SQLiteStore, holders, is_busy, store_error  # noqa: F401

SQLITE_PREFIX = "sqlite://"
POSTGRES_PREFIXES = ("postgresql://", "postgres://")


def mask_url(url):
    """Return `url` with its password (in the user part or a password= parameter) replaced by
    '***', for messages and `fleet store info`."""
    if not isinstance(url, str):
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("://", 1)[0] + "://***" if "://" in url else "***"
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        if ":" in user:
            user = user.split(":", 1)[0] + ":***"
        netloc = f"{user}@{host}"
    query = parts.query
    if "password" in query.lower():
        query = "&".join(f"{k}=***" if k.lower() == "password" else f"{k}={v}"
                         for k, v in parse_qsl(query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_password(url):
    """Return the password a URL carries ('' when none): the text no message may show."""
    try:
        parts = urlsplit(url)
        if parts.password:
            return parts.password
        for k, v in parse_qsl(parts.query, keep_blank_values=True):
            if k.lower() == "password":
                return v
    except ValueError:
        pass
    return ""


def parse_url(url, base_dir=None):
    """Return (backend, target) for a store URL: ('sqlite', absolute path) for sqlite:///PATH
    (a relative PATH, as in sqlite://fleet.db, is taken from `base_dir`), ('postgresql', url)
    for postgresql://... Raises StoreError for anything else."""
    if not isinstance(url, str) or not url:
        raise StoreError("a store URL is needed: sqlite:///PATH or postgresql://USER@HOST/DB")
    if url.startswith(SQLITE_PREFIX):
        path = url[len(SQLITE_PREFIX):]
        if "?" in path or "#" in path:
            raise StoreError(f"store URL {url!r}: no query or fragment is understood; use sqlite:///PATH")
        if not path or path == "/":
            raise StoreError(f"store URL {url!r} names no file; use sqlite:///PATH")
        if path.startswith("/"):
            path = "/" + path.lstrip("/")  # sqlite:////abs (SQLAlchemy's spelling) too
        else:
            path = os.path.join(base_dir or os.getcwd(), path)
        return "sqlite", os.path.abspath(path)
    if url.startswith(POSTGRES_PREFIXES):
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as e:
            raise StoreError(f"store URL {mask_url(url)!r} is not a valid PostgreSQL URL ({e}); "
                             f"use postgresql://USER@HOST[:PORT]/DB") from None
        if parts.fragment:
            raise StoreError(f"store URL {mask_url(url)!r}: no fragment is understood")
        return "postgresql", url
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise StoreError(f"store URL scheme {scheme!r} not understood: use sqlite:///PATH or postgresql://...")


def open_url(url, base_dir=None, pooled=False):
    """Open the store named by `url` (see parse_url), creating its schema when new. `pooled`:
    a PostgreSQL store takes its connection from this process's pool for the URL and gives it
    back at close() (for a server opening a store per request; SQLite ignores it). Raises
    StoreError."""
    backend, target = parse_url(url, base_dir)
    if backend == "postgresql":
        from fleet.store.postgres import PostgresStore

        return PostgresStore(target, pooled=pooled)
    return SQLiteStore(target)


def open_store(path, create=True):
    """Open the SQLite store at `path` (helper for tools and tests). Raises StoreError."""
    if not create and not os.path.exists(path):
        raise StoreError(f"no fleet store at {path}")
    return SQLiteStore(path)
