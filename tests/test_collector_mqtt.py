"""The collector on a real MQTT broker: the embedded amqtt broker (fleet/sim/broker.py) and
mosquitto when installed. A CPython "gateway" publishes envelopes of telemetry for 20 nodes and
answers the collector's resend commands from the nodes' (complete) rings, as firmware does.

Checked: every reading stored exactly once - through QoS-1 duplicates, a collector stopped and
restarted (persistent session), a collector SIGKILLed mid-stream (gap repair), and a broker
SIGKILLed and restarted (reconnect + gap repair)."""
import asyncio
import os
import random
import time

import aiomqtt
import pytest

import protocol
from fleet.collector import CollectorConfig
from fleet.collector_mqtt import run_collector, start_collector_process
from fleet.home import FleetHome
from fleet.repair import RepairConfig
from fleet.sim.broker import (
    BrokerError,
    EmbeddedBroker,
    mosquitto_path,
    start_broker_process,
    start_mosquitto,
)
from fleet.store import SQLiteStore
from protocol.envelope import downlink_topic, uplink_topic

NET = 1
GW = 100
NODES = list(range(1, 21))
T0 = 1_700_000_000
FRAMES_PER_ENVELOPE = 50

pytestmark = pytest.mark.timeout(180)

FAST_REPAIR = dict(grace_s=0.5, retry_s=1.0, retry_max_s=3.0, follow_s=0.3, max_attempts=20, max_outstanding=64)
FAST_ARGS = ["--gap-grace-s", "0.5", "--resend-retry-s", "1", "--resend-attempts", "20"]


@pytest.fixture
def home(tmp_path):
    h = FleetHome(str(tmp_path / "home"))
    h.ensure()
    h.keys().init()
    with SQLiteStore(h.store_path) as s:
        s.register_nodes([{"node": n} for n in NODES] + [{"node": GW, "role": "gateway"}])
    return h


def fast_config():
    return CollectorConfig(batch_rows=2000, flush_interval_s=0.2, repair=RepairConfig(**FAST_REPAIR))


@pytest.fixture(params=["amqtt", "mosquitto"])
def broker(request, tmp_path):
    """A broker child process (so a test can SIGKILL it)."""
    if request.param == "mosquitto":
        if mosquitto_path() is None:
            pytest.skip("mosquitto is not installed (apt-get install mosquitto): only the embedded broker tested")
        os.makedirs(tmp_path / "mosquitto")
        bp = start_mosquitto(data_dir=str(tmp_path / "mosquitto"))
    else:
        bp = start_broker_process(log_path=str(tmp_path / "amqtt.log"))
    try:
        yield bp
    finally:
        bp.close()


class Gateway:
    """A gateway and its mesh of nodes, on MQTT: publishes envelopes of telemetry (QoS 1,
    retried across broker outages) and answers OP_RESEND from the nodes' rings (which hold
    everything: nothing may be lost) with the resent frames and a reply, like firmware/node.py."""

    def __init__(self, keys, port, seed=1):
        self.mesh = keys.mesh_key()
        self.node_keys = {n: keys.node_key(n) for n in NODES}
        self.port = port
        self.rnd = random.Random(seed)
        self.next_seq = {n: 0 for n in NODES}
        self.reply_seq = {n: 0 for n in NODES}
        self.cseq_seen = {n: 0 for n in NODES}
        self.eseq = 0
        self.resend_requests = 0
        self.connected = asyncio.Event()
        self.client = aiomqtt.Client("127.0.0.1", port, identifier=f"gw-{GW}", clean_session=False)
        self._task = None

    def frame(self, node, seq, k):
        readings = [protocol.Reading(dt_s=k - 1 - i, pm1=seq % 500, pm25=(seq * 7) % 900, pm10=300, rh=60, temp=250,
                                     n=30, flags=0) for i in range(k)]
        f = protocol.Telemetry(origin=node, seq=seq, time_s=T0 + seq, readings=readings, hops=2, cost=20)
        return protocol.encode(f, self.mesh, self.node_keys[node])

    def produce_envelope(self, n_frames=FRAMES_PER_ENVELOPE, nodes=NODES):
        frames = []
        for _ in range(n_frames):
            node = self.rnd.choice(nodes)
            k = self.rnd.randint(1, 3)
            frames.append(self.frame(node, self.next_seq[node], k))
            self.next_seq[node] += k
        return self.envelope(frames)

    def envelope(self, frames):
        self.eseq += 1
        return protocol.encode(protocol.Envelope(GW, self.eseq, [(T0 * 1000, -60, fb) for fb in frames]))

    def produced(self):
        return {(n, s) for n, top in self.next_seq.items() for s in range(top)}

    async def publish(self, payload, timeout_s=60):
        deadline = time.monotonic() + timeout_s
        while True:
            await asyncio.wait_for(self.connected.wait(), max(0.1, deadline - time.monotonic()))
            try:
                await self.client.publish(uplink_topic(NET, GW), payload, qos=1, timeout=5)
                return
            except aiomqtt.MqttError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    def start(self):
        self._task = asyncio.ensure_future(self._run())
        return self

    async def stop(self):
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self):
        while True:
            try:
                async with self.client:
                    await self.client.subscribe([(downlink_topic(NET, GW), 1), (downlink_topic(NET), 1)])
                    self.connected.set()
                    async for m in self.client.messages:
                        await self._on_downlink(bytes(m.payload))
            except aiomqtt.MqttError:
                self.connected.clear()
                await asyncio.sleep(0.2)

    async def _on_downlink(self, payload):
        for fb in protocol.decode(payload).frames:
            cmd = protocol.decode(fb, self.mesh)
            node = cmd.target
            protocol.decode(fb, self.mesh, self.node_keys[node])  # the node checks its auth tag
            if cmd.op != protocol.OP_RESEND or cmd.cseq <= self.cseq_seen[node]:
                continue
            self.cseq_seen[node] = cmd.cseq
            self.resend_requests += 1
            a, b = cmd.args
            b = min(b, self.next_seq[node] - 1)
            last = min(b, a + 47)  # at most 48 readings per request
            frames = [self.frame(node, s, min(12, last - s + 1)) for s in range(a, last + 1, 12)]
            self.reply_seq[node] += 1
            r = protocol.Reply(origin=node, seq=self.reply_seq[node], time_s=T0, cseq=cmd.cseq, code=0,
                               result=[a, last], hops=1)
            frames.append(protocol.encode(r, self.mesh, self.node_keys[node]))
            asyncio.ensure_future(self.publish(self.envelope(frames)))


def stored_pairs(home):
    with SQLiteStore(home.store_path) as s:
        return set(s.db.execute("SELECT node, seq FROM readings").fetchall())


def gap_states(home):
    with SQLiteStore(home.store_path) as s:
        return dict(s.db.execute("SELECT state, count(*) FROM gaps GROUP BY state").fetchall())


async def wait_all_stored(home, gw, timeout_s=90, heartbeat=True):
    """Wait until every reading the gateway produced is stored. The nodes keep reporting (one
    reading each per round), as real ones do, so a lost tail shows up as a gap."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = await asyncio.to_thread(stored_pairs, home)
        missing = gw.produced() - got
        if not missing:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(missing)} readings never stored, e.g. {sorted(missing)[:10]}; "
                                 f"gaps {gap_states(home)}")
        if heartbeat:
            await gw.publish(gw.envelope([gw.frame(n, gw.next_seq[n], 1) for n in NODES]))
            for n in NODES:
                gw.next_seq[n] += 1
        await asyncio.sleep(0.5)


def check_exactly_once(home, gw, got):
    assert got == gw.produced()
    with SQLiteStore(home.store_path) as s:
        total = s.db.execute("SELECT count(*) FROM readings").fetchone()[0]
        assert total == len(got)  # UNIQUE(node, seq) as well, but say it
        assert "lost" not in gap_states(home)
        return s.summary()


async def test_all_stored_exactly_once_through_the_embedded_broker(home):
    """In-process: embedded amqtt broker, run_collector task, QoS-1 duplicates."""
    async with EmbeddedBroker() as eb:
        stop = asyncio.Event()
        subscribed = asyncio.Event()
        task = asyncio.ensure_future(run_collector(home, eb.url, stop, config=fast_config(), progress_s=0,
                                                   on_subscribed=subscribed.set))
        gw = Gateway(home.keys(), eb.port).start()
        try:
            await asyncio.wait_for(subscribed.wait(), 20)
            await asyncio.wait_for(gw.connected.wait(), 20)
            for i in range(40):
                env = gw.produce_envelope()
                await gw.publish(env)
                if i % 10 == 0:
                    await gw.publish(env)  # a QoS-1 redelivery
            got = await wait_all_stored(home, gw, heartbeat=False)
            stop.set()
            snap = await asyncio.wait_for(task, 30)
        finally:
            stop.set()
            await gw.stop()
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    summary = check_exactly_once(home, gw, got)
    assert snap["duplicates"] >= 4 * FRAMES_PER_ENVELOPE and summary["duplicates"] == snap["duplicates"]
    assert snap["rejects"] == 0 and gw.resend_requests == 0


async def test_collector_stopped_and_restarted_persistent_session(home, broker):
    """A collector process stopped (SIGTERM) mid-stream and restarted: the broker kept its
    session and delivers what was published meanwhile (with mosquitto nothing needs repair)."""
    url = f"mqtt://127.0.0.1:{broker.port}"
    log_path = os.path.join(home.path, "collector.log")
    cp = await asyncio.to_thread(start_collector_process, home.path, url, log_path=log_path, extra_args=FAST_ARGS)
    gw = Gateway(home.keys(), broker.port).start()
    try:
        await asyncio.wait_for(gw.connected.wait(), 20)
        for _ in range(20):
            await gw.publish(gw.produce_envelope())
        assert await asyncio.to_thread(cp.stop) == 0
        for _ in range(20):  # published while the collector is away
            await gw.publish(gw.produce_envelope())
        await asyncio.to_thread(cp.start)
        got = await wait_all_stored(home, gw)
    finally:
        await gw.stop()
        await asyncio.to_thread(cp.stop)
    check_exactly_once(home, gw, got)
    print(f"[{broker.kind}] collector SIGTERM + restart: {gw.resend_requests} resend requests answered")
    if broker.kind == "mosquitto":
        assert gw.resend_requests == 0, cp.log_tail()  # the session delivered everything: no repair needed
    # amqtt 0.12 drops the QoS-1 message in flight when a persistent-session client disconnects
    # (it never redelivers it): gap repair recovers it.


async def test_collector_killed_mid_stream_then_gap_repair(home, broker):
    """SIGKILL loses what the collector acknowledged but had not flushed; after the restart the
    gaps are detected and the nodes' resends fill them."""
    url = f"mqtt://127.0.0.1:{broker.port}"
    log_path = os.path.join(home.path, "collector.log")
    cp = await asyncio.to_thread(start_collector_process, home.path, url, log_path=log_path, extra_args=FAST_ARGS)
    gw = Gateway(home.keys(), broker.port).start()
    try:
        await asyncio.wait_for(gw.connected.wait(), 20)
        for _ in range(30):
            await gw.publish(gw.produce_envelope())
        await asyncio.to_thread(cp.kill)
        for _ in range(10):
            await gw.publish(gw.produce_envelope())
        await asyncio.to_thread(cp.start)
        got = await wait_all_stored(home, gw)
    finally:
        await gw.stop()
        await asyncio.to_thread(cp.stop)
    check_exactly_once(home, gw, got)
    print(f"[{broker.kind}] collector SIGKILL: {gw.resend_requests} resend requests answered")


async def test_broker_killed_and_restarted_collector_reconnects(home, broker):
    """The broker SIGKILLed mid-stream and restarted on the same port: the collector (in-process)
    logs it, reconnects, resubscribes; what the broker lost is repaired by resends."""
    url = f"mqtt://127.0.0.1:{broker.port}"
    stop = asyncio.Event()
    subscribed = []
    task = asyncio.ensure_future(run_collector(home, url, stop, config=fast_config(), progress_s=0,
                                               on_subscribed=lambda: subscribed.append(time.monotonic())))
    gw = Gateway(home.keys(), broker.port).start()
    try:
        deadline = time.monotonic() + 20
        while not subscribed:
            assert time.monotonic() < deadline, "the collector never subscribed"
            await asyncio.sleep(0.05)
        await asyncio.wait_for(gw.connected.wait(), 20)
        for _ in range(20):
            await gw.publish(gw.produce_envelope())
        await asyncio.to_thread(broker.kill)
        await asyncio.sleep(1.0)  # the collector is without a broker for a while
        assert not task.done()
        try:
            await asyncio.to_thread(broker.restart)
        except BrokerError as e:
            pytest.fail(f"broker did not come back on port {broker.port}: {e}")
        for _ in range(20):
            await gw.publish(gw.produce_envelope())
        got = await wait_all_stored(home, gw)
        assert len(subscribed) >= 2  # it came back by itself
        stop.set()
        snap = await asyncio.wait_for(task, 30)
    finally:
        stop.set()
        await gw.stop()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    check_exactly_once(home, gw, got)
    print(f"[{broker.kind}] broker SIGKILL: {gw.resend_requests} resend requests answered, "
          f"{snap['gaps_recovered']} gaps recovered")


def _log_has(cp, text):
    with open(cp.log_path, errors="replace") as f:
        return text in f.read()


async def test_three_collectors_share_the_load_on_postgresql_leader_killed_nothing_lost(tmp_path, pg_url):
    """Issue 11: three `fleet collect --share` processes on mosquitto (MQTT 5 shared subscription)
    and one PostgreSQL store. One member is SIGKILLed mid-stream, then the repair leader: what
    they held unacknowledged dies with their clean sessions, a new leader takes over within
    seconds, and gap repair recovers every reading - stored exactly once - with every resend
    request asked for a real gap."""
    import json

    from fleet.store import open_url

    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto): shared subscriptions need it")
    h = FleetHome(str(tmp_path / "home"))
    h.ensure()
    h.keys().init()
    with open_url(pg_url) as s:
        s.register_nodes([{"node": n} for n in NODES] + [{"node": GW, "role": "gateway"}])
    os.makedirs(tmp_path / "mosquitto")
    bp = start_mosquitto(data_dir=str(tmp_path / "mosquitto"))
    url = f"mqtt://127.0.0.1:{bp.port}"
    args = FAST_ARGS + ["--store", pg_url, "--share", "city"]
    cps = []
    gw = None
    try:
        for i in range(3):
            cps.append(await asyncio.to_thread(start_collector_process, h.path, url, extra_args=args,
                                               log_path=str(tmp_path / f"c{i}.log")))
        deadline = time.monotonic() + 20
        while not any(_log_has(c, "leading gap repair") for c in cps):
            assert time.monotonic() < deadline, "no collector took the repair lease"
            await asyncio.sleep(0.1)
        leader = next(c for c in cps if _log_has(c, "leading gap repair"))
        gw = Gateway(h.keys(), bp.port).start()
        await asyncio.wait_for(gw.connected.wait(), 20)
        for _ in range(20):
            await gw.publish(gw.produce_envelope())
        victim = next(c for c in cps if c is not leader)
        await asyncio.to_thread(victim.kill)
        for _ in range(20):
            await gw.publish(gw.produce_envelope())
        await asyncio.to_thread(leader.kill)
        killed_at = time.monotonic()
        for _ in range(20):
            await gw.publish(gw.produce_envelope())
        (survivor,) = [c for c in cps if c not in (victim, leader)]
        while not _log_has(survivor, "leading gap repair"):
            assert time.monotonic() - killed_at < 30, "the survivor never took over gap repair"
            await asyncio.sleep(0.1)
        failover_s = time.monotonic() - killed_at

        def stored():
            with open_url(pg_url) as s:
                (pending,), = s.query("SELECT count(*) FROM gaps WHERE state IN ('open', 'requested')")
                return set(s.query("SELECT node, seq FROM readings")), pending

        deadline = time.monotonic() + 90
        while True:
            got, pending = await asyncio.to_thread(stored)
            missing = gw.produced() - got
            if not missing and not pending:  # every reading stored, and the leader saw it
                break
            assert time.monotonic() < deadline, (f"{len(missing)} readings never stored, e.g. {sorted(missing)[:10]}; "
                                                 f"{pending} gaps open")
            await gw.publish(gw.envelope([gw.frame(n, gw.next_seq[n], 1) for n in NODES]))
            for n in NODES:
                gw.next_seq[n] += 1
            await asyncio.sleep(0.5)
    finally:
        if gw is not None:
            await gw.stop()
        for c in cps:
            await asyncio.to_thread(c.stop)
        bp.close()
    with open_url(pg_url) as s:
        (total,), = s.query("SELECT count(*) FROM readings")
        gaps = s.query("SELECT node, first_seq, last_seq, state FROM gaps")
        requests = [(n, json.loads(d)) for n, d in s.query(
            "SELECT node, detail FROM events WHERE kind = 'resend_request'")]
    assert got == gw.produced() and total == len(got)  # every one, exactly once
    assert all(state == "recovered" for *_, state in gaps), gaps
    assert gw.resend_requests > 0, "the kills opened no gap: the test proves nothing"
    for node, d in requests:
        assert any(n == node and a <= d["last"] and d["first"] <= b for n, a, b, _ in gaps), (node, d)
    print(f"3 collectors, 2 SIGKILLed: {len(gaps)} real gaps, {len(requests)} resend requests recorded, "
          f"{gw.resend_requests} answered; leader failover {failover_s:.1f} s")
