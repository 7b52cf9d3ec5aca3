"""HIL tests on real boards (`--rig FILE`); on the virtual rig they skip with the reason.

The rig file names the boards already provisioned into a fleet home (`fleet provision`), the
broker their gateways publish to, and that home:

    {"broker": "mqtt://10.0.0.2:1883", "home": "/srv/redmesh",
     "duration_s": 900,
     "boards": [{"port": "/dev/ttyUSB0", "node_id": 1, "role": "gateway"},
                {"port": "/dev/ttyUSB1", "node_id": 2, "role": "node"}]}

What they check: every board answers as MicroPython on an ESP32 holding the Red Mesh config of
that node and fleet; and with the collector running against the rig's broker for duration_s,
every node's readings are stored with no hole (the same delivery report as the virtual rig's).
"""
import os
import signal
import subprocess
import sys
import time

import pytest

from fleet.home import FleetHome
from fleet.sim.verify import delivery_report


def parse_rig(desc):
    """Check a rig description (the --rig JSON); return (broker, home dir, duration_s, boards).
    Raises ValueError saying what is wrong."""
    if not isinstance(desc, dict):
        raise ValueError("expected a JSON object with broker, home and boards")
    broker = desc.get("broker")
    if not isinstance(broker, str) or not broker.startswith("mqtt://"):
        raise ValueError(f"broker: expected an mqtt://host:port URL, got {broker!r}")
    home = desc.get("home") or os.environ.get("REDMESH_HOME")
    if not isinstance(home, str) or not home:
        raise ValueError("home: the fleet home the boards were provisioned into (or set REDMESH_HOME)")
    duration_s = desc.get("duration_s", 900)
    if not isinstance(duration_s, int) or isinstance(duration_s, bool) or not 60 <= duration_s <= 86400:
        raise ValueError(f"duration_s: expected whole seconds 60..86400, got {duration_s!r}")
    boards = desc.get("boards")
    if not isinstance(boards, list) or not boards:
        raise ValueError("boards: expected a non-empty list of {port, node_id, role}")
    seen = set()
    for i, b in enumerate(boards):
        if not isinstance(b, dict) or not isinstance(b.get("port"), str):
            raise ValueError(f"boards[{i}]: expected an object with a port")
        if not isinstance(b.get("node_id"), int) or not 1 <= b["node_id"] <= 0xFFFFFFFF:
            raise ValueError(f"boards[{i}].node_id: expected 1..4294967295, got {b.get('node_id')!r}")
        if b.get("role") not in ("node", "gateway"):
            raise ValueError(f"boards[{i}].role: expected node or gateway, got {b.get('role')!r}")
        if b["node_id"] in seen:
            raise ValueError(f"boards[{i}]: node {b['node_id']} is listed twice")
        seen.add(b["node_id"])
    if not any(b["role"] == "gateway" for b in boards):
        raise ValueError("boards: at least one gateway is needed (the uplink to the broker)")
    return broker, home, duration_s, boards


@pytest.fixture
def real_rig(needs_hardware, rig_kind):
    try:
        return parse_rig(rig_kind)
    except ValueError as e:
        pytest.fail(f"--rig file: {e}")


_FLEET = [sys.executable, "-c", "import sys; from fleet.cli import main; sys.exit(main())"]


def _fleet(*args, timeout_s=120):
    return subprocess.run(_FLEET + list(args), capture_output=True, text=True, timeout=timeout_s)


def test_every_board_is_a_provisioned_esp32_of_this_fleet(real_rig):
    import json

    _broker, home, _d, boards = real_rig
    for b in boards:
        p = _fleet("node", "info", "--port", b["port"], "--home", home, "--json")
        assert p.returncode == 0, f"{b['port']}: fleet node info failed: {p.stderr.strip()}"
        info = json.loads(p.stdout)
        assert info["board"]["platform"] == "esp32" and not info["board"]["virtual"], (b["port"], info["board"])
        assert info["provisioned"] and info["config_of_this_fleet"], (b["port"], info.get("config_error"))
        assert info["config"]["node_id"] == b["node_id"] and info["config"]["role"] == b["role"], info["config"]


def test_every_nodes_readings_are_stored_without_holes(real_rig, tmp_path):
    broker, home_dir, duration_s, boards = real_rig
    log = open(tmp_path / "collect.log", "w")
    proc = subprocess.Popen(_FLEET + ["collect", "--home", home_dir, "--broker", broker],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        time.sleep(duration_s)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
    rep = delivery_report(FleetHome.resolve(home_dir))
    print(rep)
    store = FleetHome.resolve(home_dir).store()
    try:
        heard = {r[0] for r in store.db.execute("SELECT DISTINCT node FROM readings")}
    finally:
        store.close()
    missing = sorted(b["node_id"] for b in boards if b["node_id"] not in heard)
    assert not missing, f"no readings from nodes {missing} in {duration_s} s (collector log: {tmp_path}/collect.log)"
    assert rep["holes"] == 0 and rep["lost"] == 0, rep
