"""`fleet keys init`."""
import os

import click

from fleet.cli._options import home_option
from fleet.cli.keys._common import print_info


@click.command("init")
@click.option("--force", is_flag=True, help="Replace existing keys (every provisioned node must then be re-provisioned).")
@click.option("--json", "as_json", is_flag=True, help="Print paths and public key as JSON.")
@home_option
def cli(home, force, as_json):
    """Create the fleet secret and the Ed25519 signing key in the fleet home (files 0600)."""
    home.ensure()
    if not os.path.exists(home.config_path):
        # Pin the network id in fleet.toml now: every derived key depends on it.
        home.write_config({"network": {"id": home.net_id}})
    info = home.keys().init(force=force)
    print_info(info, as_json)
    click.echo(
        f"created the fleet keys in {info['keys_dir']}; back this directory up: without the fleet secret "
        f"no node can be verified or re-keyed",
        err=True,
    )
