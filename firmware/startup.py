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
    return node, fs
