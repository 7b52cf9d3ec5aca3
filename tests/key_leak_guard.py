"""Every output of the CLI test suite is grepped for key bytes (issue 16: no secret byte in any
message). tests/conftest.py makes `guard_cli_output` autouse: each CliRunner.invoke (and each
tests/cli_run.run_fleet) is checked, as it returns, against every key of the fleet homes its
argv or environment names (--home DIR, REDMESH_HOME): the fleet secret, the signing seed, the
mesh key and the node keys of nodes 1..64, as raw bytes, hex, bytes-repr and base64
(cli_run.key_forms). A test that means to show a key (none today) would mark itself
`@pytest.mark.shows_keys`."""
import os

from click.testing import CliRunner

from fleet.home import CONFIG_NAME, KEYS_DIR, resolve_home_path
from protocol import auth

_NODES = range(1, 65)
_cache = {}


def _read(path, n=32):
    try:
        with open(path, "rb") as f:
            data = f.read(n + 1)
    except OSError:
        return None
    return data if len(data) == n else None


def _net_id(home):
    try:
        import tomllib

        with open(os.path.join(home, CONFIG_NAME), "rb") as f:
            v = tomllib.load(f).get("network", {}).get("id", 1)
        return v if isinstance(v, int) and 0 <= v <= 0xFFFFFFFF else 1
    except Exception:  # noqa: BLE001 - a test may have written any fleet.toml
        return 1


def home_secrets(home):
    """Every secret of the fleet home at `home` (empty when it has no keys)."""
    keys = os.path.join(home, KEYS_DIR)
    secret_path, seed_path = os.path.join(keys, "fleet.secret"), os.path.join(keys, "fleet_signing.key")
    stamp = []
    for p in (secret_path, seed_path, os.path.join(home, CONFIG_NAME)):
        try:
            st = os.stat(p)
            stamp.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            stamp.append(None)
    key = (home, tuple(stamp))
    if key not in _cache:
        out = []
        secret, seed = _read(secret_path), _read(seed_path)
        if seed is not None:
            out.append(seed)
        if secret is not None:
            net = _net_id(home)
            out.append(secret)
            out.append(auth.derive_mesh_key(secret, net))
            out += [auth.derive_node_key(secret, net, n) for n in _NODES]
        _cache[key] = out
    return _cache[key]


def homes_of(args, env=None):
    """The fleet homes an invocation uses: each --home DIR, REDMESH_HOME, else the default."""
    args = [a for a in (args or []) if isinstance(a, str)]
    out = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--home"]
    out += [a[len("--home="):] for a in args if a.startswith("--home=")]
    env_home = (env or {}).get("REDMESH_HOME") or os.environ.get("REDMESH_HOME")
    if env_home:
        out.append(env_home)
    if not out:
        out.append(resolve_home_path())
    return [os.path.abspath(h) for h in out]


def check(args, env, texts, raw):
    """Raise AssertionError if `texts`/`raw` hold a form of any key of the homes of `args`."""
    from cli_run import Ran, assert_no_key_bytes

    keys = []
    for h in homes_of(args, env):
        keys += home_secrets(h)
    if keys:
        assert_no_key_bytes(Ran(0, texts, "", raw), keys)


_real_invoke = CliRunner.invoke


def _checked_invoke(self, cli, args=None, *a, **kw):
    result = _real_invoke(self, cli, args, *a, **kw)
    arglist = args.split() if isinstance(args, str) else list(args or [])
    raw = (result.stdout_bytes or b"") + (result.stderr_bytes or b"")
    check(arglist, kw.get("env"), raw.decode("utf-8", "replace"), raw)
    return result


def install(monkeypatch):
    """Check every CliRunner.invoke of the running test."""
    monkeypatch.setattr(CliRunner, "invoke", _checked_invoke)
