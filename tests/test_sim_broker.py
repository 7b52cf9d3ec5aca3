"""fleet/sim/broker.py: what the embedded amqtt broker verifiably does (in-process and as a
child process), the generated mosquitto config, and `fleet sim broker`."""
import asyncio
import os
import signal
import subprocess
import sys

import aiomqtt
import pytest
from mp_support import ROOT

from fleet.sim.broker import (
    BrokerError,
    EmbeddedBroker,
    mosquitto_config,
    mosquitto_path,
    start_broker_process,
    start_mosquitto,
)

pytestmark = pytest.mark.timeout(120)
FLEET = [sys.executable, "-c", "from fleet.cli import main; main()"]  # the `fleet` entry point


async def _collect(client, n, timeout_s=10):
    got = []

    async def rd():
        async for m in client.messages:
            got.append((str(m.topic), bytes(m.payload), m.retain))
            if len(got) >= n:
                return
    await asyncio.wait_for(rd(), timeout_s)
    return got


async def _check_broker_features(port):
    """Persistent session (clean_session=False) gets the QoS-1 messages published while it was
    away; retained messages reach a late subscriber; a will is published when a client dies."""
    async with aiomqtt.Client("127.0.0.1", port, identifier="durable", clean_session=False) as c:
        await c.subscribe("f/#", qos=1)
    async with aiomqtt.Client("127.0.0.1", port, identifier="pub") as p:
        for i in range(5):
            await p.publish("f/x", b"m%d" % i, qos=1)
        await p.publish("s/state", b"here", qos=1, retain=True)
    async with aiomqtt.Client("127.0.0.1", port, identifier="durable", clean_session=False) as c:
        got = await _collect(c, 5)
    assert [g[1] for g in got] == [b"m%d" % i for i in range(5)]
    async with aiomqtt.Client("127.0.0.1", port, identifier="late") as c:
        await c.subscribe("s/state", qos=1)
        got = await _collect(c, 1)
    assert got == [("s/state", b"here", True)]


async def test_embedded_broker_in_process_features():
    async with EmbeddedBroker(port=0) as b:
        assert b.port > 0 and b.url == f"mqtt://127.0.0.1:{b.port}"
        await _check_broker_features(b.port)


async def test_embedded_broker_port_in_use_is_a_clear_error():
    async with EmbeddedBroker(port=0) as b:
        with pytest.raises(BrokerError, match=str(b.port)):
            await EmbeddedBroker(port=b.port).start()


async def test_broker_process_features_and_sigkill_forgets_everything():
    bp = start_broker_process()
    try:
        await _check_broker_features(bp.port)
        port = bp.port
        bp.kill()
        bp.restart()
        assert bp.port == port
        # amqtt keeps sessions and retained messages in memory only: after SIGKILL they are gone.
        async with aiomqtt.Client("127.0.0.1", bp.port, identifier="late2") as c:
            await c.subscribe("s/state", qos=1)
            with pytest.raises(asyncio.TimeoutError):
                await _collect(c, 1, timeout_s=1)
    finally:
        bp.close()
    assert not bp.alive()


async def test_mosquitto_features_and_persistence_across_restart():
    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    bp = start_mosquitto()
    try:
        await _check_broker_features(bp.port)
        bp.stop()  # clean stop writes the persistence file
        bp.restart()
        async with aiomqtt.Client("127.0.0.1", bp.port, identifier="late3") as c:
            await c.subscribe("s/state", qos=1)
            got = await _collect(c, 1)
        assert got == [("s/state", b"here", True)]
    finally:
        bp.close()
    assert not os.path.exists(bp.data_dir)


def test_mosquitto_config_is_deliberate():
    conf = mosquitto_config(18830, "127.0.0.1", "/tmp/x")
    assert "listener 18830 127.0.0.1\n" in conf
    assert "allow_anonymous true\n" in conf
    assert "max_queued_messages 100000\n" in conf
    assert "persistence_location /tmp/x/\n" in conf
    assert ("user root\n" in conf) == (os.geteuid() == 0)


def test_fleet_sim_broker_command_runs_until_interrupted():
    proc = subprocess.Popen(FLEET + ["sim", "broker", "--port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline().decode().strip()
        assert line.startswith("mqtt://127.0.0.1:"), line + proc.stderr.read().decode()
        port = int(line.rsplit(":", 1)[1])

        async def ping():
            async with aiomqtt.Client("127.0.0.1", port, identifier="cli-check") as c:
                await c.publish("x/y", b"1", qos=1)
        asyncio.run(ping())
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        err = proc.stderr.read().decode()
        assert "Traceback" not in err and "broker stopped" in err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_fleet_sim_broker_port_taken_is_a_fleet_error():
    bp = start_broker_process()
    try:
        proc = subprocess.run(FLEET + ["sim", "broker", "--port", str(bp.port)], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1
        assert proc.stderr.startswith("Error: ") and "Traceback" not in proc.stderr
        assert "--port" in proc.stderr
    finally:
        bp.close()
