"""Nova Fitness SDS011 frame parser and commands (sans-IO).

Data frame (sensor -> host), 10 bytes (Laser Dust Sensor Control Protocol V1.3):

    0xAA 0xC0 PM25L PM25H PM10L PM10H ID1 ID2 CHK 0xAB

PM values are little-endian and already in 0.1 ug/m3; CHK = (sum of bytes 2..7) & 0xFF.
Replies to commands have the same shape with 0xC5 as second byte: parsed, counted in
`replies`, no sample. The SDS011 has no PM1, temperature or humidity (None in samples).

Commands (host -> sensor), 19 bytes:

    0xAA 0xB4 CMD D1..D12 ID1 ID2 CHK 0xAB      CHK = (sum of bytes 2..16) & 0xFF

CMD 0x06 sleep/work (D1 = 1 set, D2 = 0 sleep / 1 work), 0x02 reporting mode (D1 = 1 set,
D2 = 0 active / 1 query), 0x04 query data. ID 0xFFFF addresses any sensor.
"""
from firmware.compat import const
from firmware.drivers import SensorSample
from firmware.drivers._framer import _BAD, _BADSUM, _NEED, FrameParser

_HEAD = const(0xAA)
_TAIL = const(0xAB)
_DATA = const(0xC0)
_REPLY = const(0xC5)
_CMD = const(0xB4)

CMD_MODE = const(0x02)
CMD_QUERY = const(0x04)
CMD_SLEEP = const(0x06)

FRAME_LEN = 10
WARMUP_S = 30


def command(cmd, d1=0, d2=0, device_id=0xFFFF):
    """Return the 19-byte command frame for `cmd` with data bytes d1, d2 (others zero)."""
    frame = bytearray(19)
    frame[0] = _HEAD
    frame[1] = _CMD
    frame[2] = cmd & 0xFF
    frame[3] = d1 & 0xFF
    frame[4] = d2 & 0xFF
    frame[15] = (device_id >> 8) & 0xFF
    frame[16] = device_id & 0xFF
    total = 0
    for i in range(2, 17):
        total += frame[i]
    frame[17] = total & 0xFF
    frame[18] = _TAIL
    return bytes(frame)


SLEEP = command(CMD_SLEEP, 1, 0)
WORK = command(CMD_SLEEP, 1, 1)
ACTIVE_MODE = command(CMD_MODE, 1, 0)
QUERY_MODE = command(CMD_MODE, 1, 1)
QUERY_DATA = command(CMD_QUERY)

# What the shell writes for each sampler/driver action name.
ACTION_BYTES = {
    "sleep": SLEEP,
    "wake": WORK,
    "active": ACTIVE_MODE,
    "passive": QUERY_MODE,
    "read": QUERY_DATA,
}


class SDS011Parser(FrameParser):
    """Incremental parser of SDS011 output.

    `feed(data)` returns a list of SensorSample (pm25, pm10 in 0.1 ug/m3; pm1, rh, temp
    None). Counters: frames_ok, checksum_errors, bytes_discarded, replies.
    """

    _FRAME_MAX = FRAME_LEN
    _HEADER = b"\xaa"

    def _status(self):
        buf = self._buf
        n = self._n
        if buf[0] != _HEAD:
            return _BAD
        if n < 2:
            return _NEED
        if buf[1] != _DATA and buf[1] != _REPLY:
            return _BAD
        if n < FRAME_LEN:
            return _NEED
        if buf[9] != _TAIL:
            return _BAD
        if ((buf[2] + buf[3] + buf[4] + buf[5] + buf[6] + buf[7]) & 0xFF) != buf[8]:
            return _BADSUM
        return FRAME_LEN

    def _decode(self, buf, n):
        if buf[1] != _DATA:
            return None  # command reply
        pm25 = buf[2] | (buf[3] << 8)
        pm10 = buf[4] | (buf[5] << 8)
        return SensorSample(None, pm25, pm10)
