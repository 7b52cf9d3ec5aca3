"""`fleet store info`."""
import json

import click

from fleet.cli._options import home_option, store_option


@click.command("info")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@home_option
@store_option
def cli(home, as_json):
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
