"""`fleet node info|logs|reset` — look at one board on a serial port.

Thin: the services are fleet.provision.node_info / node_logs / node_reset (plain data); this
module renders them. `info` interrupts the app to read the flash and restarts it (soft reset)
unless --no-restart; `logs` only listens (the app keeps running, like `mpremote resume`), except
on a board idle at its REPL (then it shows the crash log first) or with --crash-log.
"""
import json

import click

from fleet import provision as prov
from fleet.cli._options import BoundedFloat, home_option


@click.group()
def cli():
    """Inspect, follow or reset one node on a serial port."""


def _port_option(f):
    return click.option("--port", required=True, metavar="PORT", help="Serial port of the board.")(f)


def _baud_option(f):
    return click.option("--baud", type=int, default=115200, show_default=True, help="Serial speed of the REPL.")(f)


def render_info(info):
    """Return `fleet node info` as text lines."""
    b = info["board"]
    out = [
        f"port:         {info['port']}",
        f"board:        MicroPython {b['micropython']} on {b['platform']} ({b['machine']})"
        + ("  [virtual board]" if b["virtual"] else ""),
        f"mac:          {info['mac'] or '-'}",
        f"flash:        {info['free_flash_bytes'] // 1024} KB free of {info['total_flash_bytes'] // 1024} KB",
        f"provisioned:  {'yes' if info['provisioned'] else 'no'}",
    ]
    p = info["pointer"]
    if p:
        out.append(f"pointer:      slot {p['slot']}, version {p.get('version') or '-'} (bseq {p['bseq']}), "
                   f"{p['state']}" + (f", fallback {p['fallback']}" if p.get("fallback") in prov.SLOTS else ""))
    else:
        out.append("pointer:      none (no A/B app layout)")
    for s, d in info["slots"].items():
        if not d["present"]:
            out.append(f"slot {s}:       empty")
            continue
        ver = f", version {d['version']}" if d.get("version") else ""
        out.append(f"slot {s}:       {d['files']} files, {d['bytes'] // 1024} KB{ver}{' (active)' if d['active'] else ''}")
    if info["ota_result"]:
        r = info["ota_result"]
        out.append(f"last OTA:     {r.get('result')} bseq {r.get('bseq')} version {r.get('version')}: {r.get('reason')}")
    if info["config_error"]:
        out.append(f"config:       INVALID: {info['config_error']}")
    elif info["config"] is None:
        out.append("config:       none")
    else:
        c = info["config"]
        fleet = {True: "this fleet", False: "ANOTHER fleet", None: "fleet unknown"}[info["config_of_this_fleet"]]
        out.append(f"config:       node {c.get('node_id')} ({c.get('role')}), net {c.get('net_id')}, {fleet}")
        for k, v in c.items():
            if k in ("node_id", "role", "net_id"):
                continue
            out.append(f"  {k}: {v}")
    if not info["restarted"]:
        out.append("the app is stopped (raw REPL): `fleet node reset` restarts it")
    return out


@cli.command("info")
@_port_option
@_baud_option
@click.option("--no-restart", is_flag=True, help="Leave the app stopped after reading (default: restart it).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@home_option
def info_cmd(home, port, baud, no_restart, as_json):
    """What is on the board: slots, versions, config (no secrets), free flash."""
    info = prov.node_info(port, home=home, baud=baud, restart=not no_restart)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo("\n".join(render_info(info)))


@cli.command("logs")
@_port_option
@_baud_option
@click.option("--follow", "-f", is_flag=True, help="Keep reading until Ctrl-C.")
@click.option("--lines", "-n", type=click.IntRange(1), help="Stop after N lines.")
@click.option("--timeout-s", type=BoundedFloat(0.1), default=10.0, show_default=True,
              help="Without --follow: stop after this long.")
@click.option("--crash-log", is_flag=True,
              help="First stop the app to read the crash log on the flash (/crash.log), then restart it.")
def logs_cmd(port, baud, follow, lines, timeout_s, crash_log):
    """Print the board's serial console (the running app's output) without interrupting it. A
    board idle at its REPL (its app crashed or ended) shows its crash log (/crash.log) instead."""
    for line in prov.node_logs(port, lines=lines, follow=follow, timeout_s=timeout_s, baud=baud,
                               crash_log=crash_log):
        click.echo(line)


@cli.command("reset")
@_port_option
@_baud_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def reset_cmd(port, baud, as_json):
    """Hard-reset the board (machine.reset()): it reboots into its app."""
    result = prov.node_reset(port, baud=baud)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        state = "booting" if result["boot_seen"] else "reset sent, no boot output seen yet"
        click.echo(f"{port}: reset ({state})")
