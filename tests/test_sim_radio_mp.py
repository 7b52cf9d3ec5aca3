"""firmware/hal/sim_radio.py under the real MicroPython interpreter (and one CPython peer) through
a real Medium over loopback: broadcast and unicast, ACK outcomes, the ESP-NOW rules, faults and
the capture. Each node is tests/sim_radio_agent.py, driven by JSON lines on stdin/stdout."""
import asyncio
import binascii
import json
import os
import sys

import pytest
from mp_support import ROOT, micropython_bin

from fleet.sim import topology as topo_mod
from fleet.sim.medium import Medium

AGENT = os.path.join(ROOT, "tests", "sim_radio_agent.py")
BCAST = "ff" * 6
CMD_TIMEOUT_S = 10


class Agent:
    """One radio process; cmd() sends a request and returns its JSON reply (with a timeout)."""

    def __init__(self, proc, node):
        self.proc = proc
        self.node = node
        self.mac = node.mac.hex()

    @classmethod
    async def spawn(cls, interpreter, node, medium):
        argv = [interpreter] + (["-X", "heapsize=64k"] if interpreter.endswith("micropython") else [])
        proc = await asyncio.create_subprocess_exec(
            *argv, AGENT, node.mac.hex(), str(medium.port_for(node.id)), str(medium.port),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd=ROOT)
        agent = cls(proc, node)
        first = await agent._reply()
        assert first == {"ready": True}, first
        return agent

    async def _reply(self):
        line = await asyncio.wait_for(self.proc.stdout.readline(), CMD_TIMEOUT_S)
        if not line:
            err = await asyncio.wait_for(self.proc.stderr.read(), CMD_TIMEOUT_S)
            raise AssertionError("agent %d exited: %s" % (self.node.id, err.decode()[-2000:]))
        try:
            return json.loads(line)
        except ValueError:
            rest = await asyncio.wait_for(self.proc.stdout.read(2000), CMD_TIMEOUT_S)
            raise AssertionError("agent %d said: %r" % (self.node.id, line + rest)) from None

    async def cmd(self, **req):
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        await self.proc.stdin.drain()
        return await self._reply()

    async def send(self, dst, payload):
        return await self.cmd(op="send", mac=dst, hex=payload.hex())

    async def drain(self, quiet_ms=300):
        return [(m, binascii.unhexlify(h), rssi) for m, h, rssi in (await self.cmd(op="drain", quiet_ms=quiet_ms))["frames"]]

    def kill(self):
        if self.proc.returncode is None:
            self.proc.kill()


async def _rig(topo, interpreters, **medium_kw):
    medium = Medium(topo, seed=medium_kw.pop("seed", 3), **medium_kw)
    await medium.start("127.0.0.1", 0)
    agents = []
    try:
        for node, interp in zip(topo.nodes, interpreters, strict=True):
            agents.append(await Agent.spawn(interp, node, medium))
        await medium.wait_attached(timeout_s=CMD_TIMEOUT_S)
    except BaseException:
        await _teardown(medium, agents)
        raise
    return medium, agents


async def _teardown(medium, agents):
    for a in agents:
        a.kill()
    for a in agents:
        try:
            await asyncio.wait_for(a.proc.wait(), CMD_TIMEOUT_S)
        except asyncio.TimeoutError:
            pass
    await medium.stop()


def _three_close_nodes():
    # 20 m apart: every link is near-perfect (mean prr > 0.999 even 40 m away).
    return topo_mod.line(3, spacing_m=20, n_gateways=1, seed=1)


async def test_broadcast_unicast_and_acks_between_micropython_and_cpython(tmp_path):
    mp = micropython_bin()
    topo = _three_close_nodes()
    cap = tmp_path / "cap.jsonl"
    medium, (a, b, c) = await _rig(topo, [mp, mp, sys.executable], capture_path=str(cap))
    try:
        assert await a.send(BCAST, b"hello all") == {"sent": True}
        for peer in (b, c):
            got = await peer.drain()
            assert [(m, p) for m, p, _ in got] == [(a.mac, b"hello all")]
            assert -100 < got[0][2] < -30  # the RSSI the medium reported, in dBm
        assert await a.cmd(op="add_peer", mac=b.mac) == {"ok": True}
        # five full frames while b is not reading: b's ring must hold them (5 * 263 + 2 bytes)
        assert await b.cmd(op="config", rxbuf=5 * 263 + 2) == {"rxbuf": 5 * 263 + 2}
        assert await b.cmd(op="active", on=False) == {"active": False}
        assert await b.cmd(op="active", on=True) == {"active": True}
        for i in range(5):
            assert await a.send(b.mac, bytes([i]) * 250) == {"sent": True}
        got = await b.drain()
        assert [p for _, p, _ in got] == [bytes([i]) * 250 for i in range(5)]
        assert await c.drain(100) == []  # unicast to b: c does not see it
        # CPython node -> MicroPython node
        assert await c.cmd(op="add_peer", mac=a.mac) == {"ok": True}
        assert await c.send(a.mac, b"from cpython") == {"sent": True}
        assert [p for _, p, _ in await a.drain()] == [b"from cpython"]
    finally:
        await _teardown(medium, [a, b, c])
    recs = [json.loads(line) for line in cap.read_text().splitlines()]
    uni = [r for r in recs if r["src"] == a.node.id and r["dst"] == b.node.id and r["len"] == 250]
    assert len(uni) == 5 and all(r["delivered"] and r["rssi"] < 0 for r in uni)
    assert [bytes.fromhex(r["hex"]) for r in uni] == [bytes([i]) * 250 for i in range(5)]
    assert {r["dst"] for r in recs if r["hex"] == b"hello all".hex()} == {b.node.id, c.node.id}


async def test_a_frame_that_finds_no_heap_is_dropped_and_the_radio_keeps_hearing():
    """The board's ESP-NOW driver takes frames in outside the Python heap; the rig's stand-in
    allocates per datagram. When that allocation fails (a MemoryError, here made to happen for
    two datagrams), the frame is lost and the radio goes on: its receive loop used to die of it,
    and the node stayed deaf for good (a 25-node OTA campaign on a loaded machine)."""
    mp = micropython_bin()
    topo = _three_close_nodes()
    medium, (a, b, c) = await _rig(topo, [mp, mp, mp])
    try:
        assert await b.cmd(op="nomem", n=2) == {"ok": True}
        for i in range(2):
            assert await a.send(BCAST, bytes([i]) * 200) == {"sent": True}
        assert [p for _, p, _ in await c.drain()] == [bytes([i]) * 200 for i in range(2)]  # c heard them
        assert await b.drain(300) == []  # b had no heap for them
        assert await a.send(BCAST, b"after") == {"sent": True}
        assert [p for _, p, _ in await b.drain()] == [b"after"]  # and b still hears
        assert await b.cmd(op="nomem_seen") == {"nomem": 2}
    finally:
        await _teardown(medium, [a, b, c])


async def test_link_down_partition_and_extra_loss_change_delivery():
    mp = micropython_bin()
    topo = _three_close_nodes()
    medium, (a, b, c) = await _rig(topo, [mp, mp, mp])
    try:
        await a.cmd(op="add_peer", mac=b.mac)
        await a.cmd(op="add_peer", mac=c.mac)
        medium.link_down(a.node.id, b.node.id)
        assert await a.send(b.mac, b"x") == {"sent": False}       # no ACK on a dead link
        assert await a.send(BCAST, b"bc") == {"sent": True}       # broadcast: never an ACK
        assert await b.drain(150) == []
        assert [p for _, p, _ in await c.drain()] == [b"bc"]
        medium.link_up(a.node.id, b.node.id)
        assert await a.send(b.mac, b"back") == {"sent": True}
        assert [p for _, p, _ in await b.drain()] == [b"back"]

        medium.partition([a.node.id], [b.node.id, c.node.id])
        assert await a.send(c.mac, b"p") == {"sent": False}
        medium.heal()
        assert await a.send(c.mac, b"p") == {"sent": True}
        assert [p for _, p, _ in await c.drain()] == [b"p"]

        medium.set_loss(1.0, node_id=b.node.id)  # everything to or from b is lost
        assert await a.send(b.mac, b"l") == {"sent": False}
        assert await a.send(c.mac, b"l") == {"sent": True}
        medium.set_loss(0.0, node_id=b.node.id)
        assert await a.send(b.mac, b"ok") == {"sent": True}

        medium.link_down(b.node.id, a.node.id, both=False)  # ACKs b->a lost, data a->b fine
        assert await a.send(b.mac, b"one-way") == {"sent": False}
        got = [p for _, p, _ in await b.drain()]
        assert got[-1] == b"one-way" and b"l" not in got  # it arrived, but a never learnt it
        st = medium.stats()
        assert st["dropped"]["link_down"] >= 1 and st["dropped"]["partition"] >= 1
        assert st["dropped"]["extra_loss"] >= 1 and st["attached"] == 3
    finally:
        await _teardown(medium, [a, b, c])


async def test_espnow_rules_under_micropython():
    mp = micropython_bin()
    topo = topo_mod.line(2, spacing_m=20, seed=1)
    medium, (a, b) = await _rig(topo, [mp, mp])
    try:
        assert await a.send(BCAST, b"x" * 250) == {"sent": True}
        assert await a.send(BCAST, b"x" * 251) == {"exc": "ValueError"}
        assert await a.send(b.mac, b"not a peer") == {"err": [-0x3069, "ESP_ERR_ESPNOW_NOT_FOUND"]}
        assert await a.cmd(op="add_peer", mac=b.mac) == {"ok": True}
        assert await a.cmd(op="add_peer", mac=b.mac) == {"err": [-0x306B, "ESP_ERR_ESPNOW_EXIST"]}
        # the broadcast peer (registered at start) and b hold two of the 20 slots
        for i in range(18):
            assert await a.cmd(op="add_peer", mac="02524d0100%02x" % i) == {"ok": True}
        assert await a.cmd(op="add_peer", mac="02524d0200ff") == {"err": [-0x3068, "ESP_ERR_ESPNOW_FULL"]}
        assert len((await a.cmd(op="peers"))["peers"]) == 20
        assert await a.cmd(op="del_peer", mac="02524d0300ff") == {"err": [-0x3069, "ESP_ERR_ESPNOW_NOT_FOUND"]}
        assert await a.cmd(op="del_peer", mac="02524d010000") == {"ok": True}
        assert await a.cmd(op="add_peer", mac="02524d0200ff") == {"ok": True}
        # without its peer entry, broadcast fails like on the real driver
        assert await a.cmd(op="del_peer", mac=BCAST) == {"ok": True}
        assert await a.send(BCAST, b"x") == {"err": [-0x3069, "ESP_ERR_ESPNOW_NOT_FOUND"]}
        assert [len(p) for _, p, _ in await b.drain()] == [250]  # the 251-byte frame never left
    finally:
        await _teardown(medium, [a, b])


@pytest.mark.parametrize("dups", [False, True])
async def test_receiver_duplicates_when_acks_are_lost(dups):
    mp = micropython_bin()
    topo = topo_mod.line(2, spacing_m=20, seed=1)
    medium, (a, b) = await _rig(topo, [mp, mp], mac_duplicates=dups)
    try:
        await a.cmd(op="add_peer", mac=b.mac)
        medium.link_down(b.node.id, a.node.id, both=False)
        assert await a.send(b.mac, b"d") == {"sent": False}
        got = [p for _, p, _ in await b.drain()]
        # every MAC attempt got through; only the ACKs died
        assert got == ([b"d"] * 4 if dups else [b"d"])
    finally:
        await _teardown(medium, [a, b])


async def test_receive_buffer_keeps_what_fits_drops_the_rest_after_the_ack():
    """The driver's ring: 526 bytes by default, 13 bytes of header per frame, a frame kept only
    while 13 + len < free (free = size - 1 when empty): ONE full 250-byte frame fits the default.
    The sender got its ACK for every frame; the receiver counts the drops in stats()[4]."""
    mp = micropython_bin()
    topo = topo_mod.line(2, spacing_m=20, seed=1)
    medium, (a, b) = await _rig(topo, [mp, mp])
    try:
        await a.cmd(op="add_peer", mac=b.mac)
        for i in range(10):  # b's app is not reading: the frames pile up in its ring
            assert await a.send(b.mac, bytes([i]) * 250) == {"sent": True}  # each one ACKed
        assert [p for _, p, _ in await b.drain()] == [bytes([0]) * 250]
        assert (await b.cmd(op="stats"))["stats"][3:] == [1, 9]
        assert (await a.cmd(op="stats"))["stats"][:3] == [10, 10, 0]
        # small frames: 13 + 37 = 50 bytes each; 525 free bytes take 10 (500 < 525, the 11th
        # would need 50 < 25)
        for i in range(12):
            assert await a.send(b.mac, bytes([i]) * 37) == {"sent": True}
        assert [p for _, p, _ in await b.drain()] == [bytes([i]) * 37 for i in range(10)]
        assert (await b.cmd(op="stats"))["stats"][3:] == [11, 11]
        # exactly full is not kept: after a 250-byte frame 262 bytes are free, and a 249-byte
        # one needs 13 + 249 = 262 < 262
        assert await a.send(b.mac, b"x" * 250) == {"sent": True}
        assert await a.send(b.mac, b"y" * 249) == {"sent": True}
        assert [p for _, p, _ in await b.drain()] == [b"x" * 250]
        assert (await b.cmd(op="stats"))["stats"][3:] == [12, 12]
        # config(rxbuf=) applies at the next active(True), as on the board
        assert await b.cmd(op="config", rxbuf=4 * 263 + 2) == {"rxbuf": 4 * 263 + 2}
        for i in range(3):
            assert await a.send(b.mac, bytes([i]) * 250) == {"sent": True}
        assert len(await b.drain()) == 1  # still the 526-byte ring
        assert await b.cmd(op="active", on=False) == {"active": False}
        assert await b.cmd(op="active", on=True) == {"active": True}
        for i in range(6):
            assert await a.send(b.mac, bytes([i]) * 250) == {"sent": True}
        assert [p for _, p, _ in await b.drain()] == [bytes([i]) * 250 for i in range(4)]
        assert (await b.cmd(op="stats"))["stats"][3:] == [17, 16]
        assert await b.cmd(op="config", rxbuf=0) == {"exc": "ValueError"}
    finally:
        await _teardown(medium, [a, b])
