"""`fleet ota status` — per-node progress of the OTA campaign and its totals."""
import json

import click

from fleet import ota_campaign
from fleet.cli._options import home_option


def _bar(pct, width=20):
    full = pct * width // 100
    return "#" * full + "." * (width - full)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print {campaign, nodes, totals} as JSON.")
@home_option
def cli(home, as_json):
    """Show the campaign: each target's running version and state (pending, receiving x%,
    verifying, trial, confirmed, rolled back, refused) with a progress bar, and the totals."""
    st = ota_campaign.campaign_status(home)
    if as_json:
        click.echo(json.dumps(st))
        return
    from rich.console import Console
    from rich.table import Table

    c = st["campaign"]
    t = Table(title=f"OTA bseq {c['bseq']} ({c['version']}): {c['state']}, wave {c['wave'] + 1}/{len(c['waves'])}, "
                    f"{c['elapsed_s']} s")
    for col in ("node", "role", "running", "state", "progress", "reason"):
        t.add_column(col)
    for n in st["nodes"]:
        state = n["state"] + (f" {n['progress']}%" if n["state"] == "receiving" else "")
        t.add_row(str(n["node"]), n["role"] or "?", f"{n['version'] or '?'} ({n['fw_seq'] or '?'})", state,
                  _bar(n["progress"]), n["reason"] or "")
    Console().print(t)
    click.echo("totals: " + ", ".join(f"{k} {v}" for k, v in st["totals"].items()))
    if c.get("reason"):
        click.echo(f"reason: {c['reason']}")
