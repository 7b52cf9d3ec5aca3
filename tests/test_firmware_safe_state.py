"""The real firmware's composition root (firmware/main.py) under MicroPython, on a flash without
a usable config: it must enter the logged safe state (radio and sensor off, REPL reachable),
never crash or crash-loop. Cases: no config file, a corrupt one, and a valid node config on a
board that is neither an ESP32 nor given the virtual rig's sim section."""
import os
import subprocess
import sys

import pytest
from mp_support import ROOT, micropython_bin

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "device"))
import test_config as samples  # noqa: E402 - the device test's sample configs

from firmware import config as config_mod  # noqa: E402
from firmware import config_check as check_mod  # noqa: E402

_RUN = "import sys\nsys.path.insert(0, %r)\nfrom firmware.main import run\nrun(%r)\n"


def _boot(flash_dir, wait_s=4.0):
    """Run firmware.main.run on flash_dir for wait_s; return what it printed and whether it was
    still running (a safe state loops; a crash ends the process)."""
    proc = subprocess.Popen([micropython_bin(), "-X", "heapsize=512k", "-c", _RUN % (ROOT, flash_dir)],
                            cwd=flash_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=wait_s)
        running = False
    except subprocess.TimeoutExpired:
        running = True
        proc.kill()
        out, _ = proc.communicate(timeout=10)
    return out, running


@pytest.mark.parametrize("case", ["missing", "corrupt", "no_sim_section"])
def test_no_usable_config_means_a_logged_safe_state(tmp_path, case):
    flash = str(tmp_path)
    if case == "corrupt":
        with open(os.path.join(flash, config_mod.CONFIG_PATH), "wb") as f:
            f.write(b"\xa1\x01")  # a CBOR map cut short
    elif case == "no_sim_section":
        with open(os.path.join(flash, config_mod.CONFIG_PATH), "wb") as f:
            f.write(check_mod.dump_config(samples.node_cfg()))
    out, running = _boot(flash)
    assert running, "the firmware ended instead of waiting in its safe state:\n" + out
    assert "Traceback" not in out, out
    line = [ln for ln in out.splitlines() if ln.startswith("safe-state")]
    assert line, out
    assert "Re-provision it over USB" in line[0]
    if case == "no_sim_section":
        assert "--sim-medium-port" in line[0]
    key_hex = samples.node_cfg()["node_key"].hex()
    assert key_hex not in out  # no secret on the console
