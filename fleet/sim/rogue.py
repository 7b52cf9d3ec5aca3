"""A stolen pole on the virtual rig's air (issue 14): a device holding one node's keys, as read
from its flash - that node's key and the mesh key of the epoch it was provisioned in - attacking
the mesh. CPython, a thread with a blocking loopback UDP socket: it binds the stolen node's
medium port once that node's MicroPython process is gone (the medium still has the node, so
unicasts to it are MAC-acknowledged by the medium, as a real radio acknowledges them).

What it does, every `beacon_s`:
- advertises a path cost of 0 (a fake gateway: the best route anyone can hear) in a beacon
  tagged with the stolen mesh key - a sinkhole: it attracts routes;
- swallows every data frame sent to it (telemetry, status, replies: never forwarded), counting
  what it took: by frame type, the honest children that sent to it, the (origin, seq) readings;
- every `inject_s`, injects a telemetry frame as the stolen node (its own node key: the
  collector accepts it until the node is revoked) and one claiming another origin (which it has
  no key for: the collector refuses it, bad end-to-end tag), unicast to a neighbour it heard -
  one whose last beacon named a root gateway when it can (not one of its own sinkhole).

It checks nothing it receives beyond the frame type and origin (bytes it cannot parse are
counted as `unparsed`). `stats()` returns the counters; `stop()` ends the thread and closes the
socket. Loopback only.
"""
import socket
import struct
import threading
import time

from protocol import T_BEACON, T_REPLY, T_STATUS, T_TELEMETRY, Beacon, Reading, Telemetry, decode, encode
from protocol.auth import Hmac
from protocol.errors import ProtocolError

BROADCAST = b"\xff" * 6


class Rogue:
    def __init__(self, node_id, mac, mesh_key, node_key, my_port, medium_port, epoch=0, beacon_s=1.0,
                 inject_s=5.0, first_seq=5_000, forged_origin=None, ids=None, host="127.0.0.1"):
        if host != "127.0.0.1":
            raise ValueError("the rogue speaks on loopback only")
        self.node_id = node_id
        self.mac = bytes(mac)
        self.mesh = Hmac(mesh_key)
        self.node_key = Hmac(node_key)
        self.phase = epoch & 1
        self.my_port = my_port
        self.medium = (host, medium_port)
        self.host = host
        self.beacon_s = beacon_s
        self.inject_s = inject_s
        self.seq = self.first_seq = first_seq
        self.forged_origin = forged_origin
        self.ids = dict(ids or {})  # MAC -> node id (the topology's), to name the children
        self.counts = {"beacons_tx": 0, "injected_own": 0, "injected_forged": 0, "received": 0,
                       "swallowed_telemetry": 0, "swallowed_status": 0, "swallowed_reply": 0, "unparsed": 0}
        self.children = set()  # node ids (by MAC) that sent data frames to it
        self.readings = set()  # (origin, seq) of readings it swallowed
        self.heard = {}  # MAC -> last time heard (any frame): targets for injected frames
        self._child_macs = set()  # their MACs: injected frames aim elsewhere
        self._rooted = {}  # MAC -> its last beacon named a root gateway (it routes to a real one)
        self._aim = 0  # round robin over the injection targets
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._sock = None
        self._bseq = 0
        self._tseq = 0

    # ---- control ----------------------------------------------------------------------------

    def start(self, bind_timeout_s=10.0):
        """Bind the stolen node's port (retrying while its process lets go of it) and start."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        deadline = time.monotonic() + bind_timeout_s
        while True:
            try:
                sock.bind((self.host, self.my_port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    sock.close()
                    raise
                time.sleep(0.1)
        sock.settimeout(0.05)
        self._sock = sock
        sock.sendto(b"H" + self.mac, self.medium)
        self._thread = threading.Thread(target=self._run, name="rogue-%d" % self.node_id, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s=5.0):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def stats(self):
        with self._lock:
            out = dict(self.counts)
            out["children"] = sorted(self.children)
            out["readings_swallowed"] = len(self.readings)
            out["origins_swallowed"] = len({o for o, _ in self.readings})
            return out

    # ---- the air ------------------------------------------------------------------------------

    def _send(self, dst, payload):
        self._tseq = (self._tseq + 1) & 0xFFFF
        self._sock.sendto(b"T" + struct.pack(">H", self._tseq) + dst + payload, self.medium)

    def _beacon(self):
        b = Beacon(self.node_id, self._bseq, 0, 0, int(time.time()), 0)
        self._bseq = (self._bseq + 1) & 255
        self._send(BROADCAST, encode(b, self.mesh, None, self.phase))
        self.counts["beacons_tx"] += 1

    def _telemetry(self, origin, key):
        r = Reading(dt_s=0, pm1=1, pm25=1, pm10=1, rh=50, temp=200, n=1, flags=0)
        f = Telemetry(origin=origin, seq=self.seq, time_s=int(time.time()), readings=[r], hops=1, cost=0)
        self.seq += 1
        return encode(f, self.mesh, key, self.phase)

    def _inject(self):
        now = time.monotonic()
        targets = [m for m, t in self.heard.items() if now - t < 30]
        if not targets:
            return
        # A frame unicast to a node that routes through the rogue comes straight back to it
        # (swallowed): a thief who wants its frames stored aims at the others, each in turn. (It
        # once picked targets[seq % n] with seq stepping by 2: half the neighbours never, and as
        # the sinkhole grew every forgery went to its own children - none reached the fleet.)
        # A neighbour that took the rogue as its parent beacons at once, with no root (the rogue's
        # beacon names none), while its first data frame may be seconds away: aimed at as a
        # non-child, the forgery came straight back (a CI run: five forgeries in 30 s, none
        # reached the fleet). Its beacons tell first: aim at those that name a root.
        upstream = ([m for m in targets if m not in self._child_macs and self._rooted.get(m)]
                    or [m for m in targets if m not in self._child_macs] or targets)
        self._aim += 1
        dst = upstream[self._aim % len(upstream)]
        self._send(dst, self._telemetry(self.node_id, self.node_key))
        self.counts["injected_own"] += 1
        if self.forged_origin is not None:
            self._send(dst, self._telemetry(self.forged_origin, Hmac(b"\x00" * 32)))
            self.counts["injected_forged"] += 1

    def _on_frame(self, src_mac, payload):
        self.heard[src_mac] = time.monotonic()
        if len(payload) < 3:
            return
        t = payload[2]
        if t == T_BEACON:
            try:
                self._rooted[src_mac] = bool(decode(payload).root)
            except ProtocolError:
                self.counts["unparsed"] += 1
            return
        if t not in (T_TELEMETRY, T_STATUS, T_REPLY):
            return
        try:
            f = decode(payload)  # no key: it reads what it swallows, it checks nothing
        except ProtocolError:
            self.counts["unparsed"] += 1
            return
        with self._lock:
            self.counts["received"] += 1
            self.children.add(self.ids.get(src_mac, src_mac.hex()))
            self._child_macs.add(src_mac)
            if t == T_TELEMETRY:
                self.counts["swallowed_telemetry"] += 1
                for i in range(len(f.readings)):
                    self.readings.add((f.origin, f.seq + i))
            elif t == T_STATUS:
                self.counts["swallowed_status"] += 1
            else:
                self.counts["swallowed_reply"] += 1

    def _run(self):
        next_beacon = next_inject = time.monotonic()
        next_inject += self.inject_s
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_beacon:
                self._beacon()
                next_beacon = now + self.beacon_s
            if now >= next_inject:
                self._inject()
                next_inject = now + self.inject_s
            try:
                data = self._sock.recv(512)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            if data[:1] == b"R" and len(data) >= 8:
                self._on_frame(bytes(data[1:7]), bytes(data[8:]))
