"""`fleet sim up` — run a whole virtual mesh: medium, broker, collector and N MicroPython nodes."""
import asyncio
import signal

import click

from fleet.cli._options import home_option
from fleet.errors import FleetError


@click.command("up")
@click.option("--nodes", "n_nodes", type=click.IntRange(2, 500), default=25, show_default=True,
              help="Nodes in total, gateways included.")
@click.option("--gateways", "n_gateways", type=click.IntRange(1, 50), default=2, show_default=True)
@click.option("--topology", "kind", type=click.Choice(["district", "line", "grid", "star"]), default="district",
              show_default=True)
@click.option("--duration", "duration_s", type=click.IntRange(1, 7 * 86400), default=60, show_default=True,
              help="Seconds to run before stopping everything.")
@click.option("--broker", "broker_url", default=None, metavar="URL",
              help="mqtt://host:port of a running broker (default: start the embedded one).")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--report-interval", "report_interval_s", type=click.IntRange(31, 86400), default=40,
              show_default=True, help="Seconds between readings of each node.")
@click.option("--capture", "capture_path", type=click.Path(dir_okay=False), default=None,
              help="Write every radio frame to this JSONL file.")
@click.option("--ota", is_flag=True,
              help="Boot nodes like boards from A/B slots holding a v1 bundle (bseq 1), so `fleet ota push` "
                   "can update them; the rig writes its broker URL into the home's fleet.toml.")
@home_option
def cli(home, n_nodes, n_gateways, kind, duration_s, broker_url, seed, report_interval_s, capture_path, ota):
    """Start a virtual rig into the fleet home (keys are created if the home is empty), run it
    for --duration seconds printing progress, then stop every process it started. Ctrl-C stops
    it early, cleanly. Afterwards `fleet status` (same --home / REDMESH_HOME) shows the fleet.
    For an OTA session: `fleet sim up --ota --duration 86400 &`, then `fleet ota build`,
    `fleet ota push` and `fleet ota status` on the same home (they find the rig's broker in
    fleet.toml); stop the rig with `kill -INT <pid>`."""
    from fleet.sim import topology as topo_mod
    from fleet.sim.rig import Rig, RigOptions

    if n_gateways >= n_nodes:
        raise FleetError(f"--gateways ({n_gateways}) must be fewer than --nodes ({n_nodes})")
    try:
        topo = topo_mod.generate(kind, n_nodes, n_gateways, seed=seed)
    except ValueError as e:
        raise FleetError(f"cannot build a {kind} topology of {n_nodes} nodes: {e}") from e
    home = home.with_overrides({"broker.url": broker_url})
    opts = RigOptions(broker_url=broker_url, seed=seed, report_interval_s=report_interval_s,
                      capture_path=capture_path, ota=ota)
    rig = Rig(home, topo, opts)
    asyncio.run(_main(rig, duration_s))


async def _main(rig, duration_s):
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await rig.start()
        run = asyncio.create_task(rig.run_for(duration_s))
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({run, waiter}, return_when=asyncio.FIRST_COMPLETED)
        for t in (run, waiter):
            t.cancel()
        if stop.is_set():
            click.echo("rig: stopping (interrupted)", err=True)
    finally:
        await rig.stop()
        click.echo("rig: stopped; `fleet status` shows the fleet", err=True)
