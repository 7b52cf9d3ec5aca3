"""`fleet store info|migrate` — which store the fleet uses, its schema version and size.

`info` shows the backend, the URL, the schema version (the store's and this tool's), rows per
table and the size on disk; `migrate` brings an older store's schema up to this tool's version
(in one transaction: all or nothing) and says from which version to which. A store newer than
the tool is refused (upgrade redmesh). Exit status 1 when the store cannot be opened.
"""
import json

import click

from fleet.cli._options import home_option, store_option


@click.group()
def cli():
    """Inspect or migrate the fleet store."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@home_option
@store_option
def info(home, as_json):
    """Show the store's backend, URL, schema version, rows per table and size."""
    store = home.store()
    try:
        i = store.info()
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(i, sort_keys=True))
        return
    click.echo(f"backend         {i['backend']}")
    click.echo(f"url             {i['url']}")
    click.echo(f"schema version  {i['schema_version']} (this tool: {i['code_schema_version']})")
    click.echo(f"size            {i['size_bytes'] / 1e6:.1f} MB")
    for table, n in i["rows"].items():
        click.echo(f"rows {table:<17} {n}")


@cli.command()
@home_option
@store_option
def migrate(home):
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
