"""The host's side of the node config file (firmware/config.py holds its format): the complete
validation `fleet provision` and the rig run before a config is written, its CBOR bytes, and a
view without secrets. A node never imports this module (it checks again only what it needs to
run, firmware/config.py normalize); it stays in the MicroPython subset so the same tests run on
both interpreters.

Rules: text keys only; unknown top-level keys, wrong types and out-of-range values are errors
(a typo must not silently fall back to a default on a pole 8 m up); optional keys get the
defaults of firmware/config.py KEYS. A ConfigError names the key, what was expected and what
arrived — never the value of a secret (node_key, mesh_key, uplink.wifi_password).
"""
from firmware.config import (
    CONFIG_PATH,
    KEYS,
    SECRETS,
    SIM_KEYS,
    UPLINK_KEYS,
    UPLINK_SECRETS,
    Config,
    ConfigError,
    kind_ok,
    normalize,
)
from protocol import cbor


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


def _check(where, d, spec, secrets, strict):
    """Explain the first problem of map `d` against `spec` (ConfigError), if any."""
    if not isinstance(d, dict):
        raise ConfigError("%s: expected a map, got %s" % (where or "config", _what(d, False)))
    known = [s[0] for s in spec]
    for name, kind, lo, hi, default in spec:
        key = where + "." + name if where else name
        if name not in d:
            if default is None:
                raise ConfigError("missing key %s: expected %s" % (key, _expect(kind, lo, hi)))
            continue
        v = d[name]
        if not kind_ok(kind, v, lo, hi):
            raise ConfigError("invalid %s: expected %s, got %s" % (key, _expect(kind, lo, hi),
                                                                   _what(v, name in secrets)))
    if strict:
        for k in d:
            if k not in known:
                raise ConfigError("unknown key %s%r in %s (known: %s)"
                                  % ("" if isinstance(k, str) else "non-text ", k, where or "config",
                                     ", ".join(known)))


def validate(d):
    """Check a config dict completely; return it normalized (a new dict, defaults filled in,
    bytearrays as bytes). Raises ConfigError naming the first bad key."""
    _check("", d, KEYS, SECRETS, True)
    if "sim" in d:
        _check("sim", d["sim"], SIM_KEYS, (), False)
    if d["role"] == "gateway":
        if "uplink" in d:
            up = d["uplink"]
            _check("uplink", up, UPLINK_KEYS, UPLINK_SECRETS, True)
            if not up.get("wifi_ssid") and "sim" not in d:
                raise ConfigError("invalid uplink.wifi_ssid: expected the Wi-Fi network name (1..32 bytes), got ''")
    elif "uplink" in d:
        raise ConfigError("invalid uplink: only a gateway has an uplink, this config's role is \"node\"")
    return normalize(d)  # what the node checks too: defaults, the sampler's duty-cycle rules


def dump_config(d):
    """Return the CBOR bytes of config dict `d` after validating it (defaults written out).
    Raises ConfigError."""
    return cbor.dumps(validate(d))


def save_config(fs, d, path=CONFIG_PATH):
    """Validate `d` and write it to `path` atomically (temp file + rename). Raises ConfigError,
    OSError."""
    from firmware import fsutil

    fsutil.write_file(fs, path, dump_config(d))


def public_dict(cfg):
    """Return Config `cfg` without secrets (node_key, mesh_key, uplink.wifi_password), bytes as
    hex text: safe for logs and `fleet node info`."""
    d = cfg.as_dict() if isinstance(cfg, Config) else cfg
    out = {}
    for k in d:
        if k in SECRETS:
            continue
        v = d[k]
        if isinstance(v, dict):
            sub = {}
            for k2 in v:
                if k == "uplink" and k2 in UPLINK_SECRETS:
                    continue
                sub[k2] = _hexed(v[k2])
            v = sub
        out[k] = _hexed(v)
    return out


def _hexed(v):
    if isinstance(v, (bytes, bytearray)):
        return "".join("%02x" % b for b in v)
    return v

