"""The virtual rig's nodes crash like ESP32 boards (issue 10, rig rule "Crash").

An uncaught exception leaves a board at its REPL forever; only a watchdog that was started, or
machine.reset(), brings it back, and machine.reset_cause() tells which. Each test runs a real
MicroPython node process (fleet/sim/rig.py NodeProc, started as the rig starts it) on a small
flash and drives the rig's own watch step (Rig.step_node). Time is injected into the step (the
watchdog's expiry is judged at a `now` far ahead), so nothing here depends on the machine's
speed; every wait has a deadline and every process is killed by PID at the end.

Then firmware/boot.py + the root main.py on the same rig: a crashing app is a logged reset,
CRASH_LOOP_N crashes in a row end in the logged safe state, or, on a trial boot, in the old slot.
"""
import os
import time
import types

import pytest

from firmware import boot, crash
from fleet.sim.rig import SOFT_RESET, WDT_RESET, NodeProc, Rig, RigOptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT_S = 60
FAR_S = 10 ** 6  # "now" for a step that must see any watchdog as expired


@pytest.fixture
def rig(tmp_path):
    logs = []
    r = Rig(types.SimpleNamespace(path=str(tmp_path)), None, RigOptions(), log=logs.append)
    r.logs = logs
    yield r
    for np in r.nodes.values():
        np.kill(True)


def _node(rig, tmp_path, files, node_id=1, heap=128):
    flash = tmp_path / ("n%d" % node_id)
    for rel, text in files.items():
        path = flash / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    flash.mkdir(exist_ok=True)
    np = NodeProc(node_id, str(flash), os.path.join(ROOT), heap, str(flash / "console.log"), mode="slot")
    rig.nodes[node_id] = np
    np.start()
    return np


def _log(np):
    with open(np.log_path, errors="replace") as f:
        return f.read()


def _wait(cond, what, np):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    pytest.fail("no %s within %d s; console:\n%s" % (what, WAIT_S, _log(np)))


def _step_until_repl(rig, np):
    def at_repl():
        assert rig.step_node(np) is None, _log(np)
        return np.at_repl

    _wait(at_repl, "REPL state", np)


_CAUSE_MAIN = "import machine\nprint('cause', machine.reset_cause())\n"


def test_uncaught_exception_leaves_the_node_at_its_repl(rig, tmp_path):
    np = _node(rig, tmp_path, {"main.py": _CAUSE_MAIN + "raise ValueError('boom')\n"})
    _step_until_repl(rig, np)
    # however long it waits, no watchdog runs: it stays at the REPL, alive, never restarted
    for _ in range(3):
        assert rig.step_node(np, time.monotonic() + FAR_S) is None
    assert np.alive() and np.starts == 1 and np.at_repl
    out = _log(np)
    assert "cause 1" in out  # power-on
    assert "Traceback" in out and "ValueError: boom" in out and ">>> " in out
    assert any("is at its REPL" in m for m in rig.logs), rig.logs


def test_a_started_watchdog_resets_a_node_at_its_repl(rig, tmp_path):
    np = _node(rig, tmp_path, {"main.py": _CAUSE_MAIN + "w = machine.WDT(timeout=5000)\nw.feed()\n"
                                                        "raise ValueError('boom')\n"})
    _step_until_repl(rig, np)
    assert rig.step_node(np, time.monotonic() + 1) is None  # fed a moment ago: not yet
    assert rig.step_node(np, time.monotonic() + FAR_S) == "wdt"
    assert np.starts == 2 and np.causes == [1, WDT_RESET]
    _wait(lambda: "cause %d" % WDT_RESET in _log(np), "reset cause WDT_RESET in the log", np)
    assert any("watchdog" in m and "WDT_RESET" in m for m in rig.logs), rig.logs


def test_machine_reset_restarts_with_soft_reset_cause(rig, tmp_path):
    np = _node(rig, tmp_path, {"main.py": _CAUSE_MAIN + "import os\n"
                               "if 'again' not in os.listdir():\n    open('again', 'w').close()\n"
                               "    machine.reset()\n    print('after reset')\n"})

    def reset_seen():
        return rig.step_node(np) == "reset"

    _wait(reset_seen, "machine.reset()", np)
    assert np.causes == [1, SOFT_RESET]
    _wait(lambda: "cause %d" % SOFT_RESET in _log(np), "reset cause SOFT_RESET in the log", np)
    assert "after reset" not in _log(np)  # nothing runs after machine.reset()


# ---- firmware/boot.py and the root main.py on the rig ------------------------------------------

def _slot_flash(pointer, slots):
    files = {"boot.py": crash.root_boot_py(), "main.py": crash.ROOT_MAIN_PY,
             "active": boot.format_kv(pointer)}
    for slot, main in slots.items():
        files[slot + "/main.py"] = main
        files.update(_slot_firmware(slot))
    return files


# what a slot holds for crash handling (the root main.py imports the slot's firmware.crash)
CRASH_MODULES = ("__init__.py", "boot.py", "crash.py", "safe_state.py")


def _slot_firmware(slot):
    out = {}
    for name in CRASH_MODULES:
        with open(os.path.join(ROOT, "firmware", name)) as f:
            out["%s/firmware/%s" % (slot, name)] = f.read()
    return out


def _run_resets(rig, np, until, what):
    """Step the rig (acting on resets) until until() holds."""
    def cond():
        rig.step_node(np)
        return until()

    _wait(cond, what, np)


def test_a_crashing_app_is_reset_then_a_crash_loop_ends_in_the_safe_state(rig, tmp_path):
    files = _slot_flash(boot.confirmed_pointer("a", 1, "1.0.0"), {"a": "raise MemoryError('at import')\n"})
    np = _node(rig, tmp_path, files)
    _run_resets(rig, np, lambda: "safe-state" in _log(np), "the safe state")
    out = _log(np)
    assert np.starts == boot.CRASH_LOOP_N and np.causes[1:] == [SOFT_RESET] * (boot.CRASH_LOOP_N - 1)
    assert "crash loop: %d crashes in a row, the last: MemoryError: at import" % boot.CRASH_LOOP_N in out
    assert ">>> " not in out  # never at the REPL
    with open(os.path.join(np.flash_dir, boot.CRASH_LOG)) as f:
        assert f.read().count("MemoryError: at import") == boot.CRASH_LOOP_N
    # the safe state feeds the watchdog boot.py started: no more resets
    assert np._wdt_ms == boot.WDT_TIMEOUT_MS
    for _ in range(5):
        assert rig.step_node(np) is None
        time.sleep(0.1)
    assert np.alive() and np.starts == boot.CRASH_LOOP_N


def test_a_crash_loop_on_a_trial_boot_rolls_back_to_the_old_slot(rig, tmp_path):
    trial = dict(boot.confirmed_pointer("b", 2, "2.0.0"), state="trial", max_boots=10, fallback="a",
                 fallback_bseq=1, fallback_version="1.0.0")
    files = _slot_flash(trial, {"a": "print('app a runs')\nimport time\nwhile True:\n    time.sleep(1)\n",
                                "b": "raise ValueError('v2 is broken')\n"})
    np = _node(rig, tmp_path, files)
    _run_resets(rig, np, lambda: "app a runs" in _log(np), "the old slot running")
    p = boot.read_pointer(boot.FlashFS(np.flash_dir))
    assert p["slot"] == "a" and p["state"] == "confirmed" and p["failed"] == 2
    result = boot.read_kv(boot.FlashFS(np.flash_dir), boot.RESULT)
    assert result["result"] == "rolled_back" and "crashed %d times" % boot.CRASH_LOOP_N in result["reason"]
    assert "safe-state" not in _log(np)
    assert boot.crash_count(boot.FlashFS(np.flash_dir)) == 0


def test_an_app_that_hangs_is_reset_by_the_watchdog_boot_py_started(rig, tmp_path):
    """The watchdog starts first thing in boot.py: an app that hangs before it feeds anything
    (here: sleeps forever at import) is reset, and the reset counts as a crash in a row."""
    files = _slot_flash(boot.confirmed_pointer("a", 1, "1.0.0"),
                        {"a": "print('app hangs')\nimport time\nwhile True:\n    time.sleep(1)\n"})
    np = _node(rig, tmp_path, files)
    _wait(lambda: "app hangs" in _log(np), "the app", np)
    assert rig.step_node(np) is None
    assert np._wdt_ms == boot.WDT_TIMEOUT_MS
    assert rig.step_node(np, time.monotonic() + FAR_S) == "wdt"
    _wait(lambda: _log(np).count("app hangs") == 2, "the app after the watchdog reset", np)
    out = _log(np)
    assert "crash #1 in a row (watchdog)" in out and "after a watchdog reset" in out, out
    assert np.causes == [1, WDT_RESET]
