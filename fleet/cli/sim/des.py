"""`fleet sim des` — discrete-event simulation of a whole mesh (5,000 to 100,000 nodes) running the
firmware's own router and OTA cores in virtual time (fleet/sim/des.py).

Thin: fleet.sim.des.run_des() returns the figures; this module prints them as a short table or,
with --json, as the service's dict. Progress goes to stderr when it is a terminal.

JSON keys (always): nodes, gateways, topology, minutes, seed, loss, report_interval_s, status_interval_s,
repair_mode, measured_until_s, readings_made, delivery_first_pass, delivery_after_repair,
latency_p50_s, latency_p99_s, latency_max_s (a reading's first hand-over to the router to its first
arrival at a gateway), age_p50_s, age_p99_s (from the reading's sampling: adds node.py's 500 ms
uplink poll and any wait in the ring), repair_latency_p50_s, repair_latency_p99_s (a repaired
reading, from its making to its storing), hops (hops -> frames),
hops_mean, control_overhead (beacons and repair transmissions per delivered reading), control_tx and
control_per_reading (transmissions by kind: beacons, status, routed (down source routes), flooded
(--repair flood), fallback (a route-mode request flooded for want of a path), replies,
resent_telemetry), readings_delivered (of readings_made: the same window), readings_delivered_total,
parent_changes_per_node_hour,
parent_changes_boot, route_losses, repair, radio, router, collector, build_s, wall_s, events,
events_per_s, peak_rss_mb; with --gateway-failure: gateway_failure; with --power-cut-street:
power_cut; with --ota: ota_bytes, ota_pages, ota_seeded_s, ota_complete_s, ota_nodes_complete,
ota_tx_per_node, ota_delivery_during.
"""
import json
import sys

import click

from fleet.cli._lazy import FleetCommand
from fleet.cli._options import BoundedFloat
from fleet.cli._table import format_table


def _pct(v):
    return "-" if v is None else f"{100 * v:.3f} %"


def _num(v, unit=""):
    return "-" if v is None else f"{v}{unit}"


def render(r):
    """The figures of a run as a two-column table (text)."""
    rows = [
        ("nodes / gateways", f"{r['nodes']} / {r['gateways']} ({r['topology']}, seed {r['seed']})"),
        ("virtual time", f"{r['minutes']:g} min (readings made up to {r['measured_until_s']:g} s counted)"),
        ("readings made", str(r["readings_made"])),
        ("delivery, first pass", _pct(r["delivery_first_pass"])),
        ("delivery, after repair", _pct(r["delivery_after_repair"]) + f" (repair: {r['repair_mode']})"),
        ("latency p50 / p99", f"{_num(r['latency_p50_s'], ' s')} / {_num(r['latency_p99_s'], ' s')} "
                              f"(from origination; reading age {_num(r['age_p50_s'], ' s')} / "
                              f"{_num(r['age_p99_s'], ' s')})"),
        ("hops mean", _num(r["hops_mean"])),
        ("control overhead", f"{_num(r['control_overhead'])} tx per delivered reading "
                             f"({r['control_tx']['beacons']} beacons, {r['control_tx']['repair']} repair"
                             + (f": {r['repair']['tx_per_gap_hop']:g} per hop of each gap's node"
                                if r["repair"].get("tx_per_gap_hop") is not None else "") + ")"),
        ("control by kind", "per delivered reading: " + ", ".join(
            f"{k} {v:g}" for k, v in r["control_per_reading"].items() if v)),
        ("parent changes", f"{r['parent_changes_per_node_hour']} per node-hour after boot"),
        ("hop histogram", " ".join(f"{h}:{c}" for h, c in r["hops"].items()) or "-"),
    ]
    if "gateway_failure" in r:
        g = r["gateway_failure"]
        rows.append(("gateway failure", f"gateway {g['gateway']} at {g['at_s']:g} s: {g['nodes_rerouted']}/"
                                        f"{g['nodes_served']} nodes delivered again, last after "
                                        f"{_num(g['reroute_s'], ' s')}"))
    if "power_cut" in r:
        p = r["power_cut"]
        rows.append(("power cut", f"{p['nodes']} nodes of {p['street']} off {p['start_s']:g}-{p['end_s']:g} s; "
                                  f"backlog {p.get('backlog_at_return', '-')} at return, drained after "
                                  f"{_num(p['drained_s'], ' s')}; their delivery {_pct(p['delivery_after_repair'])}"))
    if "ota_bytes" in r:
        rows.append(("OTA", f"{r['ota_bytes']} bytes seeded at {_num(r['ota_seeded_s'], ' s')}: complete after "
                            f"{_num(r['ota_complete_s'], ' s')} ({r['ota_nodes_complete']}/{r['nodes']} nodes), "
                            f"{_num(r['ota_tx_per_node'])} tx per node, telemetry during "
                            f"{_pct(r.get('ota_delivery_during'))}"))
    rows.append(("run", f"{r['wall_s']} s wall ({r['build_s']} s build), {r['events']} events, "
                        f"{r['events_per_s']} events/s, peak RSS {r['peak_rss_mb']} MB"))
    return format_table([("figure", "l"), ("value", "l")], rows)


def _progress(t_s, end_s, events):
    click.echo(f"des: {t_s / 60:.0f}/{end_s / 60:.0f} virtual min, {events} events", err=True)


@click.command("des", cls=FleetCommand)
@click.option("--nodes", "nodes", type=click.IntRange(2, 1_000_000), default=1000, show_default=True,
              help="Nodes in total, gateways included.")
@click.option("--topology", type=click.Choice(["district", "line", "grid"]), default="district", show_default=True)
@click.option("--gateways", type=click.IntRange(1, 10_000), default=None,
              help="Gateways (default: one per 1,000 nodes, at least one).")
@click.option("--minutes", type=BoundedFloat(0.1, 7 * 24 * 60), default=60.0, show_default=True,
              help="Virtual minutes to simulate.")
@click.option("--loss", type=BoundedFloat(0.0, 0.99), default=0.0, show_default=True,
              help="Extra loss on every link (0.1 = 10 %).")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--report-interval", "report_interval_s", type=click.IntRange(1, 86400), default=300, show_default=True,
              help="Seconds between readings of each node.")
@click.option("--status-interval", "status_interval_s", type=click.IntRange(0, 86400), default=None,
              show_default="node.py's, 300",
              help="Seconds between status frames of each node (node.py's own interval by default; 0 = none: "
                   "telemetry only, and route repair then floods every request).")
@click.option("--gateway-failure", is_flag=True, help="Kill the busiest gateway at a third of the run.")
@click.option("--power-cut-street", is_flag=True,
              help="Switch a street segment off at a third of the run, for an hour or a third of the run.")
@click.option("--ota", "ota_bytes", type=click.IntRange(1, 10_000_000), default=None, metavar="BYTES",
              help="Seed an OTA bundle of this size at the gateways once the mesh has converged.")
@click.option("--repair", type=click.Choice(["route", "flood"]), default="route", show_default=True,
              help="Gap repair, real at every size: route sends each resend request down the source route "
                   "compiled from the parents in status reports and floods it when no path is known "
                   "(counted as a fallback); flood floods every request.")
@click.option("--gap-grace-s", "gap_grace_s", type=BoundedFloat(0.1, 3600), default=None,
              show_default="the fleet's, 120",
              help="Seconds the collector waits after a gap opens before its first resend request "
                   "(as `fleet collect --gap-grace-s`).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def cli(nodes, topology, gateways, minutes, loss, seed, report_interval_s, status_interval_s, gateway_failure,
        power_cut_street, ota_bytes, repair, gap_grace_s, as_json):
    """Simulate a mesh of --nodes nodes running the firmware's own mesh (and OTA) cores in virtual time, with
    a radio model of ESP-NOW (distance-based reception, MAC retries and ACKs, CSMA, collisions),
    telemetry every --report-interval and the collector's gap repair; print delivery, latency,
    hops, control overhead and parent changes. Deterministic for a given --seed."""
    from fleet.sim.des import DesOptions, run_des

    opts = DesOptions(nodes=nodes, topology=topology, gateways=gateways, minutes=minutes, loss=loss, seed=seed,
                      report_interval_s=report_interval_s, status_interval_s=status_interval_s,
                      gateway_failure=gateway_failure,
                      power_cut_street=power_cut_street, ota_bytes=ota_bytes or 0, repair=repair,
                      gap_grace_s=gap_grace_s)
    progress = _progress if sys.stderr.isatty() else None
    results = run_des(opts, progress=progress)
    if as_json:
        click.echo(json.dumps(results, sort_keys=True))
    else:
        click.echo(render(results))
