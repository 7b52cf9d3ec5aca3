"""HIL test plumbing: a `rig` factory whose backend is chosen by --rig.

    --rig sim   (default) the virtual rig: MicroPython nodes, the simulated medium, a broker
    --rig FILE  real boards: a JSON file naming serial ports, roles, the broker and the fleet
                home the boards were provisioned into (hil_tests/test_real_rig.py), e.g.
                {"broker": "mqtt://10.0.0.2:1883", "home": "/srv/redmesh", "boards":
                 [{"port": "/dev/ttyUSB0", "node_id": 1, "role": "gateway"}, ...]}
Tests that need what only the virtual rig has (fault injection in the medium, killing the
broker) skip with the reason printed when a real rig is given; tests that need hardware skip
on the virtual rig.
"""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def pytest_addoption(parser):
    parser.addoption("--rig", default="sim", help="'sim' (virtual rig, default) or a JSON file describing real boards")


@pytest.fixture(scope="session")
def rig_kind(request):
    value = request.config.getoption("--rig")
    if value == "sim":
        return "sim"
    try:
        with open(value) as f:
            desc = json.load(f)
    except (OSError, ValueError) as e:
        pytest.exit(f"--rig {value}: cannot read the rig description: {e}", returncode=2)
    return desc


@pytest.fixture
def needs_virtual_rig(rig_kind):
    if rig_kind != "sim":
        pytest.skip("needs the virtual rig (fault injection in the simulated medium / broker)")


@pytest.fixture
def needs_hardware(rig_kind):
    if rig_kind == "sim":
        pytest.skip("needs real ESP32 boards: run with --rig FILE")


@pytest.fixture
def make_rig(rig_kind, tmp_path):
    """Factory: make_rig(topology, **RigOptions kwargs) -> started RigHandle; all stopped at the end."""
    from fleet.home import FleetHome
    from fleet.sim.handle import RigHandle
    from fleet.sim.rig import RigOptions

    if rig_kind != "sim":
        pytest.skip("real-board rigs are driven by `fleet provision` + `fleet collect`; this test builds a virtual rig")
    handles = []
    logs = []

    def factory(topology, **opts):
        # Gap repair: a gap is first asked for 20 s after it opens, not the production 120 s.
        # Frames on the virtual rig are late by seconds at most (every mesh retry is over within
        # ~15 s), so this tests the same repair path, in CI time.
        opts.setdefault("repair", {"grace_s": 20.0, "retry_s": 15.0})
        home = FleetHome.resolve(str(tmp_path / ("home%d" % len(handles))))
        h = RigHandle(home, topology, RigOptions(**opts), log=logs.append)
        handles.append(h)
        h.start()
        return h

    yield factory
    for h in handles:
        h.stop()
    if logs:
        print("\n".join(logs[-30:]))
