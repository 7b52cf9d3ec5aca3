"""Plantower PMS5003 / PMS5003T frame parser and commands (sans-IO).

Data frame (sensor -> host), 32 bytes, big-endian 16-bit words:

| bytes | field                                                                     |
|-------|---------------------------------------------------------------------------|
| 0-1   | start characters 0x42 0x4D                                                |
| 2-3   | frame length = 2 * 13 + 2 = 28 (bytes after this field)                   |
| 4-9   | data 1-3: PM1.0 / PM2.5 / PM10 ug/m3, CF=1 (factory environment)           |
| 10-15 | data 4-6: PM1.0 / PM2.5 / PM10 ug/m3, atmospheric environment  <- we use   |
| 16-27 | data 7-12: particle counts > 0.3 / 0.5 / 1.0 / 2.5 / 5.0 / 10 um per 0.1 L |
| 28-29 | data 13: reserved (version, error code)                                   |
| 30-31 | check code = 16-bit sum of bytes 0..29                                    |

PMS5003T (same length): data 11 (bytes 24-25) is temperature in 0.1 C as a signed word and
data 12 (bytes 26-27) is relative humidity in 0.1 % (the 5003T drops the >5.0 and >10 um
counts). Sources: Plantower PMS5003 manual v2.3 for the layout; for the 5003T words the
open-source `pms` Python package (PMS5003T message unpacked as ">10Hh2H", 11th word signed
temperature, 12th humidity, both x10) and AirGradient's PMS5003T patch, which agree.

Commands (host -> sensor), 7 bytes: 0x42 0x4D CMD DATAH DATAL LRCH LRCL, LRC = 16-bit sum of
the first five bytes. CMD 0xE2 read (passive mode), 0xE1 mode (0 passive, 1 active),
0xE4 sleep/wake (0 sleep, 1 wake). The sensor answers mode and sleep commands with an 8-byte
frame of length 4 (0x42 0x4D 0x00 0x04 CMD DATA sumH sumL): parsed, counted in `replies`,
no sample. After waking, the fan needs 30 s before readings are stable.
"""
from firmware.compat import const
from firmware.drivers import SensorSample
from firmware.drivers._framer import _BAD, _BADSUM, _NEED, FrameParser

_START1 = const(0x42)
_START2 = const(0x4D)
_LEN_DATA = const(28)
_LEN_REPLY = const(4)

CMD_READ = const(0xE2)
CMD_MODE = const(0xE1)
CMD_SLEEP = const(0xE4)

FRAME_LEN = 32
WARMUP_S = 30


def command(cmd, data=0):
    """Return the 7-byte command frame for `cmd` (0..255) with 16-bit `data`."""
    frame = bytearray(7)
    frame[0] = _START1
    frame[1] = _START2
    frame[2] = cmd & 0xFF
    frame[3] = (data >> 8) & 0xFF
    frame[4] = data & 0xFF
    lrc = frame[0] + frame[1] + frame[2] + frame[3] + frame[4]
    frame[5] = (lrc >> 8) & 0xFF
    frame[6] = lrc & 0xFF
    return bytes(frame)


SLEEP = command(CMD_SLEEP, 0)
WAKE = command(CMD_SLEEP, 1)
PASSIVE_MODE = command(CMD_MODE, 0)
ACTIVE_MODE = command(CMD_MODE, 1)
READ_PASSIVE = command(CMD_READ, 0)

# What the shell writes for each sampler/driver action name.
ACTION_BYTES = {
    "sleep": SLEEP,
    "wake": WAKE,
    "passive": PASSIVE_MODE,
    "active": ACTIVE_MODE,
    "read": READ_PASSIVE,
}


def _word(buf, i):
    return (buf[i] << 8) | buf[i + 1]


class PMS5003Parser(FrameParser):
    """Incremental parser of PMS5003 (th=False) or PMS5003T (th=True) output.

    `feed(data)` returns a list of SensorSample (pm in 0.1 ug/m3 from the atmospheric-
    environment words; rh in % and temp in 0.1 C for the 5003T, else None). Counters:
    frames_ok, checksum_errors, bytes_discarded, replies.
    """

    _FRAME_MAX = FRAME_LEN
    _HEADER = b"\x42"

    def __init__(self, th=False):
        super().__init__()
        self.th = th

    def _status(self):
        buf = self._buf
        n = self._n
        if buf[0] != _START1:
            return _BAD
        if n < 2:
            return _NEED
        if buf[1] != _START2:
            return _BAD
        if n < 4:
            return _NEED
        length = _word(buf, 2)
        if length != _LEN_DATA and length != _LEN_REPLY:
            return _BAD
        need = length + 4
        if n < need:
            return _NEED
        total = 0
        for i in range(need - 2):
            total += buf[i]
        if (total & 0xFFFF) != _word(buf, need - 2):
            return _BADSUM
        return need

    def _decode(self, buf, n):
        if n != FRAME_LEN:
            return None  # command reply
        rh = temp = None
        if self.th:
            temp = _word(buf, 24)
            if temp >= 0x8000:
                temp -= 0x10000
            rh = (_word(buf, 26) + 5) // 10
        return SensorSample(_word(buf, 10) * 10, _word(buf, 12) * 10, _word(buf, 14) * 10, rh, temp)


class PMS5003TParser(PMS5003Parser):
    """PMS5003T parser: PMS5003Parser with temperature and humidity."""

    def __init__(self):
        super().__init__(th=True)
