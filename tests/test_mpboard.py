"""fleet/mpboard.py on a loaded host: a virtual board is a process, and a busy machine can
deschedule it for seconds in the middle of a raw paste. SIGSTOP/SIGCONT on the board's
interpreter makes that stall happen on purpose, at the worst moment (the host is pasting code
and waiting for the board's flow-control bytes), instead of hoping a loaded CI machine does.
Every board is stopped by its fixture; every stall thread is joined.
"""
import os
import signal
import threading
import time

import pytest

from fleet import mpboard
from fleet.mpboard import MpBoard

# Longer than the pyserial read timeout a paste used to run with (2 s), shorter than a test's patience.
_STALL_S = 3.0
# More than the window of raw paste (the unix port's 128 bytes): the host waits for flow control.
_CODE = ("import os\n" + "# padding, so the paste needs several flow-control windows\n" * 40
         + "f=open('runs','a');f.write('x');f.close()\n"
         + "print(os.stat('runs')[6])\n")



def _interpreter_pid(b, timeout_s=10.0):
    """The pid of the board's current interpreter (the supervisor reports it as an event)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid = b.board_pid
        if pid is not None:
            try:
                os.kill(pid, 0)
                return pid
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    raise AssertionError("no live interpreter on the virtual board")


class _Stall:
    """Freeze the board's interpreter now; thaw it after `seconds` (in a thread, always thawed)."""

    def __init__(self, pid, seconds, on_thaw=None):
        self.pid = pid
        self.on_thaw = on_thaw
        os.kill(pid, signal.SIGSTOP)
        self.thread = threading.Thread(target=self._thaw, args=(seconds,), daemon=True)
        self.thread.start()

    def _thaw(self, seconds):
        time.sleep(seconds)
        if self.on_thaw is not None:
            self.on_thaw()
        try:
            os.kill(self.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def join(self):
        self.thread.join(_STALL_S + 5)
        try:
            os.kill(self.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def test_a_board_stalled_during_a_paste_still_runs_the_code_once(board, capsys):
    with MpBoard(board.port) as m:
        m.enter_raw()
        assert m.eval("1 + 1") == 2
        stall = _Stall(_interpreter_pid(board), _STALL_S)
        try:
            out = m.exec(_CODE, "pasting while the board is descheduled")
        finally:
            stall.join()
        assert out.strip() == b"1"  # ran, and once
        assert m.exec("print(os.stat('runs')[6])").strip() == b"1"
    assert capsys.readouterr().out == ""  # nothing printed on our stdout


def test_a_glitch_in_the_paste_is_resynced_and_retried_once(board, monkeypatch):
    # a stall longer than the paste's patience: the first attempt fails (no raw-paste answer in
    # time), the board is brought back to a clean raw REPL and the code is sent once more
    monkeypatch.setattr(mpboard, "_PASTE_TIMEOUT_S", 1.0)

    def patient_again():  # the retry gets the normal patience: a loaded machine must not fail it
        monkeypatch.setattr(mpboard, "_PASTE_TIMEOUT_S", 10.0)

    with MpBoard(board.port) as m:
        m.enter_raw()
        stall = _Stall(_interpreter_pid(board), 2.5, patient_again)
        try:
            out = m.exec(_CODE, "pasting through a glitch")
        finally:
            stall.join()
        assert out.strip() == b"1", out  # the first, interrupted paste never ran
        assert m.exec("print(os.stat('runs')[6])").strip() == b"1"
        assert m.eval("2 + 3") == 5  # and the session goes on in step


def test_a_board_that_stays_silent_is_reported_gone_not_retried_forever(board, monkeypatch):
    monkeypatch.setattr(mpboard, "_PASTE_TIMEOUT_S", 0.5)
    with MpBoard(board.port) as m:
        m.enter_raw()
        pid = _interpreter_pid(board)
        os.kill(pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(mpboard.MpBoardError) as e:
                m.exec(_CODE, "pasting to a frozen board")
            assert time.monotonic() - t0 < 90
        finally:
            os.kill(pid, signal.SIGCONT)
    assert "pasting to a frozen board" in str(e.value) or "no MicroPython REPL" in str(e.value)
