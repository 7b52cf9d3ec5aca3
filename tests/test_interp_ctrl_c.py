"""The rig's MicroPython must take Ctrl-C as an ESP32 does: a pending KeyboardInterrupt the VM
raises between bytecodes, never from inside C code.

The unix port's default build (threads, no GIL) enables MICROPY_ASYNC_KBD_INTR: its SIGINT
handler raises at once, wherever the interpreter is - also inside qstr interning, which holds a
non-recursive mutex that then stays locked, and the next new name deadlocks the interpreter for
ever (in futex_wait). On the virtual board that was a board that stopped answering after
`fleet node info` interrupted an app importing at boot (CI: "no MicroPython REPL answered"). An
ESP32 never does that; tools/build_mp32.sh builds with the GIL, as the ESP32 port is.

Here: a loop that interns new names and prints a heartbeat; each of 40 Ctrl-Cs must be answered
by the KeyboardInterrupt and followed by progress without another Ctrl-C (the deadlocked build
stopped within 2 of them, 3 runs of 3). Every wait is bounded; the interpreter is killed by PID.
"""
import os
import select
import signal
import subprocess
import time

import pytest

from fleet.sim import interp

ROUNDS = 40
_CODE = r"""
class O:
    pass
o = O()
n = 0
while True:
    try:
        i = 0
        while True:
            getattr(o, 'a%d_%d' % (n, i), None)  # a new name: interned under the qstr mutex
            i += 1
            if i % 500 == 0:
                print('beat', n, i)
    except KeyboardInterrupt:
        n += 1
        print('ki', n)
"""


def test_ctrl_c_never_leaves_the_interpreter_deadlocked():
    mp = interp.micropython_bin()
    if not interp.is_32bit(mp):
        pytest.skip("the rig runs the 64-bit PyPI MicroPython (no 32-bit build: `make mp32` needs gcc-multilib); "
                    "that build takes Ctrl-C asynchronously and can deadlock as described")
    proc = subprocess.Popen([mp, "-X", "heapsize=64m", "-c", _CODE], stdout=subprocess.PIPE)
    os.set_blocking(proc.stdout.fileno(), False)
    seen = bytearray()

    def wait_for(token, timeout_s):
        deadline = time.monotonic() + timeout_s
        while token not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                return False
            if select.select([proc.stdout], [], [], min(left, 0.2))[0]:
                seen.extend(proc.stdout.read() or b"")
        return True

    try:
        assert wait_for(b"beat 0 ", 30), bytes(seen[-300:])  # the handler is installed: it runs code
        for k in range(1, ROUNDS + 1):
            time.sleep(0.005 + (k % 7) * 0.002)  # land at different points of the loop
            proc.send_signal(signal.SIGINT)
            assert wait_for(b"ki %d\n" % k, 30), ("no KeyboardInterrupt for Ctrl-C %d" % k, proc.poll())
            assert wait_for(b"beat %d " % k, 30), "no progress after Ctrl-C %d: the interpreter is deadlocked" % k
    finally:
        proc.kill()
        proc.wait(timeout=10)
