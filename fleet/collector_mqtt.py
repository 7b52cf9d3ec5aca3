"""The collector on MQTT: fleet/collector.py's Ingest driven by an aiomqtt client.

- One persistent session (clean_session=False, a fixed client id) subscribed with QoS 1 to
  every gateway's uplink and state topics: what gateways publish while the collector is briefly
  away is queued by the broker and delivered on reconnect.
- The broker going away is never fatal: the collector logs it and reconnects with backoff
  (0.5 s doubling to 30 s), resubscribing each time (a restarted broker may have lost the session).
  Messages already received (and acknowledged) stay queued in the same client and are processed.
- A message is acknowledged (PUBACK) only once everything it carried is committed to the store
  (manual acknowledgement; a flush is forced when `max_unacked` messages wait). A collector
  killed mid-batch, or a store that cannot write (disk full), leaves the messages unacknowledged:
  the broker redelivers them to the persistent session, and the store keeps each (node, seq)
  once. Messages from a dropped connection are never acknowledged on the next one (the broker
  redelivers them). Graceful stop (SIGINT/SIGTERM or the stop event) processes what is queued,
  flushes the batch, acknowledges and disconnects.
- Every `progress_s` a one-line progress report goes to `progress` (default: the log).
- Several collectors sharing the load (`config.share` = GROUP, `fleet collect --share GROUP`, for
  a PostgreSQL store): MQTT 5, the uplink subscribed as `$share/GROUP/redmesh/<net>/up/+` (the
  broker deals each message to one member; the retained gateway-state topic stays a plain
  subscription, every member needs it). Each member gets its own client id,
  `<collector.client_id>-<host>-<pid>`, on a clean session: what a dead member held
  unacknowledged is lost with its session (a broker MAY re-deal it; mosquitto does not), and gap
  repair - led by one member at a time (fleet/collector.py) - fetches it from the nodes' rings. A
  `--client-id` given keeps a persistent session (expiring after a day) a restarted member drains.

In-process: `await run_collector(home, broker_url, stop_event)` (what `fleet sim up` does).
As a child process: `start_collector_process(...)` runs `python -m fleet.cli.collect`.
"""
import asyncio
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

from fleet.childproc import ChildProcess
from fleet.collector import CollectorConfig, Ingest, progress_line
from fleet.errors import FleetError
from protocol.envelope import state_topic, uplink_topic

log = logging.getLogger("fleet.collector")

SUBSCRIBED_MARK = "collector: subscribed"  # logged on every (re)subscription; CollectorProcess waits for it
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BACKOFF_MIN_S = 0.5
_BACKOFF_MAX_S = 30.0
_TICK_S = 0.1
_PUBLISH_TIMEOUT_S = 10.0
_SESSION_EXPIRY_S = 86400  # a shared member's persistent session (an explicit client id)
GROUP_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def parse_broker_url(url):
    """Return (host, port) from 'mqtt://host:port', 'tcp://host:port', 'host:port' or 'host'.
    Raises FleetError for anything else."""
    text = url if "://" in url else "mqtt://" + url
    try:
        u = urllib.parse.urlsplit(text)
        scheme, hostname = u.scheme, u.hostname
    except ValueError:  # e.g. "Invalid IPv6 URL"
        u, scheme, hostname = None, None, None
    if u is None or scheme not in ("mqtt", "tcp") or not hostname:
        raise FleetError(f"broker URL {url!r} not understood: use mqtt://HOST:PORT (TLS and websockets are not "
                         f"supported yet)")
    try:
        port = u.port or 1883
    except ValueError:
        raise FleetError(f"broker URL {url!r} has a bad port number") from None
    return u.hostname, port


def _resolve_home(home):
    from fleet.home import FleetHome

    return home if isinstance(home, FleetHome) else FleetHome.resolve(home)


async def _wait_stop(stop, timeout_s):
    try:
        await asyncio.wait_for(stop.wait(), timeout_s)
    except TimeoutError:
        pass


def _drain(client, ingest, unacked=None):
    """Process messages the client already received but we have not handled; their (mid, qos)
    go to `unacked` when given (still connected: acknowledged after the commit)."""
    queue = client._queue  # aiomqtt (2.x) keeps received messages in this asyncio.Queue
    n = 0
    while True:
        try:
            m = queue.get_nowait()
        except asyncio.QueueEmpty:
            break
        ingest.on_message(m.topic.value, m.payload, time.time())
        if unacked is not None and m.qos:
            unacked.append((m.mid, m.qos))
        n += 1
    return n


async def run_collector(home, broker_url=None, stop_event=None, *, net_id=None, client_id=None, config=None,
                        progress_s=10.0, progress=None, on_subscribed=None, store=None, keys=None):
    """Collect until `stop_event` (an asyncio.Event) is set; return the final Ingest.snapshot().

    home: a fleet.home.FleetHome or a path (None: $REDMESH_HOME / default); broker_url, net_id,
    client_id default to the home's settings. config: a CollectorConfig (default: from the home).
    progress(line) receives a progress line every progress_s seconds (0: never; None: logged).
    on_subscribed() is called after each (re)subscription. store/keys: given objects instead of
    the home's (the caller keeps ownership). Raises FleetError when the store, the keys or the
    broker URL are unusable; never because the broker is down."""
    import aiomqtt

    home = _resolve_home(home)
    net_id = home.net_id if net_id is None else int(net_id)
    broker_url = broker_url or home.broker_url
    explicit_id = client_id is not None
    client_id = client_id or home.get("collector", "client_id")
    host, port = parse_broker_url(broker_url)
    config = config or CollectorConfig.from_home(home)
    share = config.share
    if share is not None:
        if not GROUP_RE.fullmatch(share):
            raise FleetError(f"--share {share!r}: a group name is 1-64 letters, digits, '-' or '_'")
        if not explicit_id:
            client_id = f"{client_id}-{socket.gethostname()}-{os.getpid()}"
    stop = stop_event or asyncio.Event()
    keys = keys or home.keys()
    keys.mesh_key()  # fails with "run `fleet keys init`" before anything is created
    own_store = store is None
    if own_store:
        store = home.store(create=True)
    try:
        ingest = Ingest(store, keys, net_id, config=config)
    except BaseException:
        if own_store:
            store.close()
        raise
    report = progress or (lambda line: log.info("%s", line))
    mqtt_log = logging.getLogger("fleet.collector.mqtt")
    if share is None:
        client = aiomqtt.Client(host, port, identifier=client_id, clean_session=False, keepalive=30, logger=mqtt_log)
    else:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = _SESSION_EXPIRY_S if explicit_id else 0
        client = aiomqtt.Client(host, port, identifier=client_id, protocol=aiomqtt.ProtocolVersion.V5,
                                clean_start=not explicit_id, properties=props, keepalive=30, logger=mqtt_log)
    if not isinstance(getattr(client, "_queue", None), asyncio.Queue) or not hasattr(client, "_disconnected"):
        raise FleetError(f"this aiomqtt ({getattr(aiomqtt, '__version__', '?')}) lacks the internals the collector "
                         f"relies on (Client._queue, Client._disconnected); install aiomqtt 2.x")
    paho = client._client
    paho.manual_ack_set(True)  # PUBACK after the commit (settle()), never on receipt
    up = uplink_topic(net_id) if share is None else f"$share/{share}/{uplink_topic(net_id)}"
    topics = [(up, 1), (state_topic(net_id), 1)]
    unacked = []  # (mid, qos) received on the current connection, not yet acknowledged
    backoff = _BACKOFF_MIN_S
    prog = {"t": time.monotonic(), "snap": ingest.snapshot()}

    def maybe_progress():
        if not progress_s:
            return
        now = time.monotonic()
        if now - prog["t"] >= progress_s:
            snap = ingest.snapshot()
            report(progress_line(prog["snap"], snap, now - prog["t"]))
            prog["t"], prog["snap"] = now, snap

    def settle():
        # Everything received so far is committed (or had nothing to commit): acknowledge it.
        if unacked and not ingest.has_pending():
            for mid, qos in unacked:
                paho.ack(mid, qos)
            unacked.clear()

    async def consume():
        # Straight from the client's queue, not `async for m in client.messages`: cancelling that
        # iterator at the wrong moment drops a message it already took off the queue (and the
        # broker has its acknowledgement). A cancelled Queue.get() never loses an item.
        queue = client._queue
        while True:
            m = await queue.get()
            ingest.on_message(m.topic.value, m.payload, time.time())
            if m.qos:
                unacked.append((m.mid, m.qos))
                if len(unacked) >= config.max_unacked:
                    ingest.flush(time.time())
            settle()

    async def watch_disconnect():
        fut = client._disconnected  # aiomqtt sets it when the connection drops
        await asyncio.shield(fut)
        raise aiomqtt.MqttError("disconnected by the broker")

    async def tick():
        while True:
            await asyncio.sleep(_TICK_S)
            out = ingest.poll(time.time())
            settle()
            for topic, payload in out:
                await client.publish(topic, payload, qos=1, timeout=_PUBLISH_TIMEOUT_S)
            maybe_progress()

    log.info("collector: network %d, broker %s:%d, client id %r, store %s", net_id, host, port, client_id,
             getattr(store, "path", store))
    try:
        while not stop.is_set():
            try:
                async with client:
                    unacked.clear()  # a new connection: the broker redelivers what was not acknowledged
                    await client.subscribe(topics)
                    backoff = _BACKOFF_MIN_S
                    log.info("%s to %s on %s:%d", SUBSCRIBED_MARK, ", ".join(t for t, _ in topics), host, port)
                    if on_subscribed is not None:
                        on_subscribed()
                    tasks = [asyncio.ensure_future(c) for c in (consume(), tick(), stop.wait(), watch_disconnect())]
                    try:
                        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for t in tasks:
                            t.cancel()
                        await asyncio.gather(*tasks, return_exceptions=True)
                    for t in done:
                        if not t.cancelled() and t.exception() is not None:
                            raise t.exception()
                    if stop.is_set():
                        _drain(client, ingest, unacked)
                        ingest.flush(time.time())
                        settle()
            except aiomqtt.MqttError as e:
                if stop.is_set():
                    break
                log.warning("collector: broker %s:%d lost or unreachable (%s); reconnecting in %.1f s",
                            host, port, e, backoff)
            _drain(client, ingest)  # acknowledged before the connection dropped
            ingest.poll(time.time(), send=False)
            maybe_progress()
            await _wait_stop(stop, backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX_S)
    finally:
        _drain(client, ingest)
        ingest.close(time.time())
        snap = ingest.snapshot()
        if own_store:
            store.close()
        log.info("collector: stopped; %s", progress_line(snap, snap, 0).split(" | ")[0])
    return snap


def install_signal_handlers(stop):
    """Make SIGINT and SIGTERM set `stop` (an asyncio.Event) in the running loop."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass


class CollectorProcess(ChildProcess):
    """`fleet collect` as a child process (`python -m fleet.cli.collect ...`): `.pid`, `.stop()`
    (SIGTERM: graceful), `.kill()` (SIGKILL: a crash), `.restart()`, `.log_tail()`."""

    def __init__(self, argv, log_path, env=None, owns_log=False):
        super().__init__(log_path, owns_log)
        self.argv = argv
        self.env = env

    def start(self, timeout_s=20.0):
        """Spawn and wait until it has subscribed (a line in its log). Raises FleetError."""
        with open(self.log_path, "ab") as logf:
            start_at = logf.tell()
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=logf, stdin=subprocess.DEVNULL,
                                         cwd=_ROOT, env=self.env)
        deadline = time.monotonic() + timeout_s
        while True:
            with open(self.log_path, "rb") as f:
                f.seek(start_at)
                if SUBSCRIBED_MARK.encode() in f.read():
                    return self
            if not self.alive():
                raise FleetError(f"the collector exited with status {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise FleetError(f"the collector did not subscribe within {timeout_s} s: {self.log_tail()}")
            time.sleep(0.05)

    def restart(self, timeout_s=20.0):
        self.kill()
        return self.start(timeout_s)


def start_collector_process(home_path, broker_url, *, net_id=None, client_id=None, extra_args=(), log_path=None,
                            timeout_s=20.0, env=None):
    """Start `fleet collect` as a child process on fleet home `home_path`; returns a started
    CollectorProcess (it has subscribed). `extra_args`: more `fleet collect` options."""
    argv = [sys.executable, "-m", "fleet.cli.collect", "--home", str(home_path), "--broker", broker_url,
            "--progress-s", "1"]
    if net_id is not None:
        argv += ["--net", str(net_id)]
    if client_id is not None:
        argv += ["--client-id", client_id]
    argv += list(extra_args)
    owns_log = log_path is None
    if owns_log:
        fd, log_path = tempfile.mkstemp(prefix="collector-", suffix=".log")
        os.close(fd)
    return CollectorProcess(argv, log_path, env, owns_log).start(timeout_s)
