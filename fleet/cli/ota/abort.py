"""`fleet ota abort` — halt the running OTA campaign."""
import click

from fleet import ota_campaign
from fleet.cli._options import home_option


@click.command("abort")
@home_option
def cli(home):
    """Halt the campaign: no node is allowed to install from now on (nodes already allowed may
    still install; the others keep running what they run)."""
    camp = ota_campaign.abort(home)
    click.echo(f"campaign bseq {camp['bseq']} aborted; {len(camp['allowed'])} node(s) had been allowed", err=True)
