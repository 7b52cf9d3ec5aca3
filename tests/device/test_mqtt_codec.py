# MQTT 3.1.1 codec: exact bytes per packet type (OASIS MQTT 3.1.1), round trips, the incremental
# parser on split input, strict validation and the packet size limit.
# Runs under CPython (pytest) and MicroPython (tests/mp_run.py).
from firmware import mqtt_codec as m


def _hex(b):
    return " ".join("%02x" % x for x in b)


def _expect_protocol_error(data, words, max_packet_bytes=m.DEFAULT_MAX_PACKET_BYTES):
    p = m.Parser(max_packet_bytes)
    p.feed(data)
    try:
        p.next_packet()
    except m.MQTTProtocolError as e:
        msg = str(e)
        assert words in msg, "message %r lacks %r" % (msg, words)
        return p
    raise AssertionError("no MQTTProtocolError for " + _hex(data))


def _expect_usage_error(fn, *args):
    try:
        fn(*args)
    except m.MQTTUsageError:
        return
    raise AssertionError("no MQTTUsageError from %r%r" % (fn, args))


def test_varint_matches_spec_table_2_4():
    table = [(0, "00"), (127, "7f"), (128, "80 01"), (16383, "ff 7f"), (16384, "80 80 01"),
             (2097151, "ff ff 7f"), (2097152, "80 80 80 01"), (268435455, "ff ff ff 7f")]
    for n, want in table:
        assert _hex(m.encode_varint(n)) == want, (n, _hex(m.encode_varint(n)))
    _expect_usage_error(m.encode_varint, 268435456)


def test_connect_bytes_minimal():
    got = m.encode_connect("abc", keepalive_s=60, clean_session=True)
    assert _hex(got) == "10 0f 00 04 4d 51 54 54 04 02 00 3c 00 03 61 62 63"


def test_connect_bytes_with_will_retained_qos1_and_persistent_session():
    got = m.encode_connect("gw1", 30, False, "s", b"off", 1, True)
    # flags: will retain 0x20 | will QoS 1 0x08 | will 0x04 ; clean session off
    assert _hex(got) == ("10 17 00 04 4d 51 54 54 04 2c 00 1e 00 03 67 77 31"
                         " 00 01 73 00 03 6f 66 66")


def test_connect_bytes_with_user_and_password():
    got = m.encode_connect("c", 10, True, username="u", password=b"p")
    assert _hex(got) == "10 13 00 04 4d 51 54 54 04 c2 00 0a 00 01 63 00 01 75 00 01 70"


def test_connect_round_trip():
    pkt = m.decode(m.encode_connect("gw1", 30, False, "rm/gw/1/state", b"offline", 1, True, "u", b"pw"))
    assert pkt.type == m.CONNECT
    assert (pkt.client_id, pkt.keepalive_s, pkt.clean_session) == ("gw1", 30, False)
    assert (pkt.will_topic, pkt.will_payload, pkt.will_qos, pkt.will_retain) == (
        "rm/gw/1/state", b"offline", 1, True)
    assert (pkt.username, pkt.password) == ("u", b"pw")
    plain = m.decode(m.encode_connect("x"))
    assert plain.will_topic is None and plain.username is None and plain.clean_session


def test_connack_bytes_and_decode():
    assert _hex(m.encode_connack(False, 0)) == "20 02 00 00"
    assert _hex(m.encode_connack(True, 0)) == "20 02 01 00"
    pkt = m.decode(b"\x20\x02\x01\x00")
    assert pkt.type == m.CONNACK and pkt.session_present and pkt.return_code == 0
    pkt = m.decode(b"\x20\x02\x00\x05")
    assert pkt.return_code == 5 and m.CONNACK_CODES[5] == "not authorized"


def test_publish_bytes_qos0():
    assert _hex(m.encode_publish("a/b", b"hi")) == "30 07 00 03 61 2f 62 68 69"


def test_publish_bytes_qos1_dup_retain():
    got = m.encode_publish("a/b", b"hi", qos=1, retain=True, dup=True, packet_id=10)
    assert _hex(got) == "3b 09 00 03 61 2f 62 00 0a 68 69"
    pkt = m.decode(got)
    assert pkt.type == m.PUBLISH
    assert (pkt.topic, pkt.payload, pkt.qos, pkt.retain, pkt.dup, pkt.packet_id) == (
        "a/b", b"hi", 1, True, True, 10)


def test_publish_header_plus_payload_equals_publish():
    payload = b"z" * 200  # 2-byte remaining length
    hdr = m.publish_header("t", len(payload), 1, False, False, 7)
    assert hdr + payload == m.encode_publish("t", payload, 1, False, False, 7)
    assert _hex(hdr[:3]) == "32 cd 01"  # remaining 2 + 1 + 2 + 200 = 205 -> varint cd 01


def test_publish_empty_payload_and_utf8_topic():
    pkt = m.decode(m.encode_publish("capteurs/é", b""))
    assert pkt.topic == "capteurs/é" and pkt.payload == b""


def test_puback_bytes():
    assert _hex(m.encode_puback(10)) == "40 02 00 0a"
    assert m.decode(b"\x40\x02\x12\x34").packet_id == 0x1234


def test_subscribe_bytes():
    got = m.encode_subscribe(1, [("a/#", 1)])
    assert _hex(got) == "82 08 00 01 00 03 61 2f 23 01"
    two = m.encode_subscribe(2, [("a", 0), ("b/+", 1)])
    assert _hex(two) == "82 0c 00 02 00 01 61 00 00 03 62 2f 2b 01"
    pkt = m.decode(two)
    assert pkt.type == m.SUBSCRIBE and pkt.packet_id == 2 and pkt.topics == [("a", 0), ("b/+", 1)]


def test_suback_bytes():
    assert _hex(m.encode_suback(1, [1])) == "90 03 00 01 01"
    pkt = m.decode(m.encode_suback(9, [0, 1, 0x80]))
    assert pkt.type == m.SUBACK and pkt.packet_id == 9 and pkt.return_codes == [0, 1, 0x80]


def test_ping_and_disconnect_bytes():
    assert m.encode_pingreq() == b"\xc0\x00"
    assert m.encode_pingresp() == b"\xd0\x00"
    assert m.encode_disconnect() == b"\xe0\x00"
    assert m.decode(b"\xc0\x00").type == m.PINGREQ
    assert m.decode(b"\xd0\x00").type == m.PINGRESP
    assert m.decode(b"\xe0\x00").type == m.DISCONNECT


def test_parser_one_byte_at_a_time():
    stream = (m.encode_connack(False, 0) + m.encode_suback(1, [1])
              + m.encode_publish("t/1", b"x" * 300, 1, False, False, 5) + m.encode_pingresp()
              + m.encode_puback(5))
    p = m.Parser()
    got = []
    for i in range(len(stream)):
        p.feed(stream[i:i + 1])
        while True:
            pkt = p.next_packet()
            if pkt is None:
                break
            got.append(pkt)
    assert [x.type for x in got] == [m.CONNACK, m.SUBACK, m.PUBLISH, m.PINGRESP, m.PUBACK]
    assert got[2].payload == b"x" * 300 and got[2].packet_id == 5
    assert p.buffered() == 0


def test_parser_many_packets_in_one_feed_and_partial_tail():
    one = m.encode_publish("t", b"abc", 1, False, False, 1)
    p = m.Parser()
    p.feed(one * 3 + one[:4])
    n = 0
    while p.next_packet() is not None:
        n += 1
    assert n == 3
    assert p.next_packet() is None  # need more bytes is a value, not an exception
    p.feed(one[4:])
    assert p.next_packet().payload == b"abc"


def test_oversize_refused_from_the_header_alone():
    # PUBLISH announcing 20000 bytes; only the 4-byte header has arrived.
    hdr = b"\x30" + m.encode_varint(20000) + b"\x00"
    p = _expect_protocol_error(hdr, "20000", max_packet_bytes=16384)
    assert p.buffered() < 10  # nothing of the announced size was allocated
    try:
        p.feed(b"more")
    except m.MQTTProtocolError:
        pass  # poisoned: the stream has lost its framing
    else:
        raise AssertionError("parser accepted bytes after a protocol error")


def test_packet_at_the_limit_accepted():
    pkt = m.encode_publish("t", b"y" * 995)  # remaining length 2 + 1 + 995 = 998
    p = m.Parser(998)
    p.feed(pkt)
    assert len(p.next_packet().payload) == 995
    _expect_protocol_error(m.encode_publish("t", b"y" * 996), "limit is 998", 998)


def test_malformed_remaining_length():
    _expect_protocol_error(b"\x30\xff\xff\xff\xff\x01", "more than 4 bytes")
    _expect_protocol_error(b"\xd0\x80\x00", "not minimal")


def test_fixed_header_flags_checked():
    _expect_protocol_error(b"\x41\x02\x00\x01", "flags")  # PUBACK with flags 1
    _expect_protocol_error(b"\x80\x06\x00\x01\x00\x01\x61\x01", "flags")  # SUBSCRIBE without 0b0010
    _expect_protocol_error(b"\xd1\x00", "flags")


def test_publish_validation():
    _expect_protocol_error(b"\x36\x05\x00\x01\x74\x00\x01", "QoS 3")
    _expect_protocol_error(b"\x38\x03\x00\x01\x74", "DUP")
    _expect_protocol_error(b"\x32\x05\x00\x01\x74\x00\x00", "packet id 0")
    _expect_protocol_error(b"\x30\x03\x00\x01\x23", "wildcard")
    _expect_protocol_error(b"\x30\x02\x00\x00", "empty topic")
    _expect_protocol_error(b"\x30\x04\x00\x02\xc3\x28", "UTF-8")
    _expect_protocol_error(b"\x30\x04\x00\x02\x61\x00", "U+0000")
    _expect_protocol_error(b"\x32\x04\x00\x01\x74\x00", "packet id")  # cut inside the id
    _expect_protocol_error(b"\x30\x03\x00\x05\x74", "topic name")  # string runs past the end


def test_other_packets_validated():
    _expect_protocol_error(b"\x20\x03\x00\x00\x00", "remaining length 2")
    _expect_protocol_error(b"\x20\x02\x02\x00", "reserved")
    _expect_protocol_error(b"\x20\x02\x00\x06", "0..5")
    _expect_protocol_error(b"\x20\x02\x01\x04", "session present")
    _expect_protocol_error(b"\x90\x03\x00\x01\x03", "0x03")
    _expect_protocol_error(b"\x90\x02\x00\x01", "no return code")
    _expect_protocol_error(b"\xd0\x01\x00", "remaining length 0")
    _expect_protocol_error(b"\x40\x02\x00\x00", "packet id 0")
    _expect_protocol_error(b"\x50\x02\x00\x01", "unsupported")  # PUBREC: QoS 2 is not supported
    _expect_protocol_error(b"\x00\x00", "reserved")
    _expect_protocol_error(b"\x82\x02\x00\x01", "no topic filter")
    _expect_protocol_error(b"\x82\x07\x00\x01\x00\x01\x61\x03\x00", "QoS byte")


def test_connect_validation():
    good = m.encode_connect("c", 10)
    bad_name = good[:4] + b"MQTX" + good[8:]
    _expect_protocol_error(bad_name, "protocol name")
    bad_level = good[:8] + b"\x03" + good[9:]
    _expect_protocol_error(bad_level, "level 4")
    reserved = good[:9] + b"\x03" + good[10:]
    _expect_protocol_error(reserved, "reserved flag")
    pw_no_user = good[:9] + b"\x42" + good[10:] + b"\x00\x01p"
    pw_no_user = pw_no_user[:1] + bytes((len(pw_no_user) - 2,)) + pw_no_user[2:]
    _expect_protocol_error(pw_no_user, "password")
    trailing = good[:1] + bytes((good[1] + 1,)) + good[2:] + b"\x00"
    _expect_protocol_error(trailing, "unexpected bytes")


def test_encoder_rejects_bad_arguments():
    _expect_usage_error(m.encode_publish, "a/+", b"")
    _expect_usage_error(m.encode_publish, "", b"")
    _expect_usage_error(m.encode_publish, "t", b"", 3)
    _expect_usage_error(m.encode_publish, "t", b"", 1, False, False, 0)
    _expect_usage_error(m.encode_publish, "t", b"", 0, False, True)
    _expect_usage_error(m.encode_puback, 0)
    _expect_usage_error(m.encode_subscribe, 1, [])
    _expect_usage_error(m.encode_connect, "", 10, False)
    _expect_usage_error(m.encode_connect, "c", 70000)
    _expect_usage_error(m.encode_connack, True, 2)
