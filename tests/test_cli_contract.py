"""The exit-code contract of `fleet` (README "Exit codes"): every command, walked from the Click
command tree, driven with property-based option values (Hypothesis) through the real entry
point, exits 0 (ok), 1 (failed / invalid / not found) or 2 (usage), with no "unexpected ... this
is a bug" line, no traceback and no byte of any key of the homes it uses (tests/cli_run.py).

Bounded and offline: at most 20 examples per command, in-process. What would need a board or a broker
fails fast by construction: serial ports that do not exist, a broker URL on a closed loopback
port (or one that does not parse, for the collector, which by design retries an unreachable
broker for ever), an address `sim broker` cannot bind, a MicroPython that is not there. Values
are appended after the fuzzed ones where they must win (click keeps an option's last value);
paths are drawn from files inside the test's directory, so nothing is written elsewhere. The
two commands that run a whole virtual rig (`sim up`, `verify throughput`) get their option
values converted and checked, then stop on a final out-of-range option (exit 2).
"""
import os
import socket

import click
import pytest
from cli_run import assert_clean, assert_no_key_bytes, run_fleet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet import ota_bundle, signing
from fleet.cli import group
from fleet.cli._options import TimeParam
from fleet.home import FleetHome


def _leaves(cmd=group, path=()):
    ctx = click.Context(group)
    if isinstance(cmd, click.Group):
        out = []
        for name in cmd.list_commands(ctx):
            out += _leaves(cmd.get_command(ctx, name), path + (name,))
        return out
    return [(path, cmd)]


LEAVES = _leaves()


def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return port


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A fleet home (keys, a store with nodes, a good and a damaged bundle) and a set of files
    any path option may be given."""
    tmp = tmp_path_factory.mktemp("contract")
    home = FleetHome(str(tmp / "home"))
    assert run_fleet(["keys", "init", "--home", home.path]).code == 0
    store = home.store(create=True)
    store.register_nodes([{"node": 1, "role": "gateway"}, {"node": 10}, {"node": 11}])
    store.close()
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "device"))
    import ota_fixtures as fx

    seed = home.keys().signing_seed()
    b = ota_bundle.build_bundle(fx.app_files(2), 2, "2.0.0", lambda m: signing.sign(seed, m))
    good = tmp / "good.rmota"
    good.write_bytes(b.encode())
    data = bytearray(b.encode())
    data[-50] ^= 1
    damaged = tmp / "damaged.rmota"
    damaged.write_bytes(bytes(data))
    garbage = tmp / "garbage.bin"
    garbage.write_bytes(os.urandom(300))
    sheet = tmp / "sheet.csv"
    sheet.write_text("port,node_id,pole\n/nonexistent/ttyUSB0,7,P7\n")
    src = tmp / "src"  # a tiny app tree for `ota build --src` (mpy-cross in milliseconds)
    for pkg in ("firmware", "protocol"):
        (src / pkg).mkdir(parents=True)
        (src / pkg / "__init__.py").write_text("X = 1\n")
    paths = [str(p) for p in (good, damaged, garbage, sheet, tmp / "missing.bin", tmp, tmp / "new-out.bin")]
    return {"tmp": tmp, "home": home, "paths": paths, "src": str(src), "closed": f"mqtt://127.0.0.1:{_closed_port()}"}


_HOSTILE_TEXT = ["", " ", "-1", "../../x", "1.0\nslot=b", "\x1b[31m", "\udca4\udcff", "x" * 300, "all", "1,2,3",
                 "gateways", "0", "nan", "inf", "-inf", "1e400", "99999999999999999999", "1_000", "0x10", "-",
                 "mqtt://[bad", "mqtt://127.0.0.1:0"]
_PLAUSIBLE_TEXT = ["1.0.0", "2.1.0-rc1", "esp32", "P-7", "all", "nodes", "10", "10,11", "pms5003", "poles",
                   "secret-pw", "xtensawin", "node", "gateway"]
# argv cannot hold NUL; surrogates stand for the non-UTF-8 bytes an argv may hold
_text = st.one_of(st.sampled_from(_PLAUSIBLE_TEXT), st.sampled_from(_HOSTILE_TEXT),
                  st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=24))


def _number_text(lo, hi, floats=False):
    edges = []
    for b in (lo, hi):
        if b is not None:
            edges += [b - 1, b, b + 1] if not floats else [b - 0.001, b, b + 0.001]
    nums = st.floats(allow_nan=True, allow_infinity=True) if floats else st.integers(-(10 ** 30), 10 ** 30)
    huge = st.sampled_from(["99999999999999999999", str(2 ** 63), str(-(2 ** 63) - 1), "1e400", "nan"])
    parts = [nums.map(repr if floats else str), huge, huge, st.sampled_from(_HOSTILE_TEXT)]
    if edges:
        parts.append(st.sampled_from([str(e) for e in edges]))
    if lo is not None or hi is not None:  # mostly values in range, to get past parsing
        lo_ = lo if lo is not None else hi - 1000
        hi_ = hi if hi is not None else lo + 1000
        valid = (st.floats(lo_, hi_) if floats else st.integers(lo_, hi_)).map(str)
        parts = [valid] * 6 + parts
    return st.one_of(*parts)


_TIMES = st.one_of(st.sampled_from(["-1h", "-30m", "2d", "1718000000", "2024-06-10T08:00:00Z", "2024-06-10T08:00",
                                     "-99999999999999w", "9999-12-31", "0", "4294967296"]), _text)


def _valid(param, world):
    """Values the option's type accepts (so that one hostile value elsewhere is what is tested)."""
    t = param.type
    if isinstance(t, click.Path):
        return st.just(world["paths"][0])
    if isinstance(t, click.Choice):
        return st.sampled_from(list(t.choices))
    if isinstance(t, TimeParam):
        return st.sampled_from(["-1h", "1718000000", "2024-06-10T08:00:00Z"])
    if isinstance(t, (click.IntRange, click.FloatRange)):
        lo = t.min if t.min is not None else (t.max - 100 if t.max is not None else 0)
        hi = t.max if t.max is not None else lo + 100
        if isinstance(t, click.IntRange):
            return st.integers(lo + bool(t.min_open), hi - bool(t.max_open)).map(str)
        return st.floats(lo, hi, exclude_min=t.min_open, exclude_max=t.max_open).map(str)
    if isinstance(t, click.types.IntParamType):
        return st.integers(0, 100).map(str)
    if isinstance(t, click.types.FloatParamType):
        return st.floats(0, 100).map(str)
    return st.sampled_from(_PLAUSIBLE_TEXT)


def _value(param, world):
    t = param.type
    if isinstance(t, TimeParam):
        return _TIMES
    if isinstance(t, click.Path):
        return st.sampled_from(world["paths"])
    if isinstance(t, click.Choice):
        return st.one_of(st.sampled_from(list(t.choices)), _text)
    if isinstance(t, click.FloatRange) or t is click.FLOAT or isinstance(t, click.types.FloatParamType):
        return _number_text(getattr(t, "min", None), getattr(t, "max", None), floats=True)
    if isinstance(t, click.IntRange) or isinstance(t, click.types.IntParamType):
        return _number_text(getattr(t, "min", None), getattr(t, "max", None))
    return _text


def _forced(path, world):
    """Options appended last so that the command fails fast (or stays inside the test dir)."""
    tmp = world["tmp"]
    name = " ".join(path)
    forced = {
        "collect": ["--broker", "mqtt://[bad"],
        "flash": ["--port", "/nonexistent/ttyUSB9"],
        "node info": ["--port", "/nonexistent/ttyUSB9"],
        "node logs": ["--port", "/nonexistent/ttyUSB9"],
        "node reset": ["--port", "/nonexistent/ttyUSB9"],
        "provision": ["--broker", world["closed"]],
        "ota push": ["--broker", world["closed"], "--timeout", "1"],
        "ota build": ["--src", world["src"], "--out", str(tmp / "built.rmota")],
        "sim broker": ["--host", "192.0.2.1"],  # TEST-NET-1: not an address of this machine
        "sim board": ["--micropython", "/nonexistent/micropython", "--flash", str(tmp / "flash"),
                      "--link", str(tmp / "link")],
        "sim des": ["--nodes", "5", "--minutes", "0.5"],
        "sim up": ["--nodes", "1"],              # out of range: parse, then stop (exit 2)
        "serve": ["--host", "192.0.2.1"],        # cannot bind: exit 1 at once
        "map": ["--out", str(tmp / "map.html")],
        "export": ["--out", str(tmp / "export.out")],
        "plot": ["--out", str(tmp / "plot.png")],
        "verify throughput": ["--nodes", "1"],   # idem
    }.get(name, [])
    return forced


PARSE_ONLY = ("sim up", "verify throughput")


@st.composite
def argv_for(draw, path, cmd, world):
    argv = list(path)
    tail = []
    # one option (the focus) gets any value, hostile ones included; the others mostly valid ones
    names = [p.name for p in cmd.params if isinstance(p, click.Option) and not p.is_flag]
    focus = draw(st.sampled_from(names)) if names else None
    for p in cmd.params:
        if isinstance(p, click.Argument):
            if isinstance(p.type, click.Path):  # mostly the good bundle, to get past the checks
                tail.append(draw(st.one_of(st.just(world["paths"][0]), st.sampled_from(world["paths"]))))
            else:
                tail.append(draw(st.one_of(_text, st.text("0123456789abcdefABCDEF", max_size=40))))
            continue
        opt = p.opts[-1] if p.opts[-1].startswith("--") else p.opts[0]
        if opt == "--home" or (p.hidden and opt != "--count"):
            continue
        if p.name != focus and not p.required and draw(st.integers(0, 3)) != 0:  # others: ~1 run in 4
            continue
        if p.is_flag:
            argv.append(opt)
            continue
        values = _value(p, world) if p.name == focus or draw(st.integers(0, 4)) == 0 else _valid(p, world)
        for _ in range(draw(st.integers(1, 2)) if p.multiple else 1):
            argv += [opt, draw(values)]
    argv += ["--"] if tail and any(a.startswith("-") for a in tail) else []
    argv += tail
    if any(isinstance(p, click.Option) and p.name == "home_dir" for p in cmd.params):
        # `keys init --force` gets a home of its own: the others keep the keys the bundles were signed with
        home = str(world["tmp"] / "keys-home") if path[0] == "keys" else world["home"].path
        argv[len(path):len(path)] = ["--home", home]
    forced = _forced(path, world)
    if " ".join(path) == "status" and "--watch" in argv:
        forced = forced + ["--count", "1"]
    if forced:
        at = argv.index("--") if "--" in argv else len(argv)
        argv[at:at] = forced
    return argv


@pytest.mark.parametrize("path,cmd", LEAVES, ids=[" ".join(p) for p, _ in LEAVES])
def test_every_command_keeps_the_exit_code_contract(world, path, cmd):
    @settings(max_examples=20, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(argv_for(path, cmd, world))
    def check(argv):
        r = run_fleet(argv, input="")
        assert_clean(r)
        assert_no_key_bytes(r, _secrets(world))
        if " ".join(path) in PARSE_ONLY:
            assert r.code == 2, r

    check()


def _numeric_options():
    out = []
    for path, cmd in LEAVES:
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.is_flag and isinstance(
                    p.type, (click.types.IntParamType, click.types.FloatParamType, TimeParam)):
                out.append((path, cmd, p))
    return out


NUMERIC = _numeric_options()
EXTREMES = ["99999999999999999999", str(2 ** 63), str(-(2 ** 63) - 1), "1e400", "nan", "-inf", "1" + "0" * 400,
            "-99999999999999w", "9999-12-31T23:59:59"]


@pytest.mark.parametrize("path,cmd,param", NUMERIC,
                         ids=[" ".join(p) + " " + q.opts[-1] for p, _, q in NUMERIC])
def test_every_numeric_option_survives_extreme_values(world, path, cmd, param):
    # systematic, beside the random walk above: each number option alone with each extreme value
    # (the other required options valid), e.g. `fleet status --gateway 99999999999999999999`
    opt = param.opts[-1]
    for value in EXTREMES:
        argv = list(path)
        if any(isinstance(p, click.Option) and p.name == "home_dir" for p in cmd.params):
            argv += ["--home", str(world["tmp"] / "keys-home") if path[0] == "keys" else world["home"].path]
        for p in cmd.params:
            if p.required and p is not param:
                v = world["paths"][0] if isinstance(p.type, click.Path) else "10"
                argv += [v] if isinstance(p, click.Argument) else [p.opts[-1], v]
        argv += [opt, value]
        forced = [a for a in _forced(path, world)]
        if opt in forced:  # our value must be the one used
            i = forced.index(opt)
            forced = forced[:i] + forced[i + 2:]
        if " ".join(path) == "status":
            forced += ["--count", "1"]
        argv[len(path):len(path)] = forced
        r = run_fleet(argv, input="")
        assert_clean(r)
        assert_no_key_bytes(r, _secrets(world))


def _secrets(world):
    """Every secret of the two homes the walk uses (`keys init --force` renews the second)."""
    if "secrets" not in world:
        keys = world["home"].keys()
        world["secrets"] = [keys.fleet_secret(), keys.signing_seed(), keys.mesh_key()] + [
            keys.node_key(n) for n in (1, 7, 10, 11)]
    out = list(world["secrets"])
    other = FleetHome(str(world["tmp"] / "keys-home"))
    if other.keys().exists():
        ks = other.keys()
        out += [ks.fleet_secret(), ks.signing_seed(), ks.mesh_key()]
    return out


def test_the_walk_sees_every_command():
    names = {" ".join(p) for p, _ in LEAVES}
    assert {"status", "readings", "decode", "ota build", "ota inspect", "ota push", "keys init", "provision",
            "node info", "sim des", "collect"} <= names
