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

from firmware.fsutil import PosixFS

# The OTA target class of this firmware's hardware (the virtual rig's nodes stand in for ESP32
# poles, so they are "esp32" too): fleet/ota_bundle.py DEFAULT_TARGET
TARGET_CLASS = "esp32"


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


def _ota_settings(cfg):
    """OTA knobs: defaults, overridden on the virtual rig by the config's sim.ota map (a test
    speeds up Trickle or shortens the trial; a real node's config has no such key)."""
    sim = getattr(cfg, "sim", None) or {}
    o = sim.get("ota") or {}
    trial = {"trial_ms": o.get("trial_ms", 600000), "max_boots": o.get("max_boots", 3)}
    params = {}
    for k in ("adv_imin_ms", "adv_doublings", "tx_rate_per_s", "tx_burst", "req_delay_ms", "req_timeout_ms",
              "serve_delay_ms"):
        if k in o:
            params[k] = o[k]
    return trial, params


def _attach_ota(node, cfg, fs, gateway):
    """Give the node its OTA shell when the app runs from an A/B slot (a /active pointer on
    the flash); without one (run from a build directory, tests) OTA stays off, logged. The shell
    builds the engine and the slot manager only while it needs them (firmware/ota_node.py)."""
    import protocol
    from firmware import boot
    from firmware.compat import unload

    try:
        pointer = boot.read_pointer(fs)
    except ValueError:
        pointer = None
    boot = None
    unload("firmware.boot")
    if pointer is None:
        print("ota", "disabled: no A/B slot pointer on this flash (app not run from a slot)")
        return

    # the OTA engine's receive and send buffers, allocated first (a page each, in one piece) and
    # handed from engine to engine for the node's life: a heap that has run a while may not have
    # 3.5 KB free in one piece when a campaign starts or a neighbour asks for a page
    rx = bytearray(protocol.OTA_PKTS_PER_PAGE * protocol.OTA_PKT_MAX)
    tx = bytearray(len(rx))
    # the engine's modules first, as the node's last big imports: the shell drops and reloads
    # them later, but their bytecode (and the interned names) are best placed on a fresh heap
    import firmware.ota  # noqa: F401
    import firmware.ota_store  # noqa: F401
    from firmware.ota_node import OtaShell

    trial, params = _ota_settings(cfg)
    # this hardware class: bundles built for another (fleet ota build --target-class) are refused
    # by the engine (not stored or forwarded) and by the slot manager (never staged)
    params["target_class"] = TARGET_CLASS

    def make_slots():
        from firmware.slots import SlotManager

        return SlotManager(fs, max_boots=trial["max_boots"], trial_ms=trial["trial_ms"], target_class=TARGET_CLASS)

    def make_air(carry, floor):
        from firmware.ota import OtaAir, OtaEngine, OtaParams
        from firmware.ota_store import PageStore

        p = OtaParams(**params)
        if carry is not None:
            p.reverify_stored = False  # checked at boot or when it arrived, by this very boot
        engine = OtaEngine(cfg.node_id, cfg.fleet_pub, PageStore(fs, "ota"), cfg.node_id ^ (node.boot_count << 8),
                           p, running_bseq=floor, now_ms=node.now_ms(), carry=carry, rx=rx, tx=tx)
        return OtaAir(engine, cfg.mesh_key)

    shell = OtaShell(node, make_air, make_slots, cfg.mesh_key, print)
    node.ota = shell
    try:
        shell.maybe_stage(at_boot=True)  # complete and allowed before a reset: stage on a fresh heap
    except Exception as e:  # noqa: BLE001 - nothing a bundle carries may make a boot raise (issue 16)
        print("ota", "staging at boot failed, the bundle is left aside: %r" % (e,))
    if gateway is not None:
        from firmware.gateway import OtaSeedSink

        gateway.ota_sink = OtaSeedSink(shell, node)
    print("ota", "slot %s bseq %d version %s state %s" % (pointer["slot"], node.fw_seq, node.fw_version,
                                                         pointer["state"]))


async def _clear_crashes(node, fs):
    """Once the app has run boot.CRASH_CLEAR_MS with a sensor reading seen, its earlier crashes
    are no longer "in a row" (firmware/boot.py counts them to detect a crash loop)."""
    from firmware.compat import boot_call

    if not boot_call("crash_count", fs):
        return  # firmware/boot.py is held only for the calls: not for the app's life
    clear_ms = boot_call("CRASH_CLEAR_MS")
    while not (node.selftest_done and node.now_ms() >= clear_ms):
        await asyncio.sleep_ms(5000)
    boot_call("clear_crashes", fs)
    print("boot", "the app runs: crash count cleared")


async def _run_node(node, fs):
    asyncio.create_task(_clear_crashes(node, fs))
    await node.run()


def _log_reset_cause(hal):
    from firmware import boot

    cause = hal.reset_cause()
    print("boot", "reset cause: %s (%d)" % (boot.RESET_CAUSES.get(cause, "unknown"), cause))


def _drop(*names):
    """Forget modules imported only to boot (a later import loads them again)."""
    for name in names:
        sys.modules.pop(name, None)
        pkg, _, attr = name.rpartition(".")
        try:
            delattr(sys.modules[pkg], attr)
        except (KeyError, AttributeError):
            pass


def run(root="."):
    fs = PosixFS(root)
    from firmware import config

    try:
        cfg = config.settings(config.load_config(fs))
        hal = _make_hal(cfg, fs, root)
    except config.ConfigError as e:
        safe_state(e, fs)
        return
    _log_reset_cause(hal)
    # the node keeps the config's values only (Settings): the loader and its tables go
    # (~5 KB of a 112 KB heap, bench/heap_bench.py)
    del config
    _drop("firmware.config", "protocol.text")
    gateway = None
    if cfg.role == "gateway":
        from firmware.gateway import Gateway

        gateway = Gateway(cfg, root)
    from firmware.node import Node

    node = Node(hal, cfg, gateway)
    _attach_ota(node, cfg, fs, gateway)
    if node.ota is None:
        _drop("firmware.boot")  # read only to find the slot pointer (~2.6 KB)
    try:
        asyncio.run(_run_node(node, fs))
    except KeyboardInterrupt:
        print("node", "stopped (Ctrl-C)")
        raise  # to the REPL: the root main.py takes a return for a crash (the app never ends)
    finally:
        try:
            node.ring.flush()
        except Exception as e:  # noqa: BLE001 - best effort on the way out
            print("node", "ring flush failed: %s" % e)


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else ".")
