"""What the `fleet keys` subcommands share."""
import json

import click


def print_info(info, as_json):
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


def when(at):
    import time

    return "-" if not at else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(at))
