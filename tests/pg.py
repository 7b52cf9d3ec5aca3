"""A throwaway PostgreSQL cluster from Debian's packages, for the store tests and the bench.

`PgCluster` runs initdb and pg_ctl from /usr/lib/postgresql/<version>/bin (or PATH): as root
they run as the `postgres` user (runuser), in a temp dir owned by it; the server listens on a
free port on 127.0.0.1 (and a Unix socket in the temp dir only), with fsync off for tests
(`durable=True` keeps the defaults, for the bench). `stop()` stops it by PID (pg_ctl stop -m
immediate, then SIGKILL of the postmaster if it is still there) and removes the dir.

Fixtures (conftest imports them): `pg_cluster` (session scoped: one cluster per pytest worker;
skips with the reason when PostgreSQL cannot be had) and `pg_url` (a fresh schema in it per
test, as a postgresql:// URL with search_path set).
"""
import contextlib
import glob
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest


class PgUnavailable(Exception):
    """PostgreSQL cannot be run here; the message says why."""


def pg_bindir():
    """The directory of Debian's (or PATH's) initdb and pg_ctl, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    def __init__(self, durable=False):
        self.durable = durable
        self.bindir = pg_bindir()
        self.dir = None
        self.port = None
        self.pid = None
        self._names = itertools.count(1)

    def _as_pg(self, args, timeout):
        cmd = args
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--"] + args
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.dir)

    def start(self):
        if self.bindir is None:
            raise PgUnavailable("PostgreSQL is not installed (apt-get install postgresql): no initdb found")
        if os.geteuid() == 0:
            try:
                import pwd

                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise PgUnavailable("running as root and there is no `postgres` user to run initdb as") from None
        self.dir = tempfile.mkdtemp(prefix="redmesh-pg-")
        if os.geteuid() == 0:
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        data = os.path.join(self.dir, "data")
        r = self._as_pg([os.path.join(self.bindir, "initdb"), "-D", data, "-U", "postgres", "--auth=trust",
                         "-E", "UTF8", "--locale=C", "--no-instructions"], timeout=120)
        if r.returncode != 0:
            self.stop()
            raise PgUnavailable(f"initdb failed: {r.stderr.strip()[-300:]}")
        last = ""
        for _ in range(3):  # a port taken between the probe and the bind: try another
            self.port = _free_port()
            r = self._pg_ctl_start()
            if r.returncode == 0:
                break
            last = r.stderr.strip()[-300:] or r.stdout.strip()[-300:]
        else:
            self.stop()
            raise PgUnavailable(f"pg_ctl start failed: {last}")
        return self

    def _pg_ctl_start(self):
        data = os.path.join(self.dir, "data")
        opts = [f"-c listen_addresses=127.0.0.1 -k {self.dir}", f"-p {self.port}"]
        if not self.durable:
            opts.append("-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        r = self._as_pg([os.path.join(self.bindir, "pg_ctl"), "-D", data, "-l", os.path.join(self.dir, "log"),
                         "-w", "-t", "60", "-o", " ".join(opts), "start"], timeout=90)
        if r.returncode == 0:
            with open(os.path.join(data, "postmaster.pid")) as f:
                self.pid = int(f.readline())
        return r

    def pause(self):
        """Stop the server (fast shutdown: sessions cut, data kept); resume() starts it again on
        the same port - a database outage, for the tests that must survive one."""
        r = self._as_pg([os.path.join(self.bindir, "pg_ctl"), "-D", os.path.join(self.dir, "data"), "-m", "fast",
                         "-w", "-t", "30", "stop"], timeout=40)
        if r.returncode != 0:
            raise PgUnavailable(f"pg_ctl stop failed: {r.stderr.strip()[-300:]}")
        self.pid = None

    def resume(self):
        r = self._pg_ctl_start()
        if r.returncode != 0:
            raise PgUnavailable(f"pg_ctl start failed: {(r.stderr or r.stdout).strip()[-300:]}")

    def url(self, schema=None, db="postgres"):
        base = f"postgresql://postgres@127.0.0.1:{self.port}/{db}"
        return base + (f"?options=-csearch_path%3D{schema}" if schema else "")

    def new_schema(self):
        """Create an empty schema; return (its name, a URL whose search_path is it)."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as c:
            c.execute(f'CREATE SCHEMA "{name}"')
        return name, self.url(name)

    def drop_schema(self, name):
        import psycopg

        with contextlib.suppress(psycopg.Error), psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as c:
            c.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')

    def stop(self):
        """Stop the server by PID and remove its directory."""
        if self.dir is None:
            return
        data = os.path.join(self.dir, "data")
        if self.pid is not None and self.bindir:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._as_pg([os.path.join(self.bindir, "pg_ctl"), "-D", data, "-m", "immediate", "-w", "-t", "20",
                             "stop"], timeout=30)
            deadline = time.monotonic() + 10
            while _alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(self.pid):
                with contextlib.suppress(OSError):
                    os.kill(self.pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None
        self.pid = None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="session")
def pg_cluster():
    """One throwaway PostgreSQL cluster per pytest worker (skips with the reason if none)."""
    cluster = PgCluster()
    try:
        cluster.start()
    except (PgUnavailable, OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"PostgreSQL unavailable: {e}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster):
    """A postgresql:// URL naming a fresh, empty schema (dropped after the test)."""
    name, url = pg_cluster.new_schema()
    yield url
    pg_cluster.drop_schema(name)
