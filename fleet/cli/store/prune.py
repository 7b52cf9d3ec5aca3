"""`fleet store prune`."""
import json
import time

import click

from fleet.cli._options import home_option, store_option


@click.command("prune")
@click.option("--older-than-days", "days", type=click.IntRange(1, 100000), required=True, metavar="DAYS",
              help="Drop raw readings older than this many days (PostgreSQL: the whole months that ended by then).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@home_option
@store_option
def cli(home, days, as_json):
    """Drop old raw readings; hourly and daily means stay. A reading older than the new horizon
    is not stored again (counted as a reject, beyond_retention). Runs in bounded steps beside a
    collector (Ctrl-C or a failure leaves the store consistent; run it again to finish).
    `store.retention_days` in fleet.toml has the collector do this every hour."""
    store = home.store()
    try:
        horizon, dropped = store.prune(int(time.time()) - days * 86400)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps({"horizon": horizon, "readings_dropped": dropped}, sort_keys=True))
        return
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(horizon)) if horizon else "none"
    click.echo(f"dropped {dropped} raw readings; readings from before {when} are no longer stored")
