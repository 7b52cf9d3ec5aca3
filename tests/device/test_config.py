# Node config: format, validation errors naming each key, defaults, secrets kept out of
# public_dict/repr/errors, loader errors, and the safe-state message.
# Runs under CPython (pytest) and MicroPython (tests/mp_run.py).
from flashfakes import rmtree, tmpdir

from firmware.config import KEYS, Config, ConfigError, load_config, parse_config, settings
from firmware.config_check import dump_config, public_dict, save_config, validate
from firmware.fsutil import PosixFS, write_file
from firmware.safe_state import TAG, safe_state_loop, safe_state_message
from protocol import cbor

NODE_KEY = bytes(range(32))
MESH_KEY = bytes(range(100, 132))
WIFI_PW = "s3cret-w1f1-pass"


def node_cfg():
    return {"config_version": 1, "node_id": 17, "role": "node", "net_id": 1, "node_key": NODE_KEY,
            "mesh_key": MESH_KEY, "fleet_pub": b"\x07" * 32, "report_interval_s": 60, "warmup_s": 30,
            "sample_window_s": 20, "sensor": "pms5003", "radio_channel": 6}


def gw_cfg():
    d = node_cfg()
    d["role"] = "gateway"
    d["uplink"] = {"broker_host": "10.0.0.2", "broker_port": 1883, "wifi_ssid": "city-iot",
                   "wifi_password": WIFI_PW, "client_id": "gw-17"}
    return d


def sim_cfg():
    d = gw_cfg()
    d["uplink"]["wifi_ssid"] = ""
    d["uplink"]["wifi_password"] = ""
    d["sim"] = {"medium_port": 40000, "my_port": 40017, "mac": b"\x02\x00\x00\x00\x00\x11", "seed": 9}
    return d


def _err(d):
    try:
        validate(d)
    except ConfigError as e:
        return str(e)
    raise AssertionError("no ConfigError for %r" % (d,))


def test_round_trip_node_and_gateway():
    for d in (node_cfg(), gw_cfg(), sim_cfg()):
        b = dump_config(d)
        c = parse_config(b)
        assert c.node_id == 17 and c.net_id == 1 and c.node_key == NODE_KEY and c.mesh_key == MESH_KEY
        assert c.report_interval_s == 60 and c.sample_window_s == 20 and c.radio_channel == 6
        assert c.role == d["role"]
        assert c.as_dict() == validate(d)
        # deterministic: the same dict always gives the same bytes
        assert dump_config(c.as_dict()) == b
    c = parse_config(dump_config(gw_cfg()))
    assert c.uplink["broker_port"] == 1883 and c.uplink["wifi_password"] == WIFI_PW
    assert c.sim is None
    s = parse_config(dump_config(sim_cfg()))
    assert s.sim["my_port"] == 40017 and s.sim["mac"] == b"\x02\x00\x00\x00\x00\x11"


def test_settings_keep_the_values_and_nothing_of_the_module():
    # what a running node keeps once main.py dropped firmware.config: the values only, no
    # method or normalized dict that would pin the loader's code and tables in the heap
    c = Config(gw_cfg())
    s = settings(c)
    for k in KEYS:
        assert getattr(s, k[0]) == getattr(c, k[0]), k[0]
    assert s.uplink["wifi_password"] == WIFI_PW and s.sim is None
    assert not isinstance(s, Config)
    assert not hasattr(s, "_d") and not hasattr(s, "as_dict")


def test_defaults_for_optional_keys():
    d = node_cfg()
    for k in ("report_interval_s", "warmup_s", "sample_window_s", "sensor", "radio_channel"):
        del d[k]
    c = Config(d)
    assert (c.report_interval_s, c.warmup_s, c.sample_window_s, c.continuous) == (300, 30, 60, False)
    assert c.sensor == "pms5003" and c.radio_channel == 1 and c.uplink is None
    assert (c.parent_report_delay_ms, c.key_ask_ms, c.ota_distrust_ms) == (30000, 60000, 60000)


def test_timer_defaults_are_the_firmware_constants():
    # a board's config leaves the protocol timers out: it runs the very timings it ran before
    # they were settings (the virtual rig shortens them for HIL tests)
    from firmware.node import PARENT_REPORT_DELAY_MS
    from firmware.ota import OtaParams

    defaults = {k[0]: k[4] for k in KEYS}
    assert defaults["parent_report_delay_ms"] == PARENT_REPORT_DELAY_MS
    assert defaults["ota_distrust_ms"] == OtaParams().distrust_ms
    assert defaults["key_ask_ms"] == 60000


def test_timers_reach_the_node_settings():
    d = node_cfg()
    d["parent_report_delay_ms"] = 10000
    d["key_ask_ms"] = 5000
    d["ota_distrust_ms"] = 1000
    s = settings(parse_config(dump_config(d)))
    assert (s.parent_report_delay_ms, s.key_ask_ms, s.ota_distrust_ms) == (10000, 5000, 1000)
    g = gw_cfg()
    del g["uplink"]["client_id"]
    del g["uplink"]["broker_port"]
    u = Config(g).uplink
    assert u["client_id"] == "gw-17" and u["broker_port"] == 1883


def test_each_missing_required_key_is_named():
    for k in ("config_version", "node_id", "role", "net_id", "node_key", "mesh_key", "fleet_pub"):
        d = node_cfg()
        del d[k]
        msg = _err(d)
        assert "missing key " + k in msg, msg
    g = gw_cfg()
    del g["uplink"]
    assert "missing key uplink" in _err(g)
    g = gw_cfg()
    del g["uplink"]["broker_host"]
    assert "missing key uplink.broker_host" in _err(g)
    s = sim_cfg()
    del s["sim"]["medium_port"]
    assert "missing key sim.medium_port" in _err(s)


BAD = (
    ("config_version", 2, "the integer 1"),
    ("node_id", 0, "1..4294967295"),
    ("node_id", "17", "integer"),
    ("node_id", True, "integer"),
    ("role", "relay", '"node", "gateway"'),
    ("net_id", -1, "0..4294967295"),
    ("node_key", b"\x01" * 31, "32 bytes"),
    ("mesh_key", "not bytes", "32 bytes"),
    ("fleet_pub", b"", "32 bytes"),
    ("report_interval_s", 0, "1..86400"),
    ("warmup_s", 10, "30..600"),
    ("sample_window_s", -5, "1..86400"),
    ("continuous", 1, "true or false"),
    ("sensor", "bme680", '"pms5003"'),
    ("radio_channel", 15, "1..14"),
    ("uplink", [1], "a map"),
    ("parent_report_delay_ms", 999, "1000..600000"),
    ("parent_report_delay_ms", 600001, "1000..600000"),
    ("key_ask_ms", 4999, "5000..3600000"),
    ("key_ask_ms", "60000", "integer"),
    ("ota_distrust_ms", 0, "1000..3600000"),
    ("ota_distrust_ms", True, "integer"),
)


def test_each_invalid_key_is_named_with_what_was_expected():
    for key, value, expected in BAD:
        d = gw_cfg() if key == "uplink" else node_cfg()
        d[key] = value
        msg = _err(d)
        assert ("invalid " + key) in msg and expected in msg, (key, msg)


def test_uplink_and_sim_rules():
    bad_up = (("broker_host", "", "1..253"), ("broker_port", 70000, "1..65535"),
              ("wifi_ssid", "x" * 33, "0..32"), ("client_id", 5, "text"))
    for key, value, expected in bad_up:
        g = gw_cfg()
        g["uplink"][key] = value
        msg = _err(g)
        assert "invalid uplink." + key in msg and expected in msg, msg
    g = gw_cfg()
    g["uplink"]["wifi_ssid"] = ""
    assert "uplink.wifi_ssid" in _err(g)  # a real gateway needs its Wi-Fi name
    n = node_cfg()
    n["uplink"] = gw_cfg()["uplink"]
    assert "only a gateway" in _err(n)
    s = sim_cfg()
    s["sim"]["mac"] = b"\x02\x00"
    assert "invalid sim.mac" in _err(s)
    s = sim_cfg()
    s["sim"]["heap"] = "160k"  # the sim HAL may add its own keys
    assert validate(s)["sim"]["heap"] == "160k"
    d = node_cfg()
    d["node_idd"] = 5
    msg = _err(d)
    assert "unknown key" in msg and "node_idd" in msg
    d = node_cfg()
    d["sample_window_s"] = 45  # 30 + 45 > 60
    assert "warmup_s + sample_window_s" in _err(d)
    assert "expected a map" in _err([1, 2])


def test_secrets_never_shown():
    c = Config(gw_cfg())
    pub = public_dict(c)
    for k in ("node_key", "mesh_key"):
        assert k not in pub
    assert "wifi_password" not in pub["uplink"]
    assert pub["uplink"]["broker_host"] == "10.0.0.2" and pub["node_id"] == 17
    assert pub["fleet_pub"] == "07" * 32  # bytes as hex text
    text = repr(c) + str(pub)
    for secret in (WIFI_PW, NODE_KEY.hex() if hasattr(NODE_KEY, "hex") else "000102", "000102030405"):
        assert secret not in text
    assert "node_key" not in text and "mesh_key" not in text
    # error messages describe a bad secret without showing it
    g = gw_cfg()
    g["uplink"]["wifi_password"] = WIFI_PW * 10  # too long
    msg = _err(g)
    assert WIFI_PW not in msg and "invalid uplink.wifi_password" in msg
    d = node_cfg()
    d["node_key"] = "textual-secret-key"
    msg = _err(d)
    assert "textual-secret-key" not in msg and "invalid node_key" in msg


def test_load_config_from_flash_and_its_errors():
    d = tmpdir("cfg")
    try:
        fs = PosixFS(d)
        for data, expect in ((None, "no config file"), (b"", "empty"), (b"\xff\x00", "not valid CBOR"),
                             (cbor.dumps([1, 2]), "expected a map"),
                             (cbor.dumps({"role": "node"}), "missing key")):
            if data is not None:
                write_file(fs, "config.cbor", data)
            try:
                load_config(fs)
                raise AssertionError("loaded a bad config")
            except ConfigError as e:
                assert expect in str(e) and "config.cbor" in str(e), str(e)
                assert "provision" in str(e)
        save_config(fs, node_cfg())
        c = load_config(fs)
        assert c.node_id == 17 and c.sensor == "pms5003"
        save_config(fs, gw_cfg(), "other.cbor")
        assert load_config(fs, "other.cbor").role == "gateway"
        try:
            save_config(fs, {"role": "node"})
            raise AssertionError("saved an invalid config")
        except ConfigError:
            pass
        assert load_config(fs).node_id == 17  # the invalid save left the file alone
    finally:
        rmtree(d)


def test_safe_state_message_and_loop():
    try:
        load_config(PosixFS("/nonexistent-dir-rm"))
        raise AssertionError("no error")
    except ConfigError as e:
        err = e
    msg = safe_state_message(err)
    assert "no config file config.cbor" in msg and "fleet provision" in msg and "REPL" in msg
    assert safe_state_message(ValueError()) .find("ValueError") > 0
    lines = []
    sleeps = []
    safe_state_loop(err, sleeps.append, log=lambda tag, m: lines.append((tag, m)), interval_s=30, rounds=3)
    assert lines == [(TAG, msg)] * 3 and sleeps == [30, 30]

    def bad_log(tag, m):
        raise OSError(5, "console gone")

    safe_state_loop(err, sleeps.append, log=bad_log, rounds=2)  # never raises
