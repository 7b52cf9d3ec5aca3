"""The Python API: a virtual board in a supervisor subprocess, for tests and tools."""
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from fleet.sim.board.flash import (
    DEFAULT_HEAP,
    DEFAULT_QUOTA_BYTES,
    TRACE_FILE,
    BoardError,
    arm_power_cut,
    disarm_power_cut,
    flash_writes,
    parse_heap,
    parse_mac,
)

# ---- Python API --------------------------------------------------------------------------------


class VirtualBoard:
    """A virtual board in a supervisor subprocess (`python -m fleet.cli.sim.board`, i.e. `fleet sim board`), for tests and tools.

        with VirtualBoard() as board:        # or VirtualBoard(flash_dir, heap="160k", ...)
            port = board.port                # /dev/pts/N, for mpremote / fleet provision --port
            board.power_cycle()              # reset button
            board.arm_power_cut(5)           # the 5th flash write from now cuts the power
            board.wait_event("power_cut")
            board.kill()                     # unplug: SIGKILL the supervisor (and so the board)

    The supervisor exits if this process dies (its stdin is a pipe from here)."""

    def __init__(self, flash_dir=None, *, heap=DEFAULT_HEAP, quota_bytes=DEFAULT_QUOTA_BYTES, mac=None,
                 link=None, cut_power_at_write=None, micropython=None):
        parse_heap(heap)
        self.heap = heap
        self.quota_bytes = quota_bytes
        self.mac = parse_mac(mac) if isinstance(mac, str) else mac
        self.link = link
        self.cut_power_at_write = cut_power_at_write
        self.micropython = micropython
        self._own_flash = flash_dir is None
        self.flash_dir = os.path.abspath(flash_dir) if flash_dir else tempfile.mkdtemp(prefix="vboard-")
        self.port = None
        self.events = []
        self.last_trace = ""  # the supervisor's last lines, read when stop() has stopped it
        self._cond = threading.Condition()
        self._proc = None
        self._lines = None

    def start(self, timeout_s=15.0):
        """Start the supervisor; return the port path once the board is powered. Raises BoardError."""
        if self._proc is not None and self._proc.poll() is None:
            return self.port
        cmd = [sys.executable, "-m", "fleet.cli.sim.board", "--flash", self.flash_dir, "--heap", str(self.heap),
               "--quota-kb", str(self.quota_bytes // 1024), "--stop-on-stdin-eof"]
        if self.mac:
            cmd += ["--mac", self.mac.hex()]
        if self.link:
            cmd += ["--link", self.link]
        if self.cut_power_at_write:
            cmd += ["--cut-power-at-write", str(self.cut_power_at_write)]
            self.cut_power_at_write = None  # once: a restart (re-plug) does not re-arm it
        if self.micropython:
            cmd += ["--micropython", self.micropython]
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self._lines = queue.Queue()
        threading.Thread(target=self._reader, args=(self._proc,), daemon=True).start()
        try:
            first = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            first = None
        if not first or not first.startswith("/"):
            self.kill()
            raise BoardError(f"the virtual board did not start within {timeout_s} s (got {first!r}); see its stderr")
        self.port = first
        self.wait_event("power_on", timeout_s=timeout_s)
        return self.port

    def _reader(self, proc):
        first = True
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if first:
                self._lines.put(line)
                first = False
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()
        if first:
            self._lines.put(None)

    def mark(self):
        """Index of the next event: pass it to wait_event(since=...) to wait for a later one."""
        with self._cond:
            return len(self.events)

    def wait_event(self, name, timeout_s=10.0, since=0):
        """The first event called name at index >= since; waits for it. Raises BoardError on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for event in self.events[since:]:
                    if event.get("event") == name:
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BoardError(f"no {name!r} event within {timeout_s} s; events so far: {self.events}")
                self._cond.wait(left)

    @property
    def pid(self):
        """Process id of the supervisor, or None."""
        return self._proc.pid if self._proc else None

    @property
    def board_pid(self):
        """Process id of the current MicroPython interpreter (from the last power_on/soft_reboot)."""
        with self._cond:
            for event in reversed(self.events):
                if "pid" in event:
                    return event["pid"]
        return None

    @property
    def flash_writes(self):
        """Program/erase operations made on this board's flash over its life."""
        return flash_writes(self.flash_dir)

    def arm_power_cut(self, after_writes, torn=False):
        """Cut the power at the after_writes-th flash write from now; return its absolute number.

        The write never reaches the flash (torn: only its first half does); the board stays off
        until a host opens the port again or power_cycle() is called. An event
        {"event": "power_cut", "write": K} is reported."""
        return arm_power_cut(self.flash_dir, after_writes, torn)

    def disarm_power_cut(self):
        disarm_power_cut(self.flash_dir)

    def power_cycle(self):
        """Press the reset button (also powers the board back on after a power cut)."""
        if self._proc is None or self._proc.poll() is not None:
            raise BoardError("the virtual board is not running: call start() first")
        self._proc.send_signal(signal.SIGHUP)

    def stop(self, timeout_s=10.0):
        """Shut down cleanly (SIGTERM: the interpreter is killed, the link removed)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self._close(proc)
            try:
                with open(os.path.join(self.flash_dir, TRACE_FILE)) as f:
                    self.last_trace = f.read()
            except OSError:
                pass
        if self._own_flash:
            shutil.rmtree(self.flash_dir, ignore_errors=True)

    def kill(self):
        """Unplug the USB cable: SIGKILL the supervisor. The board hangs up and dies with it; the
        flash directory stays, so start() again is a re-plug (the port path may change)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        board_pid = self.board_pid
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self._close(proc)
        if board_pid is not None:
            # The board dies of SIGHUP when its terminal goes; wait for that, never leave it behind.
            deadline = time.monotonic() + 5
            while pid_alive(board_pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            if pid_alive(board_pid):
                try:
                    os.killpg(board_pid, signal.SIGKILL)
                except OSError:
                    pass
        if self.link:
            try:
                if os.readlink(self.link) == self.port:
                    os.unlink(self.link)
            except OSError:
                pass

    @staticmethod
    def _close(proc):
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def pid_alive(pid):
    """True while process `pid` runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
