"""`fleet keys show`."""

import click

from fleet.cli._options import home_option
from fleet.cli.keys._common import print_info


@click.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@home_option
def cli(home, as_json):
    """Print the key file paths and the public key (never the secrets)."""
    keys = home.keys()
    info = keys.info()
    if info["initialised"]:
        keys.fleet_secret()  # refuses unsafe permissions now rather than at first use
        keys.signing_seed()
    print_info(info, as_json)
    if not info["initialised"]:
        click.echo(f"no fleet keys in {info['keys_dir']}: run `fleet keys init`", err=True)
