"""A node provisioned over USB joins a virtual mesh and its readings reach the collector.

Two virtual boards (a gateway and a node, MACs from the topology) are provisioned with
`fleet provision` into the radio medium of the virtual rig; the embedded broker and the collector
run here. The collector accepts a reading only if its HMAC verifies under the node key derived from
the fleet secret, so a stored reading proves the key written at provisioning is the right one.
Slow (sensor warm-up >= 30 s, then one report interval): about 1.5 minutes.
"""
import asyncio
import time

import pytest

from fleet import provision as prov
from fleet.home import FleetHome
from fleet.sim.board import VirtualBoard

topology = pytest.importorskip("fleet.sim.topology")
medium_mod = pytest.importorskip("fleet.sim.medium")
broker_mod = pytest.importorskip("fleet.sim.broker")
collector_mqtt = pytest.importorskip("fleet.collector_mqtt")

READINGS_TIMEOUT_S = 180


@pytest.mark.timeout(300)
async def test_provisioned_node_joins_the_mesh_and_its_readings_reach_the_collector(tmp_path):
    home = FleetHome(str(tmp_path / "home")).ensure()
    home.keys().init()
    topo = topology.line(2, n_gateways=1)
    medium = medium_mod.Medium(topo, seed=1)
    await medium.start("127.0.0.1", 0)
    broker = await asyncio.to_thread(broker_mod.start_broker_process, 0, "127.0.0.1",
                                     str(tmp_path / "broker.log"))
    broker_url = f"mqtt://127.0.0.1:{broker.port}"
    stop = asyncio.Event()
    collector = None
    boards = []
    try:
        store = home.store(create=True)
        store.close()
        collector = asyncio.create_task(collector_mqtt.run_collector(home, broker_url, stop, client_id="c-prov",
                                                                     progress_s=0))
        # 512k: the firmware does not fit an ESP32-like heap on this 64-bit port yet (a gateway ran out at 256k)
        for n in topo.nodes:
            b = VirtualBoard(str(tmp_path / f"flash{n.id}"), heap="512k", mac=n.mac)
            boards.append(b)
            await asyncio.to_thread(b.start)
        specs = [prov.NodeSpec(node_id=n.id, port=b.port, role="gateway" if n.is_gateway else "node",
                               pole=n.pole or None, lat=n.lat, lon=n.lon, sensor="pms5003t",
                               sim_port=medium.port_for(n.id)) for n, b in zip(topo.nodes, boards, strict=True)]
        opts = prov.ProvisionOptions(selftest_timeout_s=120, sim_medium_port=medium.port, broker_url=broker_url,
                                     report_interval_s=40, continuous=True)
        summary = await asyncio.to_thread(prov.provision, home, specs, opts)
        for r in summary["results"]:
            assert r["ok"], r["error"]
            assert r["selftest"].startswith(f"selftest ok node={r['node_id']}")

        node = next(n for n in topo.nodes if not n.is_gateway)
        deadline = time.monotonic() + READINGS_TIMEOUT_S
        rows = []
        while time.monotonic() < deadline and not rows:
            await asyncio.sleep(2)
            store = home.store()
            try:
                rows = store.readings(node.id)
            finally:
                store.close()
        tails = [f"--- node {b.flash_dir}:\n" + "\n".join(prov.node_logs(b.port, timeout_s=0.5)) for b in boards] \
            if not rows else []
        assert rows, f"no reading of node {node.id} reached the collector in {READINGS_TIMEOUT_S} s\n" + "\n".join(tails)
        store = home.store()
        try:
            assert store.node(node.id)["mac"].replace(":", "") == node.mac.hex()
        finally:
            store.close()
    finally:
        stop.set()
        if collector is not None:
            try:
                await asyncio.wait_for(collector, 15)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - clean-up must go on
                collector.cancel()
        for b in boards:
            await asyncio.to_thread(b.stop)
        await asyncio.to_thread(broker.close)
        await medium.stop()
