"""The heap an OTA-slot node needs for a whole campaign, on the virtual rig's MicroPython.

    .venv/bin/python bench/ota_heap_bench.py [--heaps 124] [--timeout 300]

For each heap (board KB, fleet/sim/interp.py), a 3-node line (a gateway and two nodes booted
from A/B slots, as deployed, the nodes at that heap) runs a campaign to a v2 bundle (received,
staged, confirmed), then one to a v3 whose sensor driver is broken, which every node rolls back.
The nodes log `ota heap PHASE FREE` at each new low of the free heap right after a collect
(firmware/ota_node.py heap_mark; phases boot, steady, serve, receive, complete, stage, trial). A heap
passes when both campaigns end as they must and no console shows a MemoryError. Prints one line
per heap and phase: the lowest free heap after a collect and the live heap it implies.
Figures are board figures only on the 32-bit interpreter (build/mp32). Everything runs in a
temporary directory; every process is stopped at the end of each trial.
"""
import argparse
import asyncio
import contextlib
import glob
import os
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fleet import ota_bundle, ota_campaign  # noqa: E402
from fleet.home import FleetHome  # noqa: E402
from fleet.sim import interp  # noqa: E402
from fleet.sim import topology as topo_mod  # noqa: E402
from fleet.sim.handle import RigHandle  # noqa: E402
from fleet.sim.rig import RigOptions  # noqa: E402

OTA_FAST = {"trial_ms": 40000, "tx_rate_per_s": 60, "tx_burst": 8, "adv_imin_ms": 500}  # hil_tests/test_ota.py
PHASES = ("boot", "steady", "serve", "receive", "complete", "stage", "trial")
_BROKEN_DRIVER = ("\n\nclass _Dead:\n    checksum_errors = 0\n\n    def feed(self, data):\n        return ()\n\n\n"
                  "def make_parser(kind):\n    return _Dead()\n")


def _campaign(rig, path, timeout_s, **kw):
    _camp, b = ota_campaign.start(rig.home, path, **kw)
    final = asyncio.run(ota_campaign.run(rig.home, b, broker_url=rig.rig.broker_url, timeout_s=timeout_s,
                                         poll_s=1.0, seed_every_s=15.0))
    return final["state"], ota_campaign.campaign_status(rig.home)["nodes"]


def _wait(pred, timeout_s):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(1.0)
    return False


def trial(heap_kb, timeout_s, log, keep=False):
    """Return (passed, {phase: lowest free}, MemoryErrors, boots, notes). keep: leave the
    trial's directory (the nodes' consoles) and log where it is."""
    notes = []
    kept = tempfile.mkdtemp(prefix="redmesh-otaheap-") if keep else None
    with (contextlib.nullcontext(kept) if keep else tempfile.TemporaryDirectory(prefix="redmesh-otaheap-")) as d:
        if keep:
            log("  heap %d KB: trial directory %s (kept)" % (heap_kb, d))
        home = FleetHome.resolve(os.path.join(d, "home"))
        home.ensure()
        home.keys().init()
        topo = topo_mod.line(3, spacing_m=35, n_gateways=1, seed=2)
        gws = set(topo.gateways())
        rig = RigHandle(home, topo, RigOptions(ota=True, ota_heap=heap_kb, ota_settings=OTA_FAST, seed=7,
                                               report_interval_s=31), log=lambda *a: None)
        ok = True
        try:
            rig.start()
            v2 = ota_bundle.build(home, version="2.0.0")
            src = os.path.join(d, "src")
            for pkg in ("firmware", "protocol"):
                shutil.copytree(os.path.join(ota_bundle.source_root(), pkg), os.path.join(src, pkg),
                                ignore=shutil.ignore_patterns("__pycache__"))
            with open(os.path.join(src, "firmware", "drivers", "__init__.py"), "a") as f:
                f.write(_BROKEN_DRIVER)
            v3 = ota_bundle.build(home, version="3.0.0-bad", src=src)
            want = len(topo.nodes) - len(gws)
            if not _wait(lambda: len(rig.query("SELECT node FROM node_state WHERE parent > 0")) >= want, 150):
                notes.append("no parent from every node")
                ok = False
            if ok:
                state, nodes = _campaign(rig, v2["path"], timeout_s)
                good = state == "done" and all(n["state"] == "confirmed" for n in nodes)
                log("  heap %d KB: v2 campaign %s: %s" % (heap_kb, state, [(n["node"], n["state"]) for n in nodes]))
                notes.append("v2 %s" % ("confirmed" if good else "FAILED"))
                ok = good
            if ok:
                state, nodes = _campaign(rig, v3["path"], timeout_s, halt_after=99)
                good = all(n["state"] == "rolled back" for n in nodes)
                log("  heap %d KB: v3 campaign %s: %s" % (heap_kb, state, [(n["node"], n["state"]) for n in nodes]))
                notes.append("v3 %s" % ("rolled back" if good else "NOT rolled back"))
                ok = good
                if ok and not _wait(lambda: all(r[1] == v2["bseq"] and r[2] == 5 for r in rig.query(
                        "SELECT node, fw_seq, ota_state FROM node_state")), 90):
                    notes.append("not every node reports v2 running after the roll back")
                    ok = False
        finally:
            rig.stop()
        lows = {}
        errors = boots = 0
        for path in glob.glob(os.path.join(home.path, "sim", "nodes", "*", "console.log")):
            if int(os.path.basename(os.path.dirname(path))) in gws:
                continue
            with open(path, errors="replace") as f:
                for line in f:
                    if "MemoryError" in line or "out of memory" in line:
                        errors += 1
                        notes.append(line.strip()[:160])
                    if "node start id=" in line:
                        boots += 1
                    i = line.find("ota heap ")
                    if i >= 0:
                        parts = line[i:].split()
                        if len(parts) == 4 and parts[3].isdigit():
                            phase, free = parts[2], int(parts[3])
                            lows[phase] = min(free, lows.get(phase, free))
        return ok and errors == 0, lows, errors, boots, notes


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # so `finally` stops the rig's processes on SIGTERM too


def main():
    signal.signal(signal.SIGTERM, _interrupt)
    ap = argparse.ArgumentParser()
    ap.add_argument("--heaps", default=str(interp.NODE_HEAP_KB), help="node heaps to try, board KB, comma-separated")
    ap.add_argument("--timeout", type=int, default=300, help="seconds each campaign may take")
    ap.add_argument("--keep", action="store_true", help="keep each trial's directory (node consoles) and say where")
    ap.add_argument("--no-romfs", action="store_true",
                    help="slots as flash directories, firmware loaded from files (a board without romfs partitions)")
    a = ap.parse_args()
    if a.no_romfs:
        os.environ[interp.NO_ROMFS_ENV] = "1"
        print("no romfs partitions: OTA slots are flash directories")
    mp = interp.micropython_bin()
    print("interpreter %s (%s)" % (mp, "32-bit: board figures" if interp.is_32bit(mp) else "64-bit: NOT board figures"))
    smallest = None
    for kb in [int(x) for x in a.heaps.split(",")]:
        ok, lows, errors, boots, notes = trial(kb, a.timeout, print, a.keep)
        print("OTA node heap %3d KB: %s  MemoryErrors %d  boots %d  (%s)" % (kb, "runs " if ok else "FAILS", errors,
                                                                            boots, "; ".join(notes)))
        for ph in PHASES + tuple(sorted(set(lows) - set(PHASES))):
            if ph in lows:
                print("    %-8s lowest free after GC %6d B  peak live %5.1f KB"
                      % (ph, lows[ph], (kb * 1024 - lows[ph]) / 1024.0))
        worst = min(lows.values()) if lows else None
        print("    worst    %s" % ("%d B free (%s 16 KB)" % (worst, ">=" if worst >= 16384 else "<") if worst is not None
                                   else "-"))
        sys.stdout.flush()
        if ok and (smallest is None or kb < smallest):
            smallest = kb
    print("smallest OTA node heap that ran the campaign: %s KB" % smallest)


if __name__ == "__main__":
    main()
