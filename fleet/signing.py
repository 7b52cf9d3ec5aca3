"""The fleet's Ed25519 signing key: generate it, keep it in a 0600 file, sign with it (CPython).

Nodes hold only the public key and check signatures with protocol.ed25519.verify; this is the
other half. The private key file holds the raw 32-byte seed (RFC 8032 section 5.1.5), nothing
else, and is created with mode 0600. Loading refuses a file that group or others can read: a
fleet key that has been world-readable must be treated as leaked, not silently used.

Callers see `fleet.errors.FleetError` for anything the operator can fix (missing file, loose
permissions, wrong size); the key bytes never appear in a message.
"""
import os
import stat

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fleet.errors import FleetError

SEED_SIZE = 32
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
KEY_FILE_MODE = 0o600


def _private(seed):
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_SIZE:
        raise ValueError("an Ed25519 private key is a %d-byte seed" % SEED_SIZE)
    return Ed25519PrivateKey.from_private_bytes(bytes(seed))


def generate_keypair():
    """Return a new (private_seed, public_key) pair, 32 bytes each, from the OS's CSPRNG."""
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes_raw()
    return seed, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def public_key_of(private_key_bytes):
    """Return the 32-byte public key of a 32-byte private seed. Raises ValueError on a bad seed."""
    return _private(private_key_bytes).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def sign(private_key_bytes, message):
    """Return the 64-byte Ed25519 signature (R || S) of `message` under a 32-byte private seed.

    Deterministic (RFC 8032): the same key and message give the same signature. Raises
    ValueError on a bad seed.
    """
    return _private(private_key_bytes).sign(bytes(message))


def save_private_key(path, private_key_bytes, overwrite=False):
    """Write the 32-byte seed to `path`, created with mode 0600 (never wider, whatever the umask).

    Raises FleetError if the file exists and `overwrite` is false, or if it cannot be written.
    """
    _private(private_key_bytes)  # refuse to store something that is not a key
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, KEY_FILE_MODE)
    except FileExistsError:
        raise FleetError(
            f"{path} already exists: refusing to replace a signing key. Move it away first "
            "(nodes trust its public key until they are re-provisioned)."
        ) from None
    except OSError as e:
        raise FleetError(f"cannot create key file {path}: {e.strerror}") from None
    try:
        # An existing file keeps its old mode under O_TRUNC: narrow it before writing the secret.
        os.fchmod(fd, KEY_FILE_MODE)
        os.write(fd, bytes(private_key_bytes))
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_key_file(path, overwrite=False):
    """Generate a key pair, save the private seed to `path` (0600) and return the public key."""
    seed, public_key = generate_keypair()
    save_private_key(path, seed, overwrite=overwrite)
    return public_key


def load_private_key(path):
    """Return the 32-byte seed stored at `path`.

    Raises FleetError if the file is missing, readable or writable by group or others, not a
    regular file, or not exactly 32 bytes.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise FleetError(f"no signing key at {path}: check the path, or generate a key first") from None
    except OSError as e:
        raise FleetError(f"cannot open key file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)  # of the file opened, not of whatever the path names a moment later
        if not stat.S_ISREG(st.st_mode):
            raise FleetError(f"{path} is not a regular file: expected a 32-byte key file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise FleetError(
                f"{path} has mode {mode:04o}: a signing key must be readable by its owner only. "
                f"Run `chmod 600 {path}`, and treat the key as leaked if others could read it."
            )
        data = os.read(fd, SEED_SIZE + 1)
    finally:
        os.close(fd)
    if len(data) != SEED_SIZE:
        raise FleetError(
            f"{path} holds {len(data) if len(data) <= SEED_SIZE else 'more than %d' % SEED_SIZE} bytes: "
            f"expected a raw {SEED_SIZE}-byte Ed25519 seed"
        )
    return data
