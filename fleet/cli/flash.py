"""`fleet flash` — write a MicroPython ESP32 image with esptool, then optionally provision.

Thin: fleet.flash checks the image and the chip and runs esptool; `--then-provision` chains into
the same code as `fleet provision --port PORT` with the provisioning options given here.
"""
import functools
import json

import click

from fleet import flash as flashmod
from fleet import provision as prov
from fleet.cli._options import home_option
from fleet.cli.provision import options_from, provision_options, run_provision, specs_from_options
from fleet.errors import FleetError


def _address(text):
    try:
        return text if isinstance(text, int) else int(text, 0)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a number (e.g. 0x1000)") from None


@click.command()
@click.option("--port", required=True, metavar="PORT", help="Serial port of the ESP32 (e.g. /dev/ttyUSB0).")
@click.option("--image", "image", required=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="MicroPython firmware .bin for ESP32 (your file; nothing is downloaded).")
@click.option("--baud", "flash_baud", type=int, default=flashmod.DEFAULT_BAUD, show_default=True,
              help="Serial speed for writing the image (provisioning then uses the REPL's 115200).")
@click.option("--address", type=_address, default=hex(flashmod.DEFAULT_ADDRESS), show_default=True,
              help="Flash offset of the image (0x1000 for ESP32 MicroPython images).")
@click.option("--connect-attempts", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Times esptool tries to reach the bootloader.")
@click.option("--then-provision", is_flag=True, help="Provision the board once MicroPython runs (give --node-id ...).")
@functools.partial(provision_options, repl_baud=False)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@home_option
def cli(home, port, image, flash_baud, address, connect_attempts, then_provision, as_json, **kw):
    """Write a MicroPython image to an ESP32 (chip type and flash size checked first)."""
    specs = specs_from_options([port], kw) if then_provision else None  # bad options fail before writing
    result = flashmod.flash(port, image, baud=flash_baud, address=address, connect_attempts=connect_attempts)
    size = "?" if result["flash_size_bytes"] is None else f"{result['flash_size_bytes'] // (1024 * 1024)} MB"
    click.echo(f"{port}: wrote {result['image_bytes'] // 1024} KB to the {result['chip']} ({size} flash) in "
               f"{result['elapsed_s']:.1f} s", err=True)
    if not then_provision:
        if as_json:
            click.echo(json.dumps(result, indent=2))
        return
    # A freshly flashed MicroPython formats its filesystem at first boot: give it time to answer.
    opts = options_from(kw, connect_timeout_s=30.0)
    if not as_json:
        run_provision(home, specs, opts, as_json=False)
        return
    summary = prov.provision(home, specs, opts)
    click.echo(json.dumps({"flash": result, "provision": summary}, indent=2))
    if summary["failed"]:
        raise FleetError("provisioning failed after flashing: "
                         + "; ".join(r["error"] for r in summary["results"] if not r["ok"]))
