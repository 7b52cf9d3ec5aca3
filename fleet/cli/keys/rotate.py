"""`fleet keys rotate` — hand every node the next mesh key, then switch the fleet to it."""
import asyncio
import json

import click

from fleet import key_rotation
from fleet.cli._options import home_option
from fleet.errors import FleetError


@click.command("rotate")
@click.option("--grace", "grace_s", type=click.FloatRange(0, key_rotation.MAX_GRACE_S), default=600.0,
              show_default=True,
              help="Seconds both epochs are accepted after activation (frames in flight are not lost); at most "
                   "3000 (a node ends a grace window by itself after an hour).")
@click.option("--min-confirmed", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="Share of the nodes that must confirm the next key before it is activated; the rest are "
                   "left out (listed as missed): they ask for the key when they hear the new epoch.")
@click.option("--min-rounds", type=click.IntRange(1, 8), default=3, show_default=True,
              help="With --min-confirmed under 1: times each node that has not confirmed must have been sent the "
                   "key before activation (its confirmations may be lost on the way, e.g. through a stolen pole).")
@click.option("--resend-every", "resend_s", type=click.FloatRange(1), default=30.0, show_default=True,
              help="Seconds between re-key commands to the nodes that have not confirmed.")
@click.option("--timeout", "timeout_s", type=click.IntRange(1), default=None,
              help="Stop driving the campaign after this many seconds (it stays recorded: run again to resume).")
@click.option("--abort", "do_abort", is_flag=True, help="Abort the running campaign (before activation only).")
@click.option("--broker", "broker_url", default=None, metavar="URL",
              help="mqtt://host:port (default: broker.url of fleet.toml; `fleet sim up` writes it).")
@click.option("--json", "as_json", is_flag=True, help="Print the final campaign status as JSON.")
@home_option
def cli(home, grace_s, min_confirmed, min_rounds, resend_s, timeout_s, do_abort, broker_url, as_json):
    """Rotate the mesh key: the next epoch's key goes to every node that is not revoked, wrapped
    with that node's own key; once they confirm, one signed command activates it fleet-wide, and
    after the grace window the old key (a stolen node's) fails every hop tag. Resumes a campaign
    that was interrupted. Progress goes to stderr; `fleet keys rotation` shows it from another
    console. Needs a running collector (it stores the nodes' confirmations)."""
    if do_abort:
        camp = key_rotation.abort(home)
        click.echo(f"key rotation to epoch {camp['epoch']} aborted: epoch {camp['from_epoch']} stays in force")
        return
    from fleet.collector_mqtt import parse_broker_url

    host, port = parse_broker_url(broker_url or home.broker_url)  # a bad URL records no campaign
    camp = key_rotation.load(home)
    if camp is not None and camp["state"] in key_rotation.ACTIVE_STATES:
        click.echo(f"keys: resuming the rotation to epoch {camp['epoch']} ({camp['state']})", err=True)
    else:
        camp = key_rotation.start(home, min_confirmed=min_confirmed, grace_s=grace_s, min_rounds=min_rounds)
        click.echo(f"keys: rotation from epoch {camp['from_epoch']} to {camp['epoch']}: {len(camp['targets'])} "
                   f"node(s), {len(camp['excluded'])} revoked left out", err=True)
    import aiomqtt

    try:
        asyncio.run(key_rotation.run(home, broker_url=broker_url, timeout_s=timeout_s, resend_s=resend_s,
                                     log=lambda m: click.echo(m, err=True)))
    except (aiomqtt.MqttError, OSError) as e:
        raise FleetError(f"cannot reach the MQTT broker at {host}:{port} ({e}): the campaign stays recorded; "
                         f"start the broker (or fix --broker) and run `fleet keys rotate` again") from None
    st = key_rotation.status(home)
    if as_json:
        click.echo(json.dumps(st))
        return
    c = st["campaign"]
    totals = ", ".join(f"{k} {v}" for k, v in sorted(st["totals"].items()))
    click.echo(f"key rotation to epoch {c['epoch']}: {c['state']} ({totals})")
    if c["state"] in key_rotation.ACTIVE_STATES:
        raise SystemExit(1)  # not finished (timeout): run again to resume
