"""Benchmark: messages/s from the gateway MQTT client (firmware/mqtt.py under the real
`micropython` unix port, -X heapsize=160k) to the embedded amqtt broker and to mosquitto.

For each broker, payload size, QoS and in-flight window it runs tests/mp_mqtt_publisher.py
(N messages, producer kept 16 ahead so the RAM outbox never drops) while a CPython aiomqtt
subscriber counts arrivals, and prints:
  - client msg/s: N / (first publish -> last PUBACK), as measured inside MicroPython;
  - e2e msg/s: N / (subscriber's first -> last arrival);
  - backlog drain: N messages queued on flash while the broker was down, then delivered after
    a restart of the client (reload + send + ack), msg/s.
Prints the figures; asserts nothing (speed is not a test). Loopback TCP on one machine.

    .venv/bin/python bench/mqtt_bench.py [--n 5000] [--brokers amqtt,mosquitto]
"""
import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import aiomqtt  # noqa: E402

from fleet.sim.broker import free_port, mosquitto_path, start_broker_process, start_mosquitto  # noqa: E402

MP = os.path.join(os.path.dirname(sys.executable), "micropython")
SCRIPT = os.path.join(ROOT, "tests", "mp_mqtt_publisher.py")
HEAP = "160k"


async def _run_publisher(port, n, extra, topic, expect=None):
    """Start the publisher with a subscriber attached; return (client stats, e2e seconds)."""
    arrivals = []
    expect = n if expect is None else expect
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-sub", clean_session=True) as sub:
        await sub.subscribe(topic + "/#", qos=1)
        argv = [MP, "-X", "heapsize=" + HEAP, SCRIPT, f"port={port}", f"n={n}", f"topic={topic}"] + extra
        proc = await asyncio.create_subprocess_exec(*argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        try:
            async def count():
                async for _m in sub.messages:
                    arrivals.append(time.perf_counter())
                    if len(arrivals) >= expect:
                        return
            try:
                await asyncio.wait_for(count(), 120)
            except asyncio.TimeoutError:
                pass  # reported below as fewer arrivals than expected
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    done = [ln for ln in out.decode().splitlines() if ln.startswith("DONE ")]
    if not done:
        raise SystemExit("publisher failed: " + err.decode()[-2000:])
    st = json.loads(done[0][5:])
    if st["dropped"]:
        print(f"  {topic}: the outbox dropped {st['dropped']} messages", file=sys.stderr)
    if len(arrivals) < expect:
        print(f"  {topic}: only {len(arrivals)} of {expect} arrived at the subscriber", file=sys.stderr)
    return st, (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else float("nan")


def _fmt(x):
    return f"{x:8.0f}"


async def bench_broker(kind, n):
    bp = start_broker_process() if kind == "amqtt" else start_mosquitto()
    rows = []
    try:
        for qos, size, inflight in ((1, 32, 8), (1, 32, 1), (1, 32, 32), (1, 256, 8),
                                    (1, 1024, 8), (0, 32, 8)):
            st, e2e_s = await _run_publisher(bp.port, n, [f"qos={qos}", f"size={size}",
                                                          f"inflight={inflight}", "maxq=16",
                                                          "rambytes=32768"],
                                             f"bench/{kind}/{qos}/{size}/{inflight}")
            client_rate = n / (st["elapsed_ms"] / 1000) if st["elapsed_ms"] else float("inf")
            rows.append((f"QoS {qos}, {size:4d} B, inflight {inflight:2d}", client_rate, n / e2e_s))
        # Backlog drain: queue n messages on flash with no broker, then deliver them.
        d = tempfile.mkdtemp(prefix="mqtt-bench-")
        try:
            ob = os.path.join(d, "ob")
            p = subprocess.Popen([MP, "-X", "heapsize=" + HEAP, SCRIPT, f"port={free_port()}", f"n={n}",
                                  f"dir={ob}", "ram=16", "flush=1", "size=32", f"topic=bench/{kind}/drain"], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                while not p.stdout.readline().startswith(b"FLUSHED"):
                    if p.poll() is not None:
                        raise SystemExit("offline publisher failed: " + p.stderr.read().decode()[-2000:])
            finally:
                p.kill()
                p.wait(timeout=10)
            flash_kb = sum(os.path.getsize(os.path.join(ob, f)) for f in os.listdir(ob)) / 1024
            st, e2e_s = await _run_publisher(bp.port, 0, [f"dir={ob}", "ram=16"],
                                             f"bench/{kind}/drain", expect=n)
            rows.append((f"backlog drain from flash ({flash_kb:.0f} KB)",
                         n / (st["elapsed_ms"] / 1000), n / e2e_s))
        finally:
            shutil.rmtree(d, ignore_errors=True)
    finally:
        bp.close()
    return rows


async def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="messages per run")
    ap.add_argument("--brokers", default="amqtt,mosquitto")
    args = ap.parse_args(argv)
    print(f"MicroPython client (micropython -X heapsize={HEAP}) -> broker on 127.0.0.1, {args.n} messages per run")
    for kind in args.brokers.split(","):
        if kind == "mosquitto" and mosquitto_path() is None:
            print("mosquitto: skipped (not installed)")
            continue
        rows = await bench_broker(kind, args.n)
        print(f"\n{kind}:")
        print(f"  {'case':42s} {'client msg/s':>12s} {'e2e msg/s':>10s}")
        for name, client_rate, e2e_rate in rows:
            print(f"  {name:42s} {_fmt(client_rate):>12s} {_fmt(e2e_rate):>10s}")


if __name__ == "__main__":
    asyncio.run(main())
