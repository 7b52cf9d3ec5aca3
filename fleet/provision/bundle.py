"""The app bundle a board receives: the firmware/ and protocol/ sources precompiled with mpy-cross,
plus the root boot.py/main.py, with their digests."""
import hashlib
import os
import re
import threading

import firmware
from fleet.provision.model import DEFAULT_ARCH

# ---- the app bundle ---------------------------------------------------------------------------


def firmware_version():
    """Return (version, seq) of the firmware in this tree (FW_VERSION / FW_SEQ of firmware/node.py)."""
    src = os.path.join(os.path.dirname(firmware.__file__), "node.py")
    try:
        with open(src, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return "unknown", 0
    v = re.search(r'^FW_VERSION\s*=\s*"([^"]+)"', text, re.M)
    s = re.search(r"^FW_SEQ\s*=\s*(\d+)", text, re.M)
    return (v.group(1) if v else "unknown"), (int(s.group(1)) if s else 0)


class Bundle:
    """The app as it goes into a slot: {slot-relative path: bytes}, plus /boot.py and /main.py."""

    def __init__(self, files, version, seq, arch, boot_py, root_main_py):
        self.files = files
        self.version = version
        self.seq = seq
        self.arch = arch
        self.boot_py = boot_py
        self.root_main_py = root_main_py
        self.digests = {p: hashlib.sha256(b).hexdigest() for p, b in files.items()}
        self.rom_image = None  # the files as a ROMFS image, built when a board has romfs partitions

    @property
    def size_bytes(self):
        return sum(len(b) for b in self.files.values())


_bundle_cache = {}
_bundle_lock = threading.Lock()


def _device_sources():
    from fleet import ota_bundle

    root = ota_bundle.source_root()
    return root, [(rel, os.path.join(root, rel)) for rel in ota_bundle.device_sources(root)]


def build_bundle(arch=DEFAULT_ARCH):
    """Compile firmware/ and protocol/ with mpy-cross, exactly as `fleet ota build` does (same
    files, same slot main.py: a slot provisioned over USB equals one installed by OTA); cached per
    process while the sources do not change. Returns a Bundle; raises FleetError naming a file
    that does not compile."""
    from fleet import ota_bundle

    root, sources = _device_sources()
    key = (arch, tuple((rel, os.stat(full).st_mtime_ns, os.stat(full).st_size) for rel, full in sources))
    with _bundle_lock:
        cached = _bundle_cache.get(key)
        if cached is not None:
            return cached
        files = dict(ota_bundle.compile_app(root, arch))
        from firmware import crash as fw_crash

        boot_py = fw_crash.root_boot_py(os.path.join(root, "firmware")).encode()

        version, seq = firmware_version()
        bundle = Bundle(files, version, seq, arch, boot_py, fw_crash.ROOT_MAIN_PY.encode())
        _bundle_cache.clear()
        _bundle_cache[key] = bundle
        return bundle


def with_extra_files(bundle, extra):
    """Return a copy of `bundle` with slot files replaced/added from {path: bytes} (tests, tools)."""
    files = dict(bundle.files)
    files.update(extra)
    return Bundle(files, bundle.version, bundle.seq, bundle.arch, bundle.boot_py, bundle.root_main_py)
