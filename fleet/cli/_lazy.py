"""The command classes of `fleet`: the one lazy command group (subcommands named in a
{name: module} map, each module defining `cli`, imported only when used: a fast `--help`, and a
broken command cannot take the tool down), and the one place where the services' FleetErrors
become Click's errors (one line, `Error: ...`, exit status 1)."""
import contextlib
import importlib

import click

from fleet.errors import FleetError


@contextlib.contextmanager
def click_errors():
    """Turn a FleetError raised inside into the ClickException Click prints and exits with."""
    try:
        yield
    except FleetError as e:
        err = click.ClickException(e.message)
        err.exit_code = e.exit_code
        raise err from None


class FleetCommand(click.Command):
    """A command run on its own (`python -m fleet.cli.collect`, a test's CliRunner)."""

    def invoke(self, ctx):
        with click_errors():
            return super().invoke(ctx)


class FleetGroup(click.Group):
    """A group: its subcommands' FleetErrors (parsing included) become Click's."""

    command_class = FleetCommand

    def invoke(self, ctx):
        with click_errors():
            return super().invoke(ctx)


def lazy_group(commands):
    """Return a FleetGroup class whose subcommands are `commands` ({name: module path})."""

    class LazyGroup(FleetGroup):
        def list_commands(self, ctx):
            return sorted(commands)

        def get_command(self, ctx, name):
            mod = commands.get(name)
            return importlib.import_module(mod).cli if mod else None

    return LazyGroup
