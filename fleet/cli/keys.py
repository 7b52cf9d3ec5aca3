"""`fleet keys init|show|revoke|revoked` — the fleet secret, the fleet's Ed25519 signing key,
and the revocation list (a stolen pole: see README "When a pole is stolen").

Only public data is ever printed: file paths, the network id, the public key and its
fingerprint. The secrets stay in their 0600 files (see fleet/keys.py).
"""
import json
import os

import click

from fleet.cli._options import NODE_ID, home_option


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


def _when(at):
    import time

    return "-" if not at else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(at))


@cli.command("revoke")
@click.argument("node", type=NODE_ID)
@click.option("--reason", required=True, metavar="TEXT", help="Why (kept in the revocation list), e.g. a ticket number.")
@click.option("--json", "as_json", is_flag=True, help="Print the entry as JSON.")
@home_option
def revoke_cmd(home, node, reason, as_json):
    """Revoke NODE (e.g. its pole was stolen): the collector refuses its frames from now on
    (counted as `revoked` rejects, shown by `fleet status`), no command is sent to it, and it is
    left out of the next mesh key epoch. Cannot be undone: a recovered board is re-provisioned
    under a new node id."""
    if node == 0:
        raise click.BadParameter("0 means every node; give one node id", param_hint="NODE")
    keys = home.keys()
    keys.fleet_secret()  # the fleet must exist (and its key files be safe) before it revokes
    registered = None
    try:
        store = home.store()
        try:
            registered = store.node(node) is not None
        finally:
            store.close()
    except Exception:  # noqa: BLE001 - no store yet: revoking still protects the collector
        registered = None
    entry, new = keys.revoke(node, reason)
    out = {"node": node, "reason": entry["reason"], "at": entry["at"], "newly_revoked": new, "registered": registered}
    if as_json:
        click.echo(json.dumps(out))
    elif new:
        click.echo(f"node {node} revoked at {_when(entry['at'])}: {entry['reason']}")
    else:
        click.echo(f"node {node} was already revoked at {_when(entry['at'])}: {entry['reason']}")
    if registered is False:
        click.echo(f"warning: node {node} is not registered in the store (revoked anyway)", err=True)
    if new:
        click.echo("next: a running collector refuses its frames within a second; rotate the mesh key so the stolen "
                   "key stops passing hop tags (README, \"When a pole is stolen\")", err=True)


@cli.command("revoked")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@home_option
def revoked_cmd(home, as_json):
    """List the revoked nodes, with reason and time."""
    rev = home.keys().revoked()
    if as_json:
        click.echo(json.dumps([{"node": n, **v} for n, v in sorted(rev.items())]))
        return
    if not rev:
        click.echo("no revoked nodes")
        return
    for n, v in sorted(rev.items()):
        click.echo(f"{n:>10}  {_when(v['at'])}  {v['reason']}")
