"""The radio medium and the sim ESP-NOW HAL, on CPython over loopback (the same sim_radio code
runs in every MicroPython node of the virtual rig)."""
import asyncio
import json

import pytest

from firmware.hal.sim_radio import BROADCAST, SimRadio
from fleet.sim import topology as topo_mod
from fleet.sim.medium import Medium


async def _setup(topo, **kw):
    m = Medium(topo, seed=kw.pop("seed", 1), **kw)
    await m.start("127.0.0.1", 0)
    radios = {}
    for n in topo.nodes:
        r = SimRadio(n.mac, m.port_for(n.id), m.port)
        r.active(True)
        r.add_peer(BROADCAST)  # as the node shell does: the driver sends to registered peers only
        radios[n.id] = r
    await asyncio.sleep(0.05)
    return m, radios


async def _recv(r, timeout=1.0):
    return await asyncio.wait_for(r.arecv(), timeout)


async def test_broadcast_reaches_neighbours_and_unicast_is_acked():
    topo = topo_mod.line(3, spacing_m=60, n_gateways=1)
    m, radios = await _setup(topo)
    try:
        a, b, c = (topo.nodes[i] for i in range(3))
        assert await radios[a.id].asend(BROADCAST, b"hello") is True
        mac, msg = await _recv(radios[b.id])
        assert mac == a.mac and msg == b"hello"
        assert radios[b.id].peers_table[a.mac][0] < 0  # RSSI recorded
        radios[a.id].add_peer(b.mac)
        assert await radios[a.id].asend(b.mac, b"x" * 250) is True
        assert (await _recv(radios[b.id]))[1] == b"x" * 250
        # c is two poles (120 m) away: it does not hear a
        assert not radios[c.id].any()
    finally:
        await m.stop()


async def test_espnow_rules_payload_and_peer_table():
    topo = topo_mod.line(2, spacing_m=30, n_gateways=1)
    m, radios = await _setup(topo)
    try:
        r = radios[topo.nodes[0].id]
        with pytest.raises(ValueError):
            await r.asend(BROADCAST, b"x" * 251)
        with pytest.raises(OSError):
            await r.asend(topo.nodes[1].mac, b"not a peer yet")
        # broadcast is a peer like any other (ESP_ERR_ESPNOW_NOT_FOUND before add_peer) and
        # takes one of the 20 slots
        r.del_peer(BROADCAST)
        with pytest.raises(OSError, match="NOT_FOUND"):
            await r.asend(BROADCAST, b"unregistered broadcast")
        for i in range(20):
            r.add_peer(bytes([2, 0, 0, 0, 0, i]))
        with pytest.raises(OSError):
            r.add_peer(bytes([2, 0, 0, 0, 1, 0]))  # the 21st peer: ESP_ERR_ESPNOW_FULL
        with pytest.raises(OSError):
            r.add_peer(bytes([2, 0, 0, 0, 0, 3]))  # already a peer: ESP_ERR_ESPNOW_EXIST
    finally:
        await m.stop()


async def test_link_down_unicast_not_acked_and_partition(tmp_path):
    topo = topo_mod.line(2, spacing_m=30, n_gateways=1)
    cap = tmp_path / "cap.jsonl"
    m, radios = await _setup(topo, capture_path=str(cap))
    try:
        a, b = topo.nodes[0], topo.nodes[1]
        radios[a.id].add_peer(b.mac)
        m.link_down(a.id, b.id)
        assert await radios[a.id].asend(b.mac, b"lost") is False
        m.link_up(a.id, b.id)
        m.partition([a.id], [b.id])
        assert await radios[a.id].asend(b.mac, b"lost") is False
        m.heal()
        assert await radios[a.id].asend(b.mac, b"ok") is True
        assert (await _recv(radios[b.id]))[1] == b"ok"
        m.kill_node(b.id)
        assert await radios[a.id].asend(b.mac, b"dead") is False
        st = m.stats()
        assert st["unacked"] >= 3 and st["acked"] >= 1
    finally:
        await m.stop()
    recs = [json.loads(line) for line in cap.read_text().splitlines()]
    assert any(r["delivered"] and bytes.fromhex(r["hex"]) == b"ok" for r in recs)


async def test_loss_model_is_seeded():
    topo = topo_mod.line(2, spacing_m=95, n_gateways=1)  # a marginal link

    async def outcomes(seed):
        m, radios = await _setup(topo, seed=seed)
        try:
            a, b = topo.nodes[0], topo.nodes[1]
            radios[a.id].add_peer(b.mac)
            return [await radios[a.id].asend(b.mac, b"p") for _ in range(40)]
        finally:
            await m.stop()

    first = await outcomes(5)
    assert first == await outcomes(5)
    assert 0 < sum(first) < 40 or topo.prr(topo.nodes[0].id, topo.nodes[1].id) in (0.0, 1.0)


async def test_control_port_json_lines():
    topo = topo_mod.line(2, spacing_m=30, n_gateways=1)
    m, radios = await _setup(topo)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", m.control_port)
        for cmd in ({"op": "loss", "p": 1.0}, {"op": "stats"}, {"op": "nope"}):
            writer.write((json.dumps(cmd) + "\n").encode())
            await writer.drain()
        res = [json.loads(await reader.readline()) for _ in range(3)]
        assert res[0] == {"ok": True} and res[1]["ok"] and res[2]["ok"] is False
        a, b = topo.nodes[0], topo.nodes[1]
        radios[a.id].add_peer(b.mac)
        assert await radios[a.id].asend(b.mac, b"x") is False  # 100 % extra loss
        writer.close()
    finally:
        await m.stop()


async def test_medium_thread_control_client_hooks_and_causes():
    from fleet.sim.medium import MediumThread, send_control

    topo = topo_mod.line(3, spacing_m=20, n_gateways=1)
    a, b, c = topo.nodes
    events = []
    with MediumThread(topo, seed=2) as mt:
        mt.call(mt.medium.on_node_event, lambda ev, n: events.append((ev, n)))
        radios = {}
        for n in topo.nodes:
            radios[n.id] = SimRadio(n.mac, mt.call(mt.medium.port_for, n.id), mt.port)
            radios[n.id].active(True)
            radios[n.id].add_peer(BROADCAST)
        await asyncio.to_thread(mt.call, mt.medium.wait_attached)
        ra = radios[a.id]
        ra.add_peer(b.mac)
        ra.add_peer(c.mac)
        port = mt.medium.control_port
        ctl = lambda cmd: asyncio.to_thread(send_control, port, cmd)  # noqa: E731
        assert (await ctl({"op": "kill", "node": b.id})) == {"ok": True}
        assert events == [("kill", b.id)]
        assert (await ctl({"op": "faults"}))["faults"]["killed"] == [b.id]
        assert await ra.asend(b.mac, b"to the dead") is False
        assert (await ctl({"op": "revive", "node": b.id})) == {"ok": True}
        assert events[-1] == ("restart", b.id)
        assert (await ctl({"op": "link_down", "a": a.id, "b": c.id, "both": False})) == {"ok": True}
        assert await ra.asend(c.mac, b"one way") is False       # a->c is down
        assert await radios[c.id].asend(BROADCAST, b"c->a") is True
        assert (await _recv(ra))[1] == b"c->a"                  # c->a still works
        assert (await ctl({"op": "corrupt", "p": 1.0, "node": c.id})) == {"ok": True}
        assert await radios[b.id].asend(BROADCAST, b"abcdef") is True
        assert (await _recv(ra))[1] == b"abcdef"               # a is not corrupted
        got = (await _recv(radios[c.id]))[1]
        assert got != b"abcdef" and len(got) == 6 and sum(x != y for x, y in zip(got, b"abcdef", strict=True)) == 1
        st = (await ctl({"op": "stats"}))["stats"]
        assert st["dropped"]["killed"] >= 1 and st["dropped"]["link_down"] >= 1 and st["corrupted"] == 1
        assert st["attached"] == 3 and st["frames_per_s"] > 0
        ports = (await ctl({"op": "ports"}))["ports"]
        assert ports == {str(n.id): mt.call(mt.medium.port_for, n.id) for n in topo.nodes}
        for r in radios.values():
            r._reader.cancel()
