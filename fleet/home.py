"""The fleet home: one directory holding the store, the keystore and `fleet.toml`.

Where it is, first match wins:
  1. `--home DIR` on the command line;
  2. the `REDMESH_HOME` environment variable;
  3. `$XDG_DATA_HOME/redmesh` (XDG base-directory spec), else `~/.local/share/redmesh`.

Layout:
  fleet.toml        settings (this module validates them; see SCHEMA)
  fleet.db          the SQLite store (fleet.store.SQLiteStore), plus its -wal/-shm files, unless
                    fleet.toml store.url (or --store URL) names another store
  keys/             the keystore (fleet.keys.Keystore), directory 0700, secret files 0600

Settings: defaults (SCHEMA) < fleet.toml < command-line overrides. `fleet.toml` is read with
`tomllib`; it is written by `dump_toml` below (tomllib cannot write, and a tiny writer for flat
sections of scalars is all we need). Sections listed in SCHEMA are validated key by key: an
unknown key or a wrong type is an error naming the key, the expected type and what arrived.
Sections not in SCHEMA are kept as read, unvalidated, for commands that add their own; add a
section to SCHEMA to have it checked.
"""
import json
import os
import re
import tomllib

from fleet.errors import FleetError

ENV_HOME = "REDMESH_HOME"
CONFIG_NAME = "fleet.toml"
STORE_NAME = "fleet.db"
KEYS_DIR = "keys"


def _choice(*allowed):
    def check(v):
        return None if v in allowed else f"one of {', '.join(repr(a) for a in allowed)}"
    return check


def _range(lo, hi=None):
    def check(v):
        if v < lo or (hi is not None and v > hi):
            return f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        return None
    return check


# section -> key -> (type, default, check or None). Types: int, float, str, bool.
SCHEMA = {
    "network": {
        # Network id: mixed into every derived key, so two meshes never accept each other's frames.
        "id": (int, 1, _range(0, 0xFFFFFFFF)),
    },
    "broker": {
        "url": (str, "mqtt://127.0.0.1:1883", None),
    },
    "store": {
        # sqlite:///PATH or postgresql://...; empty: the SQLite file fleet.db in the home.
        "url": (str, "", None),
        # raw readings older than this many days are dropped (by the collector that repairs gaps,
        # once an hour; PostgreSQL: a whole month at a time); hourly sums stay. 0: keep them all.
        "retention_days": (int, 0, _range(0, 100000)),
    },
    "collector": {
        "client_id": (str, "redmesh-collector", None),
        "batch_rows": (int, 5000, _range(1, 100000)),
        "flush_interval_ms": (int, 500, _range(1, 3600000)),
        # resend requests down source routes (issue 15); false: every request flooded, for a
        # mesh whose firmware predates routed frames
        "route_commands": (bool, True, None),
        # the nodes' TTL (firmware/mesh_params.py max_hops), which scoped resend floods are
        # reckoned from; set 32 while any node or gateway runs firmware from before the TTL of 48
        "mesh_ttl": (int, 48, _range(1, 255)),
    },
    "status": {
        "stale_after_s": (int, 300, _range(1, 0xFFFFFFFF)),
        "offline_after_s": (int, 1800, _range(1, 0xFFFFFFFF)),
        "aqi": (str, "ica", _choice("ica", "epa")),
        "rh_correction": (str, "none", _choice("none", "epa2021", "kappa")),
    },
}

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def default_home_path():
    """Return the per-user default home: $XDG_DATA_HOME/redmesh or ~/.local/share/redmesh."""
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec says to ignore relative values
        return os.path.join(xdg, "redmesh")
    return os.path.join(os.path.expanduser("~"), ".local", "share", "redmesh")


def resolve_home_path(home=None):
    """Return the absolute fleet home path: `home`, else $REDMESH_HOME, else the default."""
    path = home or os.environ.get(ENV_HOME) or default_home_path()
    return os.path.abspath(os.path.expanduser(path))


def _check_value(where, section, key, value):
    spec = SCHEMA[section].get(key)
    if spec is None:
        known = ", ".join(sorted(SCHEMA[section]))
        raise FleetError(f"{where}: unknown key '{section}.{key}' (known keys in [{section}]: {known})")
    typ, _default, check = spec
    ok = isinstance(value, typ) and not (typ is not bool and isinstance(value, bool))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise FleetError(
            f"{where}: '{section}.{key}' must be {_TYPE_NAMES[typ]}, got {type(value).__name__} {value!r}"
        )
    if check is not None:
        problem = check(value)
        if problem:
            raise FleetError(f"{where}: '{section}.{key}' must be {problem}, got {value!r}")
    return value


def default_config():
    """Return a fresh config dict (section -> key -> value) holding every default in SCHEMA."""
    return {sec: {k: spec[1] for k, spec in keys.items()} for sec, keys in SCHEMA.items()}


def validate_config(raw, where):
    """Merge `raw` (as parsed from TOML) over the defaults and check it; `where` names the source
    in error messages. Returns the merged config; raises FleetError naming the bad key."""
    config = default_config()
    if not isinstance(raw, dict):
        raise FleetError(f"{where}: expected a table of sections")
    for section, values in raw.items():
        if section not in SCHEMA:
            config[section] = values  # another command's section: kept as read
            continue
        if not isinstance(values, dict):
            raise FleetError(f"{where}: '{section}' must be a [{section}] table, got {values!r}")
        for key, value in values.items():
            config[section][key] = _check_value(where, section, key, value)
    st = config["status"]
    if st["stale_after_s"] >= st["offline_after_s"]:
        raise FleetError(
            f"{where}: 'status.stale_after_s' ({st['stale_after_s']}) must be below "
            f"'status.offline_after_s' ({st['offline_after_s']})"
        )
    return config


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(k):
    return k if _BARE_KEY.match(k) else json.dumps(k)


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        # A JSON string is a valid TOML basic string (same escapes, \uXXXX included).
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} {v!r} to TOML")


def dump_toml(config):
    """Return TOML text for `config`: a dict of sections, each a dict of scalars or lists."""
    out = []
    for section, values in config.items():
        if not isinstance(values, dict):
            raise TypeError(f"top-level TOML value {section!r} must be a section (dict)")
        out.append(f"[{_toml_key(section)}]")
        for k, v in values.items():
            out.append(f"{_toml_key(k)} = {_toml_value(v)}")
        out.append("")
    return "\n".join(out)


class FleetHome:
    """A fleet home directory. `config` is loaded lazily (and validated) on first use;
    `overrides` maps 'section.key' to values from the command line (None = not given)."""

    def __init__(self, path, overrides=None):
        self.path = os.path.abspath(path)
        self.config_path = os.path.join(self.path, CONFIG_NAME)
        self.store_path = os.path.join(self.path, STORE_NAME)
        self.keys_path = os.path.join(self.path, KEYS_DIR)
        self._overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        self._config = None
        self._keys = None

    @classmethod
    def resolve(cls, home=None, overrides=None):
        """Return the FleetHome chosen by `home`, $REDMESH_HOME or the default (see module doc)."""
        return cls(resolve_home_path(home), overrides)

    def __repr__(self):
        return f"FleetHome({self.path!r})"

    def with_overrides(self, overrides):
        """Return a FleetHome on the same directory with more command-line overrides
        ('section.key' -> value; None values are ignored)."""
        merged = dict(self._overrides)
        merged.update({k: v for k, v in overrides.items() if v is not None})
        return FleetHome(self.path, merged)

    def exists(self):
        return os.path.isdir(self.path)

    def ensure(self):
        """Create the home directory (0700: it holds the keystore) if missing; return self."""
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        return self

    def read_file_config(self):
        """Return fleet.toml as parsed (no defaults merged), {} if absent; FleetError if bad."""
        try:
            with open(self.config_path, "rb") as f:
                return tomllib.load(f)
        except FileNotFoundError:
            return {}
        except tomllib.TOMLDecodeError as e:
            raise FleetError(f"{self.config_path} is not valid TOML ({e}); fix it, or move it aside to use defaults") from e
        except UnicodeDecodeError as e:
            raise FleetError(f"{self.config_path} is not UTF-8 text (byte {e.start}); TOML is UTF-8: fix it, or "
                             f"move it aside to use defaults") from e
        except RecursionError as e:
            raise FleetError(f"{self.config_path} nests arrays or tables too deeply to be settings; fix it, or "
                             f"move it aside to use defaults") from e
        except OSError as e:
            raise FleetError(f"cannot read {self.config_path}: {e.strerror}") from e

    @property
    def config(self):
        """The merged, validated settings: defaults < fleet.toml < overrides."""
        if self._config is None:
            config = validate_config(self.read_file_config(), self.config_path)
            for dotted, value in self._overrides.items():
                section, _, key = dotted.partition(".")
                if section in SCHEMA:
                    value = _check_value("command line", section, key, value)
                config.setdefault(section, {})[key] = value
            st = config["status"]
            if st["stale_after_s"] >= st["offline_after_s"]:
                raise FleetError(
                    f"stale threshold ({st['stale_after_s']} s) must be below the offline threshold "
                    f"({st['offline_after_s']} s); check the options and {self.config_path}"
                )
            self._config = config
        return self._config

    def get(self, section, key):
        """Return one setting, e.g. home.get('broker', 'url')."""
        return self.config[section][key]

    @property
    def net_id(self):
        return self.config["network"]["id"]

    @property
    def broker_url(self):
        return self.config["broker"]["url"]

    def write_config(self, updates):
        """Merge `updates` (section -> key -> value) into fleet.toml, validate, write atomically.

        Keeps what the file already holds; creates the home if needed. Returns the new config."""
        raw = self.read_file_config()
        for section, values in updates.items():
            raw.setdefault(section, {}).update(values)
        config = validate_config(raw, "settings to write")
        self.ensure()
        tmp = f"{self.config_path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("# Red Mesh fleet settings (see fleet/home.py for every key and its default)\n")
            f.write(dump_toml(raw))
        os.replace(tmp, self.config_path)
        self._config = None
        return config

    @property
    def store_url(self):
        """The store's URL: fleet.toml store.url (or --store), else sqlite:/// + the home's fleet.db."""
        url = self.config["store"]["url"]
        return url or "sqlite:///" + self.store_path.lstrip("/")

    def store(self, create=False, pooled=False):
        """Open the store named by store_url (fleet.store.open_url). Unless `create`, a missing
        SQLite file is a FleetError that says how to make one."""
        from fleet.store import open_url, parse_url

        backend, path = parse_url(self.store_url, self.path)
        if backend == "sqlite":
            if not create and not os.path.exists(path):
                raise FleetError(
                    f"no fleet store at {path}: start the collector (`fleet collect`) or the "
                    f"virtual rig (`fleet sim up`) to create one, or point --home / ${ENV_HOME} at an existing home"
                )
            if not create and os.path.isfile(path) and os.path.getsize(path) == 0:
                # SQLite would take a 0-byte file for a new database and this read would re-create
                # the schema, hiding a wiped store
                raise FleetError(
                    f"the fleet store {path} is empty (0 bytes): it was wiped or truncated. Restore it "
                    f"from a backup, or remove the file to start a new store (`fleet collect` creates one)"
                )
            if create:
                self.ensure()
                os.makedirs(os.path.dirname(path), exist_ok=True)
        return open_url(self.store_url, self.path, pooled=pooled)

    def keys(self):
        """Return the keystore (fleet.keys.Keystore) of this home, bound to the network id."""
        if self._keys is None:
            from fleet.keys import Keystore

            self._keys = Keystore(self.keys_path, self.net_id)
        return self._keys
