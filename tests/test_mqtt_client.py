"""The gateway MQTT client (firmware/mqtt.py) running under the real MicroPython interpreter
(-X heapsize=160k) against the embedded amqtt broker and mosquitto, checked by a CPython
aiomqtt subscriber.

Brokers run as child processes so they can be SIGKILLed. mosquitto cases are skipped, with the
reason, when it is not installed. Every process and task is torn down in a finally block.
"""
import asyncio
import json
import os
import signal
import sys

import aiomqtt
import pytest
from mp_support import ROOT, micropython_bin

from firmware import mqtt_codec as codec
from fleet.sim.broker import mosquitto_path, start_broker_process, start_mosquitto

pytestmark = pytest.mark.timeout(180)

MP_SCRIPT = os.path.join(ROOT, "tests", "mp_mqtt_publisher.py")
HEAP = "160k"
KINDS = ["amqtt", "mosquitto"]


def _start_broker(kind):
    if kind == "mosquitto" and mosquitto_path() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto); amqtt cases still run")
    return start_broker_process() if kind == "amqtt" else start_mosquitto()


@pytest.fixture(params=KINDS)
def broker(request):
    bp = _start_broker(request.param)
    try:
        yield bp
    finally:
        bp.close()


def _seq(payload):
    return int(payload.split(b":", 1)[0])


def _first_occurrences(seqs):
    seen = set()
    out = []
    for s in seqs:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


async def _until(pred, timeout_s, what, event=None, detail=lambda: ""):
    """Wait until pred() is true, waking on `event` (or every 20 ms); fail after timeout_s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not pred():
        left = deadline - loop.time()
        if left <= 0:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}. {detail()}")
        if event is not None:
            event.clear()
            try:
                await asyncio.wait_for(event.wait(), min(left, 0.5))
            except asyncio.TimeoutError:
                pass
        else:
            await asyncio.sleep(0.02)


class Collector:
    """aiomqtt subscriber (persistent session) that reconnects and resubscribes on its own."""

    def __init__(self, port, topic, client_id="collector"):
        self.port = port
        self.topic = topic
        self.client_id = client_id
        self.msgs = []  # (topic, payload, retain)
        self.changed = asyncio.Event()
        self.subscribed = asyncio.Event()
        self.connections = 0
        self._task = None

    def payloads(self, topic_prefix=""):
        return [p for t, p, _ in self.msgs if t.startswith(topic_prefix)]

    async def __aenter__(self):
        self._task = asyncio.create_task(self._run())
        await _until(self.subscribed.is_set, 20, "the collector to subscribe")
        return self

    async def __aexit__(self, *exc):
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    async def _run(self):
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", self.port, identifier=self.client_id,
                                          clean_session=False, keepalive=10) as c:
                    await c.subscribe(self.topic, qos=1)
                    self.connections += 1
                    self.subscribed.set()
                    async for m in c.messages:
                        self.msgs.append((str(m.topic), bytes(m.payload), m.retain))
                        self.changed.set()
            except aiomqtt.MqttError:
                self.subscribed.clear()
                await asyncio.sleep(0.05)


class MPClient:
    """tests/mp_mqtt_publisher.py under MicroPython; collects its stdout lines."""

    def __init__(self, **args):
        self.args = args
        self.lines = []
        self.changed = asyncio.Event()
        self.proc = None
        self._reader = None
        self._stderr = b""

    async def start(self):
        argv = [micropython_bin(), "-X", "heapsize=" + HEAP, MP_SCRIPT]
        argv += [f"{k}={v}" for k, v in self.args.items()]
        self.proc = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        self._reader = asyncio.create_task(self._read())
        await self.wait_line("START", 20)
        return self

    async def _read(self):
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.decode().rstrip("\n"))
            self.changed.set()
        self._stderr = await self.proc.stderr.read()
        self.changed.set()

    def line(self, prefix):
        for ln in self.lines:
            if ln.startswith(prefix):
                return ln
        return None

    def detail(self):
        return (f"micropython returncode={self.proc.returncode}; last stdout lines: "
                f"{self.lines[-5:]}; stderr: {self._stderr.decode(errors='replace')[-1500:]}")

    async def wait_line(self, prefix, timeout_s):
        def seen():
            if self.line(prefix) is None and self._reader.done():
                pytest.fail(f"micropython ended without printing {prefix!r}. {self.detail()}")
            return self.line(prefix) is not None
        await _until(seen, timeout_s, f"{prefix!r} from the MicroPython client", self.changed, self.detail)
        return self.line(prefix)

    def done_stats(self):
        ln = self.line("DONE ")
        return json.loads(ln[5:]) if ln else None

    def signal(self, sig):
        if self.proc and self.proc.returncode is None:
            self.proc.send_signal(sig)

    async def kill(self):
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.kill()
        await asyncio.wait_for(self.proc.wait(), 10)
        if self._reader:
            await asyncio.wait_for(self._reader, 10)

    async def wait_exit(self, timeout_s):
        await asyncio.wait_for(self.proc.wait(), timeout_s)
        await asyncio.wait_for(self._reader, 10)
        return self.proc.returncode


class FreezingProxy:
    """TCP proxy between the MicroPython client and the broker that parses the client->broker
    stream with our codec. `freeze()` stops forwarding on the current connections, both ways:
    PUBLISHes written after that never reach the broker and are never acknowledged; new
    connections forward normally. `cut()` closes every connection. Lets a test make
    "unacknowledged" a known, non-empty set, or a connection silently dead. freeze_after=K
    freezes by itself at the read that carries the K-th PUBLISH, holding that read back: the
    held set is never empty, whatever the speed of the machine."""

    def __init__(self, upstream_port, freeze_after=None):
        self.upstream_port = upstream_port
        self.freeze_after = freeze_after
        self._conns = []  # [frozen flag] per connection
        self.forwarded = []  # Publish packets the broker received
        self.held = []  # Publish packets held back while frozen (the broker never saw them)
        self.connections = 0
        self._pumps = []
        self._writers = []
        self._server = None
        self.port = None

    async def start(self):
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, cr, cw):
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            cw.close()
            return
        self.connections += 1
        self._writers += [cw, uw]
        conn = [False]
        self._conns.append(conn)
        parser = codec.Parser(1 << 20)
        self._pumps.append(asyncio.create_task(self._pump(cr, uw, parser, conn)))
        self._pumps.append(asyncio.create_task(self._pump(ur, cw, None, conn)))

    async def _pump(self, r, w, parser, conn):
        try:
            while True:
                data = await r.read(65536)
                if not data:
                    break
                frozen = conn[0]
                if parser is not None:
                    parser.feed(data)
                    pubs = []
                    while (pkt := parser.next_packet()) is not None:
                        if pkt.type == codec.PUBLISH:
                            pubs.append(pkt)
                    if not frozen and self.freeze_after is not None and pubs \
                            and len(self.forwarded) + len(pubs) >= self.freeze_after:
                        self.freeze_after = None
                        self.freeze()  # this read, carrying the K-th PUBLISH, is the first held back
                        frozen = True
                    (self.held if frozen else self.forwarded).extend(pubs)
                if not frozen:
                    w.write(data)
                    await w.drain()
        except (OSError, codec.MQTTError):
            pass
        finally:
            if not conn[0]:
                w.close()

    def freeze(self):
        for conn in self._conns:
            conn[0] = True

    async def cut(self):
        """Close every connection and forward normally again."""
        for w in self._writers:
            w.close()
        for t in self._pumps:
            t.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        self._writers, self._pumps, self._conns = [], [], []

    async def close(self):
        await self.cut()
        if self._server:
            self._server.close()
            await self._server.wait_closed()


# ------------------------------------------------------------------------------------ tests
async def test_qos1_messages_arrive_in_order(broker, tmp_path):
    n = 1500
    mp = MPClient(port=broker.port, n=n, id="gw-order", topic="rm/order", maxq=16)
    try:
        async with Collector(broker.port, "rm/order/#") as col:
            await mp.start()
            await _until(lambda: len(col.msgs) >= n, 60, f"{n} messages at the subscriber",
                         col.changed, lambda: f"got {len(col.msgs)}; " + mp.detail())
            await mp.wait_line("DONE ", 30)
        seqs = [_seq(p) for p in col.payloads()]
        assert seqs == list(range(n))  # nothing lost, nothing duplicated, in order
        # four topics, one order: the per-topic streams are in order too
        for k in range(4):
            assert [_seq(p) for p in col.payloads(f"rm/order/{k}")] == list(range(k, n, 4))
        st = mp.done_stats()
        assert st["acked"] == n and st["dropped"] == 0 and st["reconnects"] == 0
        assert await mp.wait_exit(20) == 0
    finally:
        await mp.kill()


@pytest.mark.parametrize("kind", KINDS)
async def test_unacknowledged_messages_resent_after_broker_sigkill(kind, tmp_path):
    n = 2000
    bp = _start_broker(kind)
    proxy = await FreezingProxy(bp.port, freeze_after=100).start()
    mp = MPClient(port=proxy.port, n=n, id="gw-kill", topic="rm/kill", dir=str(tmp_path / "ob"),
                  ram=16, stat_ms=1000)
    try:
        async with Collector(bp.port, "rm/kill/#") as col:
            await mp.start()
            await _until(lambda: proxy.held, 60, "a PUBLISH held back by the proxy frozen after 100")
            # Everything the broker did receive reaches the subscriber before the kill, so the
            # broker's own in-memory losses cannot blur what the client is responsible for.
            forwarded = {_seq(p.payload) for p in proxy.forwarded}
            await _until(lambda: forwarded <= {_seq(p) for p in col.payloads()}, 30,
                         "the subscriber to get every forwarded message", col.changed)
            held = list(proxy.held)
            held_qos1 = [p for p in held if p.qos == 1]
            assert held_qos1, "no QoS-1 message was in flight when the proxy froze"

            bp.kill()  # SIGKILL, like a crash
            assert not bp.alive()
            bp.restart()
            await _until(lambda: col.connections >= 2 and col.subscribed.is_set(), 30,
                         "the subscriber to reconnect to the restarted broker")
            before = proxy.connections
            await proxy.cut()  # the client's TCP connection dies now

            await _until(lambda: set(range(n)) <= {_seq(p) for p in col.payloads()}, 90,
                         f"all {n} messages after the restart", col.changed,
                         lambda: f"missing {len(set(range(n)) - {_seq(p) for p in col.payloads()})}; "
                         + mp.detail())
            await mp.wait_line("DONE ", 30)

        assert proxy.connections > before  # the client reconnected
        # Every message the broker never saw was written again, with DUP and its packet id.
        resent = {(p.packet_id, p.payload) for p in proxy.forwarded if p.dup}
        for p in held_qos1:
            assert (p.packet_id, p.payload) in resent, f"held message {p.payload!r} not resent with DUP"
        # At-least-once, in order: the first arrival of each message follows the outbox order.
        assert _first_occurrences([_seq(p) for p in col.payloads()]) == list(range(n))
        st = mp.done_stats()
        assert st["reconnects"] >= 1 and st["resent"] >= len(held_qos1)
        assert st["acked"] == n and st["dropped"] == 0
    finally:
        await mp.kill()
        await proxy.close()
        bp.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_last_will_offline_when_client_process_killed(kind):
    bp = _start_broker(kind)
    mp = MPClient(port=bp.port, n=3, id="gw-will", topic="rm/will/data", will="rm/will/gw-will/state",
                  hold=1, ka=5)
    try:
        async with Collector(bp.port, "rm/will/gw-will/state", client_id="watcher") as col:
            await mp.start()
            await _until(lambda: b"online" in col.payloads(), 30, "the retained 'online' state",
                         col.changed, mp.detail)
            await mp.wait_line("DONE ", 30)
            mp.signal(signal.SIGKILL)
            await mp.wait_exit(10)
            await _until(lambda: b"offline" in col.payloads(), 30, "the will 'offline'", col.changed)
        assert col.payloads() == [b"online", b"offline"]
        # The will is retained: a newcomer reads the gateway's state.
        async with Collector(bp.port, "rm/will/gw-will/state", client_id="late") as late:
            await _until(lambda: late.msgs, 10, "the retained state", late.changed)
        assert late.msgs[0][1:] == (b"offline", True)
    finally:
        await mp.kill()
        bp.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_resubscribes_after_broker_sigkill(kind):
    bp = _start_broker(kind)
    mp = MPClient(port=bp.port, n=0, id="gw-sub", sub="rm/cmd/gw-sub/#", hold=1)
    try:
        await mp.start()
        await mp.wait_line("DONE ", 30)
        async with aiomqtt.Client("127.0.0.1", bp.port, identifier="op1") as op:
            # Retry until the client's SUBSCRIBE is in place (it is sent right after CONNACK).
            async def first_cmd():
                for i in range(200):
                    await op.publish("rm/cmd/gw-sub/ping", b"one-%d" % i, qos=1)
                    if mp.line("MSG rm/cmd/gw-sub/ping one-"):
                        return
                    await asyncio.sleep(0.05)
            await asyncio.wait_for(first_cmd(), 20)
        bp.kill()
        bp.restart()
        async with aiomqtt.Client("127.0.0.1", bp.port, identifier="op2") as op:
            async def second_cmd():
                for i in range(400):  # the client reconnects after its backoff, then resubscribes
                    await op.publish("rm/cmd/gw-sub/ping", b"two-%d" % i, qos=1)
                    if mp.line("MSG rm/cmd/gw-sub/ping two-"):
                        return
                    await asyncio.sleep(0.05)
                pytest.fail("no command reached the client after the broker restart. " + mp.detail())
            await asyncio.wait_for(second_cmd(), 40)
    finally:
        await mp.kill()
        bp.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_silent_dead_connection_detected_by_keepalive(kind):
    """The broker stays up but the connection goes silent (the proxy forwards nothing more):
    the client notices within its keepalive, reconnects and delivers everything."""
    n = 1500
    bp = _start_broker(kind)
    proxy = await FreezingProxy(bp.port).start()
    mp = MPClient(port=proxy.port, n=n, id="gw-silent", topic="rm/silent", ka=2, maxq=16, stat_ms=500)
    try:
        async with Collector(bp.port, "rm/silent/#") as col:
            await mp.start()
            await _until(lambda: len(col.msgs) >= 100, 60, "the first 100 messages", col.changed,
                         mp.detail)
            proxy.freeze()  # no cut: no EOF, no RST - only silence
            await _until(lambda: set(range(n)) <= {_seq(p) for p in col.payloads()}, 60,
                         f"all {n} messages", col.changed, mp.detail)
            await mp.wait_line("DONE ", 30)
        assert proxy.connections == 2
        st = mp.done_stats()
        assert st["reconnects"] == 1 and st["acked"] == n and st["keepalive_timeouts"] == 1
        assert "no packet from the broker" in st["last_error"]
        assert _first_occurrences([_seq(p) for p in col.payloads()]) == list(range(n))
    finally:
        await mp.kill()
        await proxy.close()
        bp.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_idle_connection_kept_alive_by_pings(kind):
    """keepalive 1 s and nothing to send for 3 s: PINGREQs keep the session (the broker would
    drop a client silent for 1.5 x keepalive)."""
    bp = _start_broker(kind)
    mp = MPClient(port=bp.port, n=1, id="gw-idle", topic="rm/idle", ka=1, hold=1, stat_ms=250)
    try:
        await mp.start()
        await mp.wait_line("DONE ", 30)
        await _until(lambda: sum(ln.startswith("STAT ") for ln in mp.lines) >= 12, 30,
                     "3 s of idle STAT lines", mp.changed, mp.detail)
        last = json.loads([ln for ln in mp.lines if ln.startswith("STAT ")][-1][5:])
        assert last["connected"] and last["connects"] == 1 and last["last_error"] is None
    finally:
        await mp.kill()
        bp.close()


async def test_outbox_spills_to_flash_and_is_sent_after_a_reset(tmp_path):
    """Broker unreachable: the client queues 300 messages (RAM 8, the rest on flash), is killed
    like a power cut, restarts with the same flash directory and delivers all of them, in order,
    once a broker is there."""
    n = 300
    ob_dir = str(tmp_path / "outbox")
    dead_port = _dead_port()
    first = MPClient(port=dead_port, n=n, id="gw-spill", topic="rm/spill", dir=ob_dir, ram=8, flush=1)
    try:
        await first.start()
        ln = await first.wait_line("FLUSHED ", 30)
        assert ln == f"FLUSHED {n}"
        segs = [f for f in os.listdir(ob_dir) if f.endswith(".seg")]
        assert segs, "nothing was written to flash"
        first.signal(signal.SIGKILL)
        await first.wait_exit(10)
    finally:
        await first.kill()

    bp = start_broker_process()
    second = MPClient(port=bp.port, n=0, id="gw-spill", topic="rm/spill", dir=ob_dir, ram=8)
    try:
        async with Collector(bp.port, "rm/spill/#") as col:
            await second.start()
            assert second.line("START") == f"START queued={n}"
            await _until(lambda: len(col.msgs) >= n, 60, f"{n} reloaded messages", col.changed,
                         second.detail)
            await second.wait_line("DONE ", 30)
        assert [_seq(p) for p in col.payloads()] == list(range(n))
        assert await second.wait_exit(20) == 0
        assert os.listdir(ob_dir) == []  # drained: the flash directory is compacted
    finally:
        await second.kill()
        bp.close()


def _dead_port():
    """A local port with nothing listening (connections are refused)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_publisher_script_also_runs_on_cpython():
    """The same client code runs under CPython asyncio (used by the discrete-event simulator's
    gateway model): a smoke check without a broker — it queues to flash and reports."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.Popen([sys.executable, MP_SCRIPT, f"port={_dead_port()}", "n=20",
                                 f"dir={d}/ob", "ram=4", "flush=1"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            line = b""
            while not line.startswith(b"FLUSHED"):
                line = proc.stdout.readline()
                if not line:
                    pytest.fail(proc.stderr.read().decode()[-2000:])
            assert line.strip() == b"FLUSHED 20"
        finally:
            proc.kill()
            proc.wait(timeout=10)
