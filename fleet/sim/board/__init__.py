"""Virtual board: a MicroPython process on a pseudo-terminal that behaves like an ESP32 running
MicroPython on a USB serial port, so the real `mpremote` (and tools built on it) work unchanged.

Theory of operation
-------------------
The supervisor owns two pseudo-terminals and copies bytes between them:

    host tool (mpremote) <-> /dev/pts/N (the board's "USB port")  =  supervisor  =  pty <-> micropython

The interpreter is the unix port (`micropython -X heapsize=H -i board_fs/_vboot.py`); the start-up
script (board_fs/_vboard.py) mounts the flash at "/" and runs boot.py then main.py, then the unix
REPL takes over (friendly REPL, raw REPL and raw-paste mode are the unix port's own). The supervisor
adds what the unix port lacks, from what it sees on the line:

- Soft reset. The unix REPL exits on Ctrl-D (friendly REPL, or raw REPL with an empty buffer, which
  is how mpremote soft-resets); a normal exit of the interpreter, sys.exit() and machine.soft_reset()
  therefore all become a soft reset: "MPY: soft reboot" and a fresh interpreter, in the REPL mode
  the board was in. In raw mode boot.py runs but main.py does not, and the board comes back to the
  raw REPL (the supervisor types Ctrl-A for it and hides the friendly banner), as the ESP32 does.
- Ctrl-C. The board's pty has ISIG on, so Ctrl-C from the host interrupts running code
  (KeyboardInterrupt); at the REPL the unix port reads it as a character. The unix port leaves
  SIGINT at its default action while it starts and between a script and its REPL; input from the
  host is therefore held while the board boots and delivered when main.py starts (or the REPL is
  ready), so a tool that sends Ctrl-C right after a reset interrupts the application.
- Hard reset and power. machine.reset(), the watchdog, deepsleep, a crash (signal) or an external
  kill of the interpreter start a fresh one (ROM-like "rst:" line, boot.py, main.py). SIGHUP to the
  supervisor is the reset button. machine.reset_cause() reports why.
- Messages from the board (reset, power cut, watchdog) travel in-band as ESC _ vb:<word> ESC \\ and
  are stripped from the output.
- Output is dropped while no host has the port open (a UART with nobody listening); while a host
  is connected, a slow reader slows the board down instead (no bytes are lost). Hosts opening and
  closing the port are seen through inotify on the pty (in order, however quickly one follows
  another); what a host wrote before closing is delivered to the board, never to the next host.

Flash: `<flash>/flash.img`, a littlefs2 image whose size is the quota (default 2 MB, the ESP32's
usual vfs partition) mounted at "/". littlefs rather than a quota check on the host filesystem: a
full flash then fails exactly as on the board (OSError 28 ENOSPC) and a power cut leaves exactly
what littlefs leaves (single files atomic, multi-file updates not), which the OTA tests need.
Other files in the flash directory: `mac` (the board's MAC, hex), `flash_writes` (count of program
and erase operations over the image's life) and `cut_power_at` (the fault hook: when it holds K > 0,
operation K never reaches the flash and the board loses power there; it stays off until a host
opens the port again or the reset button is pressed — see VirtualBoard.arm_power_cut()).

Differences from an ESP32 that host tools may meet: sys.platform is "linux" and the banner names
the unix port (check `machine.VIRTUAL_BOARD`, True only here); print() ends lines with "\n" where
the ESP32 sends "\r\n" (the REPL's own protocol bytes are identical; mpremote accepts both);
micropython.kbd_intr(-1) does not make Ctrl-C an ordinary byte, so `mpremote mount` can break on
files containing 0x03; no network/espnow/esp32 modules (firmware/hal/sim.py provides the radio).

Events: after the port path (the first line), the supervisor prints one JSON object per line on
stdout: {"event": "power_on", "cause": "power_on"|"reset"|"watchdog"|"deepsleep"|"crash",
"pid": N}, {"event": "soft_reboot", "pid": N}, {"event": "power_cut", "write": K},
{"event": "power_off", "reason": "deepsleep"}, {"event": "stopped"}.
FLEET_VBOARD_DEBUG=1 in the environment traces every byte and message on stderr; the last 300
lines of that trace are always kept and written to `<flash>/vboard.trace` when the supervisor
stops (test fixtures print it when a test fails, tests/board_trace.py).
"""
from fleet.sim.board.client import VirtualBoard, pid_alive
from fleet.sim.board.flash import (
    BLOCK_SIZE,
    BOARD_FS_DIR,
    DEFAULT_HEAP,
    DEFAULT_QUOTA_BYTES,
    MAX_QUOTA_BYTES,
    BoardConfig,
    BoardError,
    arm_power_cut,
    derive_mac,
    disarm_power_cut,
    find_micropython,
    flash_writes,
    parse_heap,
    parse_mac,
    prepare_flash,
)
from fleet.sim.board.supervisor import Supervisor, run_supervisor

__all__ = [
    "BLOCK_SIZE", "BOARD_FS_DIR", "DEFAULT_HEAP", "DEFAULT_QUOTA_BYTES", "MAX_QUOTA_BYTES", "BoardConfig", "BoardError",
    "Supervisor", "VirtualBoard", "arm_power_cut", "derive_mac", "disarm_power_cut", "find_micropython",
    "flash_writes", "parse_heap", "parse_mac", "pid_alive", "prepare_flash", "run_supervisor",
]
