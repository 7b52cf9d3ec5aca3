"""Plain-data views of frames for the host (JSON output, `fleet decode`) and the device tests:
kept out of protocol/frames.py, whose classes a node holds in its heap for good."""
from protocol.frames import TYPE_NAMES, Frame


def to_dict(frame):
    """The frame as plain data (for JSON): `type` name plus every field; bytes become hex (a
    class with its own view, e.g. protocol.envelope.Envelope, gives that)."""
    own = getattr(frame, "to_dict", None)
    if own is not None:
        return own()
    out = {"type": TYPE_NAMES[frame.type]} if frame.type else {}
    for f in frame.FIELDS:
        out[f] = _plain(getattr(frame, f))
    return out


def _plain(v):
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    if isinstance(v, Frame):
        return to_dict(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v
