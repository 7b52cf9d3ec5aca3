"""Benchmark: collector ingest rate (frames verified + readings stored per second).

Gateways batch air frames into envelopes (default 50 frames each); each frame carries `k`
readings from one of `--nodes` registered nodes, with valid hop and end-to-end tags.

  in-process   Ingest.on_message() + flush on a fresh store (no MQTT): the core's ceiling
               (node keys already derived, as in a running collector). One writer, batches of
               10,000 readings per commit, on each store backend: SQLite (the home's fleet.db)
               and PostgreSQL (a throwaway cluster started here from Debian's packages, default
               durability: fsync and synchronous_commit on; tests/pg.py), with the ratio.
  live         a publisher process sends the envelopes (QoS 1) through a broker process to
               run_collector() in this process; timed from the first publish to the last reading
               stored. Broker, publisher and collector share this machine's CPUs.
  shared       issue 11: N collector processes (`--share`: journal, one repair leader) on one
               PostgreSQL store, each given every Nth envelope as a broker's shared subscription
               deals them, in-process (no broker: the store's bound); 1 vs 3 members, the ratio.
               And through mosquitto: N `fleet collect --share` processes draining a backlog of
               the envelopes published to the group (the broker's share of the bound shows).
  backlog      the envelopes are queued in the collector's persistent session while it is away,
               then it starts and drains them: collector + broker only.

Brokers: the embedded amqtt broker (as a process) and mosquitto when installed; each broker case
runs on each store backend too. Prints the figures; asserts nothing (speed is not a test).

    .venv/bin/python bench/collector_bench.py [--envelopes 1000] [--frames 50] [--k 1,6] [--nodes 5000]
                                              [--stores sqlite,postgresql]
"""
import argparse
import asyncio
import os
import random
import shutil
import struct
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(1, os.path.join(ROOT, "tests"))  # tests/pg.py: the throwaway PostgreSQL cluster

import protocol  # noqa: E402
from fleet.collector import CollectorConfig, Ingest  # noqa: E402
from fleet.collector_mqtt import run_collector  # noqa: E402
from fleet.home import FleetHome  # noqa: E402
from fleet.sim.broker import mosquitto_path, start_broker_process, start_mosquitto  # noqa: E402
from protocol.envelope import uplink_topic  # noqa: E402

NET = 1
GW = 1
T0 = 1_700_000_000


def make_home(n_nodes, store_url=None):
    path = tempfile.mkdtemp(prefix="collector-bench-")
    home = FleetHome(path)
    if store_url:
        home = home.with_overrides({"store.url": store_url})
    home.ensure()
    home.keys().init()
    with home.store(create=True) as s:
        s.register_nodes([{"node": GW, "role": "gateway"}] + [{"node": n} for n in range(2, n_nodes + 2)])
    return home


def make_envelopes(home, n_env, n_frames, k, n_nodes, seed=1):
    """Pre-encoded envelopes (not timed): consecutive seqs per node, k readings per frame."""
    keys = home.keys()
    mesh = protocol.auth.Hmac(keys.mesh_key())
    rnd = random.Random(seed)
    nodes = list(range(2, n_nodes + 2))
    next_seq = dict.fromkeys(nodes, 0)
    hmacs = {}
    envs = []
    for e in range(n_env):
        items = []
        for _ in range(n_frames):
            node = rnd.choice(nodes)
            h = hmacs.get(node)
            if h is None:
                h = hmacs[node] = protocol.auth.Hmac(keys.node_key(node))
            rs = [protocol.Reading(dt_s=k - 1 - i, pm1=100, pm25=rnd.randrange(900), pm10=300, rh=60, temp=250,
                                   n=30, flags=0) for i in range(k)]
            f = protocol.Telemetry(origin=node, seq=next_seq[node], time_s=T0 + e, readings=rs, hops=3, cost=30)
            next_seq[node] += k
            items.append((T0 * 1000 + e, -70, protocol.encode(f, mesh, h)))
        envs.append(protocol.encode(protocol.Envelope(GW, e, items)))
    return envs, sum(next_seq.values())


def bench_in_process(home, envs, n_readings, n_frames):
    store = home.store()
    ing = Ingest(store, home.keys(), NET, config=CollectorConfig(batch_rows=10000))
    for node in store.node_ids():  # steady state: node keys derived (a one-off ~16 us per node)
        ing._node_hmac(node)
    topic = uplink_topic(NET, GW)
    t = time.perf_counter()
    for env in envs:
        ing.on_message(topic, env)
    ing.close()
    dt = time.perf_counter() - t
    snap = ing.snapshot()
    store.close()
    assert snap["stored"] == n_readings and snap["rejects"] == 0, snap
    return dt


def _member(url, home_path, envs, go, out):
    """One shared collector process of bench_shared: waits for `go`, ingests its envelopes."""
    home = FleetHome(home_path).with_overrides({"store.url": url})
    store = home.store()
    ing = Ingest(store, home.keys(), NET, config=CollectorConfig(batch_rows=10000, share="bench"))
    for node in store.node_ids():
        ing._node_hmac(node)
    topic = uplink_topic(NET, GW)
    go.wait()
    t, cpu = time.perf_counter(), time.process_time()
    for env in envs:
        ing.on_message(topic, env)
    ing.close()
    out.put((time.perf_counter() - t, ing.snapshot()["stored"], time.process_time() - cpu))
    store.close()


def bench_shared(home, url, envs, n_readings, members):
    """Wall time for `members` processes to store every envelope (dealt round robin)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_member, args=(url, home.path, envs[i::members], go, out)) for i in range(members)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # every member opened its store and derived its keys
    busy0 = _cpu_busy()
    t = time.perf_counter()
    go.set()
    results = [out.get(timeout=600) for _ in procs]
    dt = time.perf_counter() - t
    busy1 = _cpu_busy()
    for p in procs:
        p.join(30)
    stored = sum(r[1] for r in results)
    assert stored == n_readings, (stored, n_readings)
    machine = (busy1[0] - busy0[0]) / max(1e-9, busy1[1] - busy0[1])
    collectors = sum(r[2] for r in results) / dt / (os.cpu_count() or 1)
    return dt, machine, collectors


def _cpu_busy():
    """(busy, total) jiffies of all CPUs (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v) - idle, sum(v)


async def bench_share_mosquitto(home, url, envs, n_readings, members, timeout_s=600):
    """Backlog drained by `members` `fleet collect --share` processes through mosquitto: the
    envelopes are published first (the members subscribed, then stopped: mosquitto queues for
    the group's persistent sessions), then the members start; timed to the last reading stored."""
    from fleet.collector_mqtt import start_collector_process

    bp = start_mosquitto()
    broker = f"mqtt://127.0.0.1:{bp.port}"
    args = ["--store", url, "--share", "bench", "--progress-s", "0"]
    cps = []
    try:
        for i in range(members):  # persistent sessions (a client id given), subscribed once
            cp = await asyncio.to_thread(start_collector_process, home.path, broker, client_id=f"bench-{i}",
                                         extra_args=args)
            cps.append(cp)
        for cp in cps:
            await asyncio.to_thread(cp.stop)
        await _run_publisher(bp.port, write_envelopes(envs))
        t = time.perf_counter()
        for cp in cps:
            await asyncio.to_thread(cp.start)
        await _wait_count(home, n_readings, timeout_s)
        return time.perf_counter() - t
    finally:
        for cp in cps:
            await asyncio.to_thread(cp.stop)
        bp.close()


# ---- through a broker ------------------------------------------------------------------------

PUBLISHER = r"""
import asyncio, struct, sys
import aiomqtt
port, path, topic, window = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
data = open(path, "rb").read()
envs, i = [], 0
while i < len(data):
    (n,) = struct.unpack_from(">I", data, i)
    envs.append(data[i + 4:i + 4 + n])
    i += 4 + n
async def main():
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-gw", max_inflight_messages=window) as c:
        sem = asyncio.Semaphore(window)
        async def one(p):
            async with sem:
                await c.publish(topic, p, qos=1, timeout=120)
        await asyncio.gather(*(one(p) for p in envs))
asyncio.run(main())
"""


def write_envelopes(envs):
    fd, path = tempfile.mkstemp(prefix="envs-", suffix=".bin")
    with os.fdopen(fd, "wb") as f:
        for e in envs:
            f.write(struct.pack(">I", len(e)))
            f.write(e)
    return path


def count_readings(home):
    with home.store() as s:
        return s.query("SELECT count(*) FROM readings")[0][0]


async def _wait_count(home, want, timeout_s):
    deadline = time.monotonic() + timeout_s
    while True:
        n = await asyncio.to_thread(count_readings, home)
        if n >= want:
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {n} of {want} readings stored after {timeout_s} s")
        await asyncio.sleep(0.05)


async def _run_publisher(port, env_path, window=64):
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", PUBLISHER, str(port), env_path,
                                                uplink_topic(NET, GW), str(window), cwd=ROOT)
    return proc


async def bench_broker(home, envs, n_readings, port, mode, timeout_s=600):
    """Return seconds from the first publish (live) or the collector start (backlog) until all
    readings are stored."""
    env_path = write_envelopes(envs)
    url = f"mqtt://127.0.0.1:{port}"
    cfg = CollectorConfig(batch_rows=10000, flush_interval_s=0.5)
    try:
        stop = asyncio.Event()
        subscribed = asyncio.Event()
        task = asyncio.ensure_future(run_collector(home, url, stop, config=cfg, progress_s=0,
                                                   client_id="bench-collector", on_subscribed=subscribed.set))
        await asyncio.wait_for(subscribed.wait(), 30)
        if mode == "backlog":
            stop.set()
            await task
            proc = await _run_publisher(port, env_path)
            await asyncio.wait_for(proc.wait(), timeout_s)
            stop = asyncio.Event()
            t0 = time.perf_counter()
            task = asyncio.ensure_future(run_collector(home, url, stop, config=cfg, progress_s=0,
                                                       client_id="bench-collector"))
            t1 = await _wait_count(home, n_readings, timeout_s)
        else:
            t0 = time.perf_counter()
            proc = await _run_publisher(port, env_path)
            t1 = await _wait_count(home, n_readings, timeout_s)
            await asyncio.wait_for(proc.wait(), 60)
        stop.set()
        snap = await asyncio.wait_for(task, 60)
        assert snap["rejects"] == 0, snap
        return t1 - t0
    finally:
        os.unlink(env_path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--envelopes", type=int, default=1000)
    ap.add_argument("--frames", type=int, default=50, help="frames per envelope")
    ap.add_argument("--k", default="1,6", help="readings per frame (comma-separated cases)")
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--brokers", default="amqtt,mosquitto")
    ap.add_argument("--stores", default="sqlite,postgresql",
                    help="store backends (postgresql: a throwaway cluster is started, if installed)")
    ap.add_argument("--members", type=int, default=3, help="shared collectors on PostgreSQL (0: no shared case)")
    args = ap.parse_args(argv)
    ks = [int(x) for x in args.k.split(",")]
    n_frames = args.envelopes * args.frames
    print(f"collector ingest: {args.envelopes} envelopes x {args.frames} frames = {n_frames} frames, "
          f"{args.nodes} nodes, on {os.cpu_count()} CPUs")
    stores = args.stores.split(",")
    cluster = None
    if "postgresql" in stores:
        from pg import PgCluster, PgUnavailable

        try:
            cluster = PgCluster(durable=True).start()
            print(f"PostgreSQL: a throwaway cluster ({cluster.bindir.split('/')[-2] if cluster.bindir else '?'}), "
                  f"default durability (fsync on, synchronous_commit on), on this machine's CPUs")
        except (PgUnavailable, OSError) as e:
            print(f"PostgreSQL: unavailable ({e}); its cases are skipped")
            stores.remove("postgresql")
    try:
        for k in ks:
            _bench_k(args, k, n_frames, stores, cluster)
    finally:
        if cluster is not None:
            cluster.stop()
    return 0


def _store_url(backend, cluster):
    """None (the home's SQLite file) or a fresh schema of the PostgreSQL cluster."""
    if backend == "sqlite":
        return None
    return cluster.new_schema()[1]


def _bench_k(args, k, n_frames, stores, cluster):
    rates = {}
    for backend in stores:
        home = make_home(args.nodes, _store_url(backend, cluster))
        try:
            t = time.perf_counter()
            envs, n_readings = make_envelopes(home, args.envelopes, args.frames, k, args.nodes)
            if not rates:
                mb = sum(map(len, envs)) / 1e6
                print(f"\n{k} reading(s)/frame: {n_readings} readings, {mb:.1f} MB of envelopes "
                      f"(built in {time.perf_counter() - t:.1f} s)")
            dt = bench_in_process(home, envs, n_readings, n_frames)
            rates[backend] = n_frames / dt
            label = "in-process" if backend == "sqlite" else "in-process " + backend
            print(f"  {label:20s} {n_frames / dt:9.0f} frames/s {n_readings / dt:9.0f} readings/s "
                  f"{args.envelopes / dt:7.0f} envelopes/s")
        finally:
            shutil.rmtree(home.path, ignore_errors=True)
    if "sqlite" in rates and "postgresql" in rates:
        print(f"  in-process postgresql / sqlite: {rates['postgresql'] / rates['sqlite']:.2f}x (one writer)")
    if "postgresql" in stores and args.members:
        def in_proc(home, url, envs, n_readings, m):
            dt, machine, mine = bench_shared(home, url, envs, n_readings, m)
            return dt, f"  CPUs busy {machine:.0%} (collectors {mine:.0%}, the rest PostgreSQL)"

        def via_broker(home, url, envs, n_readings, m):
            busy0 = _cpu_busy()
            dt = asyncio.run(bench_share_mosquitto(home, url, envs, n_readings, m))
            busy1 = _cpu_busy()
            machine = (busy1[0] - busy0[0]) / max(1e-9, busy1[1] - busy0[1])
            # near 100 %: the machine's CPUs are the bound (members, mosquitto, PostgreSQL and the
            # publisher share them), not the broker's design
            return dt, f"  CPUs busy {machine:.0%}"

        cases = [("shared pg in-process", in_proc)]
        if mosquitto_path() is not None and "mosquitto" in args.brokers:
            cases.append(("mosquitto+pg --share backlog", via_broker))
        for label, run in cases:
            rate = {}
            for m in (1, args.members):
                url = _store_url("postgresql", cluster)
                home = make_home(args.nodes, url)
                try:
                    envs, n_readings = make_envelopes(home, args.envelopes, args.frames, k, args.nodes)
                    dt, extra = run(home, url, envs, n_readings, m)
                    rate[m] = n_frames / dt
                    print(f"  {label} x{m:<2d} {n_frames / dt:9.0f} frames/s {n_readings / dt:9.0f} readings/s{extra}")
                except Exception as e:  # noqa: BLE001 - report and go on with the other cases
                    print(f"  {label} x{m}: failed: {type(e).__name__}: {e}")
                finally:
                    shutil.rmtree(home.path, ignore_errors=True)
            if len(rate) == 2:
                print(f"  {label}: {args.members} members / 1 = {rate[args.members] / rate[1]:.2f}x")
    for kind in args.brokers.split(","):
        if kind == "mosquitto" and mosquitto_path() is None:
            print("  mosquitto: not installed, skipped")
            continue
        for backend in stores:
            for mode in ("live", "backlog"):
                home = make_home(args.nodes, _store_url(backend, cluster))
                bp = start_mosquitto() if kind == "mosquitto" else start_broker_process()
                label = kind if backend == "sqlite" else f"{kind}+pg"
                try:
                    envs, n_readings = make_envelopes(home, args.envelopes, args.frames, k, args.nodes)
                    dt = asyncio.run(bench_broker(home, envs, n_readings, bp.port, mode))
                    print(f"  {label:12s} {mode:8s}{n_frames / dt:9.0f} frames/s {n_readings / dt:9.0f} "
                          f"readings/s {args.envelopes / dt:7.0f} envelopes/s")
                except Exception as e:  # noqa: BLE001 - report and go on with the other cases
                    print(f"  {label:12s} {mode:8s}failed: {type(e).__name__}: {e}")
                finally:
                    bp.close()
                    shutil.rmtree(home.path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
