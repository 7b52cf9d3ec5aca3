"""The node's config file: a CBOR map on flash (`config.cbor`), its validation and loader.

This module is what a node carries: the format's tables (the one owner of each key's kind,
range and default), the rule of each kind (kind_ok), and the loader. The host validates a config
completely before it is written (firmware/config_check.py: `fleet provision` and the rig call
its dump_config): text keys only; unknown top-level keys, wrong types and out-of-range values
are errors (a typo must not silently fall back to a default on a pole 8 m up), each named with
what was expected and what arrived. The node checks again only what it needs to run — every
key it reads present (or defaulted) with the right kind and range, a gateway's uplink, the sim
section, a duty cycle the sampler accepts — so it never runs a config it cannot run; the
ConfigError names the key (never a secret's value) and the node stays in its safe state.

Format (CDDL; protocol/redmesh.cddl stays the wire spec, this is the flash file):

    node-config = {
      "config_version": 1,
      "node_id": 1..4294967295,            ; 0 means "every node" in commands
      "role": "node" / "gateway",
      "net_id": 0..4294967295,
      "node_key": bstr .size 32,           ; secret: this node's HMAC key
      "mesh_key": bstr .size 32,           ; secret: network-wide hop key (of mesh_epoch)
      ? "mesh_epoch": 0..4294967295,       ; default 0: the key epoch of mesh_key (fleet keys rotate)
      "fleet_pub": bstr .size 32,          ; Ed25519 public key of the fleet
      ? "report_interval_s": 1..86400,     ; default 300
      ? "warmup_s": 30..600,               ; default 30
      ? "sample_window_s": 1..86400,       ; default 60; warmup_s + sample_window_s
                                           ;   <= report_interval_s unless continuous
      ? "continuous": bool,                ; default false: keep the sensor on
      ? "sensor": "pms5003" / "pms5003t" / "sds011",   ; default "pms5003"
      ? "radio_channel": 1..14,            ; default 1 (a gateway: its Wi-Fi AP's channel)
      ? "parent_report_delay_ms": 1000..600000,  ; default 30000: a new parent is reported once
                                           ;   held this long plus a random part of it
      ? "key_ask_ms": 5000..3600000,       ; default 60000: asks for a missed mesh key this
                                           ;   often at most (firmware/node.py)
      ? "ota_distrust_ms": 1000..3600000,  ; default 60000: a sender of a bad OTA page or
                                           ;   manifest is ignored this long (firmware/ota.py)
      ? "uplink": uplink-config,           ; required for a gateway, absent on a node
      ? "sim": sim-config,                 ; only on virtual nodes
    }
    uplink-config = {
      "broker_host": tstr .size (1..253),
      ? "broker_port": 1..65535,           ; default 1883
      ? "wifi_ssid": tstr .size (0..32),   ; default ""; required non-empty without "sim"
      ? "wifi_password": tstr .size (0..64),   ; secret; default "" (open network, the sim)
      ? "client_id": tstr .size (1..64),   ; default "gw-<node_id>"
    }
    sim-config = {                         ; owned by firmware/hal/sim.py: only these are
      "medium_port": 1..65535,             ;   checked, other keys pass through
      "my_port": 1..65535,
      "mac": bstr .size 6,
      ? "seed": 0..18446744073709551615,   ; default 0
      * tstr => any
    }
"""
from protocol import cbor
from protocol.errors import ProtocolError
from protocol.text import text_problem

CONFIG_VERSION = 1
CONFIG_PATH = "config.cbor"
ROLES = ("node", "gateway")
SENSORS = ("pms5003", "pms5003t", "sds011")
SECRETS = ("node_key", "mesh_key")
UPLINK_SECRETS = ("wifi_password",)

_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF

NODEF = object()  # optional key without a default: absent stays absent

# Keys: (name, kind, lo, hi, default). kind: "int" (lo..hi), "bytes" (length lo..hi), "text"
# (one of the tuple in lo), "str" (UTF-8 length lo..hi), "bool", "map".
# default None: required; NODEF: optional, no default.
KEYS = (
    ("config_version", "int", CONFIG_VERSION, CONFIG_VERSION, None),
    ("node_id", "int", 1, _U32, None),
    ("role", "text", ROLES, None, None),
    ("net_id", "int", 0, _U32, None),
    ("node_key", "bytes", 32, 32, None),
    ("mesh_key", "bytes", 32, 32, None),
    ("mesh_epoch", "int", 0, _U32, 0),
    ("fleet_pub", "bytes", 32, 32, None),
    ("report_interval_s", "int", 1, 86400, 300),
    ("warmup_s", "int", 30, 600, 30),
    ("sample_window_s", "int", 1, 86400, 60),
    ("continuous", "bool", None, None, False),
    ("sensor", "text", SENSORS, None, "pms5003"),
    ("radio_channel", "int", 1, 14, 1),
    # Protocol timers (parent_report_delay_ms and ota_distrust_ms default to firmware/node.py
    # PARENT_REPORT_DELAY_MS and firmware/ota.py OtaParams' distrust_ms: tests/device/test_config.py
    # holds them equal). A board keeps the defaults; the virtual rig may shorten them so that a
    # HIL test waits seconds for what takes minutes on a pole.
    ("parent_report_delay_ms", "int", 1000, 600000, 30000),
    ("key_ask_ms", "int", 5000, 3600000, 60000),
    ("ota_distrust_ms", "int", 1000, 3600000, 60000),
    ("uplink", "map", None, None, NODEF),
    ("sim", "map", None, None, NODEF),
)
UPLINK_KEYS = (
    ("broker_host", "str", 1, 253, None),
    ("broker_port", "int", 1, 65535, 1883),
    ("wifi_ssid", "str", 0, 32, ""),
    ("wifi_password", "str", 0, 64, ""),
    ("client_id", "str", 1, 64, NODEF),
)
SIM_KEYS = (
    ("medium_port", "int", 1, 65535, None),
    ("my_port", "int", 1, 65535, None),
    ("mac", "bytes", 6, 6, None),
    ("seed", "int", 0, _U64, 0),
)


class ConfigError(Exception):
    """The config file is missing, unreadable or invalid; the message says which key and what
    was expected (never a secret's value)."""

    def __init__(self, msg):
        super().__init__(msg)
        self.msg = msg

    def __str__(self):
        return self.msg


def kind_ok(kind, v, lo, hi):
    """True when value `v` is of `kind` within lo..hi (see KEYS): the one rule of each kind."""
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
    if kind == "bytes":
        return isinstance(v, (bytes, bytearray)) and lo <= len(v) <= hi
    if kind == "text":
        return isinstance(v, str) and v in lo
    if kind == "str":
        return text_problem(v, lo, hi) is None  # the one text grammar (protocol/text.py)
    if kind == "bool":
        return isinstance(v, bool)
    return isinstance(v, dict)


def _fill(where, d, spec):
    """A copy of map `d` with defaults filled in and bytes normalized; ConfigError names the
    first key missing or invalid (the host's check says more). Other keys pass through."""
    if not isinstance(d, dict):
        raise ConfigError("%s: expected a map" % (where or "config"))
    out = dict(d)
    for name, kind, lo, hi, default in spec:
        if name not in d:
            if default is None:
                raise ConfigError("missing key %s%s" % (where, name))
            if default is not NODEF:
                out[name] = default
        elif not kind_ok(kind, d[name], lo, hi):
            raise ConfigError("invalid %s%s" % (where, name))
        elif kind == "bytes":
            out[name] = bytes(d[name])
    return out


def normalize(d):
    """Check what a node needs to run config dict `d`; return it normalized (a new dict,
    defaults filled in, bytearrays as bytes). Raises ConfigError naming the first bad key."""
    out = _fill("", d, KEYS)
    # Duty-cycle rules live in the sampler: one definition of what a valid cycle is.
    from firmware.sampler import SamplerConfig

    try:
        SamplerConfig(out["report_interval_s"], out["warmup_s"], out["sample_window_s"], out["continuous"])
    except ValueError as e:
        raise ConfigError("invalid sampling settings: %s" % e)
    if "sim" in out:
        out["sim"] = _fill("sim.", out["sim"], SIM_KEYS)
    if out["role"] == "gateway":
        if "uplink" not in out:
            raise ConfigError("missing key uplink: a gateway needs a map with broker_host and its Wi-Fi settings")
        up = _fill("uplink.", out["uplink"], UPLINK_KEYS)
        if "client_id" not in up:
            up["client_id"] = "gw-%d" % out["node_id"]
        out["uplink"] = up
    return out


class Settings:
    """The values of a config, one attribute per KEYS entry (uplink and sim are dicts, None
    when absent), and nothing else: no method, so an instance pins none of this module's code
    or tables. What a running node keeps (settings()), once this module is dropped after boot
    (firmware/startup.py). Never printed with its secrets (firmware/config_check.py public_dict)."""

    # One attribute per KEYS entry (set by Config and settings(); declared here for type
    # checkers -- bare annotations cost nothing at run time on MicroPython).
    config_version: int
    node_id: int
    role: str
    net_id: int
    node_key: bytes
    mesh_key: bytes
    mesh_epoch: int
    fleet_pub: bytes
    report_interval_s: int
    warmup_s: int
    sample_window_s: int
    continuous: bool
    sensor: str
    radio_channel: int
    parent_report_delay_ms: int
    key_ask_ms: int
    ota_distrust_ms: int
    uplink: dict
    sim: dict


class Config(Settings):
    """A config a node can run (see Settings), with the normalized dict it came from."""

    def __init__(self, d):
        d = normalize(d)
        self._d = d
        for k in KEYS:
            setattr(self, k[0], d.get(k[0]))

    def as_dict(self):
        """Return the full normalized config, secrets included (for saving it again)."""
        out = dict(self._d)
        for k in ("uplink", "sim"):
            if k in out:
                out[k] = dict(out[k])
        return out


def settings(cfg):
    """Return a Settings copy of Config `cfg`: the same attribute values, without the
    normalized dict or any reference to this module (so a node can drop it after boot)."""
    s = Settings()
    for k in KEYS:
        setattr(s, k[0], getattr(cfg, k[0]))
    return s


def parse_config(data):
    """Return the Config in CBOR bytes `data`. Raises ConfigError."""
    try:
        d = cbor.loads(data)
    except ProtocolError as e:
        raise ConfigError("config is not valid CBOR (%s)" % e)
    return Config(d)


def load_config(fs, path=CONFIG_PATH):
    """Read and check the config file at `path` of filesystem adapter `fs`; return a Config.
    Raises ConfigError (missing, unreadable, not CBOR, invalid) with what to do next."""
    try:
        f = fs.open(path, "rb")
    except OSError:
        raise ConfigError("no config file %s on the flash: provision the node (fleet provision)" % path)
    try:
        data = f.read()
    except OSError as e:
        raise ConfigError("cannot read %s (%s): re-provision the node" % (path, e))
    finally:
        f.close()
    if not data:
        raise ConfigError("%s is empty: re-provision the node" % path)
    try:
        return parse_config(data)
    except ConfigError as e:
        raise ConfigError("%s: %s; re-provision the node (fleet provision checks it first)" % (path, e.msg))
