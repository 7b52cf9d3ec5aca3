"""`fleet keys init|show|revoke|revoked` — the fleet secret, the fleet's Ed25519 signing key,
and the revocation list (a stolen pole: see README "When a pole is stolen").

Only public data is ever printed: file paths, the network id, the public key and its
fingerprint. The secrets stay in their 0600 files (see fleet/keys.py).
"""
import click

from fleet.cli._lazy import lazy_group

SUBCOMMANDS = {
    # name -> module defining `cli`
    "init": "fleet.cli.keys.init",
    "show": "fleet.cli.keys.show",
    "revoke": "fleet.cli.keys.revoke",
    "revoked": "fleet.cli.keys.revoked",
}


@click.group(cls=lazy_group(SUBCOMMANDS))
def cli():
    """Create and inspect the fleet keys (secret never printed)."""
