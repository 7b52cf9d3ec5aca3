"""The gateway's MQTT 3.1.1 client: a thin asyncio shell over firmware/mqtt_codec.py.

Runs on MicroPython's asyncio (ESP32 and the unix port) and on CPython's.

Rules
-----
* `publish()` only puts the message in the outbox (RAM, spilled to flash) and wakes the writer;
  it never waits for the network. Messages leave strictly in outbox order.
* At most `max_inflight` QoS-1 messages are unacknowledged at a time. A message leaves the
  outbox only when it and every message before it are done (QoS 1: PUBACK; QoS 0: written).
* After a reconnect every unacknowledged message is sent again, with DUP and its packet id, in
  order, before anything new. So delivery is at-least-once: a message whose PUBACK was lost
  arrives twice; the order of first arrivals is the outbox order.
* Each connection: CONNECT (with the will) -> CONNACK -> SUBSCRIBE (all topics) -> the retained
  "online" state on the will topic -> resends -> new messages.
* Liveness: a PINGREQ goes out when nothing was sent or received for keepalive/2; a connection
  from which nothing arrived for a whole keepalive is dead and is dropped. EOF, socket errors and
  bad packets drop the connection too.
* The network link: `link_up` (a callable, e.g. the gateway's Wi-Fi isconnected) gates every
  connect attempt: while it returns False no connection is tried (the outbox keeps filling and
  is flushed to flash), and a live connection is dropped when it turns False. `open_connection`
  (default asyncio.open_connection) is how the TCP connection is made (the virtual rig's HAL
  refuses it while its simulated uplink is down, as a board's socket would fail).
* Reconnect delays grow from `backoff_min_ms`, doubling to `backoff_max_ms`, with jitter (half
  fixed, half random) so a district of gateways does not reconnect in lockstep. While
  disconnected the outbox is flushed to flash every `flush_interval_ms`.

Tasks: `run()` is the supervisor; per connection it starts one reader task and one writer task
and cancels both when the connection ends. Only the writer task writes to the socket
(MicroPython allows one waiting writer per stream). `wait_for_ms` wraps only the connect and the
CONNACK read (the connection is discarded on timeout) and Event waits, never a stream read
inside a live connection.
"""
import gc
import os

try:
    import asyncio
except ImportError:  # pragma: no cover - very old MicroPython
    import uasyncio as asyncio

from firmware import mqtt_codec as codec
from firmware.compat import ticks_diff, ticks_ms
from firmware.outbox import Outbox

_MP_ASYNCIO = hasattr(asyncio, "sleep_ms")  # MicroPython's; CPython's has only seconds


def _sleep_ms(ms):
    return asyncio.sleep_ms(ms) if _MP_ASYNCIO else asyncio.sleep(ms / 1000)


def _wait_for_ms(aw, ms):
    return asyncio.wait_for_ms(aw, ms) if _MP_ASYNCIO else asyncio.wait_for(aw, ms / 1000)

_READ_CHUNK = 1024
_MAX_BATCH = 32  # packets written per drain
_LINK_POLL_MS = 1000  # how often a client waiting for its network link looks again
_CONTROL = -1  # packet-id owner for SUBSCRIBE and the "online" publish (not outbox messages)


def _nodelay(writer):
    """Turn Nagle's algorithm off: a lone small packet written while earlier ones are
    unacknowledged would wait for the peer's delayed TCP ACK (~40 ms on Linux). Measured on
    loopback it was the broker's side that stalled (see set_tcp_nodelay in fleet/sim/broker.py:
    a flash backlog drained 10x faster with it); this side is set for the same reason on real
    links, where it did not change the loopback figures. CPython's asyncio sets it already."""
    sock = getattr(writer, "s", None)  # MicroPython's Stream keeps its socket in `s`
    if sock is None:
        return
    try:
        import socket

        # lwIP and Linux share the values; MicroPython's unix socket module lacks the names.
        sock.setsockopt(getattr(socket, "IPPROTO_TCP", 6), getattr(socket, "TCP_NODELAY", 1), 1)
    except (OSError, AttributeError, ImportError):
        pass  # an optimisation only


class MQTTConnectionError(codec.MQTTError):
    """The connection failed or was refused; run() retries it, so callers rarely see this."""

    def __init__(self, msg):
        super().__init__(msg)


class MQTTClient:
    """MQTT 3.1.1 client with an outbox, reconnects, resubscription and a last will.

    `will_topic` is the caller's state topic: the broker publishes `will_payload` (default
    b"offline") there when the connection dies, and the client publishes `online_payload`
    (default b"online") there, retained, after every connect. `on_message(topic, payload)` gets
    incoming messages; it may be a plain function or a coroutine function."""

    def __init__(self, client_id, host, port=1883, keepalive_s=30, will_topic=None, will_payload=None,
                 will_retain=True, outbox=None, on_message=None, online_payload=b"online",
                 clean_session=True, max_inflight=8, backoff_min_ms=500, backoff_max_ms=30000,
                 connect_timeout_ms=10000, max_packet_bytes=codec.DEFAULT_MAX_PACKET_BYTES,
                 flush_interval_ms=5000, link_up=None, open_connection=None):
        self.client_id = client_id
        self.host = host
        self.port = port
        self.keepalive_s = keepalive_s
        self.will_topic = will_topic
        self.will_payload = b"offline" if will_payload is None else will_payload
        self.will_retain = will_retain
        self.online_payload = online_payload
        self.outbox = outbox if outbox is not None else Outbox()
        self.on_message = on_message
        self.clean_session = clean_session
        self.max_inflight = max_inflight
        self.backoff_min_ms = backoff_min_ms
        self.backoff_max_ms = backoff_max_ms
        self.connect_timeout_ms = connect_timeout_ms
        self.max_packet_bytes = max_packet_bytes
        self.flush_interval_ms = flush_interval_ms
        self.link_up = link_up  # callable -> bool, or None: the link is always up
        self.open_connection = open_connection or asyncio.open_connection
        self._connect_packet = codec.encode_connect(
            client_id, keepalive_s, clean_session, will_topic,
            self.will_payload if will_topic is not None else b"",
            1 if will_topic is not None else 0, bool(will_retain and will_topic is not None))

        self.connected = False
        self.last_error = None  # why the last connection ended or failed (str)
        # counters
        self.published = 0  # messages accepted by publish()
        self.sent = 0  # PUBLISH packets written for the first time
        self.resent = 0  # PUBLISH packets written again (DUP) after a reconnect
        self.acked = 0  # PUBACKs that completed an outbox message
        self.received = 0  # PUBLISH packets received
        self.connects = 0  # successful CONNACKs
        self.reconnects = 0  # successful CONNACKs after the first
        self.connect_failures = 0
        self.callback_errors = 0
        self.sub_failures = 0  # SUBACK return codes 0x80
        self.keepalive_timeouts = 0  # connections dropped because the broker fell silent
        self.link_waits = 0  # times run() waited for the network link before connecting

        self._subs = []  # [[topic_filter, qos]]
        self._unacked = []  # [[seq, packet_id, needs_resend]] in outbox order
        self._pids = {}  # packet_id -> outbox seq, or _CONTROL
        self._next_pid = 1
        self._next_seq = self.outbox.head_seq  # first outbox message never written yet
        self._ctrl = []  # control packets the writer sends before any PUBLISH
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._done = None  # Event: the current connection ended
        self._why = None  # why the current connection ended
        self._stop = False
        self._running = False
        self._reader = self._writer = None
        self._parser = None
        self._rbuf = bytearray(_READ_CHUNK) if hasattr(asyncio.StreamReader, "readinto") else None
        self._last_rx_ms = self._last_tx_ms = 0
        self._ping_out = False

    # ------------------------------------------------------------------ API
    async def publish(self, topic, payload, qos=1, retain=False):
        """Queue a message for the broker and return at once (it is sent when connected).

        Raises MQTTUsageError for a bad topic/QoS or a packet over max_packet_bytes."""
        if qos not in (0, 1):
            raise codec.MQTTUsageError("QoS must be 0 or 1, got %r" % (qos,))
        if isinstance(payload, str):
            payload = payload.encode()
        codec.publish_header(topic, len(payload), qos, retain, False, 1 if qos else 0)  # validates
        remaining = 2 + len(topic.encode()) + (2 if qos else 0) + len(payload)
        if remaining > self.max_packet_bytes:
            raise codec.MQTTUsageError("PUBLISH remaining length %d exceeds max_packet_bytes=%d"
                                       % (remaining, self.max_packet_bytes))
        self.outbox.put(topic, payload, qos, retain)
        self.published += 1
        self._wake.set()

    def subscribe(self, topic, qos=1):
        """Subscribe now if connected, and again after every reconnect."""
        if qos not in (0, 1):
            raise codec.MQTTUsageError("QoS must be 0 or 1, got %r" % (qos,))
        for s in self._subs:
            if s[0] == topic:
                s[1] = qos
                break
        else:
            self._subs.append([topic, qos])
        if self.connected:
            self._ctrl.append(codec.encode_subscribe(self._alloc_pid(_CONTROL), [(topic, qos)]))
            self._wake.set()

    def stats(self):
        """Return a dict of the counters, the connection state and the outbox figures."""
        d = {"connected": self.connected, "published": self.published, "sent": self.sent,
             "resent": self.resent, "acked": self.acked, "received": self.received,
             "connects": self.connects, "reconnects": self.reconnects,
             "connect_failures": self.connect_failures, "dropped": self.outbox.dropped,
             "inflight": len(self._unacked), "callback_errors": self.callback_errors,
             "sub_failures": self.sub_failures, "keepalive_timeouts": self.keepalive_timeouts,
             "link_waits": self.link_waits,
             "last_error": self.last_error}
        d["queued"] = len(self.outbox)
        return d

    @property
    def dropped(self):
        """Messages the outbox discarded because it was full (oldest first)."""
        return self.outbox.dropped

    async def disconnect(self):
        """Send DISCONNECT (so no will is published), stop run() and flush the outbox to flash."""
        self._stop = True
        self._stopping.set()
        self._wake.set()
        while self._running:
            await _sleep_ms(10)
        self.outbox.flush()

    async def run(self):
        """Connect, and keep reconnecting with backoff until disconnect() is called."""
        self._running = True
        backoff_ms = self.backoff_min_ms
        try:
            while not self._stop:
                if self.link_up is not None and not self.link_up():
                    # no network: nothing to try; keep the outbox safe and look again soon
                    self.link_waits += 1
                    while not self._stop and not self.link_up():
                        await self._idle(_LINK_POLL_MS)
                    continue
                try:
                    await self._connect()
                except Exception as e:  # noqa: BLE001 - refused, timeout, bad CONNACK, MemoryError...
                    self._close()
                    self.connect_failures += 1
                    self.last_error = "connect: %r" % (e,)
                    await self._idle(self._jitter(backoff_ms))
                    backoff_ms = min(backoff_ms * 2, self.backoff_max_ms)
                    continue
                backoff_ms = self.backoff_min_ms
                self.connects += 1
                if self.connects > 1:
                    self.reconnects += 1
                try:
                    await self._session()
                except Exception as e:  # noqa: BLE001 - the uplink must outlive any one failure
                    self.last_error = "session: %r" % (e,)
                finally:
                    self.connected = False
                    self._close()
                if not self._stop:
                    await self._idle(self._jitter(self.backoff_min_ms))
        finally:
            self._running = False

    # ------------------------------------------------------------------ connection
    def _jitter(self, ms):
        r = os.urandom(2)
        return ms // 2 + (((r[0] << 8) | r[1]) * (ms // 2) >> 16)

    async def _idle(self, ms):
        """Wait `ms` while disconnected (or until disconnect()), flushing the outbox to flash."""
        self.outbox.flush()
        t0 = ticks_ms()
        while not self._stop:
            left = ms - ticks_diff(ticks_ms(), t0)
            if left <= 0:
                return
            try:
                await _wait_for_ms(self._stopping.wait(), min(left, self.flush_interval_ms))
            except asyncio.TimeoutError:
                pass
            self.outbox.flush()

    def _close(self):
        w = self._writer
        self._reader = self._writer = None
        if w is not None:
            try:
                w.close()
            except OSError:
                pass
        gc.collect()  # a dropped connection leaves buffers behind; reclaim before reconnecting

    async def _connect(self):
        self._parser = codec.Parser(self.max_packet_bytes)
        self._reader, self._writer = await _wait_for_ms(
            self.open_connection(self.host, self.port), self.connect_timeout_ms)
        _nodelay(self._writer)
        self._writer.write(self._connect_packet)
        await self._writer.drain()
        pkt = await _wait_for_ms(self._read_packet(), self.connect_timeout_ms)
        if pkt.type != codec.CONNACK:
            raise codec.MQTTProtocolError("expected CONNACK, got %s" % codec.TYPE_NAMES[pkt.type])
        if pkt.return_code:
            raise MQTTConnectionError("broker refused the connection: %s"
                                      % codec.CONNACK_CODES[pkt.return_code])

    async def _read_packet(self):
        while True:
            pkt = self._parser.next_packet()
            if pkt is not None:
                return pkt
            rb = self._rbuf
            if rb is not None:  # MicroPython: read into one buffer, no allocation per read
                n = await self._reader.readinto(rb)
                if not n:
                    raise MQTTConnectionError("broker closed the connection")
                self._parser.feed(memoryview(rb)[:n])
            else:
                data = await self._reader.read(_READ_CHUNK)
                if not data:
                    raise MQTTConnectionError("broker closed the connection")
                self._parser.feed(data)
            self._last_rx_ms = ticks_ms()

    async def _session(self):
        self.connected = True
        self._why = None
        self._last_rx_ms = self._last_tx_ms = ticks_ms()
        self._ping_out = False
        self._done = asyncio.Event()
        # Packet ids of control packets from the old connection are void; outbox ones are kept
        # (a broker resuming a session expects the same ids on the DUP resend).
        self._pids = {}
        for e in self._unacked:
            self._pids[e[1]] = e[0]
            e[2] = True
        self._ctrl = []
        if self._subs:
            self._ctrl.append(codec.encode_subscribe(
                self._alloc_pid(_CONTROL), [(s[0], s[1]) for s in self._subs]))
        if self.will_topic is not None:
            self._ctrl.append(codec.encode_publish(self.will_topic, self.online_payload, 1,
                                                   True, False, self._alloc_pid(_CONTROL)))
        rt = asyncio.create_task(self._reader_loop())
        wt = asyncio.create_task(self._writer_loop())
        ka_ms = self.keepalive_s * 1000
        tick_ms = min(max(ka_ms // 4, 100), 1000) if ka_ms else 1000
        try:
            while not self._done.is_set():
                try:
                    await _wait_for_ms(self._done.wait(), tick_ms)
                except asyncio.TimeoutError:
                    pass
                if self.link_up is not None and not self.link_up():
                    self._end("the network link is down")
                    continue
                if not ka_ms or self._done.is_set():
                    continue
                now = ticks_ms()
                idle_rx = ticks_diff(now, self._last_rx_ms)
                if idle_rx >= ka_ms:
                    self.keepalive_timeouts += 1
                    self._end("no packet from the broker for %d ms" % idle_rx)
                elif not self._ping_out and (idle_rx >= ka_ms // 2
                                             or ticks_diff(now, self._last_tx_ms) >= ka_ms // 2):
                    self._ping_out = True
                    self._ctrl.append(codec.encode_pingreq())
                    self._wake.set()
        finally:
            for t in (rt, wt):
                t.cancel()
            for t in (rt, wt):
                try:
                    await t
                except BaseException:  # noqa: B036 - CancelledError, or the task's own error
                    pass

    def _end(self, why):
        if self._why is None:  # the first reason is the cause; later ones are consequences
            self._why = why
            self.last_error = why
        self._done.set()

    def _alloc_pid(self, owner):
        pid = self._next_pid
        while pid in self._pids:
            pid = pid % 65535 + 1
        self._next_pid = pid % 65535 + 1
        self._pids[pid] = owner
        return pid

    # ------------------------------------------------------------------ reader task
    async def _reader_loop(self):
        try:
            while True:
                pkt = await self._read_packet()
                await self._handle(pkt)
        except Exception as e:  # noqa: BLE001 - any failure ends this connection, run() retries
            self._end("read: %r" % (e,))

    async def _handle(self, pkt):
        t = pkt.type
        if t == codec.PUBACK:
            owner = self._pids.pop(pkt.packet_id, None)
            if owner is not None and owner != _CONTROL:
                for i in range(len(self._unacked)):
                    if self._unacked[i][1] == pkt.packet_id:
                        self._unacked.pop(i)
                        self.acked += 1
                        break
                self._advance()
                self._wake.set()
        elif t == codec.PUBLISH:
            self.received += 1
            if self.on_message is not None:
                try:
                    r = self.on_message(pkt.topic, pkt.payload)
                    if r is not None and hasattr(r, "send"):
                        await r
                except Exception:  # noqa: BLE001 - a bad callback must not kill the uplink
                    self.callback_errors += 1
            if pkt.qos:
                self._ctrl.append(codec.encode_puback(pkt.packet_id))
                self._wake.set()
        elif t == codec.SUBACK:
            self._pids.pop(pkt.packet_id, None)
            for rc in pkt.return_codes:
                if rc == codec.SUBACK_FAILURE:
                    self.sub_failures += 1
        elif t == codec.PINGRESP:
            self._ping_out = False
        else:
            raise codec.MQTTProtocolError("unexpected %s from the broker" % codec.TYPE_NAMES[t])

    def _advance(self):
        """Pop finished messages off the outbox; forget in-flight ones the outbox dropped."""
        ob = self.outbox
        while self._unacked and self._unacked[0][0] < ob.head_seq:
            self._pids.pop(self._unacked.pop(0)[1], None)
        if self._next_seq < ob.head_seq:
            self._next_seq = ob.head_seq
        limit = self._unacked[0][0] if self._unacked else self._next_seq
        if limit > ob.head_seq:
            ob.pop(limit - ob.head_seq)

    # ------------------------------------------------------------------ writer task
    async def _writer_loop(self):
        w = self._writer
        ob = self.outbox
        try:
            while True:
                self._wake.clear()
                if self._stop:
                    w.write(codec.encode_disconnect())
                    await w.drain()
                    self._end("disconnect() called")
                    return
                n = 0
                if self._ctrl:
                    pkts = self._ctrl
                    self._ctrl = []
                    for p in pkts:
                        w.write(p)
                        n += 1
                self._advance()
                blocked = False
                for e in self._unacked:
                    if e[2]:
                        msg = ob.get(e[0])
                        if msg is None:  # still on flash behind the head segment: wait for acks
                            blocked = True
                            break
                        w.write(codec.encode_publish(msg[0], msg[1], msg[2], msg[3], True, e[1]))
                        e[2] = False
                        self.resent += 1
                        n += 1
                # The cap on `n` bounds the bytes buffered before one drain (QoS 0 runs).
                while not blocked and len(self._unacked) < self.max_inflight and n < _MAX_BATCH:
                    msg = ob.get(self._next_seq)
                    if msg is None:
                        break
                    pid = 0
                    if msg[2]:
                        pid = self._alloc_pid(self._next_seq)
                        self._unacked.append([self._next_seq, pid, False])
                    w.write(codec.encode_publish(msg[0], msg[1], msg[2], msg[3], False, pid))
                    self._next_seq += 1
                    self.sent += 1
                    n += 1
                    if not msg[2]:
                        self._advance()
                if n:
                    await w.drain()
                    self._last_tx_ms = ticks_ms()
                    continue
                await self._wake.wait()
        except Exception as e:  # noqa: BLE001 - any failure ends this connection, run() retries
            self._end("write: %r" % (e,))
