"""The radio medium of the virtual rig (CPython asyncio, loopback UDP only).

Every virtual node's ESP-NOW goes through one UDP socket here; the topology decides who hears
what. Datagram protocol (the node side is firmware/hal/sim_radio.py):
    node -> medium  b"H" mac(6)                          hello: node is up (start/restart)
    node -> medium  b"T" seq(2) dst(6) payload           transmit
    medium -> node  b"R" src(6) rssi(int8) payload       receive
    medium -> node  b"D" seq(2) ok(u8)                   transmit outcome
    node -> medium  b"C" channel(u8)                      the node's Wi-Fi channel (its station's)

ESP-NOW, as modelled
- Payload 1..250 bytes; larger is refused (D ok=0, counted "oversize").
- Broadcast: no ACK; each neighbour hears it with the link's PRR; D ok=1 once on the air.
- Unicast: up to MAC_ATTEMPTS attempts; an attempt reaches the peer with PRR(a->b) and its
  ACK returns with PRR(b->a). The receiver hears the frame once even if several attempts got
  through (802.11 duplicate detection), but when every ACK is lost the sender sees ok=0 for a
  frame that did arrive: the mesh above must tolerate that duplicate on its own retry.
  `Medium(mac_duplicates=True)` delivers every attempt that got through instead (a receiver
  without MAC duplicate filtering), for testing the mesh's duplicate suppression harder.
- Airtime: a frame occupies the channel (PREAMBLE_US + 8 us/byte at 1 Mbit/s) around its
  sender; a node defers its transmission while it or any neighbour is on the air (CSMA), so a
  busy neighbourhood delays frames instead of delivering them all at once. Collisions are not
  modelled here (the discrete-event simulator models them); delivery delay is.
- RSSI: the topology's link RSSI plus +-2 dB noise.
- Channels: ESP-NOW works only on the channel the node's Wi-Fi station uses; a node tells its
  channel (b"C", firmware/hal/sim.py: at start and when its station follows an AP elsewhere) and
  frames pass only between nodes on the same channel (dropped: "channel"). A node that never
  said its channel (a test's fake radio) is heard on every channel.
Faults, by Python call or a JSON-lines control port on 127.0.0.1 (see `control()`; from another
process `send_control(port, cmd)`): link down/up (both ways, or one way with both=False),
partition/heal, kill/revive a node (hooks registered with `on_node_event` are told, so a
launcher can kill or restart the process), extra loss and corruption (global or per node).
A capture writes one JSON line per reception decision: {"t_ms", "src", "dst" (the receiver's
id), "rssi", "len", "delivered", "hex", "cause"}; t_ms is the transmission's time, shared by
every receiver of one broadcast. Randomness is seeded (one generator, so outcomes repeat for a
seed when the frames arrive in the same order).

Counters (`stats()`): offered/broadcast/unicast frames, delivered receptions, acked/unacked
unicasts, bytes, `dropped` by cause (loss: the link's PRR; extra_loss; link_down; channel; partition;
killed; out_of_range: unicast to a node that cannot hear the sender; no_such_node), oversize,
corrupted, duplicates, and frames_per_s / delivered_per_s since start. bench/medium_bench.py
measures how many frames per second the medium sustains. `MediumThread` runs a Medium on a
background thread for synchronous callers.
"""
import asyncio
import json
import random
import socket
import struct
import threading
import time

BROADCAST = b"\xff" * 6
MAX_PAYLOAD = 250
MAC_ATTEMPTS = 4
PREAMBLE_US = 200
US_PER_BYTE = 8


def _free_udp_ports(n, host="127.0.0.1", exclude=()):
    """n distinct UDP ports free right now: bound and released in batches of 256, so thousands of
    nodes do not need thousands of file descriptors at once (another process could take a port
    before its node binds it; on a test host that is rare)."""
    ports, seen = [], set(exclude)
    while len(ports) < n:
        socks = []
        try:
            for _ in range(min(256, n - len(ports))):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((host, 0))
            for s in socks:
                p = s.getsockname()[1]
                if p not in seen:
                    seen.add(p)
                    ports.append(p)
        finally:
            for s in socks:
                s.close()
    return ports


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, medium):
        self.m = medium

    def connection_made(self, transport):
        self.m._transport = transport

    def datagram_received(self, data, addr):
        self.m._on_datagram(data, addr)


class Medium:
    def __init__(self, topology, seed=0, capture_path=None, mac_duplicates=False):
        self.topo = topology
        self.mac_duplicates = bool(mac_duplicates)
        self.rng = random.Random(seed)
        self.capture_path = capture_path
        self._capture = None
        self.port = None
        self.host = "127.0.0.1"
        self._transport = None
        self._ports = {}
        self._by_port = {}
        self._by_mac = {n.mac: n.id for n in topology.nodes}
        self._busy_until = {}
        self._down_links = set()
        self._partition = None
        self._killed = set()
        self._channel = {}  # node id -> Wi-Fi channel it said it is on
        self.extra_loss = 0.0
        self.node_loss = {}
        self.corrupt_p = 0.0
        self.node_corrupt = {}
        self._hooks = []
        self._hello = set()
        self._ctl_server = None
        self.control_port = None
        self.counters = {"offered": 0, "broadcast": 0, "unicast": 0, "delivered": 0, "acked": 0, "unacked": 0,
                         "dropped_loss": 0, "dropped_fault": 0, "oversize": 0, "corrupted": 0, "bytes": 0,
                         "unknown_sender": 0, "duplicates": 0, "dropped": {}}
        self._t0 = time.monotonic()
        self._neigh = {n.id: [(b, topology.link(n.id, b)) for b in topology.neighbours(n.id)]
                       for n in topology.nodes}

    # ---- life cycle ----------------------------------------------------------------------------

    async def start(self, host="127.0.0.1", port=0, control=True):
        """Bind the medium (and its control port); return the medium's UDP port."""
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError("the medium binds loopback only")
        self.host = host
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: _Proto(self), local_addr=(host, port))
        self.port = self._transport.get_extra_info("sockname")[1]
        ports = _free_udp_ports(len(self.topo.nodes), host, exclude=(self.port,))
        for n, p in zip(self.topo.nodes, ports, strict=True):
            self._ports[n.id] = p
            self._by_port[p] = n.id
        if self.capture_path:
            self._capture = open(self.capture_path, "a", buffering=1)
        if control:
            self._ctl_server = await asyncio.start_server(self._ctl_client, host, 0)
            self.control_port = self._ctl_server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self):
        if self._transport is not None:
            self._transport.close()
            self._transport = None  # frames still scheduled (call_later) are then dropped quietly
        if self._ctl_server is not None:
            self._ctl_server.close()
            await self._ctl_server.wait_closed()
        if self._capture is not None:
            self._capture.close()
            self._capture = None

    def port_for(self, node_id):
        """The UDP port node `node_id` must bind (given to it in its config)."""
        return self._ports[node_id]

    def ports(self):
        """{node id: UDP port} for every node."""
        return dict(self._ports)

    def attached(self):
        """Ids of the nodes that said hello (their radio went active) since the medium started."""
        return sorted(self._hello)

    async def wait_attached(self, node_ids=None, timeout_s=10.0):
        """Wait until every node in node_ids (default: all) said hello; raise TimeoutError
        naming the missing ones."""
        want = set(self.topo.ids() if node_ids is None else node_ids)
        deadline = time.monotonic() + timeout_s
        while not want <= self._hello:
            if time.monotonic() > deadline:
                raise TimeoutError("nodes never said hello to the medium: %s" % sorted(want - self._hello)[:10])
            await asyncio.sleep(0.01)

    def on_node_event(self, callback):
        """Register callback(event, node_id), called with "kill" / "restart" when kill_node /
        restart_node run (from Python or the control port): the launcher's hook to act on the
        process (the medium itself only stops or resumes the node's traffic)."""
        self._hooks.append(callback)

    # ---- faults ----------------------------------------------------------------------------------

    def link_down(self, a, b, both=True):
        """Drop every frame a->b, data and ACKs (and b->a too unless both=False)."""
        self._down_links.add((a, b))
        if both:
            self._down_links.add((b, a))

    def link_up(self, a, b, both=True):
        self._down_links.discard((a, b))
        if both:
            self._down_links.discard((b, a))

    def partition(self, *groups):
        """Nodes in different groups cannot hear each other; nodes in no group hear everyone."""
        self._partition = {}
        for i, g in enumerate(groups):
            for n in g:
                self._partition[n] = i

    def heal(self):
        self._partition = None
        self._down_links.clear()

    def kill_node(self, node_id):
        self._killed.add(node_id)
        for cb in list(self._hooks):
            cb("kill", node_id)

    def restart_node(self, node_id):
        self._killed.discard(node_id)
        for cb in list(self._hooks):
            cb("restart", node_id)

    def set_loss(self, p, node_id=None):
        if node_id is None:
            self.extra_loss = float(p)
        else:
            self.node_loss[node_id] = float(p)

    def set_corruption(self, p, node_id=None):
        """Flip one bit of delivered frames with probability p: all frames, or those sent or
        received by node_id."""
        if node_id is None:
            self.corrupt_p = float(p)
        else:
            self.node_corrupt[node_id] = float(p)

    def faults(self):
        """The active faults as plain data."""
        return {"links_down": sorted([a, b] for a, b in self._down_links), "killed": sorted(self._killed),
                "partition": None if self._partition is None else {str(k): v for k, v in self._partition.items()},
                "loss": self.extra_loss, "node_loss": {str(k): v for k, v in self.node_loss.items() if v},
                "corrupt": self.corrupt_p, "node_corrupt": {str(k): v for k, v in self.node_corrupt.items() if v},
                "channels": {str(k): v for k, v in self._channel.items()}}

    def inject(self, src_id, payload, dst_id=None):
        """Put arbitrary bytes on the air as if `src_id` sent them (fault tests: garbage,
        forged frames). Broadcast when dst_id is None."""
        src = self.topo.node(src_id)
        self._transmit(src_id, 0, BROADCAST if dst_id is None else self.topo.node(dst_id).mac, payload,
                       notify=False, src_mac=src.mac)

    def stats(self):
        out = dict(self.counters)
        out["dropped"] = dict(self.counters["dropped"])
        up = time.monotonic() - self._t0
        out["uptime_s"] = round(up, 1)
        out["frames_per_s"] = round(out["offered"] / up, 1) if up > 0 else 0.0
        out["delivered_per_s"] = round(out["delivered"] / up, 1) if up > 0 else 0.0
        out["attached"] = len(self._hello)
        return out

    # ---- the radio --------------------------------------------------------------------------------

    def _blocked(self, a, b):
        """The fault stopping frames a->b ("killed", "link_down", "channel", "partition"), or None."""
        if a in self._killed or b in self._killed:
            return "killed"
        if (a, b) in self._down_links:
            return "link_down"
        ch = self._channel
        if ch:
            ca, cb = ch.get(a), ch.get(b)
            if ca is not None and cb is not None and ca != cb:
                return "channel"
        if self._partition is not None:
            ga, gb = self._partition.get(a), self._partition.get(b)
            if ga is not None and gb is not None and ga != gb:
                return "partition"
        return None

    def _loss_cause(self, a, b, prr):
        """None when b hears a's frame, else "loss" (the link's PRR) or "extra_loss" (injected).
        One random draw either way, so adding a cause does not change the seeded sequence."""
        p = prr * (1.0 - self.extra_loss) * (1.0 - self.node_loss.get(b, 0.0)) * (1.0 - self.node_loss.get(a, 0.0))
        r = self.rng.random()
        if r < p:
            return None
        return "loss" if r >= prr else "extra_loss"

    def _hears(self, a, b, prr):
        return self._loss_cause(a, b, prr) is None

    def _drop(self, cause):
        d = self.counters["dropped"]
        d[cause] = d.get(cause, 0) + 1

    def _send_to(self, node_id, data):
        port = self._ports.get(node_id)
        if port is not None and self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data, (self.host, port))

    def _on_datagram(self, data, addr):
        node_id = self._by_port.get(addr[1])
        if node_id is None or not data:
            self.counters["unknown_sender"] += 1
            return
        kind = data[0]
        if kind == 0x54 and len(data) >= 9:  # T
            seq = struct.unpack(">H", data[1:3])[0]
            self._transmit(node_id, seq, bytes(data[3:9]), bytes(data[9:]))
        elif kind == 0x48:  # H
            self._hello.add(node_id)
        elif kind == 0x43 and len(data) == 2:  # C
            self._channel[node_id] = data[1]

    def _airtime_s(self, n):
        return (PREAMBLE_US + US_PER_BYTE * n) / 1e6

    def _transmit(self, a, seq, dst, payload, notify=True, src_mac=None):
        c = self.counters
        c["offered"] += 1
        src_mac = src_mac or self.topo.node(a).mac
        if a in self._killed:
            self._drop("killed")
            return
        if not 1 <= len(payload) <= MAX_PAYLOAD:
            c["oversize"] += 1
            if notify:
                self._send_to(a, b"D" + struct.pack(">HB", seq, 0))
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        neigh = self._neigh.get(a, ())
        start = max(now, self._busy_until.get(a, 0.0))
        for b, _ in neigh:  # CSMA: wait for the neighbourhood to go quiet
            start = max(start, self._busy_until.get(b, 0.0))
        air = self._airtime_s(len(payload) + 30)
        c["bytes"] += len(payload)
        if dst == BROADCAST:
            c["broadcast"] += 1
            end = start + air
            self._busy_until[a] = end
            for b, link in neigh:
                cause = self._blocked(a, b) or self._loss_cause(a, b, link.prr)
                self._deliver_later(loop, end - now, a, b, src_mac, link, payload, cause)
            if notify:
                loop.call_at(end, self._send_to, a, b"D" + struct.pack(">HB", seq, 1))
            return
        c["unicast"] += 1
        b = self._by_mac.get(dst)
        link = self.topo.link(a, b) if b is not None else None
        acked = False
        delivered = 0
        cause = "no_such_node" if b is None else "out_of_range" if link is None else None
        attempts = 0
        while attempts < MAC_ATTEMPTS and not acked:
            attempts += 1
            if link is None:
                continue
            cause = self._blocked(a, b)
            if cause:
                continue
            cause = self._loss_cause(a, b, link.prr)
            if cause is None:
                delivered += 1
                back = self.topo.link(b, a)
                if back is not None and not self._blocked(b, a) and self._hears(b, a, back.prr):
                    acked = True
        end = start + air * attempts
        self._busy_until[a] = end
        if delivered:
            cause = None
        if b is not None and link is not None:
            copies = delivered if self.mac_duplicates else min(1, delivered)
            self._deliver_later(loop, end - now, a, b, src_mac, link, payload, cause, copies)
        elif cause:
            self._drop(cause)
        c["acked" if acked else "unacked"] += 1
        if notify:
            loop.call_at(end, self._send_to, a, b"D" + struct.pack(">HB", seq, 1 if acked else 0))

    def _deliver_later(self, loop, delay_s, a, b, src_mac, link, payload, cause, copies=1):
        """Send b the frame after delay_s unless cause (why it was lost) is set; count, capture."""
        if cause:
            self.counters["dropped_loss" if cause in ("loss", "extra_loss") else "dropped_fault"] += 1
            self._drop(cause)
            self._cap(a, b, link, payload, False, cause=cause)
            return
        for i in range(copies):
            if i:
                self.counters["duplicates"] += 1
            self._deliver_one(loop, delay_s, a, b, src_mac, link, payload)

    def _deliver_one(self, loop, delay_s, a, b, src_mac, link, payload):
        data = payload
        pc = 1.0 - (1.0 - self.corrupt_p) * (1.0 - self.node_corrupt.get(a, 0.0)) * (1.0 - self.node_corrupt.get(b, 0.0))
        if pc and self.rng.random() < pc:
            buf = bytearray(payload)
            i = self.rng.randrange(len(buf))
            buf[i] ^= 1 << self.rng.randrange(8)
            data = bytes(buf)
            self.counters["corrupted"] += 1
        rssi = int(round(link.rssi_dbm + self.rng.uniform(-2, 2)))
        rssi = max(-127, min(0, rssi))
        msg = b"R" + src_mac + struct.pack("b", rssi) + data
        self.counters["delivered"] += 1
        self._cap(a, b, link, payload, True, rssi)
        loop.call_later(max(0.0, delay_s), self._send_to, b, msg)

    def _cap(self, a, b, link, payload, delivered, rssi=None, cause=None):
        if self._capture is None:
            return
        self._capture.write(json.dumps({
            "t_ms": int((time.monotonic() - self._t0) * 1000), "src": a, "dst": b, "rssi": rssi,
            "len": len(payload), "delivered": delivered, "hex": payload.hex(), "cause": cause}) + "\n")

    # ---- control port ---------------------------------------------------------------------------

    def control(self, cmd):
        """Apply one fault command (a dict); return a result dict. Commands:
        {"op": "link_down"|"link_up", "a": id, "b": id, "both": true?};
        {"op": "partition", "groups": [[ids], ...]}; {"op": "heal"}; {"op": "kill"|"revive", "node": id};
        {"op": "loss", "p": 0.1, "node": id?}; {"op": "corrupt", "p": 0.01, "node": id?};
        {"op": "inject", "src": id, "hex": "..", "dst": id?}; {"op": "stats"}; {"op": "faults"};
        {"op": "ports"}; {"op": "attached"}. Read ops answer {"ok": true, "<op>": ...}."""
        op = cmd.get("op")
        if op == "link_down":
            self.link_down(int(cmd["a"]), int(cmd["b"]), bool(cmd.get("both", True)))
        elif op == "link_up":
            self.link_up(int(cmd["a"]), int(cmd["b"]), bool(cmd.get("both", True)))
        elif op == "partition":
            self.partition(*[[int(x) for x in g] for g in cmd["groups"]])
        elif op == "heal":
            self.heal()
        elif op == "kill":
            self.kill_node(int(cmd["node"]))
        elif op == "revive":
            self.restart_node(int(cmd["node"]))
        elif op == "loss":
            self.set_loss(float(cmd["p"]), int(cmd["node"]) if cmd.get("node") is not None else None)
        elif op == "corrupt":
            self.set_corruption(float(cmd["p"]), int(cmd["node"]) if cmd.get("node") is not None else None)
        elif op == "inject":
            self.inject(int(cmd["src"]), bytes.fromhex(cmd["hex"]),
                        int(cmd["dst"]) if cmd.get("dst") is not None else None)
        elif op == "stats":
            return {"ok": True, "stats": self.stats()}
        elif op == "faults":
            return {"ok": True, "faults": self.faults()}
        elif op == "ports":
            return {"ok": True, "ports": {str(k): v for k, v in self._ports.items()}}
        elif op == "attached":
            return {"ok": True, "attached": self.attached()}
        else:
            return {"ok": False, "error": "unknown op %r" % (op,)}
        return {"ok": True}

    async def _ctl_client(self, reader, writer):
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                try:
                    res = self.control(json.loads(line))
                except (ValueError, KeyError, TypeError) as e:
                    res = {"ok": False, "error": str(e)}
                writer.write((json.dumps(res) + "\n").encode())
                await writer.drain()
        finally:
            writer.close()


def send_control(port, cmd, host="127.0.0.1", timeout_s=5.0):
    """Send one control command (a dict, see Medium.control) to a medium's control port from
    any process; return the reply dict. Raises OSError when the medium cannot be reached."""
    with socket.create_connection((host, port), timeout=timeout_s) as s:
        s.sendall((json.dumps(cmd) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)


class MediumThread:
    """A Medium on its own asyncio loop in a daemon thread, for synchronous callers:

        mt = MediumThread(topology, seed=1); port = mt.start()
        mt.call(mt.medium.link_down, 1, 2); mt.call(mt.medium.stats); mt.stop()

    call() runs a function (or awaits a coroutine function) on the medium's loop and returns its
    result, so the medium is only ever touched from its own thread.
    """

    def __init__(self, topology, **medium_kwargs):
        self.medium = Medium(topology, **medium_kwargs)
        self._loop = None
        self._thread = None

    def start(self, host="127.0.0.1", port=0, control=True, timeout_s=10.0):
        """Start the thread and the medium; return the medium's UDP port."""
        ready = threading.Event()
        box = {}

        def run():
            loop = self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                box["port"] = loop.run_until_complete(self.medium.start(host, port, control))
            except Exception as e:  # noqa: BLE001 - handed to the starting thread
                box["error"] = e
            ready.set()
            if "error" not in box:
                loop.run_forever()
                loop.run_until_complete(self.medium.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="radio-medium", daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s):
            raise TimeoutError("the medium thread did not start within %.0f s" % timeout_s)
        if "error" in box:
            raise box["error"]
        return box["port"]

    def call(self, fn, *args, timeout_s=10.0, **kwargs):
        """fn(*args, **kwargs) on the medium's loop (a coroutine result is awaited); its result."""
        async def runner():
            r = fn(*args, **kwargs)
            return (await r) if asyncio.iscoroutine(r) else r

        return asyncio.run_coroutine_threadsafe(runner(), self._loop).result(timeout_s)

    @property
    def port(self):
        return self.medium.port

    def stop(self, timeout_s=10.0):
        """Stop the medium and the thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)
        self._thread = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def capture_hops(path):
    """Return {origin: max hops seen} from a capture file (telemetry frames only)."""
    import protocol

    out = {}
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if not rec.get("delivered"):
                continue
            try:
                fr = protocol.decode(bytes.fromhex(rec["hex"]))
            except protocol.ProtocolError:
                continue
            if fr.type == protocol.T_TELEMETRY:
                out[fr.origin] = max(out.get(fr.origin, 0), fr.hops)
    return out
