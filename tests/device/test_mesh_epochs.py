# Key epochs in the mesh core, under MicroPython and CPython: a line of three moves from epoch 0
# to epoch 1 (grace: both keys held), then drops the old key; a rogue holding the old epoch's
# key (a stolen pole's) then fails every hop tag: its cost-0 beacons attract no one.
from test_mesh_core import TinyRadio, mac

from firmware.mesh import Router
from firmware.rekey import set_keys
from protocol import Beacon, Reading, Telemetry, decode, encode
from protocol.auth import Hmac

K0 = Hmac(b"0" * 32)  # epoch 0 mesh key (even phase)
K1 = Hmac(b"1" * 32)  # epoch 1 (odd phase)
NODE3 = Hmac(b"n" * 32)


def _send(radio, seq):
    f = Telemetry(origin=3, seq=seq, time_s=1700000000, readings=[Reading(0, 10, 125, 200, 50, 215, 60, 0)])
    encode(f, K0, NODE3)
    radio.r[2].originate(f, radio.now, seq)
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
    bad0 = far.stats["bad_frames"]
    # the rogue: old epoch key, cost 0 (claims to be a gateway), heard by far only
    for i in range(5):
        far.on_recv(mac(99), encode(Beacon(99, i, 0, 0, 1700000000, 1), K0, None, 0), -30, radio.now + i)
        f = Telemetry(origin=99, seq=i, time_s=1700000000, readings=[Reading(0, 1, 2, 3, 4, 5, 6, 0)])
        far.on_recv(mac(99), encode(f, (K0, K1), NODE3, 0), -30, radio.now + i)
    assert far.stats["bad_frames"] - bad0 == 10
    assert far.parent == 2
    # the same rogue with the current epoch's key would have won: the check above can fail
    far.on_recv(mac(99), encode(Beacon(99, 9, 0, 0, 1700000000, 1), K1, None, 1), -30, radio.now + 9)
    assert far.stats["bad_frames"] - bad0 == 10
