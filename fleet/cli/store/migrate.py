"""`fleet store migrate`."""

import click

from fleet.cli._options import home_option, store_option


@click.command("migrate")
@home_option
@store_option
def cli(home):
    """Bring the store's schema up to this tool's version (creating a new store's)."""
    store = home.store(create=True)
    try:
        before, after = store.migrate()
    finally:
        store.close()
    if before == after:
        click.echo(f"schema version {after}: up to date")
    elif before == 0:
        click.echo(f"new store: schema version {after}")
    else:
        click.echo(f"migrated the schema from version {before} to {after}")
