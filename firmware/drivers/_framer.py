"""Shared resynchronising frame reader for UART sensors (sans-IO).

Theory of operation
-------------------
Bytes go into a fixed buffer that holds at most one frame (`_FRAME_MAX` bytes; it never
grows). After every byte the subclass's `_status()` judges the buffered prefix:

| status          | meaning                                     | what happens                     |
|-----------------|---------------------------------------------|----------------------------------|
| `_NEED`         | a valid prefix, frame not complete          | wait for more bytes              |
| `_BAD`          | header/length/tail impossible               | resync                           |
| `_BADSUM`       | complete frame, checksum wrong              | count it, resync                 |
| n > 0           | complete valid frame of n bytes             | decode, drop n bytes, look again |

Resync drops only the first buffered byte and then everything up to the next header byte,
and judges what remains again: a false header inside garbage therefore never swallows a real
frame that starts within the bytes it claimed. "Need more bytes" is a return value (an empty
list from `feed`), never an exception; `feed` never raises on any input.
"""

_NEED = 0
_BAD = -1
_BADSUM = -2


class FrameParser:
    """Base class: subclasses set `_FRAME_MAX`, `_HEADER` and define `_status` and `_decode`."""

    _FRAME_MAX = 32
    _HEADER = b"\x42"  # first byte of every frame, as a 1-byte bytes object

    def __init__(self):
        self._buf = bytearray(self._FRAME_MAX)
        self._n = 0
        self.frames_ok = 0
        self.checksum_errors = 0
        self.bytes_discarded = 0
        self.replies = 0  # command acknowledgements seen (frames that carry no sample)

    @property
    def buffered(self):
        """Number of bytes held back waiting for the rest of a frame (<= one frame)."""
        return self._n

    def reset(self):
        """Forget any partial frame (e.g. after the sensor was power-cycled). Counters stay."""
        self.bytes_discarded += self._n
        self._n = 0

    def feed(self, data):
        """Consume `data` (bytes-like) and return the list of samples completed by it.

        Returns [] when more bytes are needed. Never raises on malformed input: bad bytes are
        counted in `bytes_discarded`, bad checksums in `checksum_errors`.
        """
        out = []
        buf = self._buf
        h0 = self._HEADER[0]
        for b in data:
            if self._n == 0 and b != h0:
                # Fast path through garbage between frames.
                self.bytes_discarded += 1
                continue
            buf[self._n] = b
            self._n += 1
            self._settle(out)
        return out

    def _settle(self, out):
        # Judge the buffer until it holds a valid, incomplete prefix (or nothing).
        while self._n:
            st = self._status()
            if st == _NEED:
                return
            if st > 0:
                sample = self._decode(self._buf, st)
                self.frames_ok += 1
                if sample is None:
                    self.replies += 1
                else:
                    out.append(sample)
                self._drop(st)
                continue
            if st == _BADSUM:
                self.checksum_errors += 1
            # Resync: skip the byte that started the false frame, then up to the next header.
            j = self._buf.find(self._HEADER, 1, self._n)
            k = self._n if j < 0 else j
            self.bytes_discarded += k
            self._drop(k)

    def _drop(self, k):
        n = self._n
        if k < n:
            self._buf[0:n - k] = self._buf[k:n]
        self._n = n - k

    def _status(self):  # pragma: no cover - abstract
        raise NotImplementedError("subclass must define _status")

    def _decode(self, buf, n):  # pragma: no cover - abstract
        raise NotImplementedError("subclass must define _decode")
