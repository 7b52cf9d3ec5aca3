"""A running node interns no new name: every module it imports for a moment (a command, a
routed frame, a key rotation, a signed command, a crash report) had its names interned at boot
(firmware/startup.py COLD_MODULES). MicroPython keeps names (qstrs) in pools that double; a
pool asked for on a running node's fragmented heap failed on the rig, the node at its REPL
("MemoryError: memory allocation failed, allocating 1280 bytes" - 1,280 names, 8,976 bytes)."""
import ast
import os
import re
import subprocess

from mp_support import ROOT, micropython_bin

from firmware import startup
from fleet.sim import interp

# The code a running node (or gateway) executes after boot: an import inside a function here
# happens at run time.
RUNTIME = ("firmware/node.py", "firmware/mesh.py", "firmware/ring.py", "firmware/node_cmd.py", "firmware/rekey.py",
           "firmware/compat.py", "firmware/downroute.py", "firmware/gateway.py", "firmware/ota_node.py",
           "firmware/ota.py", "firmware/mqtt.py", "firmware/outbox.py", "firmware/sampler.py",
           "firmware/counters.py", "firmware/hal/sim.py", "firmware/hal/esp32.py", "firmware/hal/esp32_wifi.py",
           "firmware/hal/sim_wifi.py", "protocol/frames.py", "protocol/envelope.py", "protocol/auth.py",
           "protocol/keywrap.py", "protocol/manifest.py")
# Imported at run time, but their names are interned by boot anyway; each with where.
AT_BOOT = {
    "firmware.boot": "startup._log_reset_cause, every boot",
    "firmware.ring_check": "the ring's check at every boot (ReadingRing._check)",
    "firmware.counters": "the ring's counters at boot",
    "firmware.mesh_params": "Router() at boot",
    "firmware.compat": "pinned by node.py",
    "firmware.hal.sim_wifi": "a gateway's HAL at boot (the rig)",
    "firmware.hal.esp32_wifi": "a gateway's HAL at boot (a board)",
    "protocol.frames_ota": "the OTA shell at boot (a node run from slots)",
    "protocol.view": "a gateway's MQTT envelopes, from its first uplink batch",
    "protocol.routed": "Routed objects: host and tests only (nodes forward routed frames by their bytes)",
    "protocol.auth": "pinned by protocol",
    "protocol.manifest": "the OTA shell at boot",
    "firmware.hal.simload": "the rig's offered load, before the node runs (not on a board)",
}


def _runtime_imports():
    found = set()
    for rel in RUNTIME:
        with open(os.path.join(ROOT, rel)) as f:
            tree = ast.parse(f.read(), rel)
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and node.module in ("firmware", "protocol"):
                    found.update((node.module + "." + a.name, rel) for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module.split(".")[0] in ("firmware", "protocol"):
                    found.add((node.module, rel))
                elif isinstance(node, ast.Import):
                    found.update((a.name, rel) for a in node.names if a.name.split(".")[0] in ("firmware", "protocol"))
    return found


def test_every_module_a_running_node_imports_has_its_names_interned_at_boot():
    found = _runtime_imports()
    assert ("firmware.node_cmd", "firmware/node.py") in found and ("firmware.downroute", "firmware/mesh.py") in found
    missing = sorted((m, rel) for m, rel in found if m not in startup.COLD_MODULES and m not in AT_BOOT)
    assert not missing, f"imported at run time, names not interned at boot (add to startup.COLD_MODULES): {missing}"


_SCRIPT = """
import sys, micropython
sys.path[:0] = [%(build)r]
import protocol
from firmware import compat, fsutil, trickle, mesh, ring, counters, sampler, node, startup
micropython.qstr_info()
startup.intern_cold_names()
print('left', [n for n in startup.COLD_MODULES if n in sys.modules])
micropython.qstr_info()
for n in startup.COLD_MODULES:
    __import__(n)
micropython.qstr_info()
"""


def test_after_boot_the_cold_modules_intern_no_new_name(tmp_path):
    """On the real interpreter: intern_cold_names() leaves none of the modules loaded, and
    importing them afterwards adds no name and no pool."""
    import sys
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import mpy_build

    build = str(tmp_path / "mpy")
    assert not mpy_build.build(build)
    script = tmp_path / "cold.py"
    script.write_text(_SCRIPT % {"build": build})
    mp = micropython_bin()
    out = subprocess.run([mp, "-X", interp.heap_arg(400, mp), str(script)], capture_output=True, text=True,
                         timeout=120, cwd=str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    pools = [tuple(int(x) for x in m) for m in re.findall(r"n_pool=(\d+), n_qstr=(\d+)", out.stdout)]
    assert len(pools) == 3, out.stdout
    booted, interned, used = pools
    assert interned[1] > booted[1], "the cold modules brought no name: the test proves nothing"
    assert used == interned, f"names interned at run time: {interned} -> {used}"
    assert "left []" in out.stdout, out.stdout
