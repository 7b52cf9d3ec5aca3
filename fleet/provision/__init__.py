"""USB provisioning of nodes: detect the board, copy the app, write the config, verify, commit,
reset, wait for the self-test, register. Plain data in and out; the CLI (fleet/cli/provision.py,
fleet/cli/node.py) only renders. The board is driven through fleet.mpboard (mpremote).

Theory of operation
-------------------
Flash layout (firmware/boot.py): app slots /a and /b (main.py, firmware/*.mpy, protocol/*.mpy),
the pointer /active ("key=value" lines naming the slot to run, replaced only by rename),
/boot.py (selects the slot), /main.py (`import main`: the active slot's main.py), /config.cbor.

Steps, per board (the step names appear in errors and in the JSON summary):
  connect   open the port (mpremote SerialTransport);
  detect    Ctrl-C the app, raw REPL, soft reset; MicroPython version, sys.platform, unique id
            (the ESP32's base MAC = its ESP-NOW address), free flash, machine.VIRTUAL_BOARD.
            Refuses anything but MicroPython on an ESP32, except a virtual board;
  check     SHA-256 of every file of both slots and of the root files, computed on the board;
            the current pointer and config. Refuses a config of another fleet (net id / fleet
            public key) or a board that is already another node id of this fleet, and a node id
            registered in the store to another MAC -- unless --replace. Plans the copy: the
            target slot is the active slot if it already holds exactly this build, else the
            inactive one (slot a on a board without a pointer): the running app is never
            written to. Files already identical are skipped;
  copy      stale files of the target slot removed; missing/different files written (base64,
            several per exec); /boot.py, /main.py and /config.cbor staged as `<name>.new`;
  verify    every file of the target slot and every staged file hashed ON the board and
            compared with the local SHA-256;
  commit    one exec: rename the staged root files into place, then write the pointer (write
            /active.tmp, rename it over /active) -- LAST;
  reset     machine.reset();
  selftest  read the serial console until `selftest ok node=N ...` (sensor frames seen, radio
            up, config accepted) or a clear failure (safe-state line, app exited, timeout);
  register  the node in the fleet store (MAC, pole, lat/lon, role, firmware version): `fleet
            status` lists it at once as never heard.

"Untouched or fully provisioned": everything before `commit` writes only to the inactive slot
and to `.new` files, which nothing boots, so a failure (or an unplugged cable) before the commit
leaves a board that boots exactly what it booted before -- or, on a blank board, nothing but the
REPL. The commit is a handful of renames in a single exec (milliseconds), each atomic on
littlefs; the pointer rename is the last, so a power cut inside that window can at worst leave
the new root files with the previous slot (the previous app with the new config). A re-run of
the same command completes any of these states: it skips what is already identical, so a repair
after an interrupted copy writes only what is missing. Re-running on a provisioned board writes
nothing at all (it still resets, waits for the self-test and refreshes the registration).

Secrets (node key, mesh key, Wi-Fi password) go only into config.cbor over the serial line;
they never appear in results, errors or console excerpts (console lines are redacted).
"""
from fleet.provision.board import detect, mac_str
from fleet.provision.bundle import Bundle, build_bundle, firmware_version, with_extra_files
from fleet.provision.model import (
    DEFAULT_ARCH,
    ROLES,
    ROOT_FILES,
    SENSORS,
    SLOTS,
    STEPS,
    NodeSpec,
    ProvisionError,
    ProvisionOptions,
)
from fleet.provision.node import CRASH_LOG_PATH, node_info, node_logs, node_reset
from fleet.provision.plan import (
    EST_EXEC_OVERHEAD_S,
    EST_FLASH_BYTES_PER_S,
    EST_HARD_RESET_S,
    EST_PASTE_BYTES_IN_FLIGHT,
    EST_SOFT_RESET_S,
    EST_USB_RTT_S,
    ESTIMATE_BAUDS,
    CopyPlan,
    estimate_usb_seconds,
    plan_copy,
)
from fleet.provision.run import locate_by_mac, provision
from fleet.provision.sheet import MAX_ROW_ERRORS, pole_problem, read_sheet

__all__ = [
    "CRASH_LOG_PATH", "DEFAULT_ARCH", "EST_EXEC_OVERHEAD_S", "EST_FLASH_BYTES_PER_S", "EST_HARD_RESET_S",
    "EST_PASTE_BYTES_IN_FLIGHT", "EST_SOFT_RESET_S", "EST_USB_RTT_S", "ESTIMATE_BAUDS", "MAX_ROW_ERRORS", "ROLES",
    "ROOT_FILES", "SENSORS", "SLOTS", "STEPS", "Bundle", "CopyPlan", "NodeSpec", "ProvisionError",
    "ProvisionOptions", "build_bundle", "detect", "estimate_usb_seconds", "firmware_version", "locate_by_mac",
    "mac_str", "node_info", "node_logs", "node_reset", "plan_copy", "pole_problem", "provision", "read_sheet",
    "with_extra_files",
]
