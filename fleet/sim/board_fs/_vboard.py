# Virtual board, MicroPython side: mounts the flash and runs boot.py / main.py like the ESP32 port.
#
# Runs inside the unix-port interpreter as `micropython -X heapsize=H -i _vboot.py`, started by the
# supervisor in fleet/sim/board/supervisor.py, which passes its settings in VBOARD_* environment variables.
#
# Rules:
# - The flash is a littlefs2 filesystem (as on the ESP32 port: 4096-byte blocks, default
#   read/prog sizes) on a block device backed by the image file <flash>/flash.img, mounted at "/"
#   in place of the host filesystem. Its size is the quota: a full flash raises OSError(28 ENOSPC).
# - Every mutating flash operation (program or erase) counts; the lifetime count is kept in
#   <flash>/flash_writes. If <flash>/cut_power_at holds K > 0, operation number K does not reach
#   the flash: the board loses power there (the supervisor kills this process). With a leading
#   "t" the cut is torn: the first half of that program (or erase) reaches the flash, as when a
#   NOR flash loses power in the middle of a page. littlefs is built for both: a metadata commit
#   carries a CRC, so a torn or missing commit is ignored at mount and a file keeps the content
#   of its last close (what tests/device/ota_fixtures.py's "littlefs" model assumes).
# - Messages to the supervisor travel in-band on stdout as ESC _ vb:<word> ESC \ (an APC string,
#   which terminals ignore); the supervisor strips them, so they stay in order with the output.
# - Everything needed after the host filesystem is unmounted is imported before (boot()).
import gc
import io
import os
import sys
import time

import vfs

_MARK = "\x1b_vb:"
_END = "\x1b\\"
_FIELD = 20  # bytes of a counter file: ascii decimal, space padded, newline


def tell(msg):
    """Send one message to the supervisor (in-band, one write so it cannot be split)."""
    sys.stdout.write(_MARK + msg + _END)


def halt():
    """Wait to be killed by the supervisor after a reset/power message; run no user code."""
    while True:
        try:
            time.sleep(1)
        except BaseException:  # a Ctrl-C already in flight must not wake the dead board
            pass


def _parse_field(buf):
    # No allocation here or below in FlashBdev: littlefs may write from a finaliser (a file closed
    # by the garbage collector), when the heap is locked.
    n = 0
    i = 0
    while i < _FIELD:
        c = buf[i]
        if 48 <= c <= 57:
            n = n * 10 + c - 48
        i += 1
    return n


def _format_field(buf, value):
    buf[_FIELD - 1] = 10
    i = _FIELD - 2
    while True:
        buf[i] = 48 + value % 10
        value //= 10
        i -= 1
        if value == 0:
            break
    while i >= 0:
        buf[i] = 32
        i -= 1


_CUT_MSG = _MARK + "cut" + _END


class FlashBdev:
    """Block device (extended interface) over the flash image file, with the power-cut hook."""

    def __init__(self, img, block_size, block_count, writes_f, cut_f):
        self._img = img
        self._bs = block_size
        self._count = block_count
        self._writes_f = writes_f
        self._cut_f = cut_f
        self._rbuf = bytearray(_FIELD)
        self._wbuf = bytearray(_FIELD)
        self._blank = b"\xff" * block_size
        self._one = bytearray(1)
        writes_f.readinto(self._rbuf)
        self.writes = _parse_field(self._rbuf)

    def readblocks(self, block, buf, offset=0):
        self._img.seek(block * self._bs + offset)
        self._img.readinto(buf)

    def writeblocks(self, block, buf, offset=0):
        self._mutate(block * self._bs + offset, buf)
        self._img.seek(block * self._bs + offset)
        self._img.write(buf)

    def ioctl(self, op, arg):
        if op == 4:  # block count
            return self._count
        if op == 5:  # block size
            return self._bs
        if op == 6:  # erase: flash erases to 0xff
            self._mutate(arg * self._bs, self._blank)
            self._img.seek(arg * self._bs)
            self._img.write(self._blank)
            return 0
        return 0  # init, deinit, sync: the image file needs none

    def _mutate(self, at, buf):
        n = self.writes + 1
        self.writes = n
        _format_field(self._wbuf, n)
        self._writes_f.seek(0)
        self._writes_f.write(self._wbuf)
        self._cut_f.seek(0)
        self._cut_f.readinto(self._rbuf)
        if _parse_field(self._rbuf) == n:
            if self._rbuf[0] == 116:  # "t": a torn cut, half of this operation lands
                self._img.seek(at)
                one = self._one  # a byte at a time: no slice, no allocation (see _parse_field)
                i = 0
                while i < len(buf) // 2:
                    one[0] = buf[i]
                    self._img.write(one)
                    i += 1
                self._img.flush()
            _format_field(self._wbuf, 0)  # fires once: the rebooted board does not die again
            self._cut_f.seek(0)
            self._cut_f.write(self._wbuf)
            sys.stdout.write(_CUT_MSG)  # the supervisor reads the write number from flash_writes
            halt()


_INITIAL_BOOT_PY = """\
# This file is executed on every boot (including wake-boot from deepsleep)
#import esp
#esp.osdebug(None)
#import webrepl
#webrepl.start()
"""


def _mount(flash_dir, block_count):
    img = open(flash_dir + "/flash.img", "r+b")
    writes_f = open(flash_dir + "/flash_writes", "r+b")
    cut_f = open(flash_dir + "/cut_power_at", "r+b")
    bdev = FlashBdev(img, 4096, block_count, writes_f, cut_f)
    fresh = False
    try:
        fs = vfs.VfsLfs2(bdev)
    except OSError:
        # A blank flash, as the ESP32 port's inisetup: format, then write the default boot.py.
        print("Performing initial setup")
        vfs.VfsLfs2.mkfs(bdev)
        fs = vfs.VfsLfs2(bdev)
        fresh = True
    vfs.umount("/")
    vfs.mount(fs, "/")
    os.chdir("/")
    if fresh:
        with open("boot.py", "w") as f:
            f.write(_INITIAL_BOOT_PY)
    return bdev


_state = {"globals": None, "modules": ()}


def finalise():
    """What the ESP32 port's soft reset does with gc_sweep_all(): run every finaliser, so files
    left open are closed (committed to flash) before this interpreter goes. Hard resets and power
    cuts do not get this, as on the board."""
    g = _state["globals"]
    if g is not None:
        g.clear()
    keep = _state["modules"]
    for name in list(sys.modules):
        if name not in keep:
            del sys.modules[name]
    gc.collect()


def _print_exception(e):
    # As the board prints it: without this module's frame above boot.py/main.py.
    buf = io.StringIO()
    sys.print_exception(e, buf)
    for line in buf.getvalue().split("\n"):
        if line and "_vboard.py" not in line:
            print(line)


def _exists(name):
    try:
        os.stat(name)
        return True
    except OSError:
        return False


def _run(name, g):
    """Run a file like the ESP32 port's pyexec_file: True if it ran to the end (or is absent)."""
    if not _exists(name):
        return True
    try:
        execfile(name, g)  # noqa: F821 (a MicroPython builtin: runs the file from flash)
        return True
    except SystemExit:
        finalise()
        tell("soft")  # sys.exit() in boot.py/main.py soft-resets an ESP32
        halt()
    except BaseException as e:  # KeyboardInterrupt too: print it and go on, as the board does
        _print_exception(e)
    return False


def boot(g):
    """Mount the flash, install the machine shim, run boot.py then (friendly mode) main.py."""
    getenv = os.getenv
    flash_dir = getenv("VBOARD_FLASH")
    mode = getenv("VBOARD_MODE") or "friendly"
    block_count = int(getenv("VBOARD_BLOCKS"))
    import _vmachine  # imported while the host filesystem (its directory) is still mounted

    try:  # the port code's segment (_vboot.py): its bytecode stays mapped, no file is read again
        vfs.umount("/vport")
    except OSError:
        pass

    sys.modules["machine"] = _vmachine
    slow = getenv("FLEET_VBOARD_SLOW_START_S")  # tests: a host too busy to start us promptly
    if slow:
        time.sleep(float(slow))
    _mount(flash_dir, block_count)
    for name in ("VBOARD_FLASH", "VBOARD_MODE", "VBOARD_BLOCKS", "VBOARD_MAC", "VBOARD_CAUSE"):
        os.unsetenv(name)
    # the esp32 port's path; with ROMFS it has mounted partition 0 at /rom (boot.py takes it off)
    sys.path[:] = ["", ".frozen"] + (["/rom", "/rom/lib"] if "/rom" in sys.path else []) + ["/lib"]
    sys.argv[:] = []
    _state["globals"] = g
    _state["modules"] = tuple(sys.modules)
    # The unix port leaves on Ctrl-D at the REPL and on sys.exit(): the supervisor makes that a
    # soft reset, so the finalisers run as they would on the board.
    sys.atexit(finalise)
    tell("mounted")  # the port's start-up is done: host input may reach boot.py from here
    # The ESP32 port runs main.py only in the friendly REPL mode and only if boot.py succeeded.
    # A Ctrl-C anywhere from here (a busy host can deliver it between two lines of this function,
    # not only inside boot.py or main.py) ends at the REPL, with the supervisor told so.
    try:
        slow = getenv("FLEET_VBOARD_SLOW_BOOT_S")  # tests: descheduled between mount and boot.py
        if slow:
            time.sleep(float(slow))
        if _run("boot.py", g) and mode == "friendly" and _exists("main.py"):
            tell("app")  # from here the supervisor delivers host input (Ctrl-C reaches main.py)
            _run("main.py", g)
    except KeyboardInterrupt as e:
        try:
            _print_exception(e)
        except KeyboardInterrupt:
            pass
    while True:
        try:
            tell("repl")  # one write: a Ctrl-C lands before it or after it
            break
        except KeyboardInterrupt:
            pass
