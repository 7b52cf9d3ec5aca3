"""Firmware heap on the virtual rig's MicroPython, in board terms: import cost per module, and
per role the live heap at its peak and the free heap at the worst moment of each phase, and the
smallest heap each role runs in.

    .venv/bin/python bench/heap_bench.py [--imports] [--heaps 124,112] [--gateway-heaps 1024,128]

Run it on the 32-bit interpreter (build/mp32/micropython32, `make mp32`): only there are the
figures board figures (fleet/sim/interp.py; a 64-bit interpreter gets the heap scaled and the
bench says so).

--imports: each device module imported one by one, in the order a node (then a gateway)
  imports them, from the same .mpy build the rig runs, with gc.collect() before and after: the
  bytes each one pins (bytecode, interned names, module tables). The sim HAL lines are what a
  virtual node carries that a board does not (firmware/hal/esp32.py cannot be imported off a
  board; its own cost is measured with stand-ins for machine/network).
--heaps: node heaps (board KB) to try, the gateway at interp.GATEWAY_HEAP_KB; --gateway-heaps:
  gateway heaps to try, the nodes at interp.RIG_NODE_HEAP_KB. Each trial is a 3-node line (a
  gateway, two nodes; offered load one reading every 2 s) driven through the phases
      boot      start until each node's first status (sent at 20 s);
      steady    30 s with a route, readings flowing;
      spill     the gateway cut off for 40 s: the ring spills unsent readings to flash;
      resend    route back; each node answers a downlink "resend readings" of 48 readings.
  The node logs "heap low FREE" (firmware/node.py heap_sample: free bytes right after a
  gc.collect(), taken every 5 s, at each status, after each spill and each command). A phase's
  worst is its lowest such line; peak live = heap - that. A trial passes when every phase ran,
  no console shows a MemoryError or a traceback and no process restarted.
Everything runs in a temporary directory; every process is stopped at the end of each trial.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import protocol  # noqa: E402
from fleet.home import FleetHome  # noqa: E402
from fleet.sim import interp  # noqa: E402
from fleet.sim import topology as topo_mod  # noqa: E402
from fleet.sim.handle import RigHandle  # noqa: E402
from fleet.sim.rig import RigOptions  # noqa: E402

PHASES = ("boot", "steady", "spill", "resend")
FREE_FLOOR = 16 * 1024  # the budget: at least this much free after a collect at the worst moment

# What a node imports, in order (firmware/main.py run(), then Node), then a gateway's extra.
NODE_MODULES = ("protocol", "firmware.compat", "firmware.fsutil", "firmware.config", "firmware.trickle",
                "firmware.mesh", "firmware.ring", "firmware.counters", "firmware.sampler", "firmware.drivers",
                "firmware.app", "firmware.node")
SIM_HAL_MODULES = ("firmware.hal.sim_radio", "firmware.hal.simsensor", "firmware.hal.sim", "firmware.hal.simload")
GATEWAY_MODULES = ("firmware.mqtt_codec", "firmware.mqtt", "firmware.outbox", "firmware.ota_seed",
                   "firmware.gateway")

_IMPORT_SCRIPT = r"""
import sys, gc
sys.path[:0] = [%(build)r]
if %(stubs)r:
    class _Stub:
        def __init__(self, *a, **k): pass
        def __getattr__(self, n): return _Stub()
        def __call__(self, *a, **k): return _Stub()
    for n in ("machine", "network"):
        sys.modules[n] = _Stub()
gc.collect()
base = prev = gc.mem_alloc()
for name in %(mods)r:
    __import__(name)
    gc.collect()
    a = gc.mem_alloc()
    print("%%s %%d" %% (name, a - prev))
    prev = a
print("TOTAL %%d" %% (prev - base))
"""


# A node booted up to Node() on each HAL, same config and flash, as firmware/main.py run() boots
# it (its module included; the config loader dropped): what the sim HAL pins over the board's. The board's side runs firmware/hal/esp32.py over stand-ins for machine, network and
# aioespnow (their objects live in C on a board); ESP-NOW's receive buffer, which MicroPython
# allocates on the Python heap, is added as ESPNOW_RXBUF.
ESPNOW_RXBUF = 526
_BOOT_SCRIPT = r"""
import sys, gc
sys.path[:0] = [%(build)r]
board = %(board)r
if board:
    class _Stub:
        def __init__(self, *a, **k): pass
        def __getattr__(self, n): return _Stub()
        def __call__(self, *a, **k): return _Stub()
    class _Wlan(_Stub):
        def config(self, *a, **k): return b"\x02\x00\x00\x00\x00\x02" if a else None
    class _Net(_Stub):
        WLAN = _Wlan
        STA_IF = 0
    class _Esp(_Stub):
        peers_table = {}
    class _AioEsp(_Stub):
        AIOESPNow = _Esp
    sys.modules["machine"] = _Stub()
    sys.modules["network"] = _Net()
    sys.modules["aioespnow"] = _AioEsp()
import asyncio
gc.collect()
base = gc.mem_alloc()
if not board:  # the rig's `machine` and start-up (a board's machine module is in C, off the heap)
    sys.path.insert(0, %(node_fs)r)
    import _rignode
    sys.path.pop(0)
    sys.modules["machine"] = _rignode
import firmware.main  # a running node keeps it (its run() is on the stack)
from firmware.compat import unload
from firmware.fsutil import PosixFS
from firmware import config
fs = PosixFS(%(flash)r)
cfg = config.settings(config.load_config(fs))  # what firmware/main.py run() keeps
del config
unload("firmware.config", "protocol.text")
if board:
    from firmware.hal.esp32 import Esp32Hal
    hal = Esp32Hal(fs)
else:
    from firmware.hal.sim import SimHal
    hal = SimHal(cfg, fs, %(flash)r)
from firmware.node import Node
node = Node(hal, cfg, None)
gc.collect()
print("PINNED %%d" %% (gc.mem_alloc() - base))
"""


def boot_pinned(build, board):
    """Bytes pinned by a node booted up to Node() (imports and objects), on the sim or board HAL."""
    from firmware.config_check import dump_config

    with tempfile.TemporaryDirectory(prefix="redmesh-flash-") as flash:
        cfg = {"config_version": 1, "node_id": 2, "role": "node", "net_id": 1, "node_key": bytes(32),
               "mesh_key": bytes(range(32)), "fleet_pub": bytes(32), "continuous": True, "sensor": "pms5003t",
               "sim": {"medium_port": 9, "my_port": 9, "mac": b"\x02\x00\x00\x00\x00\x02"}}
        with open(os.path.join(flash, "config.cbor"), "wb") as f:
            f.write(dump_config(cfg))
        node_fs = os.path.join(ROOT, "fleet", "sim", "node_fs")
        code = _BOOT_SCRIPT % {"build": build, "board": board, "flash": flash, "node_fs": node_fs}
        proc = subprocess.run([interp.micropython_bin(), "-X", "heapsize=1024k", "-c", code], capture_output=True,
                              text=True, timeout=60, cwd=flash)
        m = re.search(r"PINNED (\d+)", proc.stdout)
        if not m:
            raise SystemExit("boot measurement failed:\n" + (proc.stdout + proc.stderr)[-2000:])
        return int(m.group(1)) + (ESPNOW_RXBUF if board else 0)


def _build_mpy(out):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import mpy_build

    fails = mpy_build.build(out)
    if fails:
        raise SystemExit("mpy-cross failed on: " + ", ".join(f for f, _ in fails))


def import_costs(build, mods, stubs=False):
    """[(module, bytes pinned)] and the total, imported one by one in a fresh interpreter."""
    mp = interp.micropython_bin()
    code = _IMPORT_SCRIPT % {"build": build, "mods": list(mods), "stubs": stubs}
    proc = subprocess.run([mp, "-X", "heapsize=1024k", "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=build)
    rows = []
    total = None
    for line in proc.stdout.splitlines():
        name, _, n = line.partition(" ")
        if name == "TOTAL":
            total = int(n)
        elif n.isdigit():
            rows.append((name, int(n)))
    if total is None:
        raise SystemExit("import measurement failed:\n" + (proc.stdout + proc.stderr)[-2000:])
    return rows, total


def print_imports():
    with tempfile.TemporaryDirectory(prefix="redmesh-mpy-") as build:
        _build_mpy(build)
        print("import cost, bytes pinned after gc.collect() (%s, .mpy)" % _interp_name())
        for title, mods, stubs in (("plain node", NODE_MODULES, False),
                                   ("sim HAL (virtual nodes only)", NODE_MODULES + SIM_HAL_MODULES, False),
                                   ("board HAL (stand-ins for machine/network)",
                                    NODE_MODULES + ("firmware.hal.esp32",), True),
                                   ("gateway, on top of a node", NODE_MODULES + GATEWAY_MODULES, False)):
            rows, total = import_costs(build, mods, stubs)
            skip = 0 if title == "plain node" else len(NODE_MODULES)
            print("  %s:" % title)
            for name, n in rows[skip:]:
                print("    %-26s %6d" % (name, n))
            print("    %-26s %6d" % ("total" if not skip else "total of these", sum(n for _, n in rows[skip:])))
        sim = boot_pinned(build, False)
        board = boot_pinned(build, True)
        print("  booted to Node(), imports and objects: sim HAL %d, board HAL %d (+%d B ESP-NOW rxbuf): "
              "the sim HAL and the rig's machine module (fleet/sim/node_fs/_rignode.py) cost %d B more (interp.SIM_HAL_ALLOWANCE_KB = %d)"
              % (sim, board, ESPNOW_RXBUF, sim - board, interp.SIM_HAL_ALLOWANCE_KB))


def _interp_name():
    mp = interp.micropython_bin()
    return "%s, %s" % (os.path.basename(mp), "32-bit" if interp.is_32bit(mp) else "64-bit: NOT board figures")


def _console(d, node_id):
    return os.path.join(d, "sim", "nodes", str(node_id), "console.log")


def _size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _lows(path, start, end):
    with open(path, "rb") as f:
        f.seek(start)
        text = f.read(max(0, end - start)).decode("utf-8", "replace")
    return [int(x) for x in re.findall(r"^heap low (\d+)", text, re.M)]


def _resend_frame(home, target, a, b):
    """A downlink OP_RESEND a..b for `target`, as the collector builds it (fleet/collector.py)."""
    ks = home.keys()
    store = home.store()
    try:
        cseq = store.next_cseq(target)
    finally:
        store.close()
    cmd = protocol.Command(target=target, cseq=cseq, op=protocol.OP_RESEND, args=[a, b])
    return protocol.encode(cmd, ks.mesh_key(), ks.node_key(target))


def trial(node_kb, gateway_kb, log=None):
    """Run the phases at these heaps; return a result dict (see main's printing)."""
    with tempfile.TemporaryDirectory(prefix="redmesh-heap-") as d:
        home = FleetHome.resolve(d)
        home.ensure()
        home.keys().init()
        topo = topo_mod.line(3, spacing_m=35, n_gateways=1, seed=2)
        gw = topo.gateways()[0]
        ids = [n.id for n in topo.nodes]
        nodes = [i for i in ids if i != gw]
        rig = RigHandle(home, topo, RigOptions(heap=node_kb, gateway_heap=gateway_kb, offered_interval_s=2,
                                               report_interval_s=31),
                        log=log or (lambda *a: None))
        marks = {}
        done = []
        failed = None

        def mark(phase):
            marks[phase] = {i: _size(_console(d, i)) for i in ids}

        try:
            rig.start()
            mark("boot")

            def statuses():
                rows = rig.query("SELECT node FROM node_state WHERE heap_min IS NOT NULL")
                return set(nodes) <= {r[0] for r in rows}

            rig.wait_until(statuses, 120, "a status from every node")
            done.append("boot")
            mark("steady")
            time.sleep(30)
            done.append("steady")
            mark("spill")
            rig.medium({"op": "partition", "groups": [[gw], nodes]})
            time.sleep(40)
            rig.medium({"op": "heal"})
            done.append("spill")
            mark("resend")
            time.sleep(15)  # the route comes back with the next beacons
            for n in nodes:
                rows = rig.query("SELECT min(seq) FROM readings WHERE node = ?", n)
                lo = rows[0][0] if rows and rows[0][0] is not None else 0
                rig.medium({"op": "inject", "src": gw, "hex": _resend_frame(home, n, lo, lo + 47).hex()})
            time.sleep(20)
            done.append("resend")
        except Exception as e:  # noqa: BLE001 - a trial that breaks is a result, not a crash
            failed = "%s: %s" % (type(e).__name__, e)
        finally:
            mark("end")
            starts = {i: np.starts for i, np in rig.rig.nodes.items()}
            rig.stop()
        order = list(PHASES) + ["end"]
        res = {"node_kb": node_kb, "gateway_kb": gateway_kb, "failed": failed, "roles": {}}
        for role, members, kb in (("node", nodes, node_kb), ("gateway", [gw], gateway_kb)):
            errors = 0
            restarts = 0
            phases = {}
            for i in members:
                path = _console(d, i)
                with open(path, "rb") as f:
                    text = f.read().decode("utf-8", "replace")
                errors += text.count("MemoryError") + text.count("Traceback")
                at = text.find("Traceback")
                if at >= 0 and "first_error" not in res:
                    tb = text[at:].splitlines()[1:40]
                    end = next((k for k, ln in enumerate(tb) if not ln.startswith(" ")), len(tb) - 1)
                    res["first_error"] = "node %d: %s" % (i, " | ".join(ln.strip() for ln in tb[max(0, end - 4):end + 1]))
                restarts += max(0, starts.get(i, 1) - 1)
                for k, ph in enumerate(PHASES):
                    if ph not in marks or ph not in done:
                        continue
                    lows = _lows(path, marks[ph][i], marks[order[k + 1]][i] if order[k + 1] in marks else _size(path))
                    if lows:
                        phases[ph] = min(phases.get(ph, 1 << 40), min(lows))
            # a phase without a new low kept the floor of the phases before it
            worst = None
            for ph in PHASES:
                if ph in phases:
                    worst = phases[ph] if worst is None else min(worst, phases[ph])
            ok = failed is None and errors == 0 and restarts == 0 and len(done) == len(PHASES)
            res["roles"][role] = {"kb": kb, "ok": ok, "errors": errors, "restarts": restarts, "phases": phases,
                                  "worst": worst}
        return res


def _fmt_role(role, r):
    kb = r["kb"]
    parts = []
    for ph in PHASES:
        v = r["phases"].get(ph)
        parts.append("%s %s" % (ph, "%6d" % v if v is not None else "     -"))
    worst = r["worst"]
    live = "peak live %3d KB, free at worst %3d KB%s" % (
        (kb * 1024 - worst) // 1024, worst // 1024, "" if worst >= FREE_FLOOR else " (< 16 KB)") if worst else "no figure"
    return "%-7s heap %4d KB: %s  %s  new lows (free B): %s  MemoryError/Traceback %d  restarts %d" % (
        role, kb, "runs " if r["ok"] else "FAILS", live, "  ".join(parts), r["errors"], r["restarts"])


def sweep(label, pairs, role):
    smallest = None
    for node_kb, gw_kb in pairs:
        res = trial(node_kb, gw_kb)
        for rl in ("node", "gateway"):
            print(_fmt_role(rl, res["roles"][rl]) + ("  [swept]" if rl == role else ""), flush=True)
        if res["failed"]:
            print("        trial stopped early: %s" % res["failed"], flush=True)
        if res.get("first_error"):
            print("        first traceback: %s" % res["first_error"], flush=True)
        r = res["roles"][role]
        if r["ok"] and r["worst"] is not None and r["worst"] >= FREE_FLOOR:
            smallest = r["kb"] if smallest is None else min(smallest, r["kb"])
    print("smallest %s heap that ran with >= 16 KB free at the worst moment: %s KB" % (label, smallest), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--imports", action="store_true", help="print import cost per module first")
    ap.add_argument("--heaps", default="", help="node heaps to try, board KB, e.g. 124,112,104")
    ap.add_argument("--gateway-heaps", default="", help="gateway heaps to try, board KB, e.g. 1024,160,128")
    a = ap.parse_args()
    if not (a.imports or a.heaps or a.gateway_heaps):
        a.imports = True
        a.heaps = "%d,112,96" % interp.RIG_NODE_HEAP_KB
    print("interpreter: %s" % _interp_name())
    if a.imports:
        print_imports()
    if a.heaps:
        sweep("node", [(int(x), interp.GATEWAY_HEAP_KB) for x in a.heaps.split(",")], "node")
    if a.gateway_heaps:
        sweep("gateway", [(interp.RIG_NODE_HEAP_KB, int(x)) for x in a.gateway_heaps.split(",")], "gateway")


if __name__ == "__main__":
    main()
