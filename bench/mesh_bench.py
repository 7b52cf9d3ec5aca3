"""Benchmark: the mesh router's CPU cost, for the discrete-event simulator and the node.

    .venv/bin/python bench/mesh_bench.py [--side 10] [--hours 1] [--no-micropython]

Prints (asserts nothing; speed is not a test):
- per-call costs of the router's hot paths on CPython: a forwarded telemetry frame
  (on_recv + poll_tx + on_send_done), a received beacon, an originated frame, a tick;
  the same under the real `micropython` unix port (this file runs itself there);
- a side x side grid (default 10 x 10 = 100 nodes, gateway in a corner, 4-neighbour links with
  10 % loss, diagonals with 50 %, MAC retries 2) in tests/fake_radio.py for `--hours` of
  virtual time with a reading every 5 minutes: wall time per node per virtual hour, split
  into router time and harness time, and the traffic per node-hour.
Figures are for this machine; an ESP32 at 240 MHz runs MicroPython roughly 10-20x slower
than the unix port here.
"""
import sys

_MP = sys.implementation.name == "micropython"

if _MP:
    import time

    def _now_us():
        return time.ticks_us()

    def _diff_us(a, b):
        return time.ticks_diff(a, b)
else:
    import os
    import time

    ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for p in (ROOT, os.path.join(ROOT, "tests")):
        if p not in sys.path:
            sys.path.insert(0, p)

    def _now_us():
        return time.perf_counter_ns() // 1000

    def _diff_us(a, b):
        return a - b

from firmware.mesh import BROADCAST, Router  # noqa: E402
from protocol import BF_GATEWAY, Beacon, Reading, Telemetry, decode, encode  # noqa: E402
from protocol.auth import Hmac  # noqa: E402

MESH = Hmac(bytes(range(32)))
NODE = Hmac(b"n" * 32)


def _mac(i):
    return bytes((2, 0, 0, 0, i >> 8, i & 255))


def _frame(origin, seq, hops, cost):
    f = Telemetry(origin=origin, seq=seq, time_s=1700000000, readings=[Reading(0, 10, 120, 200, 55, 215, 60, 0)])
    f.etag = decode(encode(f, MESH, NODE), MESH).etag
    f.hops = hops
    f.cost = cost
    return f


def _routed_router():
    r = Router(50, _mac(50), False, MESH)
    r.tick(0)
    r.on_recv(_mac(1), encode(Beacon(1, 1, 0, 0, 0, BF_GATEWAY), MESH), -50, 1)
    while r.poll_tx() is not None:
        pass
    while r.poll_event() is not None:
        pass
    return r


def micro_best(n, runs=3):
    """micro() run `runs` times; the best figure of each (a busy machine only adds time)."""
    best = micro(n)
    for _ in range(runs - 1):
        again = micro(n)
        best = [(best[i][0], min(best[i][1], again[i][1])) for i in range(len(best))]
    return best


def micro(n=2000):
    """Return [(name, microseconds per call)] for the router's hot paths."""
    out = []
    frames = [encode(_frame(900 + (i % 7), i, 3, 60), MESH) for i in range(n)]
    r = _routed_router()
    src = _mac(99)
    now = 10
    t0 = _now_us()
    for b in frames:
        now += 1
        r.on_recv(src, b, -60, now)
        tx = r.poll_tx()
        while tx is not None and tx[1] == BROADCAST:
            tx = r.poll_tx()
        if tx is not None:
            r.on_send_done(tx[0], True, now)
    out.append(("forward (on_recv + poll_tx + on_send_done)", _diff_us(_now_us(), t0) / n))
    beacons = [encode(Beacon(7, i & 255, 20, 2, 0, 0), MESH) for i in range(n)]
    t0 = _now_us()
    for b in beacons:
        now += 1
        r.on_recv(_mac(7), b, -60, now)
    out.append(("beacon received", _diff_us(_now_us(), t0) / n))
    own = [_frame(50, i, 0, 0) for i in range(n)]
    t0 = _now_us()
    for f in own:
        now += 1
        r.originate(encode(f, MESH, NODE, at_origin=True), now, None)  # node.py's path: one encode
        tx = r.poll_tx()
        while tx is not None and tx[1] == BROADCAST:
            tx = r.poll_tx()
        if tx is not None:
            r.on_send_done(tx[0], True, now)
        while r.poll_event() is not None:
            pass
    out.append(("originate (encode at_origin + splice + send + sent event)", _diff_us(_now_us(), t0) / n))
    t0 = _now_us()
    for _ in range(n):
        now += 1
        r.tick(now)
        _ = r.next_deadline_ms
    out.append(("tick + next_deadline_ms (nothing due)", _diff_us(_now_us(), t0) / n))
    return out


def grid(side=10, hours=1, seed=1):
    """Run a side x side grid for `hours`; return a dict of figures."""
    from fake_radio import FakeRadio, SensorApp, link_grid, mac_of

    router_us = [0]
    methods = ("on_recv", "on_send_done", "tick", "originate", "poll_tx", "poll_event")
    originals = {m: getattr(Router, m) for m in methods}

    def timed(fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter_ns()
            try:
                return fn(*a, **kw)
            finally:
                router_us[0] += (time.perf_counter_ns() - t0) / 1000
        return wrapper

    radio = FakeRadio(seed=seed, mac_retries=2, keep_events=False)
    ids = list(range(1, side * side + 1))
    for i in ids:
        radio.add(Router(i, mac_of(i), i == 1, MESH))
    link_grid(radio, ids, side, loss=0.1, diag_loss=0.5)
    for i in ids[1:]:
        SensorApp(NODE, MESH, interval_ms=300_000).attach(radio, radio.nodes[i])
    uplinks = [0]  # readings that reached the gateway (a frame carries up to 12)

    def count(radio, node, ev):
        if ev[0] == "uplink":
            uplinks[0] += len(decode(ev[1], MESH).readings)
    radio.on_event = count
    t0 = time.perf_counter()
    radio.run(3_600_000)  # boot and the first hour (fast Trickle, estimates settling)
    boot_s = time.perf_counter() - t0
    base = {n.node_id: dict(n.router.stats) for n in radio.nodes.values()}
    up0 = uplinks[0]
    made0 = sum(len(n.app.made) for n in radio.nodes.values() if n.app is not None)
    for m in methods:
        setattr(Router, m, timed(originals[m]))
    try:
        t0 = time.perf_counter()
        radio.run(3_600_000 + int(hours * 3_600_000))
        wall_s = time.perf_counter() - t0
    finally:
        for m in methods:
            setattr(Router, m, originals[m])
    st = [dict((k, v - base[n.node_id][k]) for k, v in n.router.stats.items()) for n in radio.nodes.values()]
    node_hours = len(ids) * hours
    made = sum(len(n.app.made) for n in radio.nodes.values() if n.app is not None) - made0
    return {
        "first hour (boot), wall s": round(boot_s, 2),
        "then, measured: virtual hours": hours,
        "wall s": round(wall_s, 2),
        "per node per virtual hour, total (ms)": round(wall_s * 1000 / node_hours, 2),
        "per node per virtual hour, router only (ms)": round(router_us[0] / 1000 / node_hours, 2),
        "harness share (%)": round(100 * (1 - router_us[0] / 1e6 / wall_s), 1),
        "beacons tx per node-hour": round(sum(s["beacons_tx"] for s in st) / node_hours, 1),
        "unicast sends per node-hour": round(sum(s["data_tx"] for s in st) / node_hours, 1),
        "frames forwarded per node-hour": round(sum(s["forwarded"] for s in st) / node_hours, 1),
        "readings made / reached the gateway": "%d / %d" % (made, uplinks[0] - up0),
        "parent changes": sum(s["parent_changes"] for s in st),
    }


def _print(title, items):
    print(title)
    for k, v in (items.items() if isinstance(items, dict) else items):
        print("  %-48s %s" % (k, ("%.1f" % v) if isinstance(v, float) else v))


def main(argv):
    if _MP:
        _print("hot paths, MicroPython unix port (us per call, best of 3)", micro_best(500))
        return 0
    import argparse
    import subprocess

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=10, help="grid side (nodes = side**2)")
    ap.add_argument("--hours", type=float, default=1.0, help="virtual hours to simulate")
    ap.add_argument("--no-micropython", action="store_true", help="skip the MicroPython run")
    args = ap.parse_args(argv[1:])
    _print("hot paths, CPython %s (us per call, best of 3)" % sys.version.split()[0], micro_best(2000))
    if not args.no_micropython:
        mp = os.path.join(os.path.dirname(sys.executable), "micropython")
        try:
            proc = subprocess.run([mp, "-X", "heapsize=4M", os.path.abspath(__file__)], cwd=ROOT,
                                  capture_output=True, text=True, timeout=300,
                                  env=dict(os.environ, MICROPYPATH=ROOT + ":.frozen"))
            print(proc.stdout.rstrip() or proc.stderr.strip()[-500:], flush=True)
        except (OSError, subprocess.TimeoutExpired) as e:
            print("micropython run skipped: %s" % e, file=sys.stderr)
    _print("%d-node grid in tests/fake_radio.py (after a first hour)" % (args.side * args.side),
           grid(args.side, args.hours))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
