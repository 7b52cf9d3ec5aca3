"""A small discrete-event simulator for the OTA engine (CPython): nodes joined by a topology,
frames really encoded and decoded with the mesh key, per-link loss, virtual time.

Model: a broadcast reaches every neighbour that is up after `airtime_ms` per frame (a node's
frames go out back to back), each copy lost independently with probability `loss`. No
collisions and no carrier sense: an optimistic channel, so figures are lower bounds on time and
upper bounds on efficiency. Nodes can be down (absent: hear nothing, send nothing) and come back
with a fresh engine over the same flash, as after a power cut or a reboot.
"""
import heapq
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "device"))

import ota_fixtures as fx  # noqa: E402

import protocol  # noqa: E402
from firmware.ota import OtaEngine, OtaParams  # noqa: E402
from firmware.ota_store import PageStore  # noqa: E402

MESH_KEY = b"m" * 32


def line(n):
    """Node ids 1..n in a line: each hears its two neighbours."""
    return {i: [j for j in (i - 1, i + 1) if 1 <= j <= n] for i in range(1, n + 1)}


def grid(w, h):
    """Node ids 1..w*h on a w x h grid: each hears its four neighbours."""
    links = {}
    for y in range(h):
        for x in range(w):
            nid = y * w + x + 1
            links[nid] = [(yy * w + xx + 1) for xx, yy in ((x - 1, y), (x + 1, y), (x, y - 1), (x, y + 1))
                          if 0 <= xx < w and 0 <= yy < h]
    return links


class Node:
    def __init__(self, nid, fs, engine):
        self.nid = nid
        self.fs = fs
        self.engine = engine
        self.up = True
        self.wake_at = None
        self.busy_until = 0
        self.tx_frames = 0
        self.tx_bytes = 0
        self.tx_by_type = {}
        self.tx_times = []
        self.complete_ms = None


class OtaSim:
    """Engines on `links` (id -> neighbour ids). fleet_pub: the key manifests are signed with."""

    def __init__(self, links, fleet_pub, running_bseq=1, loss=0.0, airtime_ms=2, seed=1, params=None):
        self.links = links
        self.pub = fleet_pub
        self.running = running_bseq
        self.loss = loss
        self.airtime_ms = airtime_ms
        self.rng = random.Random(seed)
        self.params = params or OtaParams()
        self.now = 0
        self.q = []
        self.seq = 0
        self.nodes = {}
        self.delivered = 0
        for nid in links:
            fs = fx.MemFS()
            self.nodes[nid] = Node(nid, fs, self._engine(nid, fs, 0))
            self._schedule(self.nodes[nid])

    def _engine(self, nid, fs, now):
        return OtaEngine(nid, self.pub, PageStore(fs), self.rng.getrandbits(32), self.params,
                         running_bseq=self.running, now_ms=now)

    def _push(self, t, kind, a, b=None):
        self.seq += 1
        heapq.heappush(self.q, (t, self.seq, kind, a, b))

    def _schedule(self, node):
        if not node.up:
            return
        t = max(node.engine.next_deadline_ms, self.now)
        if node.wake_at is None or t != node.wake_at:
            node.wake_at = t
            self._push(t, "wake", node.nid)

    def _service(self, node):
        eng = node.engine
        eng.tick(self.now)
        while True:
            f = eng.poll_tx()
            if f is None:
                break
            data = protocol.encode(f, MESH_KEY)
            node.tx_frames += 1
            node.tx_bytes += len(data)
            node.tx_times.append(self.now)
            name = protocol.TYPE_NAMES[f.type]
            node.tx_by_type[name] = node.tx_by_type.get(name, 0) + 1
            start = max(self.now, node.busy_until)
            node.busy_until = start + self.airtime_ms
            for dst in self.links[node.nid]:
                if self.rng.random() >= self.loss:
                    self._push(node.busy_until, "rx", dst, data)
        self._events(node)
        self._schedule(node)

    def _events(self, node):
        while True:
            ev = node.engine.poll_event()
            if ev is None:
                return
            if ev[0] == "complete" and node.complete_ms is None:
                node.complete_ms = self.now

    def seed(self, nid, signed, pages):
        """A gateway receives the bundle from the fleet."""
        node = self.nodes[nid]
        node.engine.offer_bundle(signed, pages, self.now)
        self._events(node)
        self._service(node)

    def set_up(self, nid, up):
        """Take a node down (it hears and sends nothing) or bring it back with a fresh engine over
        its flash (a reboot: RAM lost, verified pages kept)."""
        node = self.nodes[nid]
        node.up = up
        node.wake_at = None
        if up:
            node.engine = self._engine(nid, node.fs, self.now)
            self._service(node)

    def run(self, until_ms, stop=None):
        """Run events up to virtual time until_ms or until stop() is true; return the time."""
        while self.q:
            t, _, kind, a, b = self.q[0]
            if t > until_ms:
                break
            heapq.heappop(self.q)
            self.now = t
            node = self.nodes[a]
            if not node.up:
                continue
            if kind == "wake":
                if node.wake_at != t:
                    continue
                node.wake_at = None
                self._service(node)
            else:
                self.delivered += 1
                node.engine.on_frame(protocol.decode(b, MESH_KEY), b"", t)
                self._service(node)
            if stop is not None and stop():
                return self.now
        self.now = max(self.now, until_ms)
        return self.now

    def all_complete(self, ids=None):
        return all(self.nodes[n].engine.complete() for n in (ids or self.nodes))

    def max_frames_per_window(self, window_ms=1000):
        """The most OTA frames any node handed out within any window_ms of virtual time."""
        best = 0
        for n in self.nodes.values():
            t = n.tx_times
            j = 0
            for i in range(len(t)):
                while t[i] - t[j] >= window_ms:
                    j += 1
                best = max(best, i - j + 1)
        return best

    def figures(self, bundle_bytes):
        """Plain numbers: time, transmissions per node, bytes on air per byte of bundle."""
        tx = [n.tx_frames for n in self.nodes.values()]
        total_bytes = sum(n.tx_bytes for n in self.nodes.values())
        by_type = {}
        for n in self.nodes.values():
            for k, v in n.tx_by_type.items():
                by_type[k] = by_type.get(k, 0) + v
        done = [n.complete_ms for n in self.nodes.values() if n.complete_ms is not None]
        return {
            "nodes": len(self.nodes), "last_complete_s": max(done) / 1000 if done else None,
            "tx_per_node_min": min(tx), "tx_per_node_avg": sum(tx) / len(tx), "tx_per_node_max": max(tx),
            "frames_by_type": by_type, "air_bytes": total_bytes,
            "air_bytes_per_bundle_byte": total_bytes / bundle_bytes,
            "air_bytes_per_bundle_byte_per_node": total_bytes / bundle_bytes / len(self.nodes),
        }
