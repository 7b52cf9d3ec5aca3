"""`fleet node logs` on a board that crashed at boot (issue 10 part 6: it printed nothing).

Real virtual boards (fleet/sim/board/) with files put on their flash by the real mpremote; the
command talks to them through fleet.mpboard (mpremote's transport). Every board is stopped at the
end; every wait and subprocess has a timeout.
"""
import os
import subprocess
import sys

import pytest
import serial
from click.testing import CliRunner

from firmware import boot, crash
from fleet.cli import group

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPREMOTE = os.path.join(os.path.dirname(sys.executable), "mpremote")



def _mpremote(port, *args):
    r = subprocess.run([MPREMOTE, "connect", port, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _put(board, tmp_path, files):
    """Write {flash path: text} with `mpremote fs cp` (directories first)."""
    dirs = set()
    for p in files:
        while os.path.dirname(p):
            p = os.path.dirname(p)
            dirs.add(p)
    for d in sorted(dirs):
        _mpremote(board.port, "fs", "mkdir", ":" + d)
    for path, text in files.items():
        local = tmp_path / ("put_" + path.replace("/", "_"))
        local.write_text(text)
        _mpremote(board.port, "fs", "cp", str(local), ":" + path)


def _power_cycle_and_read_until(board, marker, timeout_s=90):
    """Press reset with the port open (a board's output is lost while no host listens) and
    return what the board printed up to `marker`."""
    import time

    ser = serial.Serial(board.port, 115200, timeout=0.2)
    try:
        board.power_cycle()
        seen = b""
        deadline = time.monotonic() + timeout_s
        while marker not in seen:
            if time.monotonic() > deadline:
                pytest.fail("no %r within %d s; seen: %r" % (marker, timeout_s, seen[-2000:]))
            seen += ser.read(4096)
            if marker == b">>> " and not seen.endswith(b">>> "):
                ser.write(b"\r")  # a REPL answers Enter with its prompt
        return seen.decode("utf-8", "replace")
    finally:
        ser.close()


def _logs(*args):
    r = CliRunner().invoke(group, ["node", "logs", *args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


def test_logs_of_a_board_whose_app_crash_loops_at_boot(board, tmp_path):
    """The real boot.py + root main.py, a slot app that dies importing (as the MemoryError of
    issue 10): every crash is logged and the board resets; the third in a row leaves it in the
    safe state. `fleet node logs --crash-log` shows the crash log, then the console."""
    boot_py = crash.root_boot_py()
    files = {"active": boot.format_kv(boot.confirmed_pointer("a", 1, "1.0.0")),
             "a/main.py": "raise MemoryError('memory allocation failed, allocating 1280 bytes')\n"}
    for name in ("__init__.py", "boot.py", "crash.py", "safe_state.py"):  # the slot's crash handler
        with open(os.path.join(ROOT, "firmware", name)) as f:
            files["a/firmware/" + name] = f.read()
    files.update({"main.py": crash.ROOT_MAIN_PY, "boot.py": boot_py})
    _put(board, tmp_path, files)
    seen = _power_cycle_and_read_until(board, b"safe-state")
    for n in range(1, boot.CRASH_LOOP_N + 1):
        assert "crash #%d in a row (app)" % n in seen, seen
    resets = [e for e in board.events if e.get("event") == "power_on" and e.get("cause") == "reset"]
    assert len(resets) == boot.CRASH_LOOP_N - 1, board.events  # machine.reset() after each crash but the last
    # without the flag: a board in its safe state is quiet (a line every 30 s); a hint says what to do
    out = _logs("--port", board.port, "--timeout-s", "1")
    assert "--crash-log" in out or "safe-state crash loop" in out, out
    out = _logs("--port", board.port, "--crash-log", "--timeout-s", "8")
    head, _, console = out.partition("--- console (the app restarted) ---")
    assert "--- /crash.log" in head
    for n in range(1, boot.CRASH_LOOP_N + 1):
        assert "crash #%d in a row (app), slot a" % n in head, out
    assert head.count("MemoryError: memory allocation failed, allocating 1280 bytes") == boot.CRASH_LOOP_N
    # restarted: the boot after a crash loop crashes once more and goes straight to the safe state
    assert "crash #%d in a row" % (boot.CRASH_LOOP_N + 1) in console, out
    assert "safe-state crash loop: %d crashes in a row" % (boot.CRASH_LOOP_N + 1) in console, out
    assert ">>> " not in head  # never at the REPL (the restart itself passes the friendly prompt)


def test_logs_of_a_board_left_at_its_repl_show_the_crash_log(board, tmp_path):
    """A board whose app crashed with no watchdog sits at its REPL and prints nothing: the logs
    command sees the REPL, shows the crash log on the flash and says the app is not running."""
    _put(board, tmp_path, {"crash.log": "crash #1 in a row (app), slot a, after a power-on reset, 5 ms after boot\n"
                                        "ValueError: an earlier crash\n",
                           "main.py": "raise ValueError('boom')\n"})
    assert "ValueError: boom" in _power_cycle_and_read_until(board, b">>> ")
    out = _logs("--port", board.port, "--timeout-s", "2")
    assert "ValueError: an earlier crash" in out
    assert "the board is at its REPL: the app is not running" in out
    # left at its REPL, as found: the next look says the same
    assert "the board is at its REPL" in _logs("--port", board.port, "--timeout-s", "1")
