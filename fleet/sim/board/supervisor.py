"""The supervisor: one board's interpreter on a pty, and the host's port; resets, power, Ctrl-C
and events (see fleet/sim/board/__init__.py). `python -m fleet.cli.sim.board` runs one."""
import collections
import ctypes
import fcntl
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
import tty

from fleet.sim import interp
from fleet.sim.board.flash import (
    BLOCK_SIZE,
    BOARD_FS_DIR,
    DEFAULT_HEAP,
    TRACE_FILE,
    BoardError,
    arm_power_cut,
    default_heap_kb,
    find_micropython,
    flash_writes,
    parse_heap,
    port_segment,
    prepare_flash,
    romfs_paths,
)

# machine.reset_cause() values and the ROM's first words for each way the board starts. As the
# ESP32 port (ports/esp32/modmachine.c): a panic and machine.reset() are both SW_CPU_RESET and
# read SOFT_RESET (5); the EN button is a power-on reset; HARD_RESET (2) never happens on an ESP32.
_CAUSES = {
    "power_on": (1, "rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)"),
    "crash": (5, "rst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)"),
    "watchdog": (3, "rst:0x7 (TG0WDT_SYS_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)"),
    "deepsleep": (4, "rst:0x5 (DEEPSLEEP_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)"),
    "reset": (5, "rst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)"),
}
_ROM_BANNER = b"ets Jul 29 2019 12:21:46\r\n\r\n"

_MARK = b"\x1b_vb:"
_MARK_END = b"\x1b\\"
_RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
_FRIENDLY_BANNER = b'Type "help()" for more information.'
_PROMPT = b">>> "

_QUEUE_LIMIT = 64 * 1024  # bytes buffered each way before the supervisor stops reading
_HELD_FLUSH_S = 0.05  # a partial in-band marker older than this was ordinary output
_CONNECT_POLL_S = 0.1
_BOOT_HOLD_S = 1.0  # host input held at most this long while boot.py runs (counted from the mount)

_DEBUG = bool(os.environ.get("FLEET_VBOARD_DEBUG"))
# The last _TRACE_LEN things the supervisor saw (bytes each way, messages, connections), kept
# always and written to TRACE_FILE in the flash directory when the supervisor stops: a test that
# fails on a busy machine prints it (tests/board_trace.py) instead of leaving a mystery.
_TRACE_LEN = 300


def _set_nonblocking(fd):
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


def _board_side_termios(fd):
    # Bytes pass unchanged (no CR/LF mapping, no echo, no flow control); ISIG so Ctrl-C raises
    # KeyboardInterrupt in running code; NOFLSH so it does not discard what follows it (mpremote
    # sends "\r\x03" then "\r\x01"); no other signal characters (Ctrl-\ or Ctrl-Z must not kill
    # or stop the board).
    attrs = termios.tcgetattr(fd)
    attrs[0] = 0
    attrs[1] = 0
    attrs[2] = termios.CS8 | termios.CREAD | termios.CLOCAL
    attrs[3] = termios.ISIG | termios.NOFLSH
    cc = attrs[6]
    for i in range(len(cc)):
        cc[i] = b"\x00"
    cc[termios.VINTR] = b"\x03"
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def _take_controlling_tty():
    # Runs in the child after setsid(): make its pty the controlling terminal, so Ctrl-C from the
    # host becomes SIGINT and a dead supervisor (closed master) hangs the board up (SIGHUP).
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class _PortWatch:
    """Opens and closes of the port by hosts, from inotify on the pty's device node: queued in
    order, so a host that closes and another that opens between two looks are both seen (polling
    POLLHUP misses that pair, and with it the re-plug that powers a cut board back on). None of
    it on a system without inotify: the caller falls back to polling."""

    _IN_OPEN, _IN_CLOSE, _IN_Q_OVERFLOW = 0x20, 0x08 | 0x10, 0x4000

    def __init__(self, path):
        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "inotify_init1"):  # not Linux
            raise OSError("no inotify on this system")
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if libc.inotify_add_watch(self.fd, os.fsencode(path), self._IN_OPEN | self._IN_CLOSE) < 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, "inotify_add_watch")

    def changes(self):
        """+1 per open, -1 per close since the last call, in order; None when events were lost
        (the queue overflowed: the caller recounts)."""
        out = []
        while True:
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                return out
            off = 0
            while off + 16 <= len(data):
                _, mask, _, name_len = struct.unpack_from("iIII", data, off)
                off += 16 + name_len
                if mask & self._IN_Q_OVERFLOW:
                    out.append(None)
                if mask & self._IN_OPEN:
                    out.append(1)
                if mask & self._IN_CLOSE:
                    out.append(-1)

    def close(self):
        os.close(self.fd)


class Supervisor:
    """Runs one virtual board until SIGTERM/SIGINT (or stdin EOF if configured)."""

    def __init__(self, config, out=None):
        self._cfg = config
        self._out = out if out is not None else sys.stdout
        self._mp = config.micropython or find_micropython()
        kb = default_heap_kb(self._mp) if str(config.heap).strip().lower() == DEFAULT_HEAP else parse_heap(config.heap) / 1024
        self._heap_bytes = interp.heap_kb(kb, self._mp) * 1024
        self._own_flash = config.flash_dir is None
        self._flash = os.path.abspath(config.flash_dir) if config.flash_dir else None
        self._mac = b""
        self._host_fd = -1
        self.port = None
        self._link_made = False
        self._child = None
        self._child_fd = -1
        self._gen = 0
        self._phase = "off"  # off | boot | app | enter_friendly | enter_raw | repl
        self._boot_mode = "friendly"  # REPL mode the current interpreter was started for
        self._repl_mode = "friendly"  # REPL mode the board is in now (a soft reset keeps it)
        self._input_open = False
        self._mounted = False  # the interpreter has mounted the flash ("mounted" marker)
        self._boot_started = 0.0
        self._to_child = bytearray()
        self._to_host = bytearray()
        self._held = b""
        self._held_since = 0.0
        self._swallow = bytearray()
        self._sent_ctrl_a = False
        self._tail = b""
        self._connected = False
        self._watch = None  # _PortWatch, or None (then POLLHUP is polled)
        self._hosts = 0  # hosts holding the port open (with a _PortWatch)
        self._restore_on_open = False
        self._wake_at = None
        self._wdt_ms = None
        self._wdt_deadline = None
        self._cause_code = 1
        self._child_spoke = False  # the current interpreter has sent a message (start-up ran)
        self._early_deaths = []
        self._last_output = b""
        self._stop = False
        self._reset_button = False
        self._romfs = False
        self._segments = []  # romfs segment files the interpreter maps
        self._trace = collections.deque(maxlen=_TRACE_LEN)

    # ---- lifecycle -------------------------------------------------------------------------

    def run(self):
        """Start the board, print the port path, serve until stopped; return an exit status."""
        old = {}
        wake_r, wake_w = os.pipe()
        _set_nonblocking(wake_r)
        _set_nonblocking(wake_w)
        try:
            self._setup()
            for sig, handler in (
                (signal.SIGTERM, self._on_stop_signal),
                (signal.SIGINT, self._on_stop_signal),
                (signal.SIGHUP, self._on_reset_signal),
                (signal.SIGCHLD, lambda s, f: None),  # only to wake the loop (wakeup fd)
            ):
                old[sig] = signal.signal(sig, handler)
            old_wakeup = signal.set_wakeup_fd(wake_w)
            try:
                self._print(self.port)
                self._power_on("power_on")
                self._loop(wake_r)
            finally:
                signal.set_wakeup_fd(old_wakeup)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            self._shutdown()
            os.close(wake_r)
            os.close(wake_w)
        return 0

    def _setup(self):
        if self._own_flash:
            self._flash = tempfile.mkdtemp(prefix="vboard-")
        self._romfs = interp.has_romfs(self._mp)  # the interpreter maps romfs partitions: the board has two
        self._mac = prepare_flash(self._flash, self._cfg.quota_bytes, self._cfg.mac, romfs=self._romfs)
        self._segments = romfs_paths(self._flash) + [port_segment(self._flash)] if self._romfs else []
        if self._cfg.cut_power_at_write:
            arm_power_cut(self._flash, self._cfg.cut_power_at_write)
        master, slave = os.openpty()
        tty.setraw(slave)  # before any host opens it: no echo of the board's output back to it
        self.port = os.ttyname(slave)
        # The supervisor keeps no slave fd open, so POLLHUP on the master tells it no host is
        # connected (and when one connects).
        os.close(slave)
        _set_nonblocking(master)
        self._host_fd = master
        try:
            self._watch = _PortWatch(self.port)
        except OSError:
            self._watch = None
        if self._cfg.link:
            link = self._cfg.link
            if os.path.lexists(link) and not os.path.islink(link):
                raise BoardError(f"{link} exists and is not a symlink: choose another --link path")
            tmp = f"{link}.{os.getpid()}.tmp"
            os.symlink(self.port, tmp)
            os.replace(tmp, link)
            self._link_made = True

    def _shutdown(self):
        self._note_child_state()
        self._kill_child()
        self._write_trace()
        if self._link_made:
            try:
                if os.readlink(self._cfg.link) == self.port:
                    os.unlink(self._cfg.link)
            except OSError:
                pass
        if self._host_fd >= 0:
            os.close(self._host_fd)
            self._host_fd = -1
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self._print_event("stopped")
        if self._own_flash and self._flash:
            shutil.rmtree(self._flash, ignore_errors=True)

    def _note_child_state(self):
        """The interpreter's state as the kernel sees it (running, sleeping and where, stopped),
        into the trace: what a board that stopped answering was doing."""
        if self._child is None:
            return
        pid = self._child.pid
        parts = []
        for name in ("stat", "wchan", "syscall"):
            try:
                with open(f"/proc/{pid}/{name}") as f:
                    text = f.read().strip()
            except OSError:
                continue
            if name == "stat":
                text = text.rsplit(")", 1)[-1].split()[0]  # the state letter: R, S, D, T, Z
            parts.append(f"{name}={text}")
        self._note("child", f"pid {pid}: " + " ".join(parts))

    def _on_stop_signal(self, signum, frame):
        self._stop = True

    def _on_reset_signal(self, signum, frame):
        self._reset_button = True

    def _print(self, line):
        try:
            self._out.write(line + "\n")
            self._out.flush()
        except (OSError, ValueError):
            pass  # nobody reads our events any more; the board keeps running

    def _print_event(self, name, **fields):
        self._print(json.dumps({"event": name, **fields}))
        self._note("event", name)

    def _note(self, kind, what):
        """Keep one line of the trace (formatted only when written out)."""
        self._trace.append((time.monotonic(), kind, self._phase, self._input_open, what))
        if _DEBUG:
            print("vboard:", *self._trace_line(self._trace[-1]), file=sys.stderr, flush=True)

    @staticmethod
    def _trace_line(entry):
        t, kind, phase, input_open, what = entry
        return (f"{t:.3f}", kind, phase, "in-open" if input_open else "in-held",
                what if isinstance(what, str) else repr(bytes(what[:200])))

    def _write_trace(self):
        if not self._flash or self._own_flash:
            return
        try:
            with open(os.path.join(self._flash, TRACE_FILE), "w") as f:
                for entry in self._trace:
                    f.write(" ".join(self._trace_line(entry)) + "\n")
        except OSError:
            pass

    # ---- the loop --------------------------------------------------------------------------

    def _loop(self, wake_r):
        stdin_fd = sys.stdin.fileno() if self._cfg.stop_on_stdin_eof else -1
        while not self._stop:
            now = time.monotonic()
            self._check_connection()
            self._check_timers(now)
            if self._stop:
                break
            rlist, wlist = [wake_r], []
            if self._watch is not None:
                rlist.append(self._watch.fd)  # a host opening the port wakes the loop
            if stdin_fd >= 0:
                rlist.append(stdin_fd)
            if self._connected and len(self._to_child) < _QUEUE_LIMIT:
                rlist.append(self._host_fd)
            if self._connected and self._to_host:
                wlist.append(self._host_fd)
            if self._child_fd >= 0:
                if not (self._connected and len(self._to_host) >= _QUEUE_LIMIT):
                    rlist.append(self._child_fd)
                if self._input_open and self._to_child:
                    wlist.append(self._child_fd)
            gen = self._gen
            try:
                readable, writable, _ = select.select(rlist, wlist, [], self._timeout(now))
            except InterruptedError:
                continue
            if wake_r in readable:
                try:
                    os.read(wake_r, 512)
                except BlockingIOError:
                    pass
            if stdin_fd in readable and not os.read(stdin_fd, 512):
                self._stop = True
            if self._child_fd in readable:
                self._read_child()
            elif self._child is not None and self._child.poll() is not None:
                self._read_child()  # exited while its output was not being read
            if self._host_fd in readable:
                self._read_host()
            # Only the interpreter select() looked at: one that replaced it in this round (a soft
            # reset read above) may have the same fd number, and its input is held while it boots.
            # Writing held input there put a Ctrl-C into an interpreter still starting: it died
            # before mounting the flash, or came up with a REPL on the host's directory and no
            # input ever let through ("no MicroPython REPL answered", seen in CI).
            if gen == self._gen and self._child_fd in writable and self._child_fd >= 0:
                self._write_child()
            if self._host_fd in writable:
                self._write_host()

    def _timeout(self, now):
        t = 0.5
        if self._held or self._phase == "boot":
            t = _HELD_FLUSH_S
        elif not self._connected and self._watch is None:
            t = _CONNECT_POLL_S  # without inotify a host opening the port gives no event: poll for it
        for deadline in (self._wdt_deadline, self._wake_at):
            if deadline is not None:
                t = min(t, max(0.0, deadline - now))
        return t

    def _check_connection(self):
        if self._watch is not None:
            for change in self._watch.changes():
                was = self._hosts > 0
                if change is None:  # events lost: is anyone there now? (one host, or none)
                    self._hosts = 0 if self._hung_up() else 1
                else:
                    self._hosts = max(0, self._hosts + change)
                if was and not self._hosts:
                    self._host_left()
                elif self._hosts and not was:
                    self._host_came()
            return
        hup = self._hung_up()
        if hup and self._connected:
            self._host_left()
        elif not hup and not self._connected:
            self._host_came()

    def _hung_up(self):
        p = select.poll()
        p.register(self._host_fd, select.POLLIN)
        return any(ev & select.POLLHUP for _, ev in p.poll(0))

    def _host_came(self):
        self._note("host", "opened the port")
        self._connected = True
        if self._phase == "off" and self._restore_on_open:
            self._power_on("power_on")  # a host opened the port: power is back

    def _host_left(self):
        self._note("host", "closed the port")
        # What the host wrote just before closing reached the board's UART: deliver it now,
        # never to the next host (a Ctrl-D left over would reset the board under that one).
        while self._read_host():
            pass
        self._connected = False
        self._to_host.clear()

    def _check_timers(self, now):
        if self._reset_button:
            self._reset_button = False
            self._power_on("power_on")
            return
        if self._wdt_deadline is not None and now >= self._wdt_deadline:
            self._power_on("watchdog")
            return
        if self._wake_at is not None and now >= self._wake_at:
            self._power_on("deepsleep")
            return
        if self._held and now - self._held_since >= _HELD_FLUSH_S:
            held, self._held = self._held, b""
            self._pass(held)
        if self._phase == "boot" and self._mounted and now - self._boot_started >= _BOOT_HOLD_S:
            self._input_open = True  # a long boot.py can still be interrupted

    # ---- byte movers -----------------------------------------------------------------------

    def _read_host(self):
        """Take what the host sent; True when something was read."""
        try:
            data = os.read(self._host_fd, 4096)
        except OSError:
            return False  # EIO: the host closed the port and nothing is left; EAGAIN: nothing now
        self._note("in", data)
        if self._phase != "off" and self._child is not None:
            self._to_child += data  # while the board is off, what is sent is lost
        return bool(data)

    def _write_host(self):
        try:
            n = os.write(self._host_fd, self._to_host[:4096])
        except BlockingIOError:
            return
        except OSError:
            self._to_host.clear()
            return
        del self._to_host[:n]

    def _write_child(self):
        if not self._input_open:
            return
        try:
            n = os.write(self._child_fd, self._to_child[:4096])
        except BlockingIOError:
            self._note("to-board", "would block")
            return
        except OSError:
            return  # the interpreter is gone; _read_child handles it
        self._note("to-board", self._to_child[:n])
        del self._to_child[:n]

    def _read_child(self):
        gen = self._gen
        while self._child_fd >= 0 and gen == self._gen:
            try:
                data = os.read(self._child_fd, 4096)
            except BlockingIOError:
                if self._child.poll() is None:
                    return
                data = b""
            except OSError:  # EIO: every holder of the board's tty is gone
                data = b""
            if not data:
                self._on_child_exit()
                return
            self._from_child(data)

    def _emit(self, data):
        if self._connected:
            self._to_host += data

    # ---- output of the board ---------------------------------------------------------------

    def _from_child(self, data):
        gen = self._gen
        data = self._held + data
        self._held = b""
        while data:
            i = data.find(_MARK)
            if i < 0:
                k = _partial_suffix(data, _MARK)
                self._pass(data[: len(data) - k])
                if k:
                    self._held, self._held_since = data[len(data) - k :], time.monotonic()
                return
            self._pass(data[:i])
            j = data.find(_MARK_END, i + len(_MARK))
            if j < 0:
                if len(data) - i > 64:  # no marker is that long: ordinary output
                    self._pass(data[i:])
                else:
                    self._held, self._held_since = data[i:], time.monotonic()
                return
            self._on_marker(data[i + len(_MARK) : j].decode("ascii", "replace"))
            if gen != self._gen:
                return  # the interpreter was replaced: the rest was the old board's
            data = data[j + len(_MARK_END) :]

    def _pass(self, data):
        if not data:
            return
        self._last_output = (self._last_output + data)[-2048:]
        self._note("out", data)
        if self._phase == "enter_raw":
            self._swallow += data
            if not self._sent_ctrl_a and self._swallow.endswith(_PROMPT):
                self._sent_ctrl_a = True
                try:
                    os.write(self._child_fd, b"\x01")
                except OSError:
                    pass
            i = self._swallow.find(_RAW_BANNER)
            if i < 0:
                return
            data = bytes(self._swallow[i:])
            self._swallow.clear()
            self._open_repl()
        self._tail = (self._tail + data)[-96:]
        raw_at, friendly_at = self._tail.rfind(_RAW_BANNER), self._tail.rfind(_FRIENDLY_BANNER)
        if raw_at > friendly_at:
            self._repl_mode = "raw"
        elif friendly_at > raw_at:
            self._repl_mode = "friendly"
        self._emit(data)
        if self._phase == "enter_friendly":
            # Input is held, so what follows the "repl" message is the banner and the prompt —
            # unless Ctrl-C brought the REPL up with host input already in its tty (then more).
            self._swallow += data
            if _PROMPT in self._swallow or _RAW_BANNER in self._swallow:
                self._swallow.clear()
                self._open_repl()

    def _open_repl(self):
        self._phase = "repl"
        self._input_open = True

    def _on_marker(self, msg):
        word, _, arg = msg.partition(" ")
        self._child_spoke = True
        self._note("marker", msg)
        if word == "mounted":
            # The port's own start-up is over (flash mounted, machine installed): from here a
            # Ctrl-C can only reach boot.py, as on the board, where that start-up takes
            # microseconds. Before it, input stays held however slow this host is: a Ctrl-C there
            # would leave a REPL running on the host's filesystem instead of the flash.
            self._mounted = True
            self._boot_started = time.monotonic()
        elif word == "app":
            self._phase = "app"
            self._input_open = True
        elif word == "repl":
            self._input_open = False
            if self._boot_mode == "raw":
                self._phase, self._sent_ctrl_a = "enter_raw", False
                self._swallow.clear()
            else:
                self._phase = "enter_friendly"
                self._swallow.clear()
        elif word == "soft":
            self._soft_reboot()
        elif word == "reset":
            self._power_on("reset")
        elif word == "cut":
            self._power_off()
            self._restore_on_open = True
            self._print_event("power_cut", write=flash_writes(self._flash))
        elif word == "deepsleep":
            self._power_off()
            ms = int(arg or 0)
            if ms > 0:
                self._wake_at = time.monotonic() + ms / 1000
            else:
                self._restore_on_open = True
            self._print_event("power_off", reason="deepsleep")
        elif word == "wdt":
            self._wdt_ms = max(1, int(arg or 5000))
            self._wdt_deadline = time.monotonic() + self._wdt_ms / 1000
        elif word == "feed" and self._wdt_ms:
            self._wdt_deadline = time.monotonic() + self._wdt_ms / 1000

    # ---- the interpreter's life ------------------------------------------------------------

    def _on_child_exit(self):
        rc = self._child.wait()
        self._close_child()
        if self._phase == "boot" and not self._child_spoke:
            # It died before the start-up script said anything: a broken install, not a board
            # behaviour. A few in a row stop the supervisor instead of respawning forever.
            now = time.monotonic()
            self._early_deaths = [t for t in self._early_deaths if now - t < 10] + [now]
            if len(self._early_deaths) >= 3:
                raise BoardError(
                    f"{self._mp} exits during start-up (status {rc}); it printed: "
                    f"{bytes(self._last_output).decode('utf-8', 'replace')!r}. Check the MicroPython install."
                )
        if rc >= 0 or rc == -signal.SIGINT:
            # Ctrl-D at the REPL, sys.exit(), or a Ctrl-C that landed while the unix port had
            # SIGINT at its default action: a soft reset on the board.
            self._soft_reboot()
        elif rc in (-signal.SIGKILL, -signal.SIGTERM, -signal.SIGHUP):
            self._power_on("power_on")  # killed from outside: like pulling the power
        else:
            name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
            self._emit(f"Guru Meditation Error: the interpreter died ({name}).\r\nRebooting...\r\n".encode())
            self._power_on("crash")

    def _close_child(self):
        if self._child_fd >= 0:
            os.close(self._child_fd)
            self._child_fd = -1
        self._child = None
        self._gen += 1
        self._input_open = False
        self._held = b""
        self._swallow.clear()

    def _kill_child(self):
        if self._child is None:
            return
        try:
            os.killpg(self._child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self._child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()
        self._close_child()

    def _power_off(self):
        self._kill_child()
        self._phase = "off"
        self._wdt_ms = self._wdt_deadline = None
        self._wake_at = None
        self._restore_on_open = False
        self._to_child.clear()

    def _power_on(self, cause):
        self._power_off()
        code, rom = _CAUSES[cause]
        self._repl_mode = "friendly"
        self._emit(_ROM_BANNER + rom.encode() + b"\r\n")
        self._spawn("friendly", code)
        self._print_event("power_on", cause=cause, pid=self._child.pid)

    def _soft_reboot(self):
        cause = self._cause_code
        self._kill_child()
        self._emit(b"MPY: soft reboot\r\n")
        self._spawn(self._repl_mode, cause)
        self._print_event("soft_reboot", pid=self._child.pid)

    def _spawn(self, mode, cause_code):
        master, slave = os.openpty()
        try:
            _board_side_termios(slave)
            env = dict(os.environ)
            env.update(
                VBOARD_FLASH=self._flash,
                VBOARD_MODE=mode,
                VBOARD_BLOCKS=str(self._cfg.quota_bytes // BLOCK_SIZE),
                VBOARD_MAC=self._mac.hex(),
                VBOARD_CAUSE=str(cause_code),
                MICROPYPATH="",
            )
            if self._segments:  # slots a and b, then the board's port code (_vboot.py mounts it)
                env[interp.ROMFS_ENV] = ":".join(self._segments)
                env["REDMESH_ROMFS_HIDDEN"] = "1"  # the port code is no partition of the board's
            self._child = subprocess.Popen(
                [self._mp, "-X", f"heapsize={self._heap_bytes}", "-i", os.path.join(BOARD_FS_DIR, "_vboot.py")],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=self._flash,
                env=env,
                start_new_session=True,
                preexec_fn=_take_controlling_tty,
            )
        except OSError as e:
            os.close(master)
            raise BoardError(f"cannot start {self._mp}: {e.strerror}; check the MicroPython install") from e
        finally:
            os.close(slave)
        _set_nonblocking(master)
        self._child_fd = master
        self._gen += 1
        self._cause_code = cause_code
        self._boot_mode = mode
        self._repl_mode = mode
        self._phase = "boot"
        self._child_spoke = False
        self._mounted = False
        self._boot_started = time.monotonic()
        self._input_open = False
        self._tail = b""


def _partial_suffix(data, mark):
    """Length of the longest end of data that is a proper beginning of mark."""
    for k in range(min(len(mark) - 1, len(data)), 0, -1):
        if data.endswith(mark[:k]):
            return k
    return 0


def run_supervisor(config, out=None):
    """Run a board in this process until SIGTERM/SIGINT; print the port path first. Raises BoardError."""
    return Supervisor(config, out).run()
