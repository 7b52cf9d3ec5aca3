"""The one lazy command group: subcommands named in a {name: module} map, each module defining
`cli`, imported only when used (fast `--help`; a broken command cannot take the tool down)."""
import importlib

import click


def lazy_group(commands):
    """Return a click.Group class whose subcommands are `commands` ({name: module path})."""

    class LazyGroup(click.Group):
        def list_commands(self, ctx):
            return sorted(commands)

        def get_command(self, ctx, name):
            mod = commands.get(name)
            return importlib.import_module(mod).cli if mod else None

    return LazyGroup
