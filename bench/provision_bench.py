"""Provisioning time on virtual boards, and the estimate for a real ESP32 at 115200 / 921600 baud.

    .venv/bin/python bench/provision_bench.py [--boards 4]

Starts N virtual boards, provisions them in parallel (no self-test wait: the node's sensor warm-up
is >= 30 s on any board), provisions them again (idempotent re-run), and prints per-node figures:
wall time, bytes on the wire, raw-REPL execs, payload written, the estimate for a real ESP32 (the
model is in fleet/provision.py, EST_* constants). Everything runs in a temporary directory.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fleet import provision as prov  # noqa: E402
from fleet.home import FleetHome  # noqa: E402
from fleet.sim.board import VirtualBoard  # noqa: E402


def _row(label, r):
    est = r["estimate_s"] or {}
    return (f"{label:8} node {r['node_id']:>3}  {r['elapsed_s']:6.2f} s  (usb {r['usb_s'] or 0:5.2f} s)  "
            f"sent {r['bytes_sent'] / 1024:7.1f} KB  recv {r['bytes_received'] / 1024:5.1f} KB  "
            f"execs {r['execs']:3}  written {r['bytes_written'] / 1024:6.1f} KB  "
            f"est 115200: {est.get('115200', '-'):>5} s  921600: {est.get('921600', '-'):>5} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boards", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="prov-bench-") as tmp:
        home = FleetHome(os.path.join(tmp, "home")).ensure()
        home.keys().init()
        t = time.monotonic()
        bundle = prov.build_bundle()
        print(f"build: {len(bundle.files)} files, {bundle.size_bytes / 1024:.1f} KB in {time.monotonic() - t:.2f} s "
              f"(mpy-cross, cached afterwards)")
        boards = [VirtualBoard(os.path.join(tmp, f"flash{i}")) for i in range(args.boards)]
        try:
            for b in boards:
                b.start()
            specs = [prov.NodeSpec(node_id=i + 1, port=b.port) for i, b in enumerate(boards)]
            opts = prov.ProvisionOptions(selftest=False)
            for label in ("first", "re-run"):
                t = time.monotonic()
                out = prov.provision(home, specs, opts, bundle=bundle)
                wall = time.monotonic() - t
                for r in out["results"]:
                    print(_row(label, r) if r["ok"] else f"{label}: node {r['node_id']} FAILED: {r['error']}")
                print(f"{label}: {len(specs)} board(s) in parallel, {wall:.2f} s wall")
        finally:
            for b in boards:
                b.stop()


if __name__ == "__main__":
    main()
