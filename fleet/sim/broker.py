"""MQTT brokers for the virtual rig, `make demo` and tests.

* `EmbeddedBroker`: the pure-Python amqtt broker inside the current asyncio loop.
* `start_broker_process()`: the same broker as a child process (`python -m fleet.sim.broker`),
  which a test can SIGKILL like a crashed server.
* `start_mosquitto()`: mosquitto (the production single-node broker) as a child process with a
  generated config, when `mosquitto` is installed (`mosquitto_path()`).

All listen on 127.0.0.1 only; port 0 means "pick a free one" (read it back from `.port`).

What the embedded amqtt broker (0.12) does and does not do, verified by tests/test_mqtt_client.py:
QoS 0/1, retained messages, last wills and persistent sessions (clean_session=False: the
subscriptions survive a disconnect and QoS-1 messages published meanwhile are delivered on
reconnect) all work - within one broker process. Persistent sessions need our own auth plugin:
amqtt's AnonymousAuthPlugin marks every client anonymous, and amqtt silently gives anonymous
clients clean-session behaviour (fleet/sim/_amqtt_auth.py). It keeps everything in memory: when the
broker process dies (SIGKILL) or stops, sessions, queued messages and retained messages are
gone. (amqtt's SessionDBPlugin would keep sessions and retained messages, but not queued
messages, and needs SQLAlchemy, which we do not install.) mosquitto with persistence keeps all
three across a clean stop; after SIGKILL only what its last autosave wrote.
"""
import argparse
import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from fleet.childproc import ChildProcess

READY_PREFIX = "READY "
# The repository root: the child `python -m fleet.sim.broker` must find this tree's `fleet`.
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class BrokerError(Exception):
    """A broker failed to start or stop; the message says what was seen."""


def _quiet_amqtt():
    # amqtt logs every connection at INFO and its transitions library at INFO as well.
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.WARNING)


def amqtt_config(host="127.0.0.1", port=0):
    """Return the amqtt broker config we run: one TCP listener, every client admitted (see
    fleet/sim/_amqtt_auth.py for why not amqtt's AnonymousAuthPlugin), no $SYS topics, no
    per-packet logging plugins."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"fleet.sim._amqtt_auth.OpenAuthPlugin": {}},
        # Keep disconnected persistent sessions forever (the broker process bounds their life).
        "session_expiry_interval": None,
    }


class EmbeddedBroker:
    """The amqtt broker in the running asyncio loop. `await start()` returns the port;
    also usable as `async with EmbeddedBroker() as b: ... b.port`."""

    def __init__(self, host="127.0.0.1", port=0):
        self.host = host
        self.port = port
        self._broker = None

    async def start(self):
        """Start listening; return the bound port. Raises BrokerError if the port is taken."""
        from amqtt.broker import Broker

        _quiet_amqtt()
        self._broker = Broker(amqtt_config(self.host, self.port))
        # amqtt logs a traceback before raising when it cannot bind; our error says it better.
        blog = logging.getLogger("amqtt.broker")
        level = blog.level
        blog.setLevel(logging.CRITICAL)
        try:
            await self._broker.start()
        except Exception as e:  # amqtt wraps OSError (port in use) in its BrokerError
            self._broker = None
            raise BrokerError(f"amqtt broker could not listen on {self.host}:{self.port}: {e}") from e
        finally:
            blog.setLevel(level)
        # amqtt has no public accessor for the bound address; its asyncio.Server has.
        server = self._broker._servers["default"].instance
        self.port = server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self):
        """Stop the broker (drops all sessions and retained messages)."""
        if self._broker is not None:
            b, self._broker = self._broker, None
            await b.shutdown()

    @property
    def url(self):
        return f"mqtt://{self.host}:{self.port}"

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc):
        await self.stop()


class BrokerProcess(ChildProcess):
    """A broker running as a child process: `.port`, `.pid`, `.kill()` (SIGKILL, like a crash),
    `.stop()` (SIGTERM, then SIGKILL after a timeout), `.restart()` (same port, same data)."""

    def __init__(self, kind, argv, host, port, data_dir=None, log_path=None, owns_data_dir=False, owns_log=False):
        super().__init__(log_path, owns_log)
        self.kind = kind
        self.argv = argv
        self.host = host
        self.port = port
        self.data_dir = data_dir
        self._owns_data_dir = owns_data_dir

    def stop(self, timeout_s=10):
        return super().stop(timeout_s)

    def close(self):
        """Stop the broker and remove a data directory and a log file we created."""
        super().close()
        if self._owns_data_dir and self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def restart(self, timeout_s=10):
        """Start the broker again on the same port (and data directory); returns self."""
        self.kill()
        self._spawn(timeout_s)
        return self

    def _spawn(self, timeout_s):
        argv = [a.replace("{port}", str(self.port)) for a in self.argv]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE if self.kind == "amqtt" else log,
                                         stderr=log, stdin=subprocess.DEVNULL, cwd=_ROOT)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        if self.kind == "amqtt":
            self.port = self._read_ready(timeout_s)
        _wait_listening(self, timeout_s)

    def _read_ready(self, timeout_s):
        # The child prints "READY <port>" once it listens; port 0 is resolved there.
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        line = b""
        try:
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    self.kill()
                    raise BrokerError(f"amqtt broker gave no READY line in {timeout_s} s: {self.log_tail()}")
                ch = os.read(self.proc.stdout.fileno(), 1)
                if not ch:
                    self.kill()
                    raise BrokerError(f"amqtt broker exited while starting: {self.log_tail()}")
                line += ch
        finally:
            sel.close()
        text = line.decode().strip()
        if not text.startswith(READY_PREFIX):
            self.kill()
            raise BrokerError(f"amqtt broker said {text!r} instead of READY <port>")
        return int(text[len(READY_PREFIX):])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _wait_listening(bp, timeout_s):
    deadline = time.monotonic() + timeout_s
    while True:
        if not bp.alive():
            raise BrokerError(f"{bp.kind} exited with status {bp.proc.returncode}: {bp.log_tail()}")
        try:
            with socket.create_connection((bp.host, bp.port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                bp.kill()
                raise BrokerError(f"{bp.kind} is not listening on {bp.host}:{bp.port} after "
                                  f"{timeout_s} s: {bp.log_tail()}") from None
            time.sleep(0.02)


def free_port(host="127.0.0.1"):
    """A port that was free a moment ago (for brokers that cannot bind port 0 themselves)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_broker_process(port=0, host="127.0.0.1", log_path=None, timeout_s=15):
    """Start the embedded amqtt broker as `python -m fleet.sim.broker`; returns a started
    BrokerProcess whose `.port` is the bound port. Raises BrokerError if it does not come up."""
    argv = [sys.executable, "-m", "fleet.sim.broker", "--port", "{port}", "--host", host]
    owns_log = log_path is None
    if owns_log:
        fd, log_path = tempfile.mkstemp(prefix="amqtt-", suffix=".log")
        os.close(fd)
    bp = BrokerProcess("amqtt", argv, host, port, log_path=log_path, owns_log=owns_log)
    bp._spawn(timeout_s)  # sets bp.port to the bound port, so restart() reuses it
    return bp


def mosquitto_path():
    """Path of the mosquitto binary, or None when it is not installed."""
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None)


def mosquitto_config(port, host, data_dir, max_queued_messages=100000):
    """Return the text of the mosquitto.conf we generate."""
    lines = [
        f"listener {port} {host}",
        "allow_anonymous true",
        # mosquitto's default (1000) silently drops QoS-1 messages for a subscriber that falls
        # behind - about 79 % of a burst in our test. The collector must never lose data to it,
        # so the queue is deliberately deep; memory, not messages, is what we spend.
        f"max_queued_messages {max_queued_messages}",
        "max_inflight_messages 100",
        # Without it a lone PUBACK waits for the client's delayed TCP ACK (~40 ms): a gateway
        # draining its flash backlog stalls at every gap in its pipeline.
        "set_tcp_nodelay true",
        "persistence true",
        f"persistence_location {data_dir.rstrip('/')}/",
        "autosave_interval 1",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # As root without this, mosquitto drops to user `mosquitto`, which cannot write the
        # persistence file in our temp dir: sessions would silently not persist.
        lines.append("user root")
    return "\n".join(lines) + "\n"


def start_mosquitto(port=0, host="127.0.0.1", data_dir=None, max_queued_messages=100000, timeout_s=15):
    """Start mosquitto with a generated config (persistence in `data_dir`, a new temp dir if
    None); returns a started BrokerProcess. Raises BrokerError if mosquitto is missing or fails."""
    exe = mosquitto_path()
    if exe is None:
        raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")
    owns = data_dir is None
    if owns:
        data_dir = tempfile.mkdtemp(prefix="mosquitto-")
    if not port:
        port = free_port(host)
    conf = os.path.join(data_dir, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(mosquitto_config(port, host, data_dir, max_queued_messages))
    bp = BrokerProcess("mosquitto", [exe, "-c", conf], host, port, data_dir=data_dir,
                       log_path=os.path.join(data_dir, "mosquitto.log"), owns_data_dir=owns)
    bp._spawn(timeout_s)
    return bp


async def serve(host="127.0.0.1", port=1883, ready=None):
    """Run the embedded broker until cancelled or SIGTERM/SIGINT; calls `ready(port)` once
    listening."""
    broker = EmbeddedBroker(host, port)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-main thread
            pass
    try:
        if ready is not None:
            ready(broker.port)
        await stop.wait()
    finally:
        await broker.stop()


def main(argv=None):
    """Entry point of `python -m fleet.sim.broker [--host H] [--port N]`: prints
    `READY <port>` on stdout once listening, runs until SIGTERM/SIGINT."""
    ap = argparse.ArgumentParser(prog="python -m fleet.sim.broker",
                                 description="Run the embedded amqtt MQTT broker.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883, help="0 picks a free port")
    args = ap.parse_args(argv)

    def ready(port):
        print(READY_PREFIX + str(port), flush=True)

    try:
        asyncio.run(serve(args.host, args.port, ready))
    except BrokerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
