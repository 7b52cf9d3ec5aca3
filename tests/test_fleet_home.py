"""The fleet home: where it is, settings precedence, validation messages, the TOML writer."""
import os
import tomllib

import pytest

from fleet.errors import FleetError
from fleet.home import FleetHome, default_config, dump_toml, resolve_home_path


def test_resolution_order(monkeypatch, tmp_path):
    monkeypatch.delenv("REDMESH_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert resolve_home_path() == str(tmp_path / "xdg" / "redmesh")
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")  # the XDG spec ignores relative paths
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert resolve_home_path() == str(tmp_path / "user" / ".local" / "share" / "redmesh")
    monkeypatch.setenv("REDMESH_HOME", str(tmp_path / "env"))
    assert resolve_home_path() == str(tmp_path / "env")
    assert resolve_home_path(str(tmp_path / "opt")) == str(tmp_path / "opt")


def test_defaults_file_then_overrides(tmp_path):
    h = FleetHome(str(tmp_path))
    assert h.config == default_config()
    assert h.net_id == 1 and h.broker_url.startswith("mqtt://")
    h.write_config({"network": {"id": 42}, "broker": {"url": "mqtt://10.0.0.5:1883"}})
    h2 = FleetHome(str(tmp_path), overrides={"broker.url": "mqtt://127.0.0.1:2883", "network.id": None})
    assert h2.net_id == 42
    assert h2.broker_url == "mqtt://127.0.0.1:2883"
    assert h2.with_overrides({"status.aqi": "epa"}).get("status", "aqi") == "epa"
    with pytest.raises(FleetError, match="'network.id' must be an integer, got str"):
        _ = FleetHome(str(tmp_path), overrides={"network.id": "seven"}).config


def test_write_config_keeps_other_sections_and_round_trips(tmp_path):
    h = FleetHome(str(tmp_path))
    with open(h.config_path, "w") as f:
        f.write('[ota]\ncanary = 5\nnote = "keep me"\n')
    h.write_config({"status": {"aqi": "epa"}})
    with open(h.config_path, "rb") as f:
        raw = tomllib.load(f)
    assert raw == {"ota": {"canary": 5, "note": "keep me"}, "status": {"aqi": "epa"}}
    assert h.config["ota"] == {"canary": 5, "note": "keep me"}  # unknown sections pass through
    with pytest.raises(FleetError, match="status.aqi"):
        h.write_config({"status": {"aqi": 3}})
    with open(h.config_path, "rb") as f:
        assert tomllib.load(f)["status"] == {"aqi": "epa"}  # a refused write changes nothing


def test_dump_toml_escapes_and_types():
    cfg = {"a": {"s": 'quote " back \\ nl \n tab \t é', "i": -3, "f": 0.5, "b": True, "l": [1, "x"],
                 "odd key": 1}}
    assert tomllib.loads(dump_toml(cfg)) == cfg
    with pytest.raises(TypeError):
        dump_toml({"a": {"x": object()}})


def test_float_setting_accepts_int_and_bool_is_not_int(tmp_path):
    h = FleetHome(str(tmp_path))
    with open(h.config_path, "w") as f:
        f.write("[collector]\nbatch_rows = true\n")
    with pytest.raises(FleetError, match="must be an integer, got bool"):
        _ = h.config


def test_stale_must_be_below_offline(tmp_path):
    h = FleetHome(str(tmp_path))
    with open(h.config_path, "w") as f:
        f.write("[status]\nstale_after_s = 600\noffline_after_s = 600\n")
    with pytest.raises(FleetError, match="must be below"):
        _ = h.config


def test_store_is_not_created_by_readers(tmp_path):
    h = FleetHome(str(tmp_path / "h"))
    with pytest.raises(FleetError, match="no fleet store"):
        h.store()
    assert not os.path.exists(h.path)
    s = h.store(create=True)
    s.close()
    assert os.path.exists(h.store_path)
    assert oct(os.stat(h.path).st_mode & 0o777) == oct(0o700)


def test_collector_route_commands_setting(tmp_path):
    """`[collector] route_commands = false` floods every resend request (a mesh whose firmware
    predates routed frames); anything but true/false is refused by name."""
    from fleet.collector import CollectorConfig

    h = FleetHome(str(tmp_path))
    assert CollectorConfig.from_home(h).route_commands is True
    h.write_config({"collector": {"route_commands": False}})
    assert CollectorConfig.from_home(FleetHome(str(tmp_path))).route_commands is False
    with pytest.raises(FleetError, match="'collector.route_commands' must be true or false"):
        h.write_config({"collector": {"route_commands": "no"}})


def test_collector_mesh_ttl_setting(tmp_path):
    """`[collector] mesh_ttl`: the nodes' TTL that scoped floods are reckoned from - by default
    the firmware's own, 32 for a mesh still running firmware from before the TTL of 48."""
    from firmware.mesh_params import DEFAULTS
    from fleet.collector import CollectorConfig

    h = FleetHome(str(tmp_path))
    assert CollectorConfig.from_home(h).mesh_ttl == DEFAULTS["max_hops"] == 48
    h.write_config({"collector": {"mesh_ttl": 32}})
    assert CollectorConfig.from_home(FleetHome(str(tmp_path))).mesh_ttl == 32
    for bad in (0, 256, "32"):
        with pytest.raises(FleetError, match="'collector.mesh_ttl' must be"):
            h.write_config({"collector": {"mesh_ttl": bad}})
