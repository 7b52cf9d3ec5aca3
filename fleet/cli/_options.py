"""Options shared by fleet commands.

`home_option` adds `--home DIR` to a command and passes it a resolved `home`
(fleet.home.FleetHome: --home, else $REDMESH_HOME, else the per-user default). Nothing is read
until the command touches `home.config`, `home.store()` or `home.keys()`; command-line values
that override fleet.toml go through `home.with_overrides({'section.key': value})`.

    @click.command()
    @click.option("--broker")
    @home_option
    def cli(home, broker):
        home = home.with_overrides({"broker.url": broker})
"""
import functools
import math
import time

import click

from fleet.home import FleetHome
from fleet.timeparse import TIME_RANGE, U32_MAX, parse_time  # noqa: F401 - parse_time: API


def home_option(f):
    """Decorator: add `--home DIR` and call the command with `home=FleetHome`."""

    @click.option(
        "--home",
        "home_dir",
        type=click.Path(file_okay=False, dir_okay=True),
        default=None,
        metavar="DIR",
        help="Fleet home directory (default: $REDMESH_HOME, else $XDG_DATA_HOME/redmesh or ~/.local/share/redmesh).",
    )
    @functools.wraps(f)
    def wrapper(*args, home_dir=None, **kwargs):
        return f(*args, home=FleetHome.resolve(home_dir), **kwargs)

    return wrapper


def store_option(f):
    """Decorator, placed under @home_option: add `--store URL` (sqlite:///PATH or
    postgresql://...), which overrides fleet.toml store.url for this command."""

    @click.option("--store", "store_url", default=None, metavar="URL",
                  help="The fleet store: sqlite:///PATH or postgresql://... (default: fleet.toml store.url, "
                       "else fleet.db in the home).")
    @functools.wraps(f)
    def wrapper(*args, home, store_url=None, **kwargs):
        return f(*args, home=home.with_overrides({"store.url": store_url}), **kwargs)

    return wrapper




class BoundedInt(click.IntRange):
    """An integer option bounded on both sides (default 0..2**32-1, the protocol's u32)."""

    def __init__(self, min=0, max=U32_MAX):  # noqa: A002 - click's own parameter names
        super().__init__(min, max)


class BoundedFloat(click.FloatRange):
    """A finite number bounded on both sides (nan and inf refused), default 0..10**9."""

    def __init__(self, min=0.0, max=1e9, min_open=False):  # noqa: A002 - click's own parameter names
        super().__init__(min, max, min_open=min_open)

    def convert(self, value, param, ctx):
        v = super().convert(value, param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return v


# A node id as the protocol carries it (node-id = u32 in protocol/redmesh.cddl).
NODE_ID = BoundedInt(0, U32_MAX)



class TimeParam(click.ParamType):
    """A reading time (see parse_time); a usage error names the accepted forms and range."""

    name = "TIME"

    def convert(self, value, param, ctx):
        try:
            return parse_time(str(value), time.time())
        except ValueError as e:
            self.fail(str(e), param, ctx)
