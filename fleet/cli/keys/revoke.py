"""`fleet keys revoke`."""
import json

import click

from fleet.cli._options import NODE_ID, home_option
from fleet.cli.keys._common import when


@click.command("revoke")
@click.argument("node", type=NODE_ID)
@click.option("--reason", required=True, metavar="TEXT", help="Why (kept in the revocation list), e.g. a ticket number.")
@click.option("--json", "as_json", is_flag=True, help="Print the entry as JSON.")
@home_option
def cli(home, node, reason, as_json):
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
        click.echo(f"node {node} revoked at {when(entry['at'])}: {entry['reason']}")
    else:
        click.echo(f"node {node} was already revoked at {when(entry['at'])}: {entry['reason']}")
    if registered is False:
        click.echo(f"warning: node {node} is not registered in the store (revoked anyway)", err=True)
    if new:
        click.echo("next: a running collector refuses its frames within a second; rotate the mesh key so the stolen "
                   "key stops passing hop tags (README, \"When a pole is stolen\")", err=True)
