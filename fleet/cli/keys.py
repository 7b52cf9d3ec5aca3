"""`fleet keys init|show` — the fleet secret and the fleet's Ed25519 signing key.

Only public data is ever printed: file paths, the network id, the public key and its
fingerprint. The secrets stay in their 0600 files (see fleet/keys.py).
"""
import json
import os

import click

from fleet.cli._options import home_option


@click.group()
def cli():
    """Create and inspect the fleet keys (secret never printed)."""


def _print_info(info, as_json):
    if as_json:
        click.echo(json.dumps(info))
        return
    click.echo(f"keys dir:         {info['keys_dir']}")
    click.echo(f"network id:       {info['net_id']}")
    click.echo(f"fleet secret:     {info['secret_file']}")
    click.echo(f"signing key:      {info['signing_key_file']}")
    click.echo(f"public key file:  {info['public_key_file']}")
    click.echo(f"public key:       {info['public_key'] or '-'}")
    click.echo(f"fingerprint:      {info['fingerprint'] or '-'}")


@cli.command("init")
@click.option("--force", is_flag=True, help="Replace existing keys (every provisioned node must then be re-provisioned).")
@click.option("--json", "as_json", is_flag=True, help="Print paths and public key as JSON.")
@home_option
def init_cmd(home, force, as_json):
    """Create the fleet secret and the Ed25519 signing key in the fleet home (files 0600)."""
    home.ensure()
    if not os.path.exists(home.config_path):
        # Pin the network id in fleet.toml now: every derived key depends on it.
        home.write_config({"network": {"id": home.net_id}})
    info = home.keys().init(force=force)
    _print_info(info, as_json)
    click.echo(
        f"created the fleet keys in {info['keys_dir']}; back this directory up: without the fleet secret "
        f"no node can be verified or re-keyed",
        err=True,
    )


@cli.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@home_option
def show_cmd(home, as_json):
    """Print the key file paths and the public key (never the secrets)."""
    keys = home.keys()
    info = keys.info()
    if info["initialised"]:
        keys.fleet_secret()  # refuses unsafe permissions now rather than at first use
        keys.signing_seed()
    _print_info(info, as_json)
    if not info["initialised"]:
        click.echo(f"no fleet keys in {info['keys_dir']}: run `fleet keys init`", err=True)
