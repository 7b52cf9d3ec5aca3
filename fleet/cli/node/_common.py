"""What the `fleet node` subcommands share."""

import click

from fleet import provision as prov


def port_option(f):
    return click.option("--port", required=True, metavar="PORT", help="Serial port of the board.")(f)


def baud_option(f):
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
