"""`fleet ota inspect BUNDLE` — show a bundle's manifest and check it against the fleet key."""
import json

import click

from fleet import ota_bundle
from fleet.cli._options import home_option
from fleet.errors import FleetError


@click.command("inspect")
@click.argument("bundle", type=click.Path(dir_okay=False, exists=True))
@click.option("--files", "show_files", is_flag=True, help="List every file of the app.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@home_option
def cli(home, bundle, show_files, as_json):
    """Show the manifest of BUNDLE; the signature is checked with this home's fleet key.
    Exit status 1 when the bundle is damaged or its signature invalid (the report still printed)."""
    info = ota_bundle.inspect(bundle, home)
    if as_json:
        click.echo(json.dumps(info))
    else:
        _render(info, show_files)
    problem = ota_bundle.verdict(info)
    if problem:
        raise FleetError(f"{bundle}: {problem}; nodes would refuse it: do not push it")


def _render(info, show_files):
    rows = [
        ("bundle", info["path"]), ("bseq", info["bseq"]), ("version", info["version"]),
        ("target class", info["target_class"]), ("manifest id", info["manifest_id"]),
        ("signature", info["signature"]),
        ("pages", f"{info['pages']} x {info['page_size']} bytes" + ("" if info.get("pages_ok", True) else " (DAMAGED)")),
        ("image", f"{info['image_bytes']} bytes ({info['compression']})"),
        ("manifest", f"{info['manifest_bytes']} bytes"),
        ("files", f"{info['files']} ({info['unpacked_bytes']} bytes unpacked)"),
    ]
    for k, v in rows:
        click.echo(f"{k + ':':<14}{v}")
    for p in info.get("page_problems", [])[:5]:
        click.echo(f"  {p}")
    if show_files:
        for f in info["manifest"]["files"]:
            click.echo(f"  {f['size']:>8}  {f['sha256'][:16]}  {f['path']}")
