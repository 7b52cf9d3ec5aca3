"""The virtual rig's clock and Wi-Fi rules (issue 10), on firmware/hal/sim.py under the real
MicroPython interpreter (tests/sim_hal_agent.py) with a real Medium over loopback:
- the RTC starts at the port's epoch (time_s() 0) until set_time_s() or NTP sets it;
- the station is down until it joins the AP; NTP and TCP connections work only while it is up;
- the AP (the rig's control file) can go down or move channel: the station drops, and joining
  again puts it - and ESP-NOW with it - on the AP's channel, where the mesh no longer hears it."""
import asyncio
import json
import os
import socket
import time

from mp_support import ROOT, micropython_bin

from firmware.config_check import dump_config
from fleet.sim import interp
from fleet.sim import topology as topo_mod
from fleet.sim.medium import Medium

AGENT = os.path.join(ROOT, "tests", "sim_hal_agent.py")
TIMEOUT_S = 15


def _write_ap(path, up, channel):
    with open(path + ".tmp", "w") as f:
        f.write("%d %d\n" % (1 if up else 0, channel))
    os.replace(path + ".tmp", path)


class Agent:
    def __init__(self, proc):
        self.proc = proc

    async def cmd(self, **req):
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), TIMEOUT_S)
        if not line:
            err = await asyncio.wait_for(self.proc.stderr.read(), TIMEOUT_S)
            raise AssertionError("agent exited: %s" % err.decode()[-2000:])
        return json.loads(line)


async def test_rtc_unset_ntp_and_wifi_rules(tmp_path):
    topo = topo_mod.line(2, spacing_m=30, n_gateways=1, seed=1)
    gw, other = topo.nodes[0], topo.nodes[1]
    medium = Medium(topo, seed=1)
    await medium.start("127.0.0.1", 0)
    ap = str(tmp_path / "gw.ap")
    _write_ap(ap, False, 1)
    flash = tmp_path / "flash"
    flash.mkdir()
    cfg = {"config_version": 1, "node_id": gw.id, "role": "gateway", "net_id": 1, "node_key": bytes(32),
           "mesh_key": bytes(range(32)), "fleet_pub": bytes(32), "radio_channel": 1,
           "uplink": {"broker_host": "127.0.0.1"},
           "sim": {"medium_port": medium.port, "my_port": medium.port_for(gw.id), "mac": gw.mac, "ap_file": ap}}
    (flash / "config.cbor").write_bytes(dump_config(cfg))
    # the other node says it is on channel 1 (as its HAL would), from its own port
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", medium.port_for(other.id)))
    peer.sendto(b"C\x01", ("127.0.0.1", medium.port))
    listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    tcp_port = listener.sockets[0].getsockname()[1]
    mp = micropython_bin()
    proc = await asyncio.create_subprocess_exec(
        mp, "-X", interp.heap_arg(interp.GATEWAY_HEAP_KB, mp), AGENT, str(flash), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT)
    a = Agent(proc)
    try:
        assert json.loads(await asyncio.wait_for(proc.stdout.readline(), TIMEOUT_S)) == {"ready": True}
        # the RTC reads its epoch: no wall time until something sets it
        assert await a.cmd(op="time") == {"s": 0, "ms": 0}
        # the AP is down: no uplink, no NTP, no TCP
        assert (await a.cmd(op="uplink", timeout_ms=600))["ok"] is False
        assert (await a.cmd(op="up"))["up"] is False
        assert "err" in await a.cmd(op="ntp")
        assert "err" in await a.cmd(op="connect", port=tcp_port)
        assert await a.cmd(op="time") == {"s": 0, "ms": 0}
        # on the mesh's channel, the other node hears the gateway's broadcast
        assert (await a.cmd(op="bcast", hex="0102"))["sent"] is True
        assert medium.stats()["dropped"].get("channel", 0) == 0
        # the AP comes up: the station joins, NTP sets the clock from the host's, TCP works
        _write_ap(ap, True, 1)
        assert await a.cmd(op="uplink", timeout_ms=2000) == {"ok": True, "channel": 1}
        before = int(time.time())
        t = (await a.cmd(op="ntp"))["t"]
        assert before - 1 <= t <= time.time() + 1
        now = await a.cmd(op="time")
        assert abs(now["s"] - time.time()) <= 2 and abs(now["ms"] / 1000 - time.time()) <= 2
        assert await a.cmd(op="connect", port=tcp_port) == {"ok": True}
        # the AP moves to channel 6: the station drops, joins again on channel 6, and ESP-NOW
        # with it: the medium no longer carries its frames to the node on channel 1
        _write_ap(ap, True, 6)
        assert (await a.cmd(op="up"))["up"] is False
        assert await a.cmd(op="uplink", timeout_ms=2000) == {"ok": True, "channel": 6}
        assert medium.faults()["channels"] == {str(gw.id): 6, str(other.id): 1}
        dropped_before = medium.stats()["dropped"].get("channel", 0)
        assert (await a.cmd(op="bcast", hex="0304"))["sent"] is True
        assert medium.stats()["dropped"].get("channel", 0) == dropped_before + 1
        # the clock survives the link going away; set_time_s sets whole seconds
        _write_ap(ap, False, 6)
        assert (await a.cmd(op="up"))["up"] is False
        assert "err" in await a.cmd(op="connect", port=tcp_port)
        assert abs((await a.cmd(op="time"))["s"] - time.time()) <= 2
        await a.cmd(op="set_time", s=1700000000)
        assert (await a.cmd(op="time"))["s"] in (1700000000, 1700000001)
        assert await a.cmd(op="quit") == {"bye": True}
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), TIMEOUT_S)
        listener.close()
        peer.close()
        await medium.stop()
