"""How many ESP-NOW frames per second the virtual rig's radio medium sustains on this machine.

    .venv/bin/python bench/medium_bench.py [--duration S] [--quick] [--micropython N]

The medium runs in this process; the load comes from another process (so they do not share a
GIL): one UDP socket per virtual node speaking the medium's datagram protocol, each node sending
its next frame as soon as the previous one's TXDONE arrives (like the sim HAL's asend). So the
figure is the closed-loop rate the medium delivers, limited by its CPU or by airtime:

* sparse unicast / broadcast: a 200-node line (35 m): neighbourhoods are small, many frames are on
  the air at once in different places, the medium's CPU is the limit;
* dense broadcast: a 5x5 grid (35 m) where everyone hears everyone: carrier sense serialises the
  neighbourhood, so airtime (~1.2 ms per 100-byte frame) is the limit, as on a real channel;
* --micropython N: N real MicroPython processes running firmware/hal/sim_radio.py, each
  broadcasting back to back (what the virtual nodes themselves can push).

Prints one line per scenario and a JSON summary. Figures vary by tens of percent between runs.
"""
import argparse
import asyncio
import json
import os
import selectors
import socket
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PAYLOAD_LEN = 100


def load_main(spec_path):
    """The load generator process: closed-loop senders, one UDP socket per node."""
    with open(spec_path) as f:
        spec = json.load(f)
    medium = ("127.0.0.1", spec["medium_port"])
    sel = selectors.DefaultSelector()
    nodes = []
    for i, (mac_hex, port, dst_hex) in enumerate(spec["nodes"]):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", port))
        s.setblocking(False)
        s.sendto(b"H" + bytes.fromhex(mac_hex), medium)
        nodes.append([s, bytes.fromhex(dst_hex), 0])
        sel.register(s, selectors.EVENT_READ, i)
    payload = bytes(range(PAYLOAD_LEN))
    time.sleep(0.2)  # let the hellos land

    def send(i):
        s, dst, seq = nodes[i]
        seq = (seq + 1) & 0xFFFF
        nodes[i][2] = seq
        s.sendto(b"T" + struct.pack(">H", seq) + dst + payload, medium)

    for i in range(len(nodes)):
        send(i)
    done = rx = 0
    t_end = time.monotonic() + spec["duration_s"]
    while time.monotonic() < t_end:
        for key, _ in sel.select(0.1):
            i = key.data
            s = nodes[i][0]
            while True:
                try:
                    d = s.recv(512)
                except BlockingIOError:
                    break
                if d[:1] == b"D":
                    done += 1
                    send(i)
                elif d[:1] == b"R":
                    rx += 1
    print(json.dumps({"txdone": done, "rx": rx}))


async def _scenario(name, topo, pairs, duration_s):
    from fleet.sim.medium import Medium

    m = Medium(topo, seed=1)
    await m.start("127.0.0.1", 0, control=False)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"medium_port": m.port, "duration_s": duration_s + 2.0,
                   "nodes": [[topo.node(a).mac.hex(), m.port_for(a), dst.hex()] for a, dst in pairs]}, f)
        spec = f.name
    proc = subprocess.Popen([sys.executable, __file__, "--_load", spec], stdout=subprocess.PIPE, text=True)
    try:
        await m.wait_attached([a for a, _ in pairs], timeout_s=10)
        await asyncio.sleep(1.0)
        s0, c0, t0 = m.stats(), time.process_time(), time.monotonic()
        await asyncio.sleep(duration_s)
        s1, c1, t1 = m.stats(), time.process_time(), time.monotonic()
        dt = t1 - t0
        out = {
            "scenario": name, "nodes": len(pairs),
            "frames_per_s": round((s1["offered"] - s0["offered"]) / dt),
            "receptions_per_s": round((s1["delivered"] - s0["delivered"]) / dt),
            "medium_cpu_pct": round(100 * (c1 - c0) / dt),
        }
        await asyncio.get_running_loop().run_in_executor(None, proc.wait, duration_s + 30)
        return out
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.unlink(spec)
        await m.stop()


MP_SENDER = r"""
import sys, asyncio
sys.path.insert(0, sys.argv[1])
from firmware.hal.sim_radio import SimRadio, BROADCAST
r = SimRadio(bytes.fromhex(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
async def main():
    r.active(True)
    r.add_peer(BROADCAST)
    await asyncio.sleep_ms(300)
    msg = bytes(100)
    while True:
        await r.asend(BROADCAST, msg)
        while r.any():
            await r.arecv()
asyncio.run(main())
"""


async def _micropython(n, duration_s):
    from fleet.sim import topology as topo_mod
    from fleet.sim.medium import Medium

    topo = topo_mod.line(n, spacing_m=35)
    mp = os.path.join(os.path.dirname(sys.executable), "micropython")
    m = Medium(topo, seed=1)
    await m.start("127.0.0.1", 0, control=False)
    procs = []
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(MP_SENDER)
        script = f.name
    try:
        for node in topo.nodes:
            procs.append(subprocess.Popen([mp, "-X", "heapsize=64k", script, ROOT, node.mac.hex(),
                                           str(m.port_for(node.id)), str(m.port)]))
        await m.wait_attached(timeout_s=20)
        await asyncio.sleep(1.0)
        s0, t0 = m.stats(), time.monotonic()
        await asyncio.sleep(duration_s)
        s1, dt = m.stats(), time.monotonic() - t0
        return {"scenario": "micropython nodes broadcasting", "nodes": n,
                "frames_per_s": round((s1["offered"] - s0["offered"]) / dt),
                "receptions_per_s": round((s1["delivered"] - s0["delivered"]) / dt)}
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
        os.unlink(script)
        await m.stop()


async def run(duration_s, quick, n_micropython):
    from fleet.sim import topology as topo_mod
    from fleet.sim.topology import BROADCAST_MAC

    line_n = 100 if quick else 200
    line = topo_mod.line(line_n, spacing_m=35)
    grid = topo_mod.grid(5, 5, spacing_m=35)
    results = []
    nxt = [(n.id, line.node(n.id + 1 if n.id < line_n else n.id - 1).mac) for n in line.nodes]
    results.append(await _scenario("sparse unicast (line, next pole)", line, nxt, duration_s))
    results.append(await _scenario("sparse broadcast (line)", line, [(n.id, BROADCAST_MAC) for n in line.nodes],
                                   duration_s))
    results.append(await _scenario("dense broadcast (5x5 grid, one channel)", grid,
                                   [(n.id, BROADCAST_MAC) for n in grid.nodes], duration_s))
    if n_micropython:
        results.append(await _micropython(n_micropython, duration_s))
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds measured per scenario")
    ap.add_argument("--quick", action="store_true", help="smaller line, shorter runs")
    ap.add_argument("--micropython", type=int, default=20, metavar="N",
                    help="also run N MicroPython sim_radio nodes (0: skip)")
    ap.add_argument("--_load", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._load:
        load_main(a._load)
        return
    duration = 2.0 if a.quick else a.duration
    results = asyncio.run(run(duration, a.quick, a.micropython))
    for r in results:
        extra = " (medium CPU %d %%)" % r["medium_cpu_pct"] if "medium_cpu_pct" in r else ""
        print("%-42s %4d nodes  %6d frames/s  %7d receptions/s%s" % (
            r["scenario"], r["nodes"], r["frames_per_s"], r["receptions_per_s"], extra))
    print(json.dumps({"medium": results}))


if __name__ == "__main__":
    main()
