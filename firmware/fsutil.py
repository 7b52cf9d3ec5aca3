"""A tiny filesystem adapter for the node's flash, the same on MicroPython and CPython.

The ring, the counters and the config loader take an `fs` object instead of calling `os`
themselves, so tests can hand them a fake that fails at a chosen point (a power cut), and the
shell chooses the root (the flash root on a board, a private directory on the virtual rig).

The adapter's primitives (paths are relative to the root, "/"-separated):
    open(path, mode) -> file     rename(src, dst)     remove(path)
    listdir(path="") -> [names]  stat(path) -> os.stat tuple (raises OSError when absent)
    mkdir(path)
and the helpers built on them, which work over any adapter with those primitives:
    exists(fs, path), size(fs, path), read_file(fs, path), write_file(fs, path, data).

Atomicity: `write_file` writes `<path>.tmp` completely, then renames it over `path`. On
littlefs (the ESP32 and virtual-board flash) and on POSIX, rename replaces the target in one
step, so after a power cut the file holds either the old or the new content, never a mix.
A leftover `.tmp` is harmless: the next write_file overwrites it.
"""
try:
    import os
except ImportError:  # pragma: no cover - very old MicroPython ports
    import uos as os  # type: ignore


def _join(root, path):
    if not root or root == ".":
        return path or "."
    if not path:
        return root
    if root.endswith("/"):
        return root + path
    return root + "/" + path


class PosixFS:
    """The flash (or a host directory) rooted at `root`: "" or "." is the current directory,
    "/" the flash root of a board."""

    def __init__(self, root="."):
        self.root = root

    def path(self, path):
        """Return the platform path of `path` (relative to the root)."""
        return _join(self.root, path)

    def open(self, path, mode="rb"):
        return open(_join(self.root, path), mode)

    def rename(self, src, dst):
        os.rename(_join(self.root, src), _join(self.root, dst))

    def remove(self, path):
        os.remove(_join(self.root, path))

    def listdir(self, path=""):
        return os.listdir(_join(self.root, path))

    def stat(self, path):
        return os.stat(_join(self.root, path))

    def mkdir(self, path):
        os.mkdir(_join(self.root, path))

    def read_file(self, path):
        """Return the bytes of `path`, or None when it does not exist."""
        return read_file(self, path)

    def write_file(self, path, data):
        """Replace `path` with `data` atomically (see the module function)."""
        write_file(self, path, data)


def exists(fs, path):
    """Return True when `path` exists (file or directory)."""
    try:
        fs.stat(path)
        return True
    except OSError:
        return False


def size(fs, path):
    """Return the size of file `path` in bytes, or -1 when it does not exist."""
    try:
        return fs.stat(path)[6]
    except OSError:
        return -1


def makedirs(fs, path):
    """Create directory `path` (and its parents) if absent."""
    if not path or exists(fs, path):
        return
    i = path.rfind("/")
    if i > 0:
        makedirs(fs, path[:i])
    fs.mkdir(path)


def read_file(fs, path):
    """Return the bytes of `path`, or None when it does not exist."""
    try:
        f = fs.open(path, "rb")
    except OSError:
        return None
    try:
        return f.read()
    finally:
        f.close()


def write_file(fs, path, data):
    """Replace `path` with `data` atomically: write `path.tmp`, then rename it over `path`.
    Raises OSError (e.g. ENOSPC) with the old content intact."""
    tmp = path + ".tmp"
    f = fs.open(tmp, "wb")
    try:
        f.write(data)
        f.flush()
        # CPython on a host disk: make the bytes durable before the rename publishes them.
        # (littlefs commits on close; MicroPython's os has no fsync.)
        fsync = getattr(os, "fsync", None)
        if fsync is not None:
            try:
                fsync(f.fileno())
            except (AttributeError, OSError, ValueError):
                pass
    finally:
        f.close()
    try:
        fs.rename(tmp, path)
    except OSError:
        # FAT (and some older VFS) refuse to rename over an existing file: fall back to
        # remove + rename, which is not atomic but leaves `tmp` complete for a retry.
        if not exists(fs, path):
            raise
        fs.remove(path)
        fs.rename(tmp, path)
