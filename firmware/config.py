"""The node's config file: a CBOR map on flash (`config.cbor`), its validation and loader.

The fleet host builds the file with `dump_config` (CPython, at provisioning) and the node reads
it with `load_config` (MicroPython) — the same code decides what is valid on both sides.
Rules: text keys only; unknown top-level keys, wrong types and out-of-range values are errors
(a typo must not silently fall back to a default on a pole 8 m up); optional keys get the
defaults below. A ConfigError names the key, what was expected and what arrived — never the
value of a secret (node_key, mesh_key, uplink.wifi_password).

Format (CDDL; protocol/redmesh.cddl stays the wire spec, this is the flash file):

    node-config = {
      "config_version": 1,
      "node_id": 1..4294967295,            ; 0 means "every node" in commands
      "role": "node" / "gateway",
      "net_id": 0..4294967295,
      "node_key": bstr .size 32,           ; secret: this node's HMAC key
      "mesh_key": bstr .size 32,           ; secret: network-wide hop key
      "fleet_pub": bstr .size 32,          ; Ed25519 public key of the fleet
      ? "report_interval_s": 1..86400,     ; default 300
      ? "warmup_s": 30..600,               ; default 30
      ? "sample_window_s": 1..86400,       ; default 60; warmup_s + sample_window_s
                                           ;   <= report_interval_s unless continuous
      ? "continuous": bool,                ; default false: keep the sensor on
      ? "sensor": "pms5003" / "pms5003t" / "sds011",   ; default "pms5003"
      ? "radio_channel": 1..14,            ; default 1 (a gateway: its Wi-Fi AP's channel)
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

_NODEF = object()  # optional key without a default: absent stays absent

# Keys: (name, kind, lo, hi, default). kind: "int" (lo..hi), "bytes" (length lo..hi), "text"
# (one of the tuple in lo), "str" (UTF-8 length lo..hi), "bool", "map".
# default None: required; _NODEF: optional, no default.
_KEYS = (
    ("config_version", "int", CONFIG_VERSION, CONFIG_VERSION, None),
    ("node_id", "int", 1, _U32, None),
    ("role", "text", ROLES, None, None),
    ("net_id", "int", 0, _U32, None),
    ("node_key", "bytes", 32, 32, None),
    ("mesh_key", "bytes", 32, 32, None),
    ("fleet_pub", "bytes", 32, 32, None),
    ("report_interval_s", "int", 1, 86400, 300),
    ("warmup_s", "int", 30, 600, 30),
    ("sample_window_s", "int", 1, 86400, 60),
    ("continuous", "bool", None, None, False),
    ("sensor", "text", SENSORS, None, "pms5003"),
    ("radio_channel", "int", 1, 14, 1),
    ("uplink", "map", None, None, _NODEF),
    ("sim", "map", None, None, _NODEF),
)
_UPLINK_KEYS = (
    ("broker_host", "str", 1, 253, None),
    ("broker_port", "int", 1, 65535, 1883),
    ("wifi_ssid", "str", 0, 32, ""),
    ("wifi_password", "str", 0, 64, ""),
    ("client_id", "str", 1, 64, _NODEF),
)
_SIM_KEYS = (
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


def _what(v, secret):
    """Describe a value that arrived, hiding secrets."""
    if isinstance(v, bool):
        return "a bool" if secret else repr(v)
    if isinstance(v, int):
        return "an int" if secret else str(v)
    if isinstance(v, (bytes, bytearray)):
        return "%d bytes" % len(v)
    if isinstance(v, str):
        return "text of %d bytes" % len(v.encode()) if secret else repr(v)
    if isinstance(v, dict):
        return "a map"
    if isinstance(v, list):
        return "an array"
    if v is None:
        return "null"
    return type(v).__name__


def _check(where, d, spec, secrets, strict):
    """Validate map `d` against `spec`; return a new dict with defaults filled in."""
    if not isinstance(d, dict):
        raise ConfigError("%s: expected a map, got %s" % (where or "config", _what(d, False)))
    out = {}
    known = []
    for name, kind, lo, hi, default in spec:
        known.append(name)
        key = where + "." + name if where else name
        if name not in d:
            if default is None:
                raise ConfigError("missing key %s: expected %s" % (key, _expect(kind, lo, hi)))
            if default is not _NODEF:
                out[name] = default
            continue
        v = d[name]
        secret = name in secrets
        ok = False
        if kind == "int":
            ok = isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
        elif kind == "bytes":
            ok = isinstance(v, (bytes, bytearray)) and lo <= len(v) <= hi
            if ok:
                v = bytes(v)
        elif kind == "text":
            ok = isinstance(v, str) and v in lo
        elif kind == "str":
            ok = text_problem(v, lo, hi) is None  # the one text grammar (protocol/text.py)
        elif kind == "bool":
            ok = isinstance(v, bool)
        elif kind == "map":
            ok = isinstance(v, dict)
        if not ok:
            raise ConfigError("invalid %s: expected %s, got %s" % (key, _expect(kind, lo, hi), _what(v, secret)))
        out[name] = v
    for k in d:
        if k not in known:
            if strict:
                raise ConfigError("unknown key %s%r in %s (known: %s)"
                                  % ("" if isinstance(k, str) else "non-text ", k, where or "config",
                                     ", ".join(known)))
            out[k] = d[k]
    return out


def _expect(kind, lo, hi):
    if kind == "int":
        return "the integer %d" % lo if lo == hi else "an integer %d..%d" % (lo, hi)
    if kind == "bytes":
        return "%d bytes" % lo if lo == hi else "%d..%d bytes" % (lo, hi)
    if kind == "text":
        return "one of " + ", ".join('"%s"' % x for x in lo)
    if kind == "str":
        return "text of %d..%d bytes without control characters" % (lo, hi)
    if kind == "bool":
        return "true or false"
    return "a map"


def validate(d):
    """Check a config dict; return it normalized (a new dict, defaults filled in, bytearrays
    as bytes). Raises ConfigError naming the first bad key."""
    out = _check("", d, _KEYS, SECRETS, True)
    # Duty-cycle rules live in the sampler: one definition of what a valid cycle is.
    from firmware.sampler import SamplerConfig

    try:
        SamplerConfig(out["report_interval_s"], out["warmup_s"], out["sample_window_s"], out["continuous"])
    except ValueError as e:
        raise ConfigError("invalid sampling settings: %s" % e)
    if "sim" in out:
        out["sim"] = _check("sim", out["sim"], _SIM_KEYS, (), False)
    if out["role"] == "gateway":
        if "uplink" not in out:
            raise ConfigError("missing key uplink: a gateway needs a map with broker_host and its Wi-Fi settings")
        up = _check("uplink", out["uplink"], _UPLINK_KEYS, UPLINK_SECRETS, True)
        if "client_id" not in up:
            up["client_id"] = "gw-%d" % out["node_id"]
        if not up["wifi_ssid"] and "sim" not in out:
            raise ConfigError("invalid uplink.wifi_ssid: expected the Wi-Fi network name (1..32 bytes), got ''")
        out["uplink"] = up
    elif "uplink" in out:
        raise ConfigError("invalid uplink: only a gateway has an uplink, this config's role is \"node\"")
    return out


def dump_config(d):
    """Return the CBOR bytes of config dict `d` after validating it (defaults written out).
    Raises ConfigError."""
    return cbor.dumps(validate(d))


class Config:
    """A validated config: one attribute per key (uplink and sim are dicts, None when absent).
    repr() and public_dict() never show secrets."""

    # One attribute per _KEYS entry (set in __init__; declared here for type checkers --
    # bare annotations cost nothing at run time on MicroPython).
    config_version: int
    node_id: int
    role: str
    net_id: int
    node_key: bytes
    mesh_key: bytes
    fleet_pub: bytes
    report_interval_s: int
    warmup_s: int
    sample_window_s: int
    continuous: bool
    sensor: str
    radio_channel: int
    uplink: dict
    sim: dict

    def __init__(self, d):
        d = validate(d)
        self._d = d
        for name, _, _, _, _ in _KEYS:
            setattr(self, name, d.get(name))

    def as_dict(self):
        """Return the full normalized config, secrets included (for saving it again)."""
        out = dict(self._d)
        for k in ("uplink", "sim"):
            if k in out:
                out[k] = dict(out[k])
        return out

    def public_dict(self):
        """Return the config without secrets (node_key, mesh_key, uplink.wifi_password), bytes
        as hex text: safe for logs and `fleet node info`."""
        out = {}
        for k in self._d:
            if k in SECRETS:
                continue
            v = self._d[k]
            if isinstance(v, dict):
                sub = {}
                for k2 in v:
                    if k == "uplink" and k2 in UPLINK_SECRETS:
                        continue
                    sub[k2] = _hexed(v[k2])
                v = sub
            out[k] = _hexed(v)
        return out

    def __repr__(self):
        return "Config(%r)" % (self.public_dict(),)


def _hexed(v):
    if isinstance(v, (bytes, bytearray)):
        return "".join("%02x" % b for b in v)
    return v


def parse_config(data):
    """Return the Config in CBOR bytes `data`. Raises ConfigError."""
    try:
        d = cbor.loads(data)
    except ProtocolError as e:
        raise ConfigError("config is not valid CBOR (%s)" % e)
    return Config(d)


def load_config(fs, path=CONFIG_PATH):
    """Read and validate the config file at `path` of filesystem adapter `fs`; return a Config.
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
        raise ConfigError("%s: %s; re-provision the node" % (path, e.msg))


def save_config(fs, d, path=CONFIG_PATH):
    """Validate `d` and write it to `path` atomically (temp file + rename). Raises ConfigError,
    OSError."""
    from firmware import fsutil

    fsutil.write_file(fs, path, dump_config(d))
