"""`fleet ota build` — compile the app, pack and page it, sign its manifest with the fleet key."""
import json

import click

from fleet import ota_bundle
from fleet.cli._options import home_option


@click.command("build")
@click.option("--version", "version", metavar="V", help="Version text (at most 16 bytes; default: the package version).")
@click.option("--seq", type=int, metavar="N", help="Bundle sequence number (default: the last built here + 1).")
@click.option("--out", type=click.Path(dir_okay=False), metavar="FILE",
              help="Bundle file to write (default: <home>/ota/bundle-<seq>.rmota).")
@click.option("--arch", default=ota_bundle.DEFAULT_ARCH, show_default=True, metavar="ARCH",
              help="mpy-cross -march (xtensawin for ESP32; bytecode without native code runs anywhere).")
@click.option("--target-class", default=ota_bundle.DEFAULT_TARGET, show_default=True, metavar="CLASS",
              help="Hardware class nodes check before accepting the bundle.")
@click.option("--src", type=click.Path(file_okay=False, exists=True), metavar="DIR",
              help="Source tree holding firmware/ and protocol/ (default: the installed packages).")
@click.option("--no-compress", is_flag=True, help="Ship the archive uncompressed.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@home_option
def cli(home, version, seq, out, arch, target_class, src, no_compress, as_json):
    """Build a signed OTA bundle of firmware/ + protocol/ for `fleet ota push`."""
    info = ota_bundle.build(home, version=version, seq=seq, out=out, arch=arch, target_class=target_class,
                            src=src, compress=not no_compress)
    if as_json:
        click.echo(json.dumps(info))
        return
    click.echo(info["path"])
    click.echo(
        f"bundle bseq {info['bseq']} version {info['version']} ({info['target_class']}): {info['files']} files, "
        f"{info['app_bytes']} bytes of app -> {info['image_bytes']} bytes image ({info['compression']}), "
        f"{info['pages']} pages, manifest {info['manifest_bytes']} bytes",
        err=True,
    )
