"""OTA seeding messages: how the fleet hands a bundle to the gateways over MQTT (MicroPython and
CPython; `fleet ota push` encodes, firmware/gateway.py decodes).

Topic redmesh/<net>/ota, QoS 1, one unit per message so an ESP32 gateway never holds more than
one page (a whole bundle does not fit its heap):
    b"RMS1" | kind u8 | bseq u32 | index u16 | count u16 | data
kind 0: the signed manifest (index 0, count 1: it is at most 8 KB, one message);
kind 1: image page `index` of `count` (0-based, in order). Integers big-endian.
The fleet publishes the manifest then the pages in order, and publishes the whole run again
every few seconds while a campaign runs, so a gateway that (re)connects late still gets it;
a gateway ignores what it already holds and any page out of order (it waits for the next run).
"""
MAGIC = b"RMS1"
KIND_MANIFEST = 0
KIND_PAGE = 1
HEAD_LEN = 13


def encode(kind, bseq, index, count, data):
    """Return the message bytes (see the module docstring)."""
    return (MAGIC + bytes([kind]) + bseq.to_bytes(4, "big") + index.to_bytes(2, "big")
            + count.to_bytes(2, "big") + bytes(data))


def decode(payload):
    """Return (kind, bseq, index, count, data) of a seeding message. Raises ValueError."""
    if len(payload) < HEAD_LEN or bytes(payload[:4]) != MAGIC:
        raise ValueError("not an OTA seeding message (%d bytes)" % len(payload))
    kind = payload[4]
    if kind not in (KIND_MANIFEST, KIND_PAGE):
        raise ValueError("unknown seeding kind %d" % kind)
    bseq = int.from_bytes(payload[5:9], "big")
    index = int.from_bytes(payload[9:11], "big")
    count = int.from_bytes(payload[11:13], "big")
    return kind, bseq, index, count, memoryview(payload)[HEAD_LEN:]
