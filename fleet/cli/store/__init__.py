"""`fleet store info|migrate|prune` — which store the fleet uses, its schema version and size.

`info` shows the backend, the URL, the schema version (the store's and this tool's), rows per
table and the size on disk; `migrate` brings an older store's schema up to this tool's version
(in one transaction: all or nothing) and says from which version to which. A store newer than
the tool is refused (upgrade redmesh); `prune --older-than-days N` drops raw readings older than
N days (means stay). Exit status 1 when the store cannot be opened.
"""
import click

from fleet.cli._lazy import lazy_group

SUBCOMMANDS = {
    # name -> module defining `cli`
    "info": "fleet.cli.store.info",
    "migrate": "fleet.cli.store.migrate",
    "prune": "fleet.cli.store.prune",
}


@click.group(cls=lazy_group(SUBCOMMANDS))
def cli():
    """Inspect or migrate the fleet store."""
