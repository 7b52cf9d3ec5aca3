"""`fleet collect` — run the collector: gateways' MQTT uplink in, the fleet store out.

Thin: fleet/collector_mqtt.run_collector does the work. Runs until Ctrl-C / SIGTERM (then it
flushes and disconnects); the broker going away is logged and retried, never fatal. A progress
line goes to stderr every --progress-s seconds; with --json the final totals go to stdout.
"""
import asyncio
import json
import logging
import sys

import click

from fleet.cli._lazy import FleetCommand
from fleet.cli._options import BoundedFloat, home_option, store_option
from fleet.errors import FleetError


def _group(v):
    from fleet.collector_mqtt import GROUP_RE

    if v is not None and not GROUP_RE.fullmatch(v):
        raise click.BadParameter("a group name is 1-64 letters, digits, '-' or '_'")
    return v


@click.command(cls=FleetCommand)
@click.option("--broker", metavar="URL", help="MQTT broker, mqtt://HOST:PORT (default: broker.url in fleet.toml).")
@click.option("--net", "net_id", type=click.IntRange(0, 0xFFFFFFFF), metavar="N",
              help="Network id (default: network.id in fleet.toml).")
@click.option("--client-id", metavar="ID", help="MQTT client id of the persistent session (default: collector.client_id).")
@click.option("--progress-s", type=BoundedFloat(0), default=10.0, show_default=True,
              help="Seconds between progress lines on stderr (0: none).")
@click.option("--gap-grace-s", type=BoundedFloat(0, min_open=True), metavar="S",
              help="Wait this long for late frames before asking a node to resend (default 120).")
@click.option("--resend-retry-s", type=BoundedFloat(0, min_open=True), metavar="S",
              help="First retry delay of an unanswered resend request, doubling (default 60).")
@click.option("--resend-attempts", type=click.IntRange(1), metavar="K",
              help="Requests without progress before a gap is marked lost (default 5).")
@click.option("--max-outstanding", type=click.IntRange(1), metavar="N",
              help="Resend requests in flight at most, fleet-wide (default 64).")
@click.option("--overdue-s", type=BoundedFloat(0), metavar="S",
              help="Ask a node once, down its source route, for a reading this long overdue by its own "
                   "interval (default 60; 0: never - a lost reading then shows with the next one).")
@click.option("--share", metavar="GROUP", callback=lambda _c, _p, v: _group(v),
              help="Share the load with other collectors of GROUP on one store (PostgreSQL): MQTT 5 shared "
                   "subscription; one of them at a time repairs gaps.")
@click.option("--json", "as_json", is_flag=True, help="Print the final totals as JSON on stdout.")
@click.option("-v", "--verbose", is_flag=True, help="Log at debug level.")
@home_option
@store_option
def cli(home, broker, net_id, client_id, progress_s, gap_grace_s, resend_retry_s, resend_attempts, max_outstanding,
        overdue_s, share, as_json, verbose):
    """Collect telemetry from the gateways into the fleet store, repairing gaps."""
    from fleet.collector import CollectorConfig
    from fleet.collector_mqtt import install_signal_handlers, run_collector

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    home = home.with_overrides({"broker.url": broker, "network.id": net_id, "collector.client_id": client_id})
    try:
        config = CollectorConfig.from_home(home, grace_s=gap_grace_s, retry_s=resend_retry_s,
                                           max_attempts=resend_attempts, max_outstanding=max_outstanding,
                                           overdue_s=overdue_s, share=share)
    except ValueError as e:
        raise FleetError(f"bad collector setting: {e}") from None

    def progress(line):
        click.echo(line, err=True)

    async def main():
        stop = asyncio.Event()
        install_signal_handlers(stop)
        return await run_collector(home, stop_event=stop, config=config, progress_s=progress_s, progress=progress,
                                   client_id=client_id)

    try:
        snap = asyncio.run(main())
    except FleetError:
        raise
    except Exception as e:  # noqa: BLE001 - no traceback reaches a user
        logging.getLogger("fleet.collector").debug("collector failed", exc_info=True)
        raise FleetError(f"the collector stopped on an unexpected error ({type(e).__name__}: {e}); run with -v "
                         f"for details and report it") from None
    if as_json:
        click.echo(json.dumps(snap, sort_keys=True))


if __name__ == "__main__":  # `python -m fleet.cli.collect` (fleet/collector_mqtt.start_collector_process)
    cli(prog_name="fleet collect")
