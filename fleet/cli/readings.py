"""`fleet readings --node ID` — export one node's stored readings (table, --csv or --json).

Exported values are in physical units with the unit in the column name: PM in ug/m3 (one
decimal), RH in %, temperature in C; `time` is the reading time in ISO 8601 UTC, `ts` the same
in unix seconds, `rx_ts` when the gateway received it. Rows stream in counter (seq) order, so
a large export does not load into memory. Exit status 1 when the node is unknown to the store
(never registered, never heard); a known node with no readings in the range exports nothing
(exit 0).

`--every 1h|1d` exports mean PM per hour or per UTC day instead (the store keeps hourly sums
as readings arrive, late and resent ones included), with how many readings each mean is of.
"""
import csv
import json
import sys

import click

from fleet.cli._options import NODE_ID, BoundedInt, TimeParam, home_option, parse_time, store_option  # noqa: F401 - parse_time: API
from fleet.cli._table import format_table, want_colour
from fleet.errors import FleetError
from fleet.rows import COLUMNS, MEAN_COLUMNS, export_row, mean_row  # noqa: F401 - export_row: API


@click.command()
@click.option("--node", "node_id", type=NODE_ID, required=True, metavar="ID", help="Node id.")
@click.option("--since", type=TimeParam(), default=None,
              help="From this reading time: unix seconds, -1h / -30m / -2d, or ISO 8601.")
@click.option("--until", type=TimeParam(), default=None, help="Before this reading time (same forms).")
@click.option("--limit", type=BoundedInt(1), default=None, metavar="N", help="At most this many readings.")
@click.option("--every", type=click.Choice(("raw", "1h", "1d")), default="raw", show_default=True,
              help="raw readings, or mean PM per hour / per UTC day (periods starting in --since..--until; "
                   "`readings` = how many readings the mean is of).")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header row.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of objects.")
@home_option
@store_option
def cli(home, node_id, since, until, limit, every, as_csv, as_json):
    """Export the stored readings of one node."""
    if as_csv and as_json:
        raise click.UsageError("choose one of --csv and --json")
    store = home.store()
    try:
        if store.node(node_id) is None and store.node_state(node_id) is None:
            raise FleetError(f"node {node_id} is not registered and was never heard in the store: "
                             f"check the id (`fleet status` lists the nodes)")
        if every == "raw":
            rows = (export_row(r) for r in store.iter_readings(node_id, since=since, until=until, limit=limit))
            n = _write(rows, as_csv, as_json)
        else:
            means = store.means(node_id, every, since=since, until=until)[:limit]
            n = _write((mean_row(m) for m in means), as_csv, as_json, MEAN_COLUMNS)
        if n == 0:
            span = " in that time range" if since is not None or until is not None else ""
            click.echo(f"no readings for node {node_id}{span}", err=True)
    finally:
        store.close()


def _write(rows, as_csv, as_json, columns=COLUMNS):
    out = sys.stdout
    n = 0
    if as_csv:
        w = csv.writer(out, lineterminator="\n")
        w.writerow(columns)
        for row in rows:
            w.writerow(["" if v is None else v for v in row])
            n += 1
        return n
    if as_json:
        out.write("[")
        for row in rows:
            out.write(("," if n else "") + "\n" + json.dumps(dict(zip(columns, row, strict=True))))
            n += 1
        out.write("\n]\n" if n else "]\n")
        return n
    body = [tuple("-" if v is None else str(v) for v in row) for row in rows]
    if body:
        columns = [(c, "l" if c == "time" else "r") for c in columns]
        click.echo(format_table(columns, body, want_colour()))
    return len(body)
