"""Boot of the app, up to a node ready to run (firmware/main.py run() calls build and unloads
this module after it: none of this is needed once the node runs). Reads the config from flash,
builds the HAL for this platform (ESP32 or the virtual rig), the node (and a gateway's uplink)
and, when the app runs from an A/B slot, its OTA shell. The only code that knows which
hardware exists; the cores are handed what they need.
"""
import sys

from firmware.compat import unload
from firmware.fsutil import PosixFS


def _make_hal(cfg, fs, root):
    if sys.platform == "esp32":
        from firmware.hal.esp32 import Esp32Hal

        return Esp32Hal(fs, channel=cfg.radio_channel)
    sim = getattr(cfg, "sim", None)
    if not sim or "mac" not in sim or "my_port" not in sim or "medium_port" not in sim:
        from firmware.config import ConfigError

        raise ConfigError("this is not an ESP32 and the config has no sim section (mac, my_port, medium_port): "
                          "a virtual board needs the rig's radio medium (fleet provision --sim-medium-port PORT)")
    from firmware.hal.sim import SimHal

    return SimHal(cfg, fs, root)


def safe_state(err, fs=None):
    """No usable config: say so on the console every 30 s and keep the REPL reachable
    (Ctrl-C), never crash-loop: the watchdog boot.py started is fed while it waits. A technician
    re-provisions the node over USB."""
    import time

    from firmware import boot
    from firmware.safe_state import safe_state_loop

    def sleep_s(s):
        boot.feed_watchdog()
        time.sleep(s)
        boot.feed_watchdog()

    safe_state_loop(err, sleep_s)


def _log_reset_cause():
    from firmware import boot

    cause = boot.reset_cause()
    print("boot", "reset cause: %s (%d)" % (boot.RESET_CAUSES.get(cause, "unknown"), cause))
    boot = None
    unload("firmware.boot")  # imported again by whatever needs it (~4.6 KB of a node's heap)


# Modules a running node imports for a moment and unloads again (a command, a routed frame, a
# key rotation, a signed command, a crash report). Their names are interned once, at boot:
# MicroPython keeps every name (qstr) for good, in pools each twice the size of the last, and a
# pool asked for on a running node's fragmented heap fails. On the rig (32-bit, 123k) the first
# routed frame or command after a few minutes needed a pool of 1,280 names, one 8,976-byte
# piece, where the heap had 54 KB free in pieces of at most 5.4 KB: "MemoryError: memory
# allocation failed, allocating 1280 bytes" (the figure counts names, not bytes), the node at
# its REPL. A board's pools start at other sizes; the failure is the same. Imported here and
# unloaded at once, they leave their names and nothing else (tests/test_cold_names.py checks
# that every runtime import is here or loaded at boot anyway).
COLD_MODULES = ("firmware.node_cmd", "firmware.downroute", "firmware.rekey", "protocol.keywrap",
                "protocol.frames_up", "protocol.ed25519", "protocol.sha512", "firmware.crash",
                "firmware.safe_state", "firmware.hold")


def intern_cold_names():
    """Import each of COLD_MODULES not loaded yet and unload what that loaded (the module and
    what it imports) before the next: their names stay interned, their code goes. One at a time,
    so the heap never holds all of their code at once: the pool the names need next must still
    find a piece to grow into (a rogue-firmware OTA node at 123k, its app larger than ours, ran
    out at boot allocating one while every cold module was loaded: hil_tests/test_ota.py)."""
    import gc

    for name in COLD_MODULES:
        if name not in sys.modules:
            before = set(sys.modules)
            __import__(name)
            unload(*[n for n in sys.modules if n not in before])
            gc.collect()


def tasks(node):
    """The node's tasks (coroutines of firmware/node.py Node), its radio ready for them: made here,
    at boot, so a running node keeps no code that ran once."""
    from firmware.mesh import BROADCAST

    print("node", "start id=%d role=%s fw=%s bseq=%d boot=%d" % (node.node_id, node.cfg.role, node.fw_version,
                                                              node.fw_seq, node.boot_count))
    radio = node.hal.radio
    radio.active(True)
    # ESP-NOW sends only to registered peers, broadcast included (ESP_ERR_ESPNOW_NOT_FOUND
    # otherwise): ff:ff:ff:ff:ff:ff takes one of the driver's 20 slots for good
    try:
        radio.add_peer(BROADCAST)
    except OSError:
        pass  # already a peer after a soft reset (ESP_ERR_ESPNOW_EXIST)
    out = [node.radio_rx(), node.pump(), node.sensor(), node.uplink(), node.status(), node.health()]
    if node.gateway is not None:
        out.append(node.gateway.run(node))
    sim = getattr(node.cfg, "sim", None) or {}
    if sim.get("offered_interval_s"):
        from firmware.hal.simload import offered_load  # the rig's throughput tests only

        out.append(offered_load(node, int(sim["offered_interval_s"]), int(sim.get("offered_for_s", 0))))
    return out


def build(root):
    """(node, fs) ready to run, or None when the config is unusable (the safe state ran).
    Modules used only to boot are unloaded on the way (firmware/compat.py unload)."""
    fs = PosixFS(root)
    from firmware import config

    try:
        cfg = config.settings(config.load_config(fs))
    except config.ConfigError as e:
        safe_state(e, fs)
        return None
    _log_reset_cause()
    # a node run from A/B slots: its OTA buffers at the bottom of the heap, then a bundle ready
    # to install is staged on the emptiest heap this boot has (a reset into the trial follows)
    from firmware import ota_attach

    ota = ota_attach.prepare(cfg, fs)
    try:
        hal = _make_hal(cfg, fs, root)
    except config.ConfigError as e:
        safe_state(e, fs)
        return None
    # the radio's receive ring (firmware/hal/__init__.py ESPNOW_RXBUF, one 2.1 KB piece) while the
    # heap is still whole, as the board's HAL does in its constructor: asked for after the node
    # and its OTA engine were built, it did not fit a 123k heap that had 21 KB free in pieces
    hal.radio.active(True)
    # the node keeps the config's values only (Settings): the loader and its tables go
    # (~5 KB of a 112 KB heap, bench/heap_bench.py)
    del config
    unload("firmware.config", "protocol.text")
    gateway = None
    if cfg.role == "gateway":
        from firmware.gateway import Gateway

        gateway = Gateway(cfg, root)
    from firmware.node import Node

    node = Node(hal, cfg, gateway)
    ota_attach.attach(node, cfg, fs, gateway, ota)
    ota = None
    if node.ota is None:
        ota_attach = None
        unload("firmware.ota_attach", "firmware.boot")  # boot: read only to find the slot pointer (~2.6 KB)
    intern_cold_names()
    return node, fs
