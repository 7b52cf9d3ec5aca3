"""The real-board rig file (hil_tests/test_real_rig.py, `pytest hil_tests --rig FILE`): what it
must hold, and the message for each mistake. The boards themselves need hardware."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hil_tests"))
from test_real_rig import parse_rig  # noqa: E402

GOOD = {"broker": "mqtt://10.0.0.2:1883", "home": "/srv/redmesh", "duration_s": 600,
        "boards": [{"port": "/dev/ttyUSB0", "node_id": 1, "role": "gateway"},
                   {"port": "/dev/ttyUSB1", "node_id": 2, "role": "node"}]}


def test_a_good_rig_file():
    broker, home, duration_s, boards = parse_rig(GOOD)
    assert broker == GOOD["broker"] and home == "/srv/redmesh" and duration_s == 600 and len(boards) == 2


@pytest.mark.parametrize("change,message", [
    ({"broker": "10.0.0.2:1883"}, "broker: expected an mqtt://"),
    ({"duration_s": 5}, "duration_s: expected whole seconds 60..86400"),
    ({"boards": []}, "boards: expected a non-empty list"),
    ({"boards": [{"port": "/dev/ttyUSB0", "node_id": 0, "role": "gateway"}]}, "boards[0].node_id"),
    ({"boards": [{"port": "/dev/ttyUSB0", "node_id": 1, "role": "relay"}]}, "boards[0].role"),
    ({"boards": [{"port": "/dev/ttyUSB0", "node_id": 1, "role": "node"}]}, "at least one gateway"),
    ({"boards": [{"port": "/dev/a", "node_id": 1, "role": "gateway"}, {"port": "/dev/b", "node_id": 1,
                                                                        "role": "node"}]}, "listed twice"),
])
def test_rig_file_mistakes_are_named(change, message, monkeypatch):
    monkeypatch.delenv("REDMESH_HOME", raising=False)
    desc = dict(GOOD, **change)
    with pytest.raises(ValueError, match=None) as ei:
        parse_rig(desc)
    assert message in str(ei.value)
    with pytest.raises(ValueError, match="home: the fleet home"):
        parse_rig({k: v for k, v in GOOD.items() if k != "home"})
