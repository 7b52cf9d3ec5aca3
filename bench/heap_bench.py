"""The smallest heap a node boots and runs in, on the virtual rig's MicroPython (unix port).

    .venv/bin/python bench/heap_bench.py [--heaps 256,224,208,192,176] [--seconds 35]

For each heap (KB), a 3-node line (a gateway and two nodes, the nodes at that heap) runs for
--seconds: a heap passes when both nodes sent a status (their first goes out after 20 s) and
neither console shows a MemoryError or a restart. Prints one line per heap with the nodes'
lowest free heap right after a GC (what they report) and the peak live heap that implies.
64-bit objects are ~1.5x their size on the 32-bit ESP32. Everything runs in a temporary
directory; every process is stopped at the end of each trial.
"""
import argparse
import glob
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fleet.home import FleetHome  # noqa: E402
from fleet.sim import topology as topo_mod  # noqa: E402
from fleet.sim.handle import RigHandle  # noqa: E402
from fleet.sim.rig import RigOptions  # noqa: E402


def trial(heap_kb, seconds):
    """Return (passed, lowest free heap after a GC or None, MemoryErrors seen, boots seen)."""
    with tempfile.TemporaryDirectory(prefix="redmesh-heap-") as d:
        home = FleetHome.resolve(d)
        home.ensure()
        home.keys().init()
        topo = topo_mod.line(3, spacing_m=35, n_gateways=1, seed=2)
        rig = RigHandle(home, topo, RigOptions(heap=heap_kb, report_interval_s=31), log=lambda *a: None)
        try:
            rig.start()
            time.sleep(seconds)
            gws = set(topo.gateways())
            rows = [r for r in rig.query("SELECT node, heap_min FROM node_state") if r[0] not in gws]
        finally:
            rig.stop()
        errors = boots = 0
        for path in glob.glob(os.path.join(d, "sim", "nodes", "*", "console.log")):
            if int(os.path.basename(os.path.dirname(path))) in gws:
                continue
            with open(path, errors="replace") as f:
                text = f.read()
            errors += text.count("MemoryError")
            boots += text.count("node start id=")
        mins = [r[1] for r in rows if r[1] is not None]
        nodes = len(topo.nodes) - len(gws)
        passed = len(mins) == nodes and errors == 0
        return passed, (min(mins) if mins else None), errors, boots


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--heaps", default="256,224,208,192,176")
    ap.add_argument("--seconds", type=int, default=35)
    a = ap.parse_args()
    smallest = None
    for kb in [int(x) for x in a.heaps.split(",")]:
        ok, low, errors, boots = trial(kb, a.seconds)
        live = "peak live %3d KB" % ((kb * 1024 - low) // 1024) if low is not None else "no status"
        print("node heap %3d KB: %s  lowest free after GC %6s B  %s  MemoryErrors %d  boots %d"
              % (kb, "runs " if ok else "FAILS", low if low is not None else "-", live, errors, boots))
        if ok:
            smallest = kb
    print("smallest node heap that ran: %s KB" % smallest)


if __name__ == "__main__":
    main()
