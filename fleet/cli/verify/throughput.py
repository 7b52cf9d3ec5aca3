"""`fleet verify throughput`."""
import json
import os
import tempfile
import time

import click

from fleet.cli._options import BoundedFloat
from fleet.cli.verify._common import junit
from fleet.errors import FleetError


@click.command("throughput")
@click.option("--rate", "rate_per_s", type=BoundedFloat(0.1, 1000), default=5.0, show_default=True,
              help="Offered readings per second, over the whole rig.")
@click.option("--duration", "duration_s", type=click.IntRange(10, 3600), default=60, show_default=True)
@click.option("--nodes", "n_nodes", type=click.IntRange(2, 300), default=20, show_default=True)
@click.option("--gateways", "n_gateways", type=click.IntRange(1, 20), default=1, show_default=True)
@click.option("--topology", "kind", type=click.Choice(["grid", "line", "district", "star"]), default="grid",
              show_default=True)
@click.option("--broker", "broker_url", default=None, metavar="URL", help="Use this broker instead of the embedded one.")
@click.option("--settle", "settle_s", type=click.IntRange(0, 900), default=120, show_default=True,
              help="Seconds to wait after the load for gap repair to finish.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), default=None,
              help="Also write a JUnit XML file (one test case per check).")
def cli(rate_per_s, duration_s, n_nodes, n_gateways, kind, broker_url, settle_s, seed, as_json, junit_path):
    """Offer RATE readings/s for DURATION seconds on a fresh virtual rig (its own fleet home in
    a temporary directory), then report offered vs delivered per second, loss, duplicates,
    latency p50/p95/p99 and a per-hop breakdown. Exit status 1 when anything was lost."""
    from fleet.home import FleetHome
    from fleet.sim import topology as topo_mod
    from fleet.sim.rig import RigOptions
    from fleet.sim.verify import verify_throughput

    try:
        topo = topo_mod.generate(kind, n_nodes, n_gateways, seed=seed)
    except ValueError as e:
        raise FleetError(f"cannot build a {kind} topology of {n_nodes} nodes: {e}") from e
    with tempfile.TemporaryDirectory(prefix="redmesh-verify-") as d:
        home = FleetHome.resolve(os.path.join(d, "home"))
        opts = RigOptions(broker_url=broker_url, seed=seed)
        opts.offered_for_s = duration_s
        t0 = time.time()
        rep = verify_throughput(home, topo, rate_per_s, duration_s, settle_s=settle_s, options=opts,
                                log=lambda m: click.echo(m, err=True))
        rep["wall_s"] = round(time.time() - t0, 1)
    checks = [("no_loss", rep["holes"] == 0 and rep["lost"] == 0 and not rep["missing"],
               f"holes={rep['holes']} lost={rep['lost']} made but not stored={rep['missing']}"),
              ("stored_once", rep["duplicates_stored"] == 0, f"duplicates_stored={rep['duplicates_stored']}"),
              ("all_nodes_reporting", rep["nodes_reporting"] == rep["nodes"],
               f"{rep['nodes_reporting']}/{rep['nodes']} nodes reporting")]
    rep["checks"] = {name: ok for name, ok, _ in checks}
    if junit_path:
        junit(junit_path, checks, rep)
    if as_json:
        click.echo(json.dumps(rep, indent=2))
    else:
        click.echo(f"offered {rep['offered_per_s']}/s, delivered {rep['delivered_per_s']}/s over {rep['duration_s']} s; "
                   f"readings {rep['readings']}/{rep['issued']} (loss {rep['loss']}), duplicates received "
                   f"{rep['duplicates_received']}, stored twice {rep['duplicates_stored']}")
        click.echo(f"latency p50 {rep['latency_p50_s']} s, p95 {rep['latency_p95_s']} s, p99 {rep['latency_p99_s']} s; "
                   f"gaps recovered {rep['gaps_recovered']}, lost {rep['lost']}")
        click.echo("hops  readings  latency p50")
        for h, v in rep["per_hop"].items():
            click.echo(f"{h:>4}  {v['readings']:>8}  {v['latency_p50_s']}")
    if not all(ok for _, ok, _ in checks):
        raise SystemExit(1)
