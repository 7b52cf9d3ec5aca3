"""The MQTT messages between gateways and the fleet: a gateway's uplink envelope and the
fleet's downlink (protocol/redmesh.cddl). Gateway and host only: a plain node never imports
this module, so it does not carry their codec. Importing it registers both types with
protocol.encode / protocol.decode (protocol/frames.py) and makes protocol.Envelope and
protocol.Downlink available; the host's `import protocol` does that for it."""
import protocol
from protocol import frames
from protocol.cbor import MAX_ITEMS, put_head
from protocol.errors import ProtocolError
from protocol.frames import (
    MAX_ENVELOPE,
    MAX_FRAME,
    T_DOWNLINK,
    T_ENVELOPE,
    U32,
    U64,
    VERSION,
    Frame,
    _arr,
    _bstr,
    _num,
    _put_bytes,
    _put_num,
    _uint,
    decode,
)


class Envelope(Frame):
    """A gateway's uplink batch over MQTT: [version, type, gateway, eseq, items], each item
    [rx_ms, rssi, frame] — receive time (unix ms), RSSI (dBm), the air frame's bytes."""

    type = T_ENVELOPE
    FIELDS = ("gateway", "eseq", "items")
    DEFAULTS = {"items": []}

    def to_dict(self):
        from protocol.view import to_dict

        out = {"type": "envelope", "gateway": self.gateway, "eseq": self.eseq, "frames": []}
        for rx_ms, rssi, fb in self.items:
            try:
                fr = to_dict(decode(fb))
            except ProtocolError as e:
                fr = {"error": str(e), "hex": bytes(fb).hex()}
            fr["rx_ms"] = rx_ms
            fr["rssi"] = rssi
            out["frames"].append(fr)
        return out


class Downlink(Frame):
    """Fleet -> gateway over MQTT: [version, type, frames], air frames to inject into the mesh."""

    type = T_DOWNLINK
    FIELDS = ("frames",)
    frames: list
    DEFAULTS = {"frames": []}


def _encode(frame):
    out = bytearray()
    if frame.type == T_ENVELOPE:
        put_head(4, 5, out)
        put_head(0, VERSION, out)
        put_head(0, T_ENVELOPE, out)
        _put_num(out, "gateway", frame.gateway, 0, U32)
        _put_num(out, "eseq", frame.eseq, 0, U32)
        put_head(4, len(frame.items), out)
        for rx_ms, rssi, fb in frame.items:
            put_head(4, 3, out)
            _put_num(out, "rx_ms", rx_ms, 0, U64)
            _put_num(out, "rssi", rssi, -128, 0)
            _put_bytes(out, "frame", fb, 1, MAX_FRAME)
        if len(out) > MAX_ENVELOPE:
            raise ValueError("envelope: %d bytes, at most %d" % (len(out), MAX_ENVELOPE))
        return bytes(out)
    if not frame.frames:
        raise ValueError("downlink: expected at least one frame")
    put_head(4, 3, out)
    put_head(0, VERSION, out)
    put_head(0, T_DOWNLINK, out)
    put_head(4, len(frame.frames), out)
    for fb in frame.frames:
        _put_bytes(out, "frame", fb, 1, MAX_FRAME)
    if len(out) > MAX_ENVELOPE:
        raise ValueError("downlink: %d bytes, at most %d" % (len(out), MAX_ENVELOPE))
    return bytes(out)


def _decode_envelope(d):
    env = Envelope(_uint(d, "gateway", U32), _uint(d, "eseq", U32))
    count = _arr(d, "envelope.items", 0, MAX_ITEMS)
    for _ in range(count):
        _arr(d, "envelope.item", 3, 3)
        env.items.append((_uint(d, "rx_ms", U64), _num(d, "rssi", -128, 0), _bstr(d, "frame", 1, MAX_FRAME)))
    d.done()
    return env


def _decode_downlink(d):
    count = _arr(d, "downlink.frames", 1, MAX_ITEMS)
    dl = Downlink([_bstr(d, "frame", 1, MAX_FRAME) for _ in range(count)])
    d.done()
    return dl


# ---- the MQTT topics (the one place they are spelled; gateway and host) -----------------------
#   redmesh/<net>/up/<gw>     uplink: an Envelope of air frames the gateway received
#   redmesh/<net>/state/<gw>  "online" / "offline" (retained; the gateway's last will)
#   redmesh/<net>/down/<gw>   downlink to one gateway: a Downlink of air frames
#   redmesh/<net>/down/all    downlink to every gateway
#   redmesh/<net>/ota         OTA seeding: one manifest unit or page per message
TOPIC_ROOT = "redmesh"
MAX_GATEWAY = U32


def uplink_topic(net_id, gateway="+"):
    """redmesh/<net>/up/<gateway> ('+' = every gateway, for subscribing)."""
    return "%s/%d/up/%s" % (TOPIC_ROOT, net_id, gateway)


def state_topic(net_id, gateway="+"):
    """redmesh/<net>/state/<gateway> ('+' = every gateway)."""
    return "%s/%d/state/%s" % (TOPIC_ROOT, net_id, gateway)


def downlink_topic(net_id, gateway=None):
    """redmesh/<net>/down/<gateway>, or redmesh/<net>/down/all when gateway is None."""
    return "%s/%d/down/%s" % (TOPIC_ROOT, net_id, "all" if gateway is None else gateway)


def ota_topic(net_id):
    """redmesh/<net>/ota."""
    return "%s/%d/ota" % (TOPIC_ROOT, net_id)


def parse_topic(topic, net_id):
    """(kind, gateway) for redmesh/<net_id>/up|state/<gateway>, else None (any other text)."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != TOPIC_ROOT or parts[1] != str(net_id):
        return None
    kind, gw = parts[2], parts[3]
    if kind not in ("up", "state") or not gw.isdigit() or len(gw) > 10:
        return None
    gw = int(gw)
    return (kind, gw) if gw <= MAX_GATEWAY else None


frames._MQTT_CODECS[T_ENVELOPE] = (_encode, _decode_envelope)
frames._MQTT_CODECS[T_DOWNLINK] = (_encode, _decode_downlink)
protocol.Envelope = Envelope
protocol.Downlink = Downlink
