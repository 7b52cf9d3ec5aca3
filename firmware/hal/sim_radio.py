"""ESP-NOW for the virtual rig: the shape of MicroPython's aioespnow.AIOESPNow, carried over
loopback UDP to the radio medium (fleet/sim/medium.py), which decides who hears what.

Datagrams (see fleet/sim/medium.py for the medium's side):
    node -> medium  b"H" mac(6)                         hello (after start or restart)
    node -> medium  b"T" seq(2) dst(6) payload          transmit (dst ff:ff:ff:ff:ff:ff = broadcast)
    medium -> node  b"R" src(6) rssi(1, signed) payload  a frame was received
    medium -> node  b"D" seq(2) ok(1)                    transmit outcome (unicast: MAC ACK)

ESP-NOW rules kept here: payloads are 1..250 bytes (ValueError otherwise); every send needs
its destination in the peer table, broadcast included (ff:ff:ff:ff:ff:ff must be registered
like any peer, as the real driver wants), which holds at most 20 peers. Peer errors are the
driver's: OSError(-code, name) as MicroPython's esp32 port raises them (check_esp_err negates
the IDF code): ESP_ERR_ESPNOW_FULL 0x3068, _NOT_FOUND 0x3069, _EXIST 0x306b (esp_now.h).
MicroPython sockets have no getsockname(): the node is told its port and the medium's.
Receive path allocations per frame: the datagram (sock.recv: MicroPython sockets have no
recv_into, and their readinto() is a stream read that would join queued datagrams), the
message slice and the (mac, msg) tuple arecv() returns. The mac is the peers_table key,
allocated once per sender, and peers_table entries are updated in place.
"""
import asyncio
import socket
import struct

from firmware.compat import ticks_ms

BROADCAST = b"\xff\xff\xff\xff\xff\xff"
MAX_PAYLOAD = 250
MAX_PEERS = 20
_SEND_TIMEOUT_MS = 500
_DGRAM_MAX = 1 + 6 + 1 + MAX_PAYLOAD
_RX_QUEUE = 64   # frames held for arecv(); more are dropped (counted), like a full driver rxbuf
_ERR_FULL = -0x3068
_ERR_NOT_FOUND = -0x3069
_ERR_EXIST = -0x306B

try:
    _io_queue = asyncio.core._io_queue  # pyright: ignore[reportAttributeAccessIssue] -- MicroPython only
except AttributeError:  # CPython
    _io_queue = None


class SimRadio:
    def __init__(self, mac, my_port, medium_port, host="127.0.0.1"):
        self.mac = bytes(mac)
        self.peers = []
        self.peers_table = {}
        self._medium = socket.getaddrinfo(host, medium_port)[0][-1]
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(socket.getaddrinfo(host, my_port)[0][-1])
        self._sock.setblocking(False)
        self._seq = 0
        self._waiting = {}  # seq -> [Event, ok]
        self._rx = []
        self._rx_evt = asyncio.Event()
        self._reader = None
        self._active = False
        self._macs = {}  # 48-bit int -> the sender's mac (the peers_table key): no per-frame alloc
        self.stats = {"tx": 0, "tx_ok": 0, "rx": 0, "timeouts": 0, "rx_dropped": 0}

    def active(self, on=None):
        if on is None:
            return self._active
        self._active = bool(on)
        if on:
            self._sock.sendto(b"H" + self.mac, self._medium)
            if self._reader is None:
                self._reader = asyncio.create_task(self._read_loop())
        return self._active

    # ---- peers ------------------------------------------------------------------------------

    def add_peer(self, mac, *args, **kw):
        mac = bytes(mac)
        if mac in self.peers:
            raise OSError(_ERR_EXIST, "ESP_ERR_ESPNOW_EXIST")
        if len(self.peers) >= MAX_PEERS:
            raise OSError(_ERR_FULL, "ESP_ERR_ESPNOW_FULL")
        self.peers.append(mac)

    def del_peer(self, mac):
        mac = bytes(mac)
        if mac not in self.peers:
            raise OSError(_ERR_NOT_FOUND, "ESP_ERR_ESPNOW_NOT_FOUND")
        self.peers.remove(mac)

    def get_peers(self):
        return tuple((m, b"", 0, 0, False) for m in self.peers)

    # ---- sending and receiving --------------------------------------------------------------

    async def asend(self, mac, msg, sync=True):
        """Send msg to mac; return True when it was ACKed (unicast) or sent (broadcast)."""
        mac = bytes(mac)
        if not 1 <= len(msg) <= MAX_PAYLOAD:
            raise ValueError("ESP-NOW payload must be 1..250 bytes, got %d" % len(msg))
        if mac not in self.peers:
            raise OSError(_ERR_NOT_FOUND, "ESP_ERR_ESPNOW_NOT_FOUND")
        self._seq = (self._seq + 1) & 0xFFFF
        seq = self._seq
        slot = [asyncio.Event(), False]
        self._waiting[seq] = slot
        self.stats["tx"] += 1
        try:
            self._sock.sendto(b"T" + struct.pack(">H", seq) + mac + msg, self._medium)
        except OSError:
            del self._waiting[seq]
            return False
        try:
            await _wait_ms(slot[0].wait(), _SEND_TIMEOUT_MS)
        except asyncio.TimeoutError:
            self.stats["timeouts"] += 1
        self._waiting.pop(seq, None)
        if slot[1]:
            self.stats["tx_ok"] += 1
        return slot[1]

    async def arecv(self):
        """Wait for the next frame; return (mac, msg)."""
        while not self._rx:
            self._rx_evt.clear()
            await self._rx_evt.wait()
        return self._rx.pop(0)

    def any(self):
        return len(self._rx) > 0

    async def _read_loop(self):
        sock = self._sock
        while True:
            if _io_queue is not None:
                await _Yield(_io_queue.queue_read(sock))
            else:
                self._on_datagram(await asyncio.get_running_loop().sock_recv(  # pyright: ignore[reportAttributeAccessIssue]
                    sock, _DGRAM_MAX))  # CPython only
            while True:
                data = _recv(sock)
                if not data:
                    break
                self._on_datagram(data)

    def _on_datagram(self, b):
        n = len(b)
        kind = b[0]
        if kind == 0x52 and n >= 8:  # "R"
            key = (b[1] << 40) | (b[2] << 32) | (b[3] << 24) | (b[4] << 16) | (b[5] << 8) | b[6]
            src = self._macs.get(key)
            if src is None:
                src = self._macs[key] = bytes(b[1:7])
            rssi = b[7] - 256 if b[7] > 127 else b[7]
            entry = self.peers_table.get(src)
            if entry is None:
                self.peers_table[src] = [rssi, ticks_ms()]
            else:
                entry[0] = rssi
                entry[1] = ticks_ms()
            if len(self._rx) < _RX_QUEUE:
                self._rx.append((src, b[8:]))
                self.stats["rx"] += 1
            else:
                self.stats["rx_dropped"] += 1
            self._rx_evt.set()
        elif kind == 0x44 and n == 4:  # "D"
            slot = self._waiting.get((b[1] << 8) | b[2])
            if slot is not None:
                slot[1] = b[3] == 1
                slot[0].set()


def _recv(sock):
    """The next queued datagram, or None when none is queued."""
    try:
        return sock.recv(_DGRAM_MAX)
    except OSError:  # EAGAIN (CPython: BlockingIOError)
        return None


class _Yield:
    """Await the value MicroPython's IO queue registration expects to be yielded."""

    def __init__(self, v):
        self.v = v

    def __iter__(self):
        yield self.v

    __await__ = __iter__


async def _wait_ms(aw, ms):
    if hasattr(asyncio, "wait_for_ms"):
        return await asyncio.wait_for_ms(aw, ms)
    return await asyncio.wait_for(aw, ms / 1000)
