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

Receive buffer, as the real driver's (firmware/hal/__init__.py has the arithmetic): frames go
into one ring of `config(rxbuf=N)` bytes (526 by default; the size applies at active(True),
where the ring is allocated on the heap like the board's), each as a 13-byte header + payload,
kept only while 13 + len < free bytes; a frame that does not fit is dropped and counted. The
medium has already told the sender "ACK ok" by then, as a board's MAC ACKs before its driver
copies the frame. Frames are moved from the socket to the ring whenever the loop lets the read
task run; while the app holds the loop they wait in the socket, like frames in the air while a
board's Wi-Fi task runs, and then fill the ring in arrival order. stats() returns the driver's
tuple (tx_pkts, tx_responses, tx_failures, rx_packets, rx_dropped_packets).
Receive path allocations per frame: the datagram (sock.recv: MicroPython sockets have no
recv_into, and their readinto() is a stream read that would join queued datagrams), a few
short-lived memoryview slices for the copies in and out of the ring, then, on arecv(), the
message bytes and the (mac, msg) tuple. Those are the rig's, not the board's (the sim HAL's
heap allowance covers them); the ring itself, rxbuf bytes, is charged as on the board. The mac
is the peers_table key, allocated once per sender, and peers_table entries are updated in
place when a frame is read (as the driver's recv does).
"""
import asyncio
import socket
import struct

from firmware.compat import ticks_ms
from firmware.hal import ESPNOW_PKT_OVERHEAD

BROADCAST = b"\xff\xff\xff\xff\xff\xff"
MAX_PAYLOAD = 250
MAX_PEERS = 20
_SEND_TIMEOUT_MS = 500
_DGRAM_MAX = 1 + 6 + 1 + MAX_PAYLOAD
RXBUF_DEFAULT = 2 * (ESPNOW_PKT_OVERHEAD + MAX_PAYLOAD)  # 526: the driver's DEFAULT_RECV_BUFFER_SIZE
_RXBUF_MAX = 65535  # py/ringbuf.h holds the size in a uint16_t
_MAGIC = 0x99  # ESPNOW_MAGIC, first byte of every frame in the ring
_NO_RING = bytearray(0)  # the ring while inactive (the driver frees it)
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
        self._rx_evt = asyncio.Event()
        self._reader = None
        self._macs = {}  # mac's high 24 bits -> {low 24 bits -> the mac (the peers_table key)}
        self._rxbuf = RXBUF_DEFAULT  # config(rxbuf=): the ring's size at the next active(True)
        self._on = False  # active(True) called: the ring exists and frames are heard
        self._ring = _NO_RING  # bytearray(rxbuf) while active, as the driver's m_new'd recv_buffer
        self._iget = 0
        self._iput = 0
        self.rx_nomem = 0  # datagrams the loop found no heap for (_read_loop)
        self._whdr = bytearray(ESPNOW_PKT_OVERHEAD)  # the header of a frame going in ...
        self._rhdr = bytearray(ESPNOW_PKT_OVERHEAD)  # ... and of one coming out
        # the driver's counters (stats()); timeouts: sends the medium never answered (rig only)
        self.tx_pkts = self.tx_responses = self.tx_failures = self.rx_packets = self.rx_dropped = 0
        self.timeouts = 0

    def active(self, on=None):
        """active(True) allocates the receive ring (config(rxbuf=) bytes) and says hello to the
        medium; active(False) frees the ring (frames then go unheard, uncounted)."""
        if on is None:
            return self._on
        if on:
            if not self._on:
                self._ring = bytearray(self._rxbuf)
                self._iget = self._iput = 0
                self._on = True
            self._sock.sendto(b"H" + self.mac, self._medium)
            if self._reader is None:
                self._reader = asyncio.create_task(self._read_loop())
        else:
            self._ring = _NO_RING
            self._on = False
        return self._on

    def config(self, *param, rxbuf=None, timeout_ms=None):
        """config(rxbuf=N): the receive ring's size in bytes, applied at the next active(True)
        (as the driver's); config("rxbuf") returns it. ValueError for a size the driver's ring
        cannot hold (1..65535) or an unknown parameter name."""
        if rxbuf is not None:
            if not isinstance(rxbuf, int) or not 1 <= rxbuf <= _RXBUF_MAX:
                raise ValueError("rxbuf must be 1..%d bytes, got %r" % (_RXBUF_MAX, rxbuf))
            self._rxbuf = rxbuf
        if param:
            if param[0] == "rxbuf":
                return self._rxbuf
            raise ValueError("unknown config param")
        return None

    def stats(self):
        """(tx_pkts, tx_responses, tx_failures, rx_packets, rx_dropped_packets), as the driver."""
        return (self.tx_pkts, self.tx_responses, self.tx_failures, self.rx_packets, self.rx_dropped)

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
        self.tx_pkts += 1
        try:
            self._sock.sendto(b"T" + struct.pack(">H", seq) + mac + msg, self._medium)
        except OSError:
            del self._waiting[seq]
            return False
        try:
            await _wait_ms(slot[0].wait(), _SEND_TIMEOUT_MS)
        except asyncio.TimeoutError:
            self.timeouts += 1
        self._waiting.pop(seq, None)
        return slot[1]

    async def arecv(self):
        """Wait for the next frame; return (mac, msg) and note its RSSI in peers_table."""
        while not self.any():
            self._rx_evt.clear()
            await self._rx_evt.wait()
        hdr = self._rhdr
        self._take(hdr, ESPNOW_PKT_OVERHEAD)
        n = hdr[1]
        if hdr[0] != _MAGIC or not 1 <= n <= MAX_PAYLOAD:
            raise ValueError("ESPNow.recv(): buffer error")  # the driver's words; a bug here
        msg = self._take_bytes(n)
        # two 24-bit halves: small ints on a 32-bit port, where a 48-bit key would be a heap object
        hi = (hdr[7] << 16) | (hdr[8] << 8) | hdr[9]
        lo = (hdr[10] << 16) | (hdr[11] << 8) | hdr[12]
        lows = self._macs.get(hi)
        if lows is None:
            lows = self._macs[hi] = {}
        src = lows.get(lo)
        if src is None:
            src = lows[lo] = bytes(hdr[7:13])
        rssi = hdr[6] - 256 if hdr[6] > 127 else hdr[6]
        t = hdr[2] | (hdr[3] << 8) | (hdr[4] << 16) | (hdr[5] << 24)
        entry = self.peers_table.get(src)
        if entry is None:
            self.peers_table[src] = [rssi, t]
        else:
            entry[0] = rssi
            entry[1] = t
        return src, msg

    def any(self):
        return self._on and self._iget != self._iput

    # ---- the receive ring (py/ringbuf.h arithmetic) ----------------------------------------

    def _free(self):
        size = len(self._ring)
        return (size + self._iget - self._iput - 1) % size

    def _put(self, src, start, n):
        ring = self._ring
        size = len(ring)
        i = self._iput
        k = min(n, size - i)
        mv = memoryview(src)
        ring[i:i + k] = mv[start:start + k]
        if k < n:
            ring[0:n - k] = mv[start + k:start + n]
        self._iput = (i + n) % size

    def _take(self, dst, n):
        ring = self._ring
        size = len(ring)
        i = self._iget
        k = min(n, size - i)
        mv = memoryview(ring)
        dst[0:k] = mv[i:i + k]
        if k < n:
            dst[k:n] = mv[0:n - k]
        self._iget = (i + n) % size

    def _take_bytes(self, n):
        ring = self._ring
        size = len(ring)
        i = self._iget
        self._iget = (i + n) % size
        if i + n <= size:
            return bytes(memoryview(ring)[i:i + n])
        return bytes(memoryview(ring)[i:]) + bytes(memoryview(ring)[:i + n - size])

    async def _read_loop(self):
        sock = self._sock
        while True:
            if _io_queue is not None:
                await _Yield(_io_queue.queue_read(sock))
            else:
                self._on_datagram(await asyncio.get_running_loop().sock_recv(  # pyright: ignore[reportAttributeAccessIssue]
                    sock, _DGRAM_MAX))  # CPython only
            while True:
                try:
                    data = _recv(sock)
                    if not data:
                        break
                    self._on_datagram(data)
                except MemoryError:
                    # The board's driver takes a frame in outside the Python heap: it never dies
                    # of a full one. This stand-in allocates per datagram; with no piece to be had
                    # the frame is dropped (if the socket gave it up) or taken on a later turn,
                    # and the loop goes on after the others ran. It used to die, and its node
                    # went deaf for good (a 25-node OTA campaign, hil_tests/test_ota.py).
                    self.rx_nomem += 1
                    await asyncio.sleep(0.02)
                    break

    def _on_datagram(self, b):
        n = len(b)
        kind = b[0]
        if kind == 0x52 and 9 <= n <= 8 + MAX_PAYLOAD:  # "R"
            if not self._on:
                return  # not active: the driver has no receive callback registered
            plen = n - 8
            if ESPNOW_PKT_OVERHEAD + plen >= self._free():
                self.rx_dropped += 1  # ring full: the sender already had its ACK
                return
            hdr = self._whdr
            hdr[0] = _MAGIC
            hdr[1] = plen
            struct.pack_into("<I", hdr, 2, ticks_ms())  # time_ms, little-endian as on the ESP32
            hdr[6] = b[7]  # rssi, a signed byte
            hdr[7:13] = memoryview(b)[1:7]
            self._put(hdr, 0, ESPNOW_PKT_OVERHEAD)
            self._put(b, 8, plen)
            self.rx_packets += 1
            self._rx_evt.set()
        elif kind == 0x44 and n == 4:  # "D"
            slot = self._waiting.get((b[1] << 8) | b[2])
            if slot is not None:
                self.tx_responses += 1
                if b[3] != 1:
                    self.tx_failures += 1
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
