"""The fleet keystore: the fleet secret and the fleet's Ed25519 signing key, in `<home>/keys/`.

Files (directory 0700):
  fleet.secret        32 random bytes, mode 0600. Every node key and the mesh key derive from it
                      (protocol.auth.derive_node_key / derive_mesh_key), so it is never printed,
                      logged or copied anywhere but a backup.
  fleet_signing.key   Ed25519 private key: the raw 32-byte seed (RFC 8032), mode 0600, in the
                      format of fleet/signing.py (load_private_key / sign). Signs OTA manifests
                      and broadcast commands.
  fleet_signing.pub   the raw 32-byte public key as hex, mode 0644: what nodes hold.
  revoked.json        revoked nodes {"<node>": {"reason": text, "at": unix s}}, mode 0600
                      (no key bytes): `fleet keys revoke`. A revoked node's frames are refused
                      by the collector, no command is sent to it, and it gets no later epoch.
  epoch.json          the mesh key epoch in force {"epoch": E, "other": F or null}, mode 0644 (no
                      key bytes: every epoch's key derives from the fleet secret). `other` is
                      the one other epoch whose hop tags are accepted: the next one while
                      `fleet keys rotate` hands it out, the previous one in the grace window
                      after activation. Absent: epoch 0, none other.

Rules: private files are created with os.open(..., 0o600) and fchmod'ed (umask-proof), written to
a temporary file and linked into place so an interrupted `keys init` leaves no half-written key;
existing keys are never overwritten without force=True; a private file readable by group or
others is refused when loaded (as ssh does), with the chmod that fixes it. Derived keys are
cached in memory only. Nothing here returns a secret in a repr or an error message.
"""
import hashlib
import json
import os
import secrets
import time

from fleet import signing
from fleet.errors import FleetError
from protocol import auth

SECRET_NAME = "fleet.secret"
SIGNING_NAME = "fleet_signing.key"
PUBLIC_NAME = "fleet_signing.pub"
REVOKED_NAME = "revoked.json"
EPOCH_NAME = "epoch.json"
MAX_REASON = 200
SECRET_LEN = 32


class KeystoreError(FleetError):
    """A keystore problem the operator must fix (missing, unsafe or damaged key files)."""


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_file_atomic(path, data, mode, overwrite):
    """Write `data` to `path` with permission bits `mode` regardless of the umask.

    The bytes go to a fresh temporary file first (O_EXCL, created with `mode`, then fchmod), are
    fsynced, then moved into place: os.replace when `overwrite`, else a hard link that fails if
    `path` exists (no race between the check and the write). Raises FileExistsError when `path`
    exists and not `overwrite`."""
    tmp = f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    try:
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise
            except OSError:  # a filesystem without hard links: check, then rename
                if os.path.lexists(path):
                    raise FileExistsError(path) from None
                os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    _fsync_dir(os.path.dirname(path) or ".")


def read_private_file(path, what):
    """Return the bytes of private key file `path`, refusing one that group or others can
    read or write. `what` names the file for messages. Raises KeystoreError."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise KeystoreError(f"no {what} at {path}: run `fleet keys init` to create the fleet keys") from None
    except OSError as e:
        raise KeystoreError(f"cannot open the {what} {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o077:
            raise KeystoreError(
                f"refusing to use the {what} {path}: it is readable by group or others "
                f"(mode {st.st_mode & 0o777:04o}); run `chmod 600 {path}` and check who has seen it"
            )
        chunks = []
        while True:
            b = os.read(fd, 65536)
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _stamp(path):
    """(mtime, size, inode) of `path`, None when absent: changes whenever the file is replaced."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def fingerprint(public_key):
    """Return a short printable fingerprint of a 32-byte public key: 'SHA256:<16 hex>'."""
    return "SHA256:" + hashlib.sha256(public_key).hexdigest()[:16]


class Keystore:
    """The keys of one fleet home. Loads lazily; caches derived keys in memory only."""

    def __init__(self, keys_dir, net_id):
        self.dir = os.path.abspath(keys_dir)
        self.net_id = int(net_id)
        self.secret_path = os.path.join(self.dir, SECRET_NAME)
        self.signing_path = os.path.join(self.dir, SIGNING_NAME)
        self.public_path = os.path.join(self.dir, PUBLIC_NAME)
        self.revoked_path = os.path.join(self.dir, REVOKED_NAME)
        self.epoch_path = os.path.join(self.dir, EPOCH_NAME)
        self._secret = None
        self._signing = None
        self._mesh_key = None
        self._node_keys = {}
        self._epoch_keys = {}  # epoch -> mesh key (epochs > 0)

    def __repr__(self):  # never the secrets
        return f"Keystore({self.dir!r}, net_id={self.net_id})"

    def exists(self):
        """True when both private key files are present."""
        return os.path.exists(self.secret_path) and os.path.exists(self.signing_path)

    def init(self, force=False):
        """Create the fleet secret and the Ed25519 signing key. Refuses (KeystoreError) when either
        file exists unless `force`. Returns `info()` (paths and public key; no secrets)."""
        present = [p for p in (self.secret_path, self.signing_path) if os.path.lexists(p)]
        if present and not force:
            raise KeystoreError(
                f"fleet keys already exist ({', '.join(present)}); refusing to overwrite them. Every "
                f"provisioned node depends on them: use --force only to start a new fleet"
            )
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)
        secret = secrets.token_bytes(SECRET_LEN)
        seed, public = signing.generate_keypair()
        try:
            write_file_atomic(self.secret_path, secret, 0o600, overwrite=force)
            write_file_atomic(self.signing_path, seed, 0o600, overwrite=force)
            write_file_atomic(self.public_path, (public.hex() + "\n").encode(), 0o644, overwrite=True)
        except FileExistsError as e:
            raise KeystoreError(f"{e.filename or e} appeared while creating the keys; refusing to overwrite it") from None
        self._secret, self._signing = secret, seed
        self._mesh_key, self._node_keys, self._epoch_keys = None, {}, {}
        return self.info()

    def fleet_secret(self):
        """Return the 32-byte fleet secret (loaded once; KeystoreError if missing, unsafe or damaged)."""
        if self._secret is None:
            data = read_private_file(self.secret_path, "fleet secret")
            if len(data) != SECRET_LEN:
                raise KeystoreError(
                    f"the fleet secret {self.secret_path} holds {len(data)} bytes, expected {SECRET_LEN}: "
                    f"restore it from a backup"
                )
            self._secret = data
        return self._secret

    def signing_seed(self):
        """Return the fleet's Ed25519 private key: the 32-byte seed fleet.signing.sign() takes.
        Raises FleetError if the file is missing, unsafe (group/world-readable) or damaged."""
        if self._signing is None:
            if not os.path.exists(self.signing_path):
                raise KeystoreError(
                    f"no fleet signing key at {self.signing_path}: run `fleet keys init` to create the fleet keys"
                )
            self._signing = signing.load_private_key(self.signing_path)
        return self._signing

    def public_key(self):
        """Return the raw 32-byte Ed25519 public key (from the .pub file, else the private key)."""
        if self._signing is None:
            try:
                with open(self.public_path, encoding="ascii") as f:
                    pub = bytes.fromhex(f.read().strip())
                if len(pub) == 32:
                    return pub
            except (OSError, ValueError):
                pass
        return signing.public_key_of(self.signing_seed())

    def sign(self, data):
        """Return the 64-byte Ed25519 signature of `data` by the fleet signing key."""
        return signing.sign(self.signing_seed(), data)

    def mesh_key(self, epoch=0):
        """Return the network's 32-byte mesh (hop-by-hop) key of key epoch `epoch` (0: the key
        nodes are provisioned with), derived; epoch 0 is cached."""
        if epoch:
            k = self._epoch_keys.get(epoch)
            if k is None:
                k = self._epoch_keys[epoch] = auth.derive_mesh_key(self.fleet_secret(), self.net_id, epoch)
            return k
        if self._mesh_key is None:
            self._mesh_key = auth.derive_mesh_key(self.fleet_secret(), self.net_id)
        return self._mesh_key

    # ---- key epochs ---------------------------------------------------------------------------

    def epoch_state(self):
        """Return {"epoch": E, "other": F or None} (see epoch.json in the module docstring).
        Raises KeystoreError when the file is damaged (never guessed: a wrong epoch refuses
        every frame)."""
        try:
            with open(self.epoch_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return {"epoch": 0, "other": None}
        except OSError as e:
            raise KeystoreError(f"cannot read {self.epoch_path}: {e.strerror}") from None
        try:
            d = json.loads(raw)
            e, o = d["epoch"], d.get("other")
            ok = type(e) is int and 0 <= e < 2 ** 32 and (o is None or (type(o) is int and 0 <= o < 2 ** 32
                                                                        and abs(o - e) == 1))
        except (ValueError, KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            raise KeystoreError(f"{self.epoch_path} is damaged: expected {{\"epoch\": E, \"other\": E±1 or null}}; "
                                f"restore it from a backup (the fleet's nodes hold the epoch it names)")
        return {"epoch": e, "other": o}

    def set_epoch_state(self, epoch, other=None):
        """Write the epoch in force and the other accepted one (atomic)."""
        if not os.path.isdir(self.dir):
            raise KeystoreError(f"no fleet keys in {self.dir}: run `fleet keys init`")
        data = json.dumps({"epoch": int(epoch), "other": None if other is None else int(other)}) + "\n"
        write_file_atomic(self.epoch_path, data.encode("utf-8"), 0o644, overwrite=True)

    def epoch_stamp(self):
        """A value that changes when epoch.json changes (for cheap re-reads)."""
        return _stamp(self.epoch_path)

    def mesh_keys(self):
        """(pair, phase): the mesh keys accepted now, as the pair protocol.decode takes (indexed
        by key phase: the even epoch's key, the odd one's; None where no epoch of that parity is
        accepted), and the key phase the host tags its own frames with (the epoch in force)."""
        st = self.epoch_state()
        pair = [None, None]
        pair[st["epoch"] & 1] = self.mesh_key(st["epoch"])
        if st["other"] is not None:
            pair[st["other"] & 1] = self.mesh_key(st["other"])
        return (pair[0], pair[1]), st["epoch"] & 1

    # ---- revocation -------------------------------------------------------------------------

    def revoked(self):
        """Return {node_id: {"reason": str, "at": unix s}} of the revoked nodes ({} when none).
        Raises KeystoreError when the file is damaged (never silently treated as empty)."""
        try:
            with open(self.revoked_path, encoding="utf-8") as f:
                raw = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise KeystoreError(f"the revocation list {self.revoked_path} cannot be read ({e}): restore it "
                                f"from a backup; until then no revoked node is refused") from None
        out = {}
        if not isinstance(raw, dict):
            raise KeystoreError(f"the revocation list {self.revoked_path} is not a JSON object: restore it from a backup")
        for k, v in raw.items():
            if not k.isdigit() or not isinstance(v, dict) or not isinstance(v.get("reason"), str):
                raise KeystoreError(f"the revocation list {self.revoked_path} has a bad entry {k[:20]!r}: "
                                    f"restore it from a backup")
            out[int(k)] = {"reason": v["reason"], "at": v.get("at")}
        return out

    def revoked_stamp(self):
        """A value that changes when the revocation list changes (for cheap re-reads)."""
        return _stamp(self.revoked_path)

    def revoke(self, node_id, reason, now_s=None):
        """Add `node_id` to the revocation list (atomic write). Returns (entry, newly_revoked):
        a node already revoked keeps its first reason and time. Raises KeystoreError."""
        node_id = int(node_id)
        reason = " ".join(str(reason).split())
        if not reason:
            raise KeystoreError("a revocation needs a reason (e.g. \"pole 17 reported stolen, ticket 4411\")")
        if len(reason) > MAX_REASON:
            raise KeystoreError(f"the reason is {len(reason)} characters, at most {MAX_REASON}")
        if node_id <= 0:
            raise KeystoreError(f"node id {node_id}: expected 1..4294967295")
        cur = self.revoked()
        if node_id in cur:
            return cur[node_id], False
        cur[node_id] = {"reason": reason, "at": int(time.time() if now_s is None else now_s)}
        if not os.path.isdir(self.dir):
            raise KeystoreError(f"no fleet keys in {self.dir}: run `fleet keys init`")
        data = json.dumps({str(k): v for k, v in sorted(cur.items())}, indent=1, sort_keys=True) + "\n"
        write_file_atomic(self.revoked_path, data.encode("utf-8"), 0o600, overwrite=True)
        return cur[node_id], True

    def node_key(self, node_id):
        """Return node `node_id`'s 32-byte end-to-end key, derived and cached."""
        key = self._node_keys.get(node_id)
        if key is None:
            key = auth.derive_node_key(self.fleet_secret(), self.net_id, node_id)
            self._node_keys[node_id] = key
        return key

    def node_key_at(self, node_id, epoch):
        """Node `node_id`'s end-to-end key in key epoch `epoch` (protocol/keywrap.py
        epoch_node_key): the provisioned key (node_key) in epoch 0, after that derived with the
        epoch's mesh key, as the node derives it when it takes the epoch."""
        if not epoch:
            return self.node_key(node_id)
        from protocol.keywrap import epoch_node_key

        return epoch_node_key(self.node_key(node_id), epoch, self.mesh_key(epoch))

    def info(self):
        """Return plain data safe to print: paths, net id, public key hex and fingerprint."""
        out = {
            "keys_dir": self.dir,
            "net_id": self.net_id,
            "secret_file": self.secret_path,
            "signing_key_file": self.signing_path,
            "public_key_file": self.public_path,
            "initialised": self.exists(),
            "public_key": None,
            "fingerprint": None,
        }
        if out["initialised"] or os.path.exists(self.public_path):
            pub = self.public_key()
            out["public_key"] = pub.hex()
            out["fingerprint"] = fingerprint(pub)
        return out
