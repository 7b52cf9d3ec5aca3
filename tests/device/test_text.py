# The one text grammar (protocol/text.py) on both interpreters, and the node's parsers that call
# it: a manifest whose version or target class breaks the grammar is refused as a ProtocolError
# (never a crash), a Manifest that got past the parser is refused by the slot manager before it
# writes anything, and config text with control characters is a ConfigError.
import ota_fixtures as fx

from firmware.config import ConfigError, normalize
from firmware.config_check import validate
from firmware.slots import SlotError, SlotManager
from protocol import ProtocolError, cbor
from protocol import manifest as mf
from protocol.text import POLE_MAX, text_problem, token_problem

HOSTILE = ("", "   ", "-1", "../../x", "1.0\nslot=b", "\x1b[31mred", "a b", "a/b", "a=b", "v\x00",
           "1.0\r", ".hidden", "_x", "+1", "\u00e9t\u00e9", "x" * 17)
GOOD = ("1.0.0", "0.1.0", "2.0.0-x", "1.0.0-rogue", "9", "esp32", "v1.2.3+git.abc", "A_b-c.d+e",
        "x" * 16)


def test_tokens():
    for v in GOOD:
        assert token_problem(v) is None, v
    for v in HOSTILE:
        p = token_problem(v)
        assert p and "letters, digits" in p, v
    assert token_problem(None) and token_problem(b"1.0") and token_problem(1)
    assert token_problem("P-" + "0" * 30, POLE_MAX) is None and token_problem("P-" + "0" * 31, POLE_MAX)


def test_plain_text():
    for v in ("", "my wifi", "mqtt.example.org", "p\u00e4ss w\u00f6rd!\"'=/", "\u00a0x"):
        assert text_problem(v, 0, 64) is None, v
    for v in ("a\nb", "a\tb", "\x1b[31m", "a\x7f", "a\u0085", "a\x00"):
        assert "control" in text_problem(v, 0, 64), v
    assert "bytes" in text_problem("x" * 65, 0, 64)
    assert "bytes" in text_problem("", 1, 64)
    assert text_problem(None, 0, 64) == "expected text"


def _manifest(version="1.0.0", target="esp32"):
    files = fx.app_files(1)
    image = fx.make_archive(files)
    pages = fx.paginate(image)
    return cbor.dumps([mf.FORMAT, 5, version, target, len(image), fx.PAGE, [fx.sha256(p) for p in pages],
                       [[p, len(d), fx.sha256(d)] for p, d in files], "none"]), pages


def test_the_node_refuses_a_manifest_whose_text_breaks_the_grammar():
    raw, _ = _manifest()
    assert mf.parse_manifest(raw).version == "1.0.0"
    for field in ("version", "target_class"):
        for v in ("1.0\nslot=b", "", "-1", "../../x", "\x1b[2J"):
            raw, _ = _manifest(**({"version": v} if field == "version" else {"target": v}))
            try:
                mf.parse_manifest(raw)
            except ProtocolError as e:
                assert ("manifest " + field) in str(e) and "letters, digits" in str(e), str(e)
            else:
                raise AssertionError("accepted %s %r" % (field, v))


def test_the_slot_manager_refuses_such_a_manifest_before_writing():
    raw, pages = _manifest()
    good = mf.parse_manifest(raw)
    for v in ("1.0\nslot=b", "", "a=b"):
        m = mf.Manifest(good.bseq, v, good.target_class, good.image_size, good.page_size, good.pages, good.files,
                        good.compression, raw)
        fs = fx.MemFS()
        try:
            SlotManager(fs, target_class="esp32").stage(m, lambda i: pages[i])
        except SlotError as e:
            assert "version" in str(e)
        else:
            raise AssertionError("staged version %r" % v)
        assert not fs.files, "nothing may be written for a refused manifest"


def _config(**uplink):
    up = {"broker_host": "10.0.0.5", "wifi_ssid": "poles", "wifi_password": "secret-pw"}
    up.update(uplink)
    return {"config_version": 1, "node_id": 3, "role": "gateway", "net_id": 1, "node_key": b"n" * 32,
            "mesh_key": b"m" * 32, "fleet_pub": b"p" * 32, "uplink": up}


def test_config_text_follows_the_grammar():
    assert validate(_config())["uplink"]["wifi_ssid"] == "poles"
    # the node's own check (firmware.config.normalize) holds the same grammar: defence in depth
    try:
        normalize(_config(broker_host="x\nslot=b"))
    except ConfigError as e:
        assert "broker_host" in str(e)
    else:
        raise AssertionError("the node accepted a broker host with control characters")
    for key in ("broker_host", "wifi_ssid", "wifi_password", "client_id"):
        bad = "x\nslot=b\x1b[0m"
        try:
            validate(_config(**{key: bad}))
        except ConfigError as e:
            assert key in str(e) and "control" in str(e)
            assert bad not in str(e) or key != "wifi_password"
        else:
            raise AssertionError("accepted %s with control characters" % key)
    try:
        validate(_config(wifi_password="pw\nsecret"))
    except ConfigError as e:
        assert "secret" not in str(e).replace("secrets", "")  # never the password
