"""`fleet keys rotation` — where the mesh key rotation stands."""
import json

import click

from fleet import key_rotation
from fleet.cli._options import home_option
from fleet.cli.keys._common import when


@click.command("rotation")
@click.option("--json", "as_json", is_flag=True, help="Print the campaign and every node's state as JSON.")
@home_option
def cli(home, as_json):
    """Show the mesh key epoch in force and the last rotation: per node pending, sent,
    confirmed, missed (left out at activation) or revoked."""
    ep = home.keys().epoch_state()
    st = key_rotation.status(home)
    if as_json:
        click.echo(json.dumps({"epoch": ep, **st}))
        return
    other = "" if ep["other"] is None else f" (epoch {ep['other']} also accepted)"
    click.echo(f"mesh key epoch in force: {ep['epoch']}{other}")
    c = st["campaign"]
    if c is None:
        click.echo("no key rotation yet (`fleet keys rotate`)")
        return
    totals = ", ".join(f"{k} {v}" for k, v in sorted(st["totals"].items()))
    click.echo(f"rotation to epoch {c['epoch']}: {c['state']}, started {when(c['started_at'])}, "
               f"activated {when(c['activated_at'])}: {totals}")
    missed = [r["node"] for r in st["nodes"] if r["state"] in ("missed", "pending", "sent")]
    if missed:
        shown = ", ".join(map(str, missed[:20])) + (" ..." if len(missed) > 20 else "")
        click.echo(f"not confirmed: {shown}")
