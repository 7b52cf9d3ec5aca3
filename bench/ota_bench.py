"""Benchmark: OTA over the virtual rig's mesh - the 25-node grid updated from v1 to v2.

    .venv/bin/python bench/ota_bench.py

Runs hil_tests/test_ota.py::test_25_node_grid_updates_v1_to_v2: 25
MicroPython nodes, the real bundle (~80 KB), a campaign in waves, telemetry at one reading per
5 s per node throughout. The test asserts every node ends confirmed on v2; this script keeps
its figures: time to all confirmed, OTA bytes on air per bundle byte, telemetry stored during
the campaign. Writes bench/out/ota.json and prints one line. Times are for this machine (2
shared cores) and vary with its load.
"""
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out")
TEST = "hil_tests/test_ota.py::test_25_node_grid_updates_v1_to_v2"


def _num(pattern, text):
    m = re.search(pattern, text)
    return float(m.group(1)) if m else None


def main():
    env = {k: v for k, v in os.environ.items() if k != "REDMESH_QUICK"}
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", TEST], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=1200)
    text = p.stdout + p.stderr
    res = {
        "passed": p.returncode == 0,
        "grid25_update_s": _num(r"25-node grid updated in ([\d.]+) s", text),
        "air_bytes_per_bundle_byte": _num(r"([\d.]+) bytes on air per bundle byte", text),
        "telemetry_during_campaign_pct": _num(r"readings issued were stored \(([\d.]+) %\)", text),
        "process_s": round(time.time() - t0, 1),
    }
    if not res["passed"]:
        res["output_tail"] = text[-3000:]
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "ota.json"), "w") as f:
        json.dump(res, f, indent=1)
    print("OTA 25-node grid: %s s to all confirmed, %s B on air per bundle byte, telemetry during campaign %s %%%s"
          % (res["grid25_update_s"], res["air_bytes_per_bundle_byte"], res["telemetry_during_campaign_pct"],
             "" if res["passed"] else " (the test FAILED: see bench/out/ota.json)"))
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
