"""Mesh key rotation on the real node shell (firmware/node.py + firmware/rekey.py) on a fake
HAL, on CPython: OP_REKEY (node-key auth) stores the next epoch's key, a signed OP_EPOCH
activates it network-wide and later ends the grace window; the router then tags in the new
epoch and refuses the old key. Replayed and forged rotation commands are refused; the state
survives a reboot. Device-level twins: tests/device/test_rekey.py, test_mesh_epochs.py."""
import asyncio
import hashlib

from node_harness import MESH_KEY, NODE_ID, NODE_KEY, boot_node, deliver

import protocol
from firmware import rekey
from firmware.fsutil import PosixFS
from fleet import signing
from protocol import keywrap
from protocol.keywrap import OP_EPOCH, OP_REKEY

SEED = hashlib.sha256(b"redmesh rekey test key").digest()
PUB = signing.public_key_of(SEED)
GW_MAC = b"\x02\x00\x00\x00\x00\x01"
K1 = hashlib.sha256(b"epoch 1 mesh key").digest()
NET = 1


class Fleet:
    def __init__(self):
        self.now = 0
        self.mesh = (MESH_KEY, None)  # the key(s) the fleet's frames are tagged with, by phase
        self.phase = 0

    def deliver(self, node, cmd, node_key=NODE_KEY):
        if cmd.target == 0:
            cmd.auth = signing.sign(SEED, protocol.signed_bytes(cmd))
            node_key = None
        frame = protocol.encode(cmd, self.mesh, node_key, self.phase)
        self.now += node.router.flood_memory_ms + 1000
        return deliver(node, frame, self.now, GW_MAC)

    def rekey(self, node, cseq, epoch, key=K1, node_id=NODE_ID, wrap_key=NODE_KEY):
        w = keywrap.wrap(wrap_key, NET, node_id, epoch, key)
        return self.deliver(node, protocol.Command(target=NODE_ID, cseq=cseq, op=OP_REKEY,
                                                   args=keywrap.to_args(epoch, w)))

    def epoch(self, node, cseq, epoch, stage):
        return self.deliver(node, protocol.Command(target=0, cseq=cseq, op=OP_EPOCH, args=[epoch, stage]))


def state(tmp_path):
    return rekey.load(PosixFS(str(tmp_path)), MESH_KEY)


def test_rotation_on_the_node(tmp_path):
    node = boot_node(str(tmp_path), PUB)
    f = Fleet()
    assert f.rekey(node, 1, 1)
    assert state(tmp_path) == (0, MESH_KEY, 1, K1)
    assert not f.rekey(node, 1, 1)  # replayed command counter
    assert f.rekey(node, 2, 1, key=bytes(32), wrap_key=bytes(range(32)))  # forged wrap: answered, refused
    assert state(tmp_path) == (0, MESH_KEY, 1, K1)
    # a forged activation (bad signature) changes nothing
    bad = protocol.Command(target=0, cseq=3, op=OP_EPOCH, args=[1, 0], auth=bytes(64))
    f.now += 10 ** 6
    node.router.on_recv(GW_MAC, protocol.encode(bad, MESH_KEY), -50, f.now)
    while (ev := node.router.poll_event()) is not None:
        asyncio.run(node._on_event(ev))
    assert state(tmp_path)[0] == 0 and node.epoch == 0
    assert f.epoch(node, 4, 1, 0)  # activate, signed
    assert state(tmp_path) == (1, K1, 0, MESH_KEY) and node.epoch == 1
    # grace: frames in both epochs pass the node's hop-tag check
    assert node.router._tag_ok(protocol.encode(protocol.Beacon(9, 1, 30, 1, 0, 0), MESH_KEY, None, 0))
    assert node.router._tag_ok(protocol.encode(protocol.Beacon(9, 1, 30, 1, 0, 0), K1, None, 1))
    f.mesh, f.phase = (MESH_KEY, K1), 1
    assert f.epoch(node, 5, 1, 1)  # end of grace
    assert state(tmp_path) == (1, K1, None, None)
    assert not node.router._tag_ok(protocol.encode(protocol.Beacon(9, 1, 30, 1, 0, 0), MESH_KEY, None, 0))
    assert not f.epoch(node, 5, 1, 1)  # replayed
    # a reboot keeps epoch 1
    node2 = boot_node(str(tmp_path), PUB)
    assert node2.epoch == 1 and node2.router._phase == 1
    assert not node2.router._tag_ok(protocol.encode(protocol.Beacon(9, 1, 30, 1, 0, 0), MESH_KEY, None, 0))
    assert node2.router._tag_ok(protocol.encode(protocol.Beacon(9, 1, 30, 1, 0, 0), K1, None, 1))


def test_a_node_provisioned_in_a_later_epoch_runs_on_it_and_drops_a_stale_state_file(tmp_path):
    """`fleet provision` after a rotation writes the mesh key of the epoch in force and its
    epoch (config mesh_epoch): the node tags and checks hop tags in that epoch from its first
    boot, without a state file; a state file of an older epoch left on a re-provisioned board
    does not override the config."""
    from node_harness import FakeHal, config

    from firmware.config import Config
    from firmware.node import Node

    K3 = hashlib.sha256(b"epoch 3 mesh key").digest()
    d = config(PUB).as_dict()
    d.update(mesh_key=K3, mesh_epoch=3)
    # a state file from epoch 1 (the board's life before it was re-provisioned)
    rekey.save(PosixFS(str(tmp_path)), (1, K1, None, None))
    node = Node(FakeHal(str(tmp_path)), Config(d))
    assert node.epoch == 3 and node.router._phase == 1
    assert node.router._tag_ok(protocol.encode(protocol.Beacon(9, 1, 30, 1, 0, 0), K3, None, 1))
    assert not node.router._tag_ok(protocol.encode(protocol.Beacon(9, 1, 30, 1, 0, 0), K1, None, 1))
    assert not node.router._tag_ok(protocol.encode(protocol.Beacon(9, 1, 30, 1, 0, 0), MESH_KEY, None, 0))
    # without a state file at all
    (tmp_path / rekey.STATE_FILE).unlink()
    node = Node(FakeHal(str(tmp_path)), Config(d))
    assert node.epoch == 3 and node.router._tag_ok(protocol.encode(protocol.Beacon(9, 1, 30, 1, 0, 0), K3, None, 1))


def test_the_answer_to_a_key_request_puts_the_key_in_force_at_once(tmp_path):
    """A node that missed a rotation reports its epoch in every status (the key request); the
    fleet answers OP_REKEY with a fourth argument, 1: the epoch is in force already, so the key
    becomes the node's only one in one flash write (no grace window), and its hop tags switch.
    A repeat is refused as stale; the answer, like any re-key, needs the node's own key."""
    node = boot_node(str(tmp_path), PUB)
    f = Fleet()
    w = keywrap.wrap(NODE_KEY, NET, NODE_ID, 1, K1)
    # the answer tagged in the epoch in force (1): this node holds no key for that phase, and
    # takes it all the same, as a command to itself (its end-to-end auth is what counts)
    f.mesh, f.phase = (None, K1), 1
    forged = protocol.Command(target=NODE_ID, cseq=1, op=OP_REKEY, args=keywrap.to_args(1, w, True))
    assert f.deliver(node, forged, node_key=bytes(range(32))) is False  # bad command tag: no reply
    assert state(tmp_path) == (0, MESH_KEY, None, None)
    cmd = protocol.Command(target=NODE_ID, cseq=2, op=OP_REKEY, args=keywrap.to_args(1, w, True))
    assert cmd.args[3] == 1
    assert f.deliver(node, cmd)
    assert state(tmp_path) == (1, K1, None, None) and node.epoch == 1 and node.router._phase == 1
    assert not node.router._tag_ok(protocol.encode(protocol.Beacon(9, 1, 30, 1, 0, 0), MESH_KEY, None, 0))
    assert node.router._tag_ok(protocol.encode(protocol.Beacon(9, 1, 30, 1, 0, 0), K1, None, 1))
    # node keys carry the epoch: the node now takes commands made with its epoch-1 key only
    nk1 = keywrap.epoch_node_key(NODE_KEY, 1, K1)
    assert nk1 != NODE_KEY
    cmd3 = protocol.Command(target=NODE_ID, cseq=3, op=OP_REKEY, args=keywrap.to_args(1, w, True))
    assert not f.deliver(node, cmd3)  # the provisioned key: refused, no reply
    cmd4 = protocol.Command(target=NODE_ID, cseq=4, op=OP_REKEY, args=keywrap.to_args(1, w, True))
    assert f.deliver(node, cmd4, node_key=nk1)  # answered (refused: epoch 1 is not after 1)
    assert state(tmp_path) == (1, K1, None, None)


def test_bad_rekey_arguments_are_refused():
    import pytest

    w = keywrap.wrap(NODE_KEY, NET, NODE_ID, 1, K1)
    a = keywrap.to_args(1, w)
    assert keywrap.from_args(a + [1])[0] == 1
    for bad in (a + [0], a + [2], a + [1, 1], a[:2], [1, 2, 3]):
        with pytest.raises(protocol.ProtocolError):
            keywrap.from_args(bad)


def test_a_node_ends_a_grace_window_the_fleet_did_not_end(tmp_path, monkeypatch):
    """Every copy of the fleet's end of grace may be lost; the old epoch's key is a stolen
    pole's. A node in a grace window ends it by itself GRACE_MAX_S after it began (after a boot
    in one: timed from the boot), in its health loop. `fleet keys rotate --grace` stays under it."""
    import pytest

    from fleet import key_rotation
    from fleet.errors import FleetError

    node = boot_node(str(tmp_path), PUB)
    f = Fleet()
    assert f.rekey(node, 1, 1) and node._grace is None  # holding the next key: no grace window
    assert f.epoch(node, 2, 1, 0)
    t0 = node.now_ms()
    assert state(tmp_path) == (1, K1, 0, MESH_KEY)
    assert t0 - 1000 <= node._grace - rekey.GRACE_MAX_S * 1000 <= t0
    node2 = boot_node(str(tmp_path), PUB)  # a reboot in the grace window: timed from the boot
    assert node2._grace == rekey.GRACE_MAX_S * 1000
    node._grace = node.now_ms()  # the hour is over

    # MicroPython's asyncio has sleep_ms; on CPython the health loop's 5 s pause is this
    monkeypatch.setattr(asyncio, "sleep_ms", lambda ms: asyncio.sleep(ms / 1000), raising=False)

    async def one_round():
        try:
            await asyncio.wait_for(node.health(), 0.5)
        except asyncio.TimeoutError:
            pass

    asyncio.run(one_round())
    assert state(tmp_path) == (1, K1, None, None) and node._grace is None
    assert not node.router._tag_ok(protocol.encode(protocol.Beacon(9, 1, 30, 1, 0, 0), MESH_KEY, None, 0))
    assert key_rotation.MAX_GRACE_S < rekey.GRACE_MAX_S
    with pytest.raises(FleetError, match="--grace must be"):
        key_rotation.start(None, grace_s=rekey.GRACE_MAX_S)
