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

import click

from fleet.home import FleetHome


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
