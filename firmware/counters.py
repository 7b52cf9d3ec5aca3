"""Monotonic named counters that survive resets and power loss without wearing the flash.

Rules
-----
- Each name has a value in RAM (`peek`) and a *reserve* on flash: every value ever handed out
  is below the persisted reserve. `next(name)` returns the value and adds one; when the value
  reaches the reserve, the reserve moves to `value + block` and is written to flash (atomic
  temp file + rename) BEFORE the value is handed out. So 10,000 `next()` calls cost about
  10,000 / block writes (`writes` counts them).
- After a reset or a power cut each counter resumes from its persisted reserve: values never
  repeat; at most `block - 1` values are skipped (handed out by nobody). A power cut during the
  write leaves the old reserve, which is still above every value handed out.
- Names listed in `exact` (default: "boot") persist every increment (block of 1): a boot count
  that jumped by 64 per boot would mislead. `set_min(name, v)` raises a counter to at least `v`
  and, when that passes the reserve, persists it exactly (used for "last accepted command
  counter": after a reboot `peek` gives back exactly the highest accepted value).
- `sync()` persists the exact current values (reserve = value): call it before a planned
  reset (the ring's `flush()` does) so a planned reset skips nothing.
- A write that fails (OSError, e.g. flash full) propagates and changes nothing in RAM: the
  value is not handed out, so a retry is safe.

File: a CBOR map {name (text): reserve (uint)} (protocol.cbor, deterministic). A missing file
means a fresh node (all counters 0). A damaged file (cannot happen through the atomic rename,
only through flash corruption) is ignored with `damaged = True`: counters restart at 0, so
callers raise them from other evidence (the ring does so from the newest reading on flash).

Counter names used by the node: "reading" (reading seq, kept by the ring), "status" and
"reply" (frame seqs), "boot" (boot count), "cseq" (highest accepted command counter); the OTA
shell's "ota_allow", "ota_rep" and "stage" (firmware/ota_node.py).
"""
from firmware import fsutil
from protocol import cbor
from protocol.errors import ProtocolError

DEFAULT_BLOCK = 64


class Counters:
    """Named monotonic counters in one small file at `path` of filesystem adapter `fs`."""

    def __init__(self, fs, path, block=DEFAULT_BLOCK, exact=("boot",)):
        if not isinstance(block, int) or block < 1:
            raise ValueError("block must be a positive int, got %r" % (block,))
        self._fs = fs
        self._path = path
        self.block = block
        self._exact = exact
        self._value = {}  # name -> next value to hand out
        self._reserve = {}  # name -> persisted reserve (every handed-out value is below it)
        self.writes = 0
        self.damaged = False
        self._load()

    # ---------------------------------------------------------------- public
    def next(self, name):
        """Return the next value of counter `name` (0 first) and advance it. May write the
        reserve to flash first (raises OSError if that fails; nothing is handed out then)."""
        v = self._value.get(name, 0)
        if v >= self._reserve.get(name, 0):
            step = 1 if name in self._exact else self.block
            self._persist(name, v + step)
        self._value[name] = v + 1
        return v

    def peek(self, name):
        """Return the value `next(name)` would return, without advancing (0 if never used)."""
        return self._value.get(name, 0)

    def set_min(self, name, value):
        """Raise counter `name` to at least `value` (no-op if already there). A raise beyond the
        reserve is persisted exactly, before this returns (raises OSError if that fails)."""
        if value <= self._value.get(name, 0):
            return
        if value > self._reserve.get(name, 0):
            self._persist(name, value)
        self._value[name] = value

    def sync(self):
        """Persist the exact current values (one write, only if some reserve differs), so a
        planned reset skips no value. Raises OSError if the write fails."""
        changed = False
        for name in self._value:
            if self._reserve.get(name, 0) != self._value[name]:
                changed = True
        if not changed:
            return
        res = dict(self._value)
        self._write(res)
        self._reserve = res

    def names(self):
        """Return the sorted list of counter names known so far."""
        out = list(self._value)
        out.sort()
        return out

    # ---------------------------------------------------------------- internals
    def _persist(self, name, reserve):
        res = dict(self._reserve)
        res[name] = reserve
        self._write(res)
        self._reserve = res

    def _write(self, res):
        fsutil.write_file(self._fs, self._path, cbor.dumps(res))
        self.writes += 1

    def _load(self):
        data = fsutil.read_file(self._fs, self._path)
        if data is None:
            # Only a FAT-style remove+rename leaves the newest content in the temp file alone;
            # on a fresh node a temp file cut short by a power cut just means "start at 0".
            res = _parse(fsutil.read_file(self._fs, self._path + ".tmp"))
            if res is not None:
                self._reserve = res
                self._value = dict(res)
            return
        res = _parse(data)
        if res is None:
            self.damaged = True
            return
        self._reserve = res
        self._value = dict(res)


def _parse(data):
    """Return the {name: reserve} map in `data`, or None when absent or malformed."""
    if data is None:
        return None
    try:
        res = cbor.loads(data)
    except ProtocolError:
        return None
    if not isinstance(res, dict):
        return None
    for k in res:
        v = res[k]
        if not isinstance(k, str) or not isinstance(v, int) or isinstance(v, bool) or v < 0:
            return None
    return res
