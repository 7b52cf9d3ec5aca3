"""The real node shell (firmware/node.py) and its OTA shell (firmware/main.py `_attach_ota`,
firmware/ota_node.py) on a fake HAL, on CPython: the flash is any fsutil-style filesystem (a
host directory, or the power-cut wrapper around one), time is fixed and the radio only answers stats(). Used by
tests/test_node_security.py, tests/test_node_rekey.py and tests/test_ota_powercut.py."""
import asyncio

from firmware import ota_attach
from firmware.config import Config
from firmware.fsutil import PosixFS
from firmware.node import Node

MESH_KEY = bytes(range(32))
NODE_ID = 5
NODE_KEY = bytes(range(100, 132))


class Reset(Exception):
    """hal.reset() was called: the board restarts (the test boots a new Node on the same flash)."""


class _QuietRadio:
    """The radio as far as the shell asks it outside its tasks: the driver's stats() 5-tuple."""

    def stats(self):
        return (0, 0, 0, 0, 0)


class FakeHal:
    """What Node and the OTA shell use of a HAL; `fs` is the flash (a path: a PosixFS on it)."""

    virtual = True

    def __init__(self, fs):
        self.fs = PosixFS(fs) if isinstance(fs, str) else fs
        self.mac = b"\x02\x00\x00\x00\x00\x05"
        self.radio = _QuietRadio()
        self.resets = 0

    def mem_free(self):
        return 100000

    def time_s(self):
        return 1767225600

    def time_ms(self):
        return 1767225600000

    def reset(self):
        self.resets += 1
        raise Reset()

    def wdt_start(self, timeout_ms):
        self.wdt_ms = timeout_ms

    def wdt_feed(self):
        self.wdt_feeds = getattr(self, "wdt_feeds", 0) + 1


def config(fleet_pub, node_id=NODE_ID):
    return Config({"config_version": 1, "node_id": node_id, "role": "node", "net_id": 1, "node_key": NODE_KEY,
                   "mesh_key": MESH_KEY, "fleet_pub": fleet_pub, "report_interval_s": 60, "warmup_s": 30,
                   "continuous": True, "sensor": "pms5003t"})


def boot_node(fs, fleet_pub, ota=False):
    """Start the node on flash `fs` as firmware/main.py run() does: Node, then (ota=True) the OTA
    shell, which main attaches when a slot pointer exists and which stages a complete, allowed
    bundle at once (may raise Reset)."""
    node = Node(FakeHal(fs), config(fleet_pub))
    if ota:
        ota_attach.attach(node, node.cfg, node.hal.fs, None)
        assert node.ota is not None, "no slot pointer on this flash: main.py would not attach OTA"
    return node


def deliver(node, frame, now, src_mac, must_pass=False):
    """Hand air frame `frame` to the node's router as heard from `src_mac` at `now`, and run
    every event it raises (a command runs to its reply). Returns whether the node replied.
    must_pass: the router must take the frame (not a duplicate, not a bad tag)."""
    before = node.counters.peek("reply")
    took = node.router.on_recv(src_mac, frame, -50, now)
    assert took or not must_pass, "the router refused the frame"
    while True:
        ev = node.router.poll_event()
        if ev is None:
            break
        asyncio.run(node._on_event(ev))
    return node.counters.peek("reply") > before
