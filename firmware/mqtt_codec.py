"""MQTT 3.1.1 packets, sans-IO: encoders, decoders and an incremental parser.

Theory of operation
-------------------
* Encoders (`encode_*`) take plain values and return the packet's bytes. Bad arguments are a
  caller bug: `MQTTUsageError`.
* `Parser` takes bytes as they arrive (`feed`) and hands back complete packets
  (`next_packet`); `None` means "need more bytes". Bad bytes from the peer are
  `MQTTProtocolError`, with what was expected and what arrived; after one, the parser is
  poisoned (the stream has lost framing) and the connection must be dropped.
* The remaining length is checked against `max_packet_bytes` as soon as its varint is complete,
  so an oversize packet is refused before its body arrives and nothing of that size is ever
  allocated. The parser's buffer holds at most one packet plus one `feed`.

Rules checked on decode (MQTT 3.1.1, OASIS 2014; section numbers in the messages):
* fixed-header flags: 0b0010 for SUBSCRIBE, 0 for every other non-PUBLISH type (2.2.2);
* remaining length: at most 4 bytes, minimal encoding, within the packet size limit (2.2.3);
* PUBLISH: QoS 0..2, no DUP at QoS 0, packet id != 0 when QoS > 0, topic 1..65535 bytes of
  UTF-8 with no U+0000 and no wildcards (3.3.1, 3.3.2, 1.5.3, 4.7);
* CONNECT: protocol "MQTT" level 4, reserved flag 0, will QoS/retain only with a will,
  password only with a user name (3.1.2);
* CONNACK: length 2, only bit 0 of the flags, return code 0..5, no session-present with a
  refusal (3.2.2); SUBACK codes 0, 1, 2 or 0x80 (3.9.3); fixed lengths for the rest;
* no trailing bytes after the last field of any packet.

QoS 2 flows (PUBREC/PUBREL/PUBCOMP) and UNSUBSCRIBE/UNSUBACK are not supported: our client never
asks for them, so receiving one is reported as a protocol error.

Runs unchanged on MicroPython and CPython.
"""
from firmware.compat import const

CONNECT = const(1)
CONNACK = const(2)
PUBLISH = const(3)
PUBACK = const(4)
SUBSCRIBE = const(8)
SUBACK = const(9)
PINGREQ = const(12)
PINGRESP = const(13)
DISCONNECT = const(14)

DEFAULT_MAX_PACKET_BYTES = const(16384)
_MAX_VARINT = const(268435455)  # 4 bytes of 7 bits: the largest remaining length MQTT allows

CONNACK_CODES = (
    "accepted",
    "unacceptable protocol version",
    "identifier rejected",
    "server unavailable",
    "bad user name or password",
    "not authorized",
)
SUBACK_FAILURE = const(0x80)

TYPE_NAMES = {
    CONNECT: "CONNECT", CONNACK: "CONNACK", PUBLISH: "PUBLISH", PUBACK: "PUBACK",
    SUBSCRIBE: "SUBSCRIBE", SUBACK: "SUBACK", PINGREQ: "PINGREQ", PINGRESP: "PINGRESP",
    DISCONNECT: "DISCONNECT",
}


class MQTTError(Exception):
    """Base of every MQTT error in firmware/ (codec and client)."""

    def __init__(self, msg):
        super().__init__(msg)


class MQTTProtocolError(MQTTError):
    """The peer sent bytes that are not a valid MQTT 3.1.1 packet: drop the connection."""

    def __init__(self, msg):
        super().__init__(msg)


class MQTTUsageError(MQTTError):
    """The caller asked for something MQTT cannot carry (bad QoS, topic, size...)."""

    def __init__(self, msg):
        super().__init__(msg)


# ---------------------------------------------------------------------------- packet objects
class Connect:
    type = CONNECT

    def __init__(self, client_id, keepalive_s, clean_session, will_topic=None, will_payload=None,
                 will_qos=0, will_retain=False, username=None, password=None):
        self.client_id = client_id
        self.keepalive_s = keepalive_s
        self.clean_session = clean_session
        self.will_topic = will_topic
        self.will_payload = will_payload
        self.will_qos = will_qos
        self.will_retain = will_retain
        self.username = username
        self.password = password


class Connack:
    type = CONNACK

    def __init__(self, session_present, return_code):
        self.session_present = session_present
        self.return_code = return_code


class Publish:
    type = PUBLISH

    def __init__(self, topic, payload, qos=0, retain=False, dup=False, packet_id=0):
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.packet_id = packet_id


class Puback:
    type = PUBACK

    def __init__(self, packet_id):
        self.packet_id = packet_id


class Subscribe:
    type = SUBSCRIBE

    def __init__(self, packet_id, topics):
        self.packet_id = packet_id
        self.topics = topics  # list of (topic_filter, qos)


class Suback:
    type = SUBACK

    def __init__(self, packet_id, return_codes):
        self.packet_id = packet_id
        self.return_codes = return_codes  # list of int: granted QoS or SUBACK_FAILURE


class Pingreq:
    type = PINGREQ


class Pingresp:
    type = PINGRESP


class Disconnect:
    type = DISCONNECT


# ---------------------------------------------------------------------------- encoding
def encode_varint(n):
    """Return the MQTT remaining-length encoding of `n` (1..4 bytes)."""
    if n < 0 or n > _MAX_VARINT:
        raise MQTTUsageError("remaining length must be 0..268435455, got %d" % n)
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _utf8(s, what):
    b = s.encode() if isinstance(s, str) else bytes(s)
    if len(b) > 65535:
        raise MQTTUsageError("%s is %d bytes; MQTT strings hold at most 65535" % (what, len(b)))
    if b"\x00" in b:
        raise MQTTUsageError("%s contains U+0000, which MQTT forbids" % what)
    return b


def _blob(b, what):
    b = b.encode() if isinstance(b, str) else bytes(b)
    if len(b) > 65535:
        raise MQTTUsageError("%s is %d bytes; at most 65535" % (what, len(b)))
    return b


def _u16(n):
    return bytes((n >> 8, n & 0xFF))


def _field(b):
    return _u16(len(b)) + b


def _packet(first, body):
    return bytes((first,)) + encode_varint(len(body)) + body


def _check_packet_id(packet_id):
    if not 0 < packet_id < 65536:
        raise MQTTUsageError("packet id must be 1..65535, got %r" % (packet_id,))


def _check_qos(qos, top):
    if qos not in (0, 1, 2) or qos > top:
        raise MQTTUsageError("QoS must be 0..%d, got %r" % (top, qos))


def _check_topic_name(topic_b):
    if not topic_b:
        raise MQTTUsageError("topic must not be empty")
    if b"+" in topic_b or b"#" in topic_b:
        raise MQTTUsageError("topic %r contains a wildcard; only subscriptions may" % (topic_b,))


def encode_connect(client_id, keepalive_s=60, clean_session=True, will_topic=None, will_payload=b"",
                   will_qos=0, will_retain=False, username=None, password=None):
    """Return a CONNECT packet (MQTT 3.1.1, protocol level 4).

    A will is included when `will_topic` is given. Raises MQTTUsageError on bad arguments."""
    if not 0 <= keepalive_s <= 65535:
        raise MQTTUsageError("keepalive_s must be 0..65535, got %r" % (keepalive_s,))
    flags = 0x02 if clean_session else 0
    cid = _utf8(client_id, "client id")
    if not cid and not clean_session:
        raise MQTTUsageError("an empty client id needs clean_session=True (MQTT 3.1.3-7)")
    payload = _field(cid)
    if will_topic is not None:
        _check_qos(will_qos, 2)
        wt = _utf8(will_topic, "will topic")
        _check_topic_name(wt)
        flags |= 0x04 | (will_qos << 3) | (0x20 if will_retain else 0)
        payload += _field(wt) + _field(_blob(will_payload, "will payload"))
    elif will_qos or will_retain:
        raise MQTTUsageError("will_qos/will_retain given without will_topic")
    if username is not None:
        flags |= 0x80
        payload += _field(_utf8(username, "user name"))
    if password is not None:
        if username is None:
            raise MQTTUsageError("MQTT 3.1.1 allows a password only with a user name")
        flags |= 0x40
        payload += _field(_blob(password, "password"))
    body = b"\x00\x04MQTT\x04" + bytes((flags,)) + _u16(keepalive_s) + payload
    return _packet(0x10, body)


def encode_connack(session_present, return_code):
    """Return a CONNACK packet (broker side; for tests and fakes)."""
    if not 0 <= return_code < len(CONNACK_CODES):
        raise MQTTUsageError("CONNACK return code must be 0..5, got %r" % (return_code,))
    if session_present and return_code:
        raise MQTTUsageError("session_present needs return code 0")
    return bytes((0x20, 2, 1 if session_present else 0, return_code))


def publish_header(topic, payload_len, qos=0, retain=False, dup=False, packet_id=0):
    """Return the PUBLISH bytes before the payload (fixed header, topic, packet id).

    Lets a sender write header and payload without concatenating them."""
    _check_qos(qos, 2)
    t = _utf8(topic, "topic")
    _check_topic_name(t)
    if qos:
        _check_packet_id(packet_id)
    elif dup:
        raise MQTTUsageError("DUP must be 0 for QoS 0 (MQTT 3.3.1-2)")
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    var = _field(t) + (_u16(packet_id) if qos else b"")
    return bytes((first,)) + encode_varint(len(var) + payload_len) + var


def encode_publish(topic, payload, qos=0, retain=False, dup=False, packet_id=0):
    """Return a PUBLISH packet. `payload` is bytes (str is UTF-8 encoded)."""
    if isinstance(payload, str):
        payload = payload.encode()
    return publish_header(topic, len(payload), qos, retain, dup, packet_id) + bytes(payload)


def encode_puback(packet_id):
    """Return a PUBACK packet."""
    _check_packet_id(packet_id)
    return bytes((0x40, 2, packet_id >> 8, packet_id & 0xFF))


def encode_subscribe(packet_id, topics):
    """Return a SUBSCRIBE packet for `topics`: a list of (topic_filter, qos)."""
    _check_packet_id(packet_id)
    if not topics:
        raise MQTTUsageError("SUBSCRIBE needs at least one topic filter")
    body = _u16(packet_id)
    for topic, qos in topics:
        _check_qos(qos, 2)
        t = _utf8(topic, "topic filter")
        if not t:
            raise MQTTUsageError("topic filter must not be empty")
        body += _field(t) + bytes((qos,))
    return _packet(0x82, body)


def encode_suback(packet_id, return_codes):
    """Return a SUBACK packet (broker side; for tests and fakes)."""
    _check_packet_id(packet_id)
    for c in return_codes:
        if c not in (0, 1, 2, SUBACK_FAILURE):
            raise MQTTUsageError("SUBACK code must be 0, 1, 2 or 0x80, got %r" % (c,))
    return _packet(0x90, _u16(packet_id) + bytes(return_codes))


def encode_pingreq():
    """Return a PINGREQ packet."""
    return b"\xc0\x00"


def encode_pingresp():
    """Return a PINGRESP packet."""
    return b"\xd0\x00"


def encode_disconnect():
    """Return a DISCONNECT packet."""
    return b"\xe0\x00"


# ---------------------------------------------------------------------------- decoding
class _Body:
    """Cursor over one packet body; every read is bounds-checked against the body's end."""

    def __init__(self, buf, start, end, name):
        self.buf = buf
        self.pos = start
        self.end = end
        self.name = name

    def left(self):
        return self.end - self.pos

    def need(self, n, what):
        if self.end - self.pos < n:
            raise MQTTProtocolError("%s: expected %d more bytes for %s, %d left in the packet"
                                    % (self.name, n, what, self.end - self.pos))

    def u8(self, what):
        self.need(1, what)
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def u16(self, what):
        self.need(2, what)
        p = self.pos
        self.pos = p + 2
        return (self.buf[p] << 8) | self.buf[p + 1]

    def raw(self, n, what):
        self.need(n, what)
        p = self.pos
        self.pos = p + n
        return bytes(memoryview(self.buf)[p:p + n])  # one copy, not two

    def blob(self, what):
        return self.raw(self.u16(what + " length"), what)

    def text(self, what):
        b = self.blob(what)
        if b"\x00" in b:
            raise MQTTProtocolError("%s: %s contains U+0000 (MQTT 1.5.3-2)" % (self.name, what))
        try:
            return b.decode()
        except UnicodeError:
            pass  # raised below: MicroPython has no `raise ... from`
        raise MQTTProtocolError("%s: %s is not valid UTF-8: %r" % (self.name, what, b[:40]))

    def done(self):
        if self.pos != self.end:
            raise MQTTProtocolError("%s: %d unexpected bytes after the last field"
                                    % (self.name, self.end - self.pos))


def _decode_connect(c):
    proto = c.blob("protocol name")
    if proto != b"MQTT":
        raise MQTTProtocolError("CONNECT: expected protocol name 'MQTT', got %r" % (proto,))
    level = c.u8("protocol level")
    if level != 4:
        raise MQTTProtocolError("CONNECT: expected protocol level 4 (3.1.1), got %d" % level)
    flags = c.u8("connect flags")
    if flags & 0x01:
        raise MQTTProtocolError("CONNECT: reserved flag bit 0 is set (MQTT 3.1.2-3)")
    keepalive_s = c.u16("keep alive")
    will = flags & 0x04
    will_qos = (flags >> 3) & 3
    will_retain = bool(flags & 0x20)
    if will and will_qos == 3:
        raise MQTTProtocolError("CONNECT: will QoS 3 is invalid (MQTT 3.1.2-14)")
    if not will and (will_qos or will_retain):
        raise MQTTProtocolError("CONNECT: will QoS/retain set without a will (MQTT 3.1.2-13/15)")
    if flags & 0x40 and not flags & 0x80:
        raise MQTTProtocolError("CONNECT: password flag without user name flag (MQTT 3.1.2-22)")
    client_id = c.text("client id")
    will_topic = will_payload = username = password = None
    if will:
        will_topic = c.text("will topic")
        will_payload = c.blob("will message")
    if flags & 0x80:
        username = c.text("user name")
    if flags & 0x40:
        password = c.blob("password")
    c.done()
    return Connect(client_id, keepalive_s, bool(flags & 0x02), will_topic, will_payload,
                   will_qos, will_retain, username, password)


def _decode_connack(c):
    if c.left() != 2:
        raise MQTTProtocolError("CONNACK: expected remaining length 2, got %d" % c.left())
    ack_flags = c.u8("acknowledge flags")
    rc = c.u8("return code")
    if ack_flags & 0xFE:
        raise MQTTProtocolError("CONNACK: reserved acknowledge flag bits set: 0x%02x" % ack_flags)
    if rc >= len(CONNACK_CODES):
        raise MQTTProtocolError("CONNACK: expected return code 0..5, got %d" % rc)
    if rc and ack_flags:
        raise MQTTProtocolError("CONNACK: session present with refusal code %d (MQTT 3.2.2-4)" % rc)
    return Connack(bool(ack_flags), rc)


def _decode_publish(c, flags):
    qos = (flags >> 1) & 3
    dup = bool(flags & 0x08)
    if qos == 3:
        raise MQTTProtocolError("PUBLISH: QoS 3 is invalid (MQTT 3.3.1-4)")
    if dup and not qos:
        raise MQTTProtocolError("PUBLISH: DUP set on a QoS 0 message (MQTT 3.3.1-2)")
    topic = c.text("topic name")
    if not topic:
        raise MQTTProtocolError("PUBLISH: empty topic name (MQTT 4.7.3-1)")
    if "+" in topic or "#" in topic:
        raise MQTTProtocolError("PUBLISH: wildcard in topic name %r (MQTT 3.3.2-2)" % topic)
    packet_id = 0
    if qos:
        packet_id = c.u16("packet id")
        if not packet_id:
            raise MQTTProtocolError("PUBLISH: packet id 0 with QoS %d (MQTT 2.3.1-1)" % qos)
    payload = c.raw(c.left(), "payload")
    return Publish(topic, payload, qos, bool(flags & 1), dup, packet_id)


def _decode_packet_id_only(c, cls):
    if c.left() != 2:
        raise MQTTProtocolError("%s: expected remaining length 2, got %d" % (c.name, c.left()))
    pid = c.u16("packet id")
    if not pid:
        raise MQTTProtocolError("%s: packet id 0 (MQTT 2.3.1-1)" % c.name)
    return cls(pid)


def _decode_subscribe(c):
    pid = c.u16("packet id")
    if not pid:
        raise MQTTProtocolError("SUBSCRIBE: packet id 0 (MQTT 2.3.1-1)")
    topics = []
    while c.left():
        t = c.text("topic filter")
        if not t:
            raise MQTTProtocolError("SUBSCRIBE: empty topic filter (MQTT 4.7.3-1)")
        q = c.u8("requested QoS")
        if q > 2:
            raise MQTTProtocolError("SUBSCRIBE: requested QoS byte 0x%02x (MQTT 3.8.3-4)" % q)
        topics.append((t, q))
    if not topics:
        raise MQTTProtocolError("SUBSCRIBE: no topic filter (MQTT 3.8.3-3)")
    return Subscribe(pid, topics)


def _decode_suback(c):
    pid = c.u16("packet id")
    codes = list(c.raw(c.left(), "return codes"))
    if not codes:
        raise MQTTProtocolError("SUBACK: no return code")
    for rc in codes:
        if rc not in (0, 1, 2, SUBACK_FAILURE):
            raise MQTTProtocolError("SUBACK: expected return code 0, 1, 2 or 0x80, got 0x%02x" % rc)
    return Suback(pid, codes)


def _decode_empty(c, cls):
    if c.left():
        raise MQTTProtocolError("%s: expected remaining length 0, got %d" % (c.name, c.left()))
    return cls()


def decode_packet(first, buf, start, end):
    """Decode one packet whose fixed-header first byte is `first` and whose body is buf[start:end].

    Returns a packet object; raises MQTTProtocolError on anything invalid."""
    ptype = first >> 4
    flags = first & 0x0F
    name = TYPE_NAMES.get(ptype)
    if name is None:
        raise MQTTProtocolError("unsupported or reserved packet type %d (first byte 0x%02x)"
                                % (ptype, first))
    if ptype != PUBLISH:
        want = 0x02 if ptype == SUBSCRIBE else 0
        if flags != want:
            raise MQTTProtocolError("%s: expected fixed-header flags 0x%x, got 0x%x (MQTT 2.2.2)"
                                    % (name, want, flags))
    c = _Body(buf, start, end, name)
    if ptype == PUBLISH:
        return _decode_publish(c, flags)
    if ptype == PUBACK:
        return _decode_packet_id_only(c, Puback)
    if ptype == CONNACK:
        return _decode_connack(c)
    if ptype == SUBACK:
        return _decode_suback(c)
    if ptype == PINGRESP:
        return _decode_empty(c, Pingresp)
    if ptype == PINGREQ:
        return _decode_empty(c, Pingreq)
    if ptype == DISCONNECT:
        return _decode_empty(c, Disconnect)
    if ptype == CONNECT:
        return _decode_connect(c)
    return _decode_subscribe(c)  # SUBSCRIBE: the only type left in TYPE_NAMES


def decode(data, max_packet_bytes=DEFAULT_MAX_PACKET_BYTES):
    """Decode exactly one whole packet from `data`; raises MQTTProtocolError if incomplete,
    oversize, invalid or followed by extra bytes."""
    p = Parser(max_packet_bytes)
    p.feed(data)
    pkt = p.next_packet()
    if pkt is None:
        raise MQTTProtocolError("incomplete packet: %d bytes" % len(data))
    if p.buffered():
        raise MQTTProtocolError("%d bytes after the packet" % p.buffered())
    return pkt


class Parser:
    """Incremental MQTT packet parser: `feed(bytes)`, then `next_packet()` until it returns None.

    `max_packet_bytes` bounds the remaining length of any packet (default 16 KB); a bigger one
    raises MQTTProtocolError before its body is read."""

    def __init__(self, max_packet_bytes=DEFAULT_MAX_PACKET_BYTES):
        self.max_packet_bytes = max_packet_bytes
        self._buf = bytearray()
        self._pos = 0
        self._error = None

    def buffered(self):
        """Number of bytes received but not yet returned as packets."""
        return len(self._buf) - self._pos

    def feed(self, data):
        """Append received bytes. Raises the earlier error if the parser is poisoned."""
        if self._error:
            raise MQTTProtocolError(self._error)
        if self._pos and self._pos == len(self._buf):
            self._buf = bytearray(data)  # common case: everything consumed, start afresh
            self._pos = 0
        else:
            if self._pos > 512:
                self._buf[0:self._pos] = b""  # compact now and then, not on every packet
                self._pos = 0
            self._buf += data

    def next_packet(self):
        """Return the next complete packet object, or None when more bytes are needed."""
        if self._error:
            raise MQTTProtocolError(self._error)
        try:
            return self._next()
        except MQTTProtocolError as e:
            self._error = e.args[0] if e.args else "protocol error"
            raise

    def _next(self):
        buf = self._buf
        avail = len(buf) - self._pos
        if avail < 2:
            return None
        p = self._pos + 1
        n = 0
        shift = 0
        i = 0
        while True:
            if i == 4:
                raise MQTTProtocolError("malformed remaining length: more than 4 bytes (MQTT 2.2.3)")
            if p >= len(buf):
                return None
            b = buf[p]
            p += 1
            n |= (b & 0x7F) << shift
            shift += 7
            i += 1
            if not b & 0x80:
                if b == 0 and i > 1:
                    raise MQTTProtocolError("malformed remaining length: %d bytes for %d "
                                            "(not minimal)" % (i, n))
                break
        if n > self.max_packet_bytes:
            raise MQTTProtocolError("packet of %d bytes refused: the limit is %d"
                                    % (n, self.max_packet_bytes))
        end = p + n
        if end > len(buf):
            return None
        first = buf[self._pos]
        pkt = decode_packet(first, buf, p, end)
        self._pos = end
        return pkt
