"""A thin transport seam over mpremote: one MicroPython board on a serial port.

The board is driven through mpremote's own `SerialTransport` (raw REPL, raw-paste mode), so
what works with `mpremote connect PORT ...` works here, on an ESP32 and on a virtual board
(fleet/sim/board/). This module adds only what provisioning needs on top:

- a few primitives: enter_raw() (interrupt the app, raw REPL, optional soft reset), exec(),
  eval(), write_files() (base64 batches, several small files per exec), hash_files() (SHA-256
  computed ON the board), read_file(), hard_reset(), soft_reset_to_app(), console_lines();
- counters for the time estimates: bytes_out / bytes_in on the wire and execs;
- one error tree: every failure is an MpBoardError (a FleetError) whose message names the port
  and says what to do. Device-side exceptions become DeviceError with the device's last
  traceback line (errno names decoded: ENOSPC = flash full). Nothing here prints.

Why base64 and batches: mpremote's fs_writefile sends repr() of 256-byte chunks, which expands
binary .mpy files ~2.5-3x and costs one exec round trip per 256 bytes. Here each exec carries
up to `chunk_bytes` of payload (default 4 KB) as base64 (4/3 expansion) and small files share an
exec, so a 110 KB app is ~40 execs instead of ~450.
"""
import ast
import base64
import binascii
import contextlib
import os
import struct
import time

import serial

from firmware import boot as fw_boot
from fleet.errors import FleetError

DEFAULT_BAUD = 115200
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
CHUNK_BYTES = 4096  # payload per exec: ~5.5 KB of source, ~12 KB transient heap on the board
_SERIAL_TIMEOUT_S = 2.0  # one read() may block this long; overall deadlines are ours
# mpremote's raw paste reads the board's flow-control bytes with blocking reads and takes a read
# that times out (b"") for a protocol error. A board answers in milliseconds, but a virtual board
# is a process, and on a loaded host (a technician's laptop, a shared CI machine) it can be
# descheduled for seconds: while code is being pasted, one read may wait this long.
_PASTE_TIMEOUT_S = 10.0
_QUIET_S = 0.3  # a resync waits for the line to stay silent this long

# Errno numbers of MicroPython (the ESP32 and unix ports print "[Errno 28] ENOSPC")
_ERRNO_HINTS = {
    "ENOSPC": "the board's flash is full: remove files (or re-run with --replace to clear old slots)",
    "ENOENT": "a file or directory is missing on the board",
    "EIO": "the board's flash reported an I/O error: the flash may be worn or the board damaged",
    "ENOMEM": "the board ran out of RAM",
}


class MpBoardError(FleetError):
    """A board on a serial port could not do what was asked; the message says what to do."""

    def __init__(self, port, message):
        super().__init__(f"{port}: {message}")
        self.port = port


class PortError(MpBoardError):
    """The serial port cannot be opened (missing, busy, no permission)."""


class NoReplError(MpBoardError):
    """Something answered on the port, but not a MicroPython REPL."""


class BoardGoneError(MpBoardError):
    """The board stopped answering in the middle of an operation (unplugged, reset, crashed)."""


class DeviceError(MpBoardError):
    """Code run on the board raised an exception; `device_error` is its last traceback line."""

    def __init__(self, port, message, device_error):
        super().__init__(port, message)
        self.device_error = device_error


def _device_error_line(err_text):
    lines = [ln.strip() for ln in err_text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"


class _CountingSerial:
    """Wraps a pyserial port: counts bytes each way, forwards everything else."""

    def __init__(self, ser):
        object.__setattr__(self, "_ser", ser)
        object.__setattr__(self, "bytes_out", 0)
        object.__setattr__(self, "bytes_in", 0)

    def write(self, data):
        n = self._ser.write(data)
        object.__setattr__(self, "bytes_out", self.bytes_out + len(data))
        return n

    def read(self, size=1):
        data = self._ser.read(size)
        object.__setattr__(self, "bytes_in", self.bytes_in + len(data))
        return data

    def __getattr__(self, name):
        return getattr(self._ser, name)

    def __setattr__(self, name, value):
        setattr(self._ser, name, value)


def _open_transport(port, baud):
    """Return an open mpremote SerialTransport on `port`; raise PortError saying why not."""
    from mpremote.transport import TransportError
    from mpremote.transport_serial import SerialTransport

    if "://" not in port and not os.path.exists(port):
        raise PortError(port, "no such serial port: check the cable and the port name "
                              "(`ls /dev/ttyUSB* /dev/ttyACM*`; a virtual board prints its port when it starts)")
    try:
        return SerialTransport(port, baudrate=baud, wait=0, exclusive=True, timeout=_SERIAL_TIMEOUT_S)
    except TransportError:
        pass
    # mpremote hides the reason: open it once more ourselves to tell the user what went wrong.
    reason = "unknown error"
    try:
        s = serial.serial_for_url(port, baudrate=baud, exclusive=True, timeout=0.1)
        s.close()
        reason = "it opened on a second try; retry the command"
    except (OSError, ValueError) as e:
        reason = str(e)
    if "Permission denied" in reason or "Errno 13" in reason:
        raise PortError(port, f"permission denied opening the port ({reason}): add your user to the "
                              f"'dialout' group (then log in again)")
    if "lock" in reason.lower() or "busy" in reason.lower() or "Errno 11" in reason:
        raise PortError(port, f"the port is in use by another program ({reason}): close serial monitors "
                              f"(mpremote, screen, minicom) on it")
    raise PortError(port, f"cannot open the serial port: {reason}")


# Red Mesh's boot.py starts the watchdog (60 s) and keeps it in the REPL's globals: a board
# stopped at the REPL for a long session (provisioning) is fed before each exec, or it resets.
_FEED_WDT = "try:\n %s.feed()\nexcept NameError:\n pass\n" % fw_boot.WDT_NAME


class MpBoard:
    """One MicroPython board on a serial port. Use as a context manager:

        with MpBoard("/dev/ttyUSB0") as board:
            board.enter_raw()
            info = board.eval("sys.platform")   # after exec("import sys")

    Not thread-safe: one thread per board (parallel provisioning opens one MpBoard per port)."""

    def __init__(self, port, *, baud=DEFAULT_BAUD, exec_timeout_s=20.0):
        self.port = port
        self.baud = baud
        self.exec_timeout_s = exec_timeout_s
        self.execs = 0
        self._t = None
        self._ser = None

    # ---- connection -------------------------------------------------------------------------

    def open(self):
        """Open the port without touching the board (the app keeps running). Raises PortError."""
        if self._t is None:
            self._t = _open_transport(self.port, self.baud)
            self._ser = _CountingSerial(self._t.serial)
            self._t.serial = self._ser
        return self

    def close(self):
        """Close the port (the board is left as it is: in the raw REPL if we put it there)."""
        t, self._t = self._t, None
        if t is None:
            return
        try:
            t.close()
        except (OSError, serial.SerialException):
            pass  # a board that is gone cannot be closed politely

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    @property
    def bytes_out(self):
        return self._ser.bytes_out if self._ser is not None else 0

    @property
    def bytes_in(self):
        return self._ser.bytes_in if self._ser is not None else 0

    def _gone(self, what, err):
        return BoardGoneError(self.port, f"the board stopped answering while {what} ({err}): it was unplugged, "
                                         f"reset or crashed; check the cable and run the command again")

    # ---- raw bytes --------------------------------------------------------------------------

    def _read_until(self, ending, timeout_s):
        """Read until `ending` or the deadline; return (data, found)."""
        data = bytearray()
        deadline = time.monotonic() + timeout_s
        ser = self._ser
        while not data.endswith(ending):
            if time.monotonic() >= deadline:
                return bytes(data), False
            try:
                # one byte at a time: what follows `ending` belongs to mpremote's next read
                data += ser.read(1)
            except (OSError, serial.SerialException) as e:
                raise self._gone("reading", e) from e
        return bytes(data), True

    def _write(self, data, what):
        try:
            self._ser.write(data)
        except (OSError, serial.SerialException) as e:
            raise self._gone(what, e) from e

    def _drain(self):
        try:
            while self._ser.in_waiting:
                self._ser.read(self._ser.in_waiting)
        except (OSError, serial.SerialException) as e:
            raise self._gone("connecting", e) from e

    # ---- REPL -------------------------------------------------------------------------------

    def enter_raw(self, soft_reset=True, timeout_s=15.0):
        """Interrupt the running app (Ctrl-C), enter the raw REPL and, with `soft_reset`, soft-reset
        in it (a clean heap; boot.py runs, main.py does not). Retries Ctrl-C until `timeout_s`.
        Raises NoReplError when no MicroPython raw REPL answers, BoardGoneError if the port dies."""
        self.open()
        deadline = time.monotonic() + timeout_s
        seen = b""
        while True:
            # One Ctrl-C at a time: a second one could interrupt the app's clean-up (ring flush).
            self._write(b"\r\x03", "connecting")
            time.sleep(0.1)
            self._drain()
            self._write(b"\r\x01", "connecting")
            # Up to the banner only: mpremote's exec reads the ">" prompt that follows it.
            data, found = self._read_until(RAW_BANNER, min(2.0, max(0.1, deadline - time.monotonic())))
            seen = (seen + data)[-400:]
            if found:
                break
            if time.monotonic() >= deadline:
                raise NoReplError(self.port, self._no_repl_message(seen))
        if soft_reset:
            for attempt in (1, 2):
                self._write(b"\x04", "soft-resetting")
                _, ok = self._read_until(b"soft reboot\r\n", 10.0)
                if ok:
                    _, ok = self._read_until(RAW_BANNER, 10.0)
                if ok:
                    break
                if attempt == 2:
                    raise NoReplError(self.port, "the board did not come back to the raw REPL after a soft reset; "
                                                 "press its reset button and run the command again")
                self._resync(timeout_s)  # a glitch: back to a clean raw REPL, soft-reset once more
        self._t.in_raw_repl = True

    def _quiet(self, max_s=3.0):
        """Read and drop what the board sends until the line stays silent for _QUIET_S (at most
        `max_s`): output still on its way from an interrupted exchange must not be taken for the
        answer to the next one."""
        ser = self._ser
        deadline = time.monotonic() + max_s
        last = time.monotonic()
        old = ser.timeout
        try:
            ser.timeout = 0.05
            while time.monotonic() < deadline and time.monotonic() - last < _QUIET_S:
                if ser.read(max(1, ser.in_waiting)):
                    last = time.monotonic()
        except (OSError, serial.SerialException) as e:
            raise self._gone("resynchronising", e) from e
        finally:
            with contextlib.suppress(OSError, serial.SerialException):
                ser.timeout = old

    def _resync(self, timeout_s=15.0):
        """After a glitch: Ctrl-C ends whatever the board was reading (a raw paste answers it with
        0x04 and drops the partial code unrun), the line is let go quiet, and the raw REPL is
        entered afresh (no soft reset)."""
        self._write(b"\x03", "resynchronising")
        self._quiet()
        self._t.in_raw_repl = False
        self.enter_raw(soft_reset=False, timeout_s=timeout_s)

    def _no_repl_message(self, seen):
        text = seen.decode("utf-8", "replace")
        if not seen:
            hint = "nothing answered: is the board powered and MicroPython flashed? (fleet flash --port ... --image ...)"
        elif "ets " in text or "waiting for download" in text:
            hint = "the ESP32 is in its ROM bootloader: press reset (EN) without holding BOOT"
        else:
            hint = "something answered, but not a MicroPython REPL: flash MicroPython first (fleet flash)"
        return f"no MicroPython REPL answered: {hint}"

    def exec(self, code, what="running code", timeout_s=None):
        """Run `code` in the raw REPL; return its stdout bytes. Raises DeviceError (with the
        device's exception line) or BoardGoneError."""
        from mpremote.transport import TransportError

        if not self._t or not self._t.in_raw_repl:
            self.enter_raw()
        self._send_code(_FEED_WDT + code, what)
        try:
            out, err = self._t.follow(timeout_s or self.exec_timeout_s)
        except TransportError as e:
            raise self._gone(what, e) from e
        except (OSError, serial.SerialException, struct.error) as e:
            raise self._gone(what, e) from e
        self.execs += 1
        if err:
            line = _device_error_line(err.decode("utf-8", "replace"))
            hint = next((h for k, h in _ERRNO_HINTS.items() if k in line), None)
            msg = f"{what} failed on the board: {line}"
            if hint:
                msg += f" ({hint})"
            raise DeviceError(self.port, msg, line)
        return out

    def _send_code(self, code, what):
        """Hand `code` to the raw REPL through mpremote (raw-paste mode, flow controlled). A
        glitch before the board has taken the whole code (no prompt, no raw-paste header, a
        flow-control byte missing or wrong: nothing was run) is retried once after a resync;
        a failure once the end of the code was sent is not (the board may be running it)."""
        from mpremote.transport import TransportError

        for attempt in (1, 2):
            ser = self._ser
            old = ser.timeout
            try:
                ser.timeout = _PASTE_TIMEOUT_S  # reconfigures the port: fails on a port that is gone
                # (when raw paste is refused or garbled, mpremote print()s what it read: not
                # redirected here, as redirect_stdout is process-wide and boards run in threads)
                self._t.exec_raw_no_follow(code)
                return
            except struct.error as e:  # the raw-paste header never came: nothing was sent
                err = e
            except TransportError as e:
                msg = str(e)
                if not ("could not enter raw repl" in msg or "unexpected read during raw paste" in msg):
                    raise self._gone(what, e) from e  # "could not complete/exec": it may have run
                err = e
            except (OSError, serial.SerialException) as e:
                raise self._gone(what, e) from e
            finally:
                with contextlib.suppress(OSError, serial.SerialException):
                    ser.timeout = old
            if attempt == 2:
                raise self._gone(what, err)
            self._t.use_raw_paste = True  # mpremote gives raw paste up after one refusal: it was a glitch
            self._resync()

    def eval(self, expr, what="reading from the board"):
        """Return the Python literal `expr` evaluates to on the board (repr parsed locally)."""
        out = self.exec(f"print(repr({expr}))", what)
        try:
            return ast.literal_eval(out.decode("utf-8", "replace").strip())
        except (ValueError, SyntaxError) as e:
            raise NoReplError(self.port, f"unexpected answer while {what}: {out[:80]!r}") from e

    # ---- files ------------------------------------------------------------------------------

    def read_file(self, path, what=None):
        """Return the bytes of file `path` on the board, or None when it does not exist."""
        code = (
            "import binascii\n"
            "try:\n"
            f" f=open({path!r},'rb')\n"
            "except OSError:\n"
            " print('-')\n"
            "else:\n"
            " while True:\n"
            "  b=f.read(768)\n"
            "  if not b:break\n"
            "  print(binascii.b2a_base64(b).decode().strip())\n"
            " f.close()\n"
            " print('.')\n"
        )
        out = self.exec(code, what or f"reading {path}").decode("ascii", "replace").split()
        if out and out[0] == "-":
            return None
        if not out or out[-1] != ".":
            raise self._gone(what or f"reading {path}", "truncated answer")
        return b"".join(base64.b64decode(x) for x in out[:-1])

    def hash_files(self, dirs=(), files=(), what="computing SHA-256 on the board"):
        """SHA-256 computed on the board of every file under `dirs` (recursively) and of each of
        `files` that exists. Returns {path: (size, hex digest)} and the set of directories seen."""
        code = (
            "import os,hashlib,binascii\n"
            "_b=bytearray(1024)\n"
            "def _h(p):\n"
            " h=hashlib.sha256();n=0\n"
            " f=open(p,'rb')\n"
            " while True:\n"
            "  k=f.readinto(_b)\n"
            "  if not k:break\n"
            "  h.update(_b if k==1024 else _b[:k]);n+=k\n"
            " f.close()\n"
            " print('F',p,n,binascii.hexlify(h.digest()).decode())\n"
            "def _w(d):\n"
            " try:\n"
            "  es=list(os.ilistdir(d))\n"
            " except OSError:\n"
            "  return\n"
            " print('D',d)\n"
            " for e in es:\n"
            "  p=d.rstrip('/')+'/'+e[0]\n"
            "  if e[1]==0x4000:_w(p)\n"
            "  else:_h(p)\n"
            f"for d in {list(dirs)!r}:_w(d)\n"
            f"for p in {list(files)!r}:\n"
            " try:_h(p)\n"
            " except OSError:pass\n"
            "print('.')\n"
        )
        out = self.exec(code, what, timeout_s=60).decode("utf-8", "replace").splitlines()
        if not out or out[-1].strip() != ".":
            raise self._gone(what, "truncated answer")
        found, seen_dirs = {}, set()
        for line in out[:-1]:
            parts = line.split()
            if len(parts) == 4 and parts[0] == "F":
                found[parts[1]] = (int(parts[2]), parts[3])
            elif len(parts) == 2 and parts[0] == "D":
                seen_dirs.add(parts[1])
        return found, seen_dirs

    def make_dirs(self, paths, what="creating directories"):
        """Create each directory of `paths` (parents first) that does not exist yet."""
        if not paths:
            return
        code = (
            "import os\n"
            f"for d in {sorted(paths)!r}:\n"
            " try:os.mkdir(d)\n"
            " except OSError as e:\n"
            "  if e.args[0]!=17:raise\n"
        )
        self.exec(code, what)

    def remove_files(self, paths, what="removing old files"):
        """Remove each file of `paths` (absent files are fine)."""
        if not paths:
            return
        code = (
            "import os\n"
            f"for p in {sorted(paths)!r}:\n"
            " try:os.remove(p)\n"
            " except OSError as e:\n"
            "  if e.args[0]!=2:raise\n"
        )
        self.exec(code, what)

    def write_files(self, files, chunk_bytes=CHUNK_BYTES, on_bytes=None, what="writing files"):
        """Write {path: bytes} to the board. Payload travels as base64, up to `chunk_bytes` per
        exec; small files share an exec, big ones are appended piece by piece. `on_bytes(n)` is
        called after each exec with the payload bytes it wrote. Returns the payload bytes written."""
        ops = []  # (path, mode, data)
        for path, data in files.items():
            if not data:
                ops.append((path, "wb", b""))
            for i in range(0, len(data), chunk_bytes):
                ops.append((path, "wb" if i == 0 else "ab", data[i:i + chunk_bytes]))
        total = 0
        batch, batch_bytes = [], 0

        def flush():
            nonlocal total
            if not batch:
                return
            lines = ["from binascii import a2b_base64 as _d"]
            for path, mode, data in batch:
                b64 = binascii.b2a_base64(data, newline=False).decode("ascii")
                lines.append(f"f=open({path!r},{mode!r});f.write(_d(b'{b64}'));f.close()")
            self.exec("\n".join(lines) + "\n", f"{what} ({batch[0][0]})")
            n = sum(len(d) for _, _, d in batch)
            total += n
            if on_bytes is not None:
                on_bytes(n)
            batch.clear()

        for op in ops:
            if batch and batch_bytes + len(op[2]) > chunk_bytes:
                flush()
                batch_bytes = 0
            batch.append(op)
            batch_bytes += len(op[2])
        flush()
        return total

    def write_rom(self, part, image, chunk_bytes=CHUNK_BYTES, on_bytes=None, what="writing the romfs partition"):
        """Write ROMFS `image` into romfs partition `part` (vfs.rom_ioctl, as `mpremote romfs
        deploy`): erase what it needs (WRITE_PREPARE), write it as base64 chunks, several per
        exec, each a multiple of the flash's minimum write, then WRITE_COMPLETE. The partition
        must not be mounted (the port's /rom is unmounted when it is partition 0). Returns the
        bytes written; the caller checks them (rom_sha256)."""
        head = "import vfs\n"
        if part == 0:
            head += "try:\n vfs.umount('/rom')\nexcept OSError:\n pass\n"
        out = self.exec(head + f"print(vfs.rom_ioctl(3,{part},{len(image)}))\n", f"{what} (erasing)")
        try:
            min_write = int(out.decode("ascii", "replace").strip().splitlines()[-1])
        except (ValueError, IndexError) as e:
            raise NoReplError(self.port, f"unexpected answer while {what}: {out[:80]!r}") from e
        if min_write < 0:
            raise DeviceError(self.port, f"{what}: the board refused to erase romfs partition {part}",
                              f"rom_ioctl WRITE_PREPARE returned {min_write}")
        step = max(min_write, 1)
        chunk = max(step, chunk_bytes // step * step)
        total, batch = 0, []

        def flush():
            nonlocal total
            if not batch:
                return
            lines = ["from binascii import a2b_base64 as _d"]
            for off, data in batch:
                b64 = binascii.b2a_base64(data, newline=False).decode("ascii")
                lines.append(f"vfs.rom_ioctl(4,{part},{off},_d(b'{b64}'))")
            self.exec("\n".join(lines) + "\n", f"{what} (offset {batch[0][0]})")
            n = sum(len(d) for _, d in batch)
            total += n
            if on_bytes is not None:
                on_bytes(n)
            batch.clear()

        for off in range(0, len(image), chunk):
            data = image[off:off + chunk]
            if len(data) % step:
                data += b"\xff" * (step - len(data) % step)  # erased flash: writing it changes nothing
            batch.append((off, data))
            if sum(len(d) for _, d in batch) >= chunk_bytes:
                flush()
        flush()
        self.exec(f"vfs.rom_ioctl(5,{part})\n", f"{what} (completing)")
        return total

    def rom_sha256(self, part, n, what="verifying the romfs partition"):
        """SHA-256 (hex) of the first `n` bytes of romfs partition `part`, computed on the board."""
        return self.eval(f"__import__('hashlib').sha256(memoryview(__import__('vfs').rom_ioctl(2,{part}))[:{n}])"
                         f".digest().hex()", what)

    # ---- reset and console ------------------------------------------------------------------

    def hard_reset(self):
        """machine.reset(): the board reboots (boot.py, then main.py). The port stays open so
        the caller can read the console."""
        if not self._t or not self._t.in_raw_repl:
            self.enter_raw(soft_reset=False)
        self._send_code("import machine\nmachine.reset()\n", "resetting")
        self.execs += 1
        self._t.in_raw_repl = False

    def soft_reset_to_app(self):
        """Leave the raw REPL and soft-reset in the friendly REPL: boot.py and main.py run again
        (the app restarts after an inspection)."""
        if self._t is None:
            return
        self._write(b"\r\x02", "leaving the raw REPL")
        time.sleep(0.05)
        self._write(b"\x04", "restarting the app")
        self._t.in_raw_repl = False

    def at_friendly_repl(self, timeout_s=1.0):
        """True when the board sits at its friendly REPL (no app running): a bare Enter is
        answered with the ">>> " prompt. A running app only buffers the byte (harmless)."""
        self.open()
        self._write(b"\r", "probing the REPL")
        _, found = self._read_until(b">>> ", timeout_s)
        return found

    def leave_raw(self):
        """Back from the raw REPL to the friendly one, without a reset (the app stays stopped)."""
        if self._t is None:
            return
        self._write(b"\r\x02", "leaving the raw REPL")
        self._t.in_raw_repl = False

    def console_lines(self, timeout_s=None, stop=None, join_mid_stream=False):
        """Yield lines printed on the serial console (decoded, without line ends) until
        `timeout_s` passes (None: forever) or `stop()` is true. With `join_mid_stream` (attaching
        to a running app), output that arrives within the first 0.2 s is taken to be the tail of
        a line already under way and is skipped up to its end. Raises BoardGoneError if the port
        dies."""
        self.open()
        t_open = time.monotonic()
        deadline = None if timeout_s is None else t_open + timeout_s
        buf = bytearray()
        ser = self._ser
        skip_to_eol = False
        while deadline is None or time.monotonic() < deadline:
            if stop is not None and stop():
                return
            try:
                n = ser.in_waiting
                chunk = ser.read(n if n > 0 else 1)
            except (OSError, serial.SerialException) as e:
                raise self._gone("reading the console", e) from e
            if not chunk:
                continue
            if join_mid_stream:
                skip_to_eol = time.monotonic() - t_open < 0.2
                join_mid_stream = False
            buf += chunk
            if skip_to_eol:
                i = buf.find(b"\n")
                if i < 0:
                    buf.clear()
                    continue
                del buf[:i + 1]
                skip_to_eol = False
            while True:
                i = buf.find(b"\n")
                if i < 0:
                    break
                line = bytes(buf[:i]).rstrip(b"\r").replace(b"\x04", b"")
                del buf[:i + 1]
                yield line.decode("utf-8", "replace")
