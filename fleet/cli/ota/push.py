"""`fleet ota push BUNDLE` — seed a bundle through the gateways and roll it out in stages."""
import asyncio
import json

import click

from fleet import ota_campaign
from fleet.cli._options import home_option
from fleet.errors import FleetError


@click.command("push")
@click.argument("bundle", type=click.Path(dir_okay=False, exists=True))
@click.option("--to", "to", default="all", show_default=True, metavar="all|IDS|GROUP",
              help="Targets: all, node ids (3,5,8), gateways, nodes, or a pole prefix.")
@click.option("--canary", type=click.IntRange(0), default=0, show_default=True,
              help="Nodes updated first, alone; the rest wait until they are done.")
@click.option("--halt-after", "halt_after", type=click.IntRange(1), default=1, show_default=True,
              help="Halt the campaign when this many nodes have rolled back.")
@click.option("--wave-timeout", "wave_timeout_s", type=click.IntRange(10), default=900, show_default=True,
              help="Seconds a wave may take before the next one is allowed anyway.")
@click.option("--timeout", "timeout_s", type=click.IntRange(1), default=None,
              help="Stop driving the campaign after this many seconds (it stays running: push again later).")
@click.option("--broker", "broker_url", default=None, metavar="URL",
              help="mqtt://host:port (default: broker.url of fleet.toml; `fleet sim up` writes it).")
@click.option("--json", "as_json", is_flag=True, help="Print the final campaign status as JSON.")
@home_option
def cli(home, bundle, to, canary, halt_after, wave_timeout_s, timeout_s, broker_url, as_json):
    """Push BUNDLE: publish it to the gateways (one page per MQTT message), then allow nodes to
    install it wave by wave — canaries, leaves, relays, gateways — until every target is
    confirmed, rolled back or refused, or the campaign halts. Progress goes to stderr; follow it
    from another console with `fleet ota status`, stop it with `fleet ota abort`."""
    from fleet.collector_mqtt import parse_broker_url

    host, port = parse_broker_url(broker_url or home.broker_url)  # a bad URL records no campaign
    camp, b = ota_campaign.start(home, bundle, to=to, canary=canary, halt_after=halt_after,
                                 wave_timeout_s=wave_timeout_s)
    click.echo(f"ota: campaign bseq {camp['bseq']} ({camp['version']}) to {len(camp['targets'])} nodes in "
               f"{len(camp['waves'])} waves", err=True)
    import aiomqtt

    try:
        asyncio.run(ota_campaign.run(home, b, broker_url=broker_url, timeout_s=timeout_s,
                                     log=lambda m: click.echo(m, err=True)))
    except (aiomqtt.MqttError, OSError) as e:
        raise FleetError(f"cannot reach the MQTT broker at {host}:{port} ({e}): the campaign stays recorded; "
                         f"start the broker (or fix --broker) and `fleet ota abort` before pushing again") from None
    st = ota_campaign.campaign_status(home)
    if as_json:
        click.echo(json.dumps(st))
    else:
        c = st["campaign"]
        totals = ", ".join(f"{k} {v}" for k, v in st["totals"].items() if v)
        click.echo(f"campaign {c['state']} after {c['elapsed_s']} s: {totals}")
