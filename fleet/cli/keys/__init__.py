"""`fleet keys init|show|revoke|revoked|rotate|rotation` — the fleet secret, the fleet's Ed25519
signing key, the revocation list and mesh key rotation (a stolen pole: see README "When a pole
is stolen").

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
    "rotate": "fleet.cli.keys.rotate",
    "rotation": "fleet.cli.keys.rotation",
}


@click.group(cls=lazy_group(SUBCOMMANDS))
def cli():
    """Create and inspect the fleet keys (secret never printed)."""
