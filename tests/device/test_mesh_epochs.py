# Key epochs in the mesh core, under MicroPython and CPython: a line of three moves from epoch 0
# to epoch 1 (grace: both keys held), then drops the old key; a rogue holding the old epoch's
# key (a stolen pole's) then fails every hop tag: its cost-0 beacons attract no one.
from test_mesh_core import TinyRadio, mac

from firmware.mesh import BROADCAST, Router
from firmware.rekey import set_keys
from protocol import Beacon, Command, Reading, Status, StatusBody, Telemetry, decode, encode
from protocol.auth import Hmac

K0 = Hmac(b"0" * 32)  # epoch 0 mesh key (even phase)
K1 = Hmac(b"1" * 32)  # epoch 1 (odd phase)
K2 = Hmac(b"2" * 32)  # epoch 2 (even phase, as epoch 0)
NODE3 = Hmac(b"n" * 32)


def _send(radio, seq):
    f = Telemetry(origin=3, seq=seq, time_s=1700000000, readings=[Reading(0, 10, 125, 200, 50, 215, 60, 0)])
    radio.r[2].originate(encode(f, K0, NODE3, at_origin=True), radio.now, seq)
    radio.pump(2)
    radio.run(radio.now + 2000)
    ups = [e for e in radio.events[0] if e[0] == "uplink"]
    return decode(ups[-1][1], (K0, K1), NODE3) if ups else None


def test_rotation_grace_then_old_key_refused():
    radio = TinyRadio([Router(i, mac(i), i == 1, K0) for i in (1, 2, 3)])
    radio.run(20000)
    assert radio.r[2].parent == 2
    assert _send(radio, 1).phase == 0
    # far activates epoch 1 first, the others still send in epoch 0 but hold the next key
    set_keys(radio.r[2], K1, 1, K0)
    for r in radio.r[:2]:
        set_keys(r, K0, 0, K1)
    got = _send(radio, 2)
    assert got.seq == 2 and got.phase == 0  # re-tagged by mid in its epoch; e2e tag intact
    for r in radio.r:
        set_keys(r, K1, 1, K0)  # activated, grace window
    assert _send(radio, 3).phase == 1
    for r in radio.r:
        set_keys(r, K1, 1)  # grace over: the old key is gone
    assert _send(radio, 4).seq == 4
    far = radio.r[2]
    bad0 = far.stats["bad_frames"] + far.stats["alien_rx"]
    # the rogue: old epoch key, cost 0 (claims to be a gateway), heard by far only
    for i in range(5):
        far.on_recv(mac(99), encode(Beacon(99, i, 0, 0, 1700000000, 1), K0, None, 0), -30, radio.now + i)
        f = Telemetry(origin=99, seq=i, time_s=1700000000, readings=[Reading(0, 1, 2, 3, 4, 5, 6, 0)])
        far.on_recv(mac(99), encode(f, (K0, K1), NODE3, 0), -30, radio.now + i)
    assert far.stats["bad_frames"] + far.stats["alien_rx"] - bad0 == 10
    assert far.parent == 2
    # the same rogue with the current epoch's key would have won: the check above can fail
    far.on_recv(mac(99), encode(Beacon(99, 9, 0, 0, 1700000000, 1), K1, None, 1), -30, radio.now + 9)
    assert far.stats["bad_frames"] + far.stats["alien_rx"] - bad0 == 10


def _status(epoch, seq):
    f = Status(origin=3, seq=seq, time_s=1700000000, body=StatusBody(fw_version="1.2", epoch=epoch), hops=1,
               cost=0xFFFF)
    return encode(f, K0, NODE3, 0)  # the air frame, hop-tagged in epoch 0: what the far node holds


def test_a_node_that_missed_the_rotation_asks_and_is_answered():
    """gw and mid are on a later epoch alone; far missed the rotation (epoch 0 only). It hears
    only beacons it cannot check (counted alien_rx, no parent). Its status (the key request)
    passes mid once per 10 s, re-tagged in mid's epoch with its e2e tag intact; anything else of
    epoch 0 is dropped. The fleet's answer, a command to far in the new epoch, is taken by far
    alone: a command that fails the hop tag, to any other node, is dropped. Run for the next
    epoch (1: a key phase far holds no key for) and for the one after it (2: the same key phase
    as far's, another key)."""
    for key, phase in ((K1, 1), (K2, 0)):
        _missed(key, phase)


def _missed(key, phase):
    radio = TinyRadio([Router(i, mac(i), i == 1, key) for i in (1, 2)] + [Router(3, mac(3), False, K0)])
    for r in radio.r[:2]:
        set_keys(r, key, phase)
    radio.run(30000)
    gw, mid, far = radio.r
    assert mid.parent == 1 and far.parent == 0
    assert far.stats["alien_rx"] >= 3 and far.stats["beacons_rx"] == 0
    far._out((far._token(), BROADCAST, _status(0, 1)))
    radio.pump(2)
    radio.run(radio.now + 2000)
    ups = [e for e in radio.events[0] if e[0] == "uplink"]
    assert len(ups) == 1 and mid.stats["alien_fwd"] == 1
    pair = (key, None) if phase == 0 else (None, key)
    got = decode(ups[0][1], pair, NODE3)
    assert got.origin == 3 and got.body.epoch == 0 and got.phase == phase
    # a second one within 10 s is dropped; after it, passed on again
    bad = mid.stats["bad_frames"]
    far._out((far._token(), BROADCAST, _status(0, 2)))
    radio.pump(2)
    radio.run(radio.now + 2000)
    assert mid.stats["bad_frames"] == bad + 1 and mid.stats["alien_fwd"] == 1
    radio.run(radio.now + 10000)
    far._out((far._token(), BROADCAST, _status(0, 3)))
    radio.pump(2)
    radio.run(radio.now + 2000)
    assert mid.stats["alien_fwd"] == 2
    # other frames of epoch 0 are not passed on
    f = Telemetry(origin=3, seq=9, time_s=1700000000, readings=[Reading(0, 1, 2, 3, 4, 5, 6, 0)], hops=1, cost=0)
    n = len([e for e in radio.events[0] if e[0] == "uplink"])
    radio.run(radio.now + 11000)
    far._out((far._token(), BROADCAST, encode(f, K0, NODE3, 0)))
    radio.pump(2)
    radio.run(radio.now + 2000)
    assert len([e for e in radio.events[0] if e[0] == "uplink"]) == n
    # the answer: flooded from the gateway in the new epoch; far takes it (its copies from the
    # flood are not remembered as seen: the node's replay window drops the repeats)
    cmd = Command(target=3, cseq=5, op=6, args=[1, "a", "b", 1], hops=0, auth=b"t" * 8)
    assert gw.inject_downlink(encode(cmd, key, None, phase), radio.now)
    radio.pump(0)
    radio.run(radio.now + 3000)
    got = set(e[1].cseq for e in radio.events[2] if e[0] == "command")
    assert got == {5}
    # a command for another node that fails the hop tag is dropped, not passed on
    other = Command(target=2, cseq=6, op=5, args=[], hops=0, auth=b"t" * 8)
    bad = far.stats["bad_frames"]
    far.on_recv(mac(2), encode(other, key, None, phase), -50, radio.now + 1)
    assert far.stats["bad_frames"] == bad + 1 and far.poll_tx() is None
