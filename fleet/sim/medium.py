"""The radio medium of the virtual rig (CPython asyncio, loopback UDP only).

Every virtual node's ESP-NOW goes through one UDP socket here; the topology decides who hears
what. Datagram protocol (the node side is firmware/hal/sim_radio.py):
    node -> medium  b"H" mac(6)                          hello: node is up (start/restart)
    node -> medium  b"T" seq(2) dst(6) payload           transmit
    medium -> node  b"R" src(6) rssi(int8) payload       receive
    medium -> node  b"D" seq(2) ok(u8)                   transmit outcome

ESP-NOW, as modelled
- Payload 1..250 bytes; larger is refused (D ok=0, counted "oversize").
- Broadcast: no ACK; each neighbour hears it with the link's PRR; D ok=1 once on the air.
- Unicast: up to MAC_ATTEMPTS attempts; an attempt reaches the peer with PRR(a->b) and its
  ACK returns with PRR(b->a). The receiver hears the frame once even if several attempts got
  through (802.11 duplicate detection), but when every ACK is lost the sender sees ok=0 for a
  frame that did arrive: the mesh above must tolerate that duplicate on its own retry.
- Airtime: a frame occupies the channel (PREAMBLE_US + 8 us/byte at 1 Mbit/s) around its
  sender; a node defers its transmission while it or any neighbour is on the air (CSMA), so a
  busy neighbourhood delays frames instead of delivering them all at once. Collisions are not
  modelled here (the discrete-event simulator models them); delivery delay is.
- RSSI: the topology's link RSSI plus +-2 dB noise.
Faults, by Python call or a JSON-lines control port on 127.0.0.1 (see `control()`):
link down/up, partition/heal, kill/revive a node, extra loss (global or per node), corruption.
A capture writes one JSON line per frame event. Randomness is seeded.
"""
import asyncio
import json
import random
import socket
import struct
import time

BROADCAST = b"\xff" * 6
MAX_PAYLOAD = 250
MAC_ATTEMPTS = 4
PREAMBLE_US = 200
US_PER_BYTE = 8


def _free_udp_ports(n, host="127.0.0.1"):
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((host, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
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
    def __init__(self, topology, seed=0, capture_path=None):
        self.topo = topology
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
        self.extra_loss = 0.0
        self.node_loss = {}
        self.corrupt_p = 0.0
        self._ctl_server = None
        self.control_port = None
        self.counters = {"offered": 0, "broadcast": 0, "unicast": 0, "delivered": 0, "acked": 0, "unacked": 0,
                         "dropped_loss": 0, "dropped_fault": 0, "oversize": 0, "corrupted": 0, "bytes": 0,
                         "unknown_sender": 0}
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
        ports = _free_udp_ports(len(self.topo.nodes), host)
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
        if self._ctl_server is not None:
            self._ctl_server.close()
            await self._ctl_server.wait_closed()
        if self._capture is not None:
            self._capture.close()
            self._capture = None

    def port_for(self, node_id):
        """The UDP port node `node_id` must bind (given to it in its config)."""
        return self._ports[node_id]

    # ---- faults ----------------------------------------------------------------------------------

    def link_down(self, a, b):
        self._down_links.add((min(a, b), max(a, b)))

    def link_up(self, a, b):
        self._down_links.discard((min(a, b), max(a, b)))

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

    def restart_node(self, node_id):
        self._killed.discard(node_id)

    def set_loss(self, p, node_id=None):
        if node_id is None:
            self.extra_loss = float(p)
        else:
            self.node_loss[node_id] = float(p)

    def set_corruption(self, p):
        self.corrupt_p = float(p)

    def inject(self, src_id, payload, dst_id=None):
        """Put arbitrary bytes on the air as if `src_id` sent them (fault tests: garbage,
        forged frames). Broadcast when dst_id is None."""
        src = self.topo.node(src_id)
        self._transmit(src_id, 0, BROADCAST if dst_id is None else self.topo.node(dst_id).mac, payload,
                       notify=False, src_mac=src.mac)

    def stats(self):
        out = dict(self.counters)
        out["uptime_s"] = round(time.monotonic() - self._t0, 1)
        return out

    # ---- the radio --------------------------------------------------------------------------------

    def _blocked(self, a, b):
        if a in self._killed or b in self._killed:
            return True
        if (min(a, b), max(a, b)) in self._down_links:
            return True
        if self._partition is not None:
            ga, gb = self._partition.get(a), self._partition.get(b)
            if ga is not None and gb is not None and ga != gb:
                return True
        return False

    def _hears(self, a, b, prr):
        p = prr * (1.0 - self.extra_loss) * (1.0 - self.node_loss.get(b, 0.0)) * (1.0 - self.node_loss.get(a, 0.0))
        return self.rng.random() < p

    def _send_to(self, node_id, data):
        port = self._ports.get(node_id)
        if port is not None and self._transport is not None:
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
            pass

    def _airtime_s(self, n):
        return (PREAMBLE_US + US_PER_BYTE * n) / 1e6

    def _transmit(self, a, seq, dst, payload, notify=True, src_mac=None):
        c = self.counters
        c["offered"] += 1
        src_mac = src_mac or self.topo.node(a).mac
        if a in self._killed:
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
                ok = not self._blocked(a, b) and self._hears(a, b, link.prr)
                self._deliver_later(loop, end - now, a, b, src_mac, link, payload, ok)
            if notify:
                loop.call_at(end, self._send_to, a, b"D" + struct.pack(">HB", seq, 1))
            return
        c["unicast"] += 1
        b = self._by_mac.get(dst)
        link = self.topo.link(a, b) if b is not None else None
        delivered = acked = False
        attempts = 0
        while attempts < MAC_ATTEMPTS and not acked:
            attempts += 1
            if link is None or self._blocked(a, b):
                continue
            if self._hears(a, b, link.prr):
                delivered = True
                back = self.topo.link(b, a)
                if back is not None and self._hears(b, a, back.prr):
                    acked = True
        end = start + air * attempts
        self._busy_until[a] = end
        if b is not None and link is not None:
            self._deliver_later(loop, end - now, a, b, src_mac, link, payload, delivered)
        c["acked" if acked else "unacked"] += 1
        if notify:
            loop.call_at(end, self._send_to, a, b"D" + struct.pack(">HB", seq, 1 if acked else 0))

    def _deliver_later(self, loop, delay_s, a, b, src_mac, link, payload, ok):
        if not ok:
            self.counters["dropped_fault" if self._blocked(a, b) else "dropped_loss"] += 1
            self._cap(a, b, link, payload, False)
            return
        data = payload
        if self.corrupt_p and self.rng.random() < self.corrupt_p:
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

    def _cap(self, a, b, link, payload, delivered, rssi=None):
        if self._capture is None:
            return
        self._capture.write(json.dumps({
            "t_ms": int((time.monotonic() - self._t0) * 1000), "src": a, "dst": b, "rssi": rssi,
            "len": len(payload), "delivered": delivered, "hex": payload.hex()}) + "\n")

    # ---- control port ---------------------------------------------------------------------------

    def control(self, cmd):
        """Apply one fault command (a dict); return a result dict. Commands:
        {"op": "link_down"|"link_up", "a": id, "b": id}; {"op": "partition", "groups": [[ids], ...]};
        {"op": "heal"}; {"op": "kill"|"revive", "node": id}; {"op": "loss", "p": 0.1, "node": id?};
        {"op": "corrupt", "p": 0.01}; {"op": "inject", "src": id, "hex": "..", "dst": id?}; {"op": "stats"}."""
        op = cmd.get("op")
        if op == "link_down":
            self.link_down(int(cmd["a"]), int(cmd["b"]))
        elif op == "link_up":
            self.link_up(int(cmd["a"]), int(cmd["b"]))
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
            self.set_corruption(float(cmd["p"]))
        elif op == "inject":
            self.inject(int(cmd["src"]), bytes.fromhex(cmd["hex"]),
                        int(cmd["dst"]) if cmd.get("dst") is not None else None)
        elif op == "stats":
            return {"ok": True, "stats": self.stats()}
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
