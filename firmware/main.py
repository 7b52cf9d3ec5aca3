"""Composition root of the node: reads the config from flash, builds the HAL for this platform
(ESP32 or the virtual rig), the cores and the shell, and runs them. The only file that knows
which hardware exists; the cores are handed what they need.

On a board, the slot's main.py calls run(); on the virtual rig, the launcher runs
`micropython -X heapsize=... -c "from firmware.main import run; run('<flash dir>')"`.
"""
import sys

try:
    import asyncio
except ImportError:  # pragma: no cover
    import uasyncio as asyncio

from firmware.config import ConfigError, load_config
from firmware.fsutil import PosixFS


def _make_hal(cfg, fs, root):
    if sys.platform == "esp32":
        from firmware.hal.esp32 import Esp32Hal

        return Esp32Hal(fs, channel=cfg.radio_channel)
    from firmware.hal.sim import SimHal

    return SimHal(cfg, fs, root)


def safe_state(err, fs=None):
    """No usable config: say so on the console every 30 s and keep the REPL reachable
    (Ctrl-C), never crash-loop. A technician re-provisions the node over USB."""
    import time

    from firmware.safe_state import safe_state_message

    msg = safe_state_message(err)
    while True:
        print("safe-state", msg)
        time.sleep(30)


def run(root="."):
    fs = PosixFS(root)
    try:
        cfg = load_config(fs)
    except ConfigError as e:
        safe_state(e, fs)
        return
    hal = _make_hal(cfg, fs, root)
    gateway = None
    if cfg.role == "gateway":
        from firmware.gateway import Gateway

        gateway = Gateway(cfg, root)
    from firmware.node import Node

    node = Node(hal, cfg, gateway)
    try:
        asyncio.run(node.run())
    except KeyboardInterrupt:
        print("node", "stopped (Ctrl-C)")
    finally:
        try:
            node.ring.flush()
        except Exception as e:  # noqa: BLE001 - best effort on the way out
            print("node", "ring flush failed: %s" % e)


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else ".")
