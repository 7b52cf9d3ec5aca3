"""`fleet provision` — provision nodes over USB: app into slot A/B, config, verify, self-test, register.

Thin: fleet.provision does the work and returns plain data; this module builds the request from
the options (or a technician's CSV sheet), shows one progress bar per port on stderr (rich) and
renders the summary table, or `--json`. Secrets are never printed (see fleet/provision.py).
The shared options are also used by `fleet flash --then-provision` (fleet/cli/flash.py).
"""
import json

import click

from fleet import provision as prov
from fleet.cli._options import BoundedFloat, home_option
from fleet.cli._table import format_table, want_colour
from fleet.errors import FleetError


def provision_options(f, repl_baud=True):
    """Decorator: the per-node and per-run options of provisioning (not --port / --from-csv).
    `repl_baud=False` leaves out --baud (fleet flash has its own, for esptool)."""
    options = [
        click.option("--node-id", "node_ids", type=click.IntRange(1, 0xFFFFFFFF), multiple=True,
                     help="Node id; once per --port, in the same order."),
        click.option("--role", type=click.Choice(prov.ROLES), default="node", show_default=True,
                     help="Role of the node(s)."),
        click.option("--pole", "poles", multiple=True, metavar="ID", help="Pole (street light) id; once per --port."),
        click.option("--lat", "lats", type=BoundedFloat(-90, 90), multiple=True, help="Latitude; once per --port."),
        click.option("--lon", "lons", type=BoundedFloat(-180, 180), multiple=True,
                     help="Longitude; once per --port."),
        click.option("--sensor", type=click.Choice(prov.SENSORS), default="pms5003", show_default=True,
                     help="Particle sensor on the node."),
        click.option("--replace", is_flag=True,
                     help="Take over a board of another fleet, a board that is another node, or a node id "
                          "registered to another MAC."),
        click.option("--broker", metavar="URL", help="Gateway uplink broker mqtt://HOST[:PORT] (default: fleet.toml)."),
        click.option("--wifi-ssid", metavar="SSID", help="Gateway Wi-Fi network (default: fleet.toml [uplink])."),
        click.option("--wifi-password", envvar="REDMESH_WIFI_PASSWORD", metavar="PASSWORD",
                     help="Gateway Wi-Fi password (better: $REDMESH_WIFI_PASSWORD); never printed."),
        click.option("--report-interval-s", type=click.IntRange(1, 86400), help="Seconds between readings."),
        click.option("--warmup-s", type=click.IntRange(30, 600), help="Sensor warm-up before sampling."),
        click.option("--sample-window-s", type=click.IntRange(1, 86400), help="Seconds of sampling per reading."),
        click.option("--continuous/--duty-cycle", default=None,
                     help="Keep the sensor on, or sleep it between readings (default: the config's, duty cycle)."),
        click.option("--radio-channel", type=click.IntRange(1, 14), help="Wi-Fi/ESP-NOW channel."),
        click.option("--sim-medium-port", type=click.IntRange(1, 65535), metavar="PORT",
                     help="Virtual boards: UDP port of the radio medium (adds the config's sim section)."),
        click.option("--sim-port", "sim_ports", type=click.IntRange(1, 65535), multiple=True, metavar="PORT",
                     help="Virtual boards: the node's own UDP port; once per --port (default: a free one)."),
        click.option("--no-selftest", is_flag=True, help="Do not wait for the node's self-test after the reset."),
        click.option("--selftest-timeout-s", type=BoundedFloat(1, 3600), metavar="S",
                     help="How long to wait for the self-test (default: warm-up + 60 s)."),
    ]
    if repl_baud:
        options.append(click.option("--baud", type=int, default=115200, show_default=True,
                                    help="Serial speed of the REPL."))
    for opt in reversed(options):
        f = opt(f)
    return f


def options_from(kw, connect_timeout_s=15.0):
    return prov.ProvisionOptions(
        replace=kw["replace"], selftest=not kw["no_selftest"], selftest_timeout_s=kw["selftest_timeout_s"],
        report_interval_s=kw["report_interval_s"], warmup_s=kw["warmup_s"], sample_window_s=kw["sample_window_s"],
        continuous=kw["continuous"],
        radio_channel=kw["radio_channel"], broker_url=kw["broker"], wifi_ssid=kw["wifi_ssid"],
        wifi_password=kw["wifi_password"], sim_medium_port=kw["sim_medium_port"], baud=kw.get("baud", 115200),
        connect_timeout_s=connect_timeout_s,
    )


def _per_port(name, values, ports, required=False):
    if not values:
        if required:
            raise FleetError(f"give --{name} once per --port ({len(ports)} port(s)), or use --from-csv FILE")
        return [None] * len(ports)
    if len(values) != len(ports):
        raise FleetError(f"--{name} was given {len(values)} time(s) for {len(ports)} --port(s): give it once per "
                         f"port, in the same order (or use --from-csv FILE)")
    return list(values)


def specs_from_options(ports, kw):
    """NodeSpecs from repeated --port/--node-id/--pole/--lat/--lon/--sim-port. Raises FleetError."""
    if not ports:
        raise FleetError("give --port PORT (repeat it for several boards) or --from-csv FILE")
    ids = _per_port("node-id", kw["node_ids"], ports, required=True)
    poles = _per_port("pole", kw["poles"], ports)
    for pole in poles:
        if pole is not None and prov.pole_problem(pole):
            raise FleetError(f"--pole {pole!r} refused: {prov.pole_problem(pole)}")
    lats = _per_port("lat", kw["lats"], ports)
    lons = _per_port("lon", kw["lons"], ports)
    sims = _per_port("sim-port", kw["sim_ports"], ports)
    return [prov.NodeSpec(node_id=ids[i], port=p, role=kw["role"], pole=poles[i], lat=lats[i], lon=lons[i],
                          sensor=kw["sensor"], sim_port=sims[i]) for i, p in enumerate(ports)]


def specs_from_sheet(path, ports, kw):
    """NodeSpecs from a CSV sheet; rows given by MAC are matched to the boards found on --port
    (else on every serial port of this machine). Returns (specs, rows whose board is absent)."""
    for name in ("node_ids", "poles", "lats", "lons"):
        if kw[name]:
            raise FleetError(f"--{name[:-1].replace('_', '-')} cannot be combined with --from-csv: "
                             f"the sheet gives it per row")
    specs = prov.read_sheet(path, default_role=kw["role"], default_sensor=kw["sensor"])
    if any(s.port is None for s in specs):
        candidates = list(ports)
        if not candidates:
            from serial.tools import list_ports

            candidates = [p.device for p in list_ports.comports()]
        click.echo(f"looking for {sum(1 for s in specs if s.port is None)} MAC(s) on {len(candidates)} port(s)...",
                   err=True)
        specs, missing = prov.locate_by_mac(specs, candidates, baud=kw.get("baud", 115200))
        return specs, missing
    return specs, []


class _Progress:
    """One rich progress bar per port on a terminal; one line per step otherwise (stderr)."""

    def __init__(self, specs):
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self.live = self.console.is_terminal
        self.labels = {s.port: f"{s.port} node {s.node_id}" for s in specs}
        self.last_step = {}
        if self.live:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                     TimeElapsedColumn(), console=self.console)
            self.tasks = {s.port: self.progress.add_task(f"{self.labels[s.port]}: connect", total=None)
                          for s in specs}

    def __enter__(self):
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.progress.stop()

    def __call__(self, port, step, done, total):
        if self.live:
            kw = {"description": f"{self.labels.get(port, port)}: {step}"}
            if total is not None:
                kw["total"] = total
            if done is not None:
                kw["completed"] = done
            self.progress.update(self.tasks[port], **kw)
        elif self.last_step.get(port) != step:
            self.last_step[port] = step
            click.echo(f"{self.labels.get(port, port)}: {step}", err=True)


def _kb(n):
    return f"{n / 1024:.1f}"


def render(summary, colour=False):
    """Return the summary table of a provisioning run as text."""
    columns = [("port", "l"), ("node", "r"), ("mac", "l"), ("result", "l"), ("slot", "l"), ("written", "r"),
               ("skipped", "r"), ("KB sent", "r"), ("time s", "r"), ("115200 s", "r"), ("921600 s", "r")]
    rows = []
    for r in summary["results"]:
        est = r["estimate_s"] or {}
        result = ("ok", "green") if r["ok"] else (f"FAILED at {r['step']}", "red")
        rows.append((r["port"] or "-", str(r["node_id"]), r["mac"] or "-", result, r["slot"] or "-",
                     str(r["files_written"]), str(r["files_skipped"]), _kb(r["bytes_sent"]),
                     f"{r['elapsed_s']:.1f}", str(est.get("115200", "-")), str(est.get("921600", "-"))))
    lines = [format_table(columns, rows, colour)]
    lines.append(f"firmware {summary['fw_version']} (seq {summary['fw_seq']}), app {summary['bundle_files']} files, "
                 f"{_kb(summary['bundle_bytes'])} KB; {summary['ok']} provisioned, {summary['failed']} failed")
    for r in summary.get("skipped", []):
        lines.append(f"not connected: row {r['row']} MAC {r['mac']} (node {r['node_id']})")
    return "\n".join(lines)


def run_provision(home, specs, options, as_json, skipped=()):
    """Provision `specs`, render the result, raise FleetError if any board failed."""
    with _Progress(specs) as progress:
        summary = prov.provision(home, specs, options, on_progress=progress)
    summary["skipped"] = [{"row": s.row, "mac": s.mac, "node_id": s.node_id} for s in skipped]
    summary["estimate_model"] = (
        "USB session on a real ESP32: upload = max((bytes sent) x 10 bits / baud, raw-paste flow control "
        f"{prov.EST_PASTE_BYTES_IN_FLIGHT} bytes per {prov.EST_USB_RTT_S * 1000:g} ms round trip) + download "
        f"x 10 bits / baud + {prov.EST_EXEC_OVERHEAD_S * 1000:g} ms per raw-REPL exec + flash writes at "
        f"{prov.EST_FLASH_BYTES_PER_S // 1024} KB/s + soft reset {prov.EST_SOFT_RESET_S:g} s + hard reset "
        f"{prov.EST_HARD_RESET_S:g} s; payload travels as base64 (x4/3); the self-test wait (sensor warm-up, "
        f">= 30 s) comes on top, the same on both")
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(render(summary, want_colour()))
        for r in summary["results"]:
            for note in r["notes"]:
                click.echo(f"{r['port']}: {note}", err=True)
        click.echo(f"estimates: {summary['estimate_model']}", err=True)
    if summary["failed"]:
        errors = [f"{r['error']} [board {r['board_state']}]" for r in summary["results"] if not r["ok"]]
        raise FleetError(f"{summary['failed']} of {len(summary['results'])} board(s) failed:\n  " + "\n  ".join(errors))
    return summary


@click.command()
@click.option("--port", "ports", multiple=True, metavar="PORT",
              help="Serial port of a board (repeat for several boards: they are provisioned in parallel).")
@click.option("--from-csv", "sheet", type=click.Path(dir_okay=False), metavar="FILE",
              help="Technician's sheet: columns port or mac, node_id, pole, lat, lon, role (sensor optional).")
@provision_options
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@home_option
def cli(home, ports, sheet, as_json, **kw):
    """Provision nodes over USB: app, config and keys; verify, self-test and register them."""
    if sheet:
        specs, skipped = specs_from_sheet(sheet, ports, kw)
        if not specs:
            raise FleetError(f"none of the boards in {sheet} is connected (looked for their MACs); plug them in "
                             f"and run the command again")
    else:
        specs, skipped = specs_from_options(ports, kw), []
    run_provision(home, specs, options_from(kw), as_json, skipped)
