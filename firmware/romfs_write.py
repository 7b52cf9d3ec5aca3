"""A ROMFS image laid out from a file list, in the list's order, with no tree in RAM.

firmware/slots.py stages an OTA image into a romfs partition with it: the archive's index
(paths and sizes, sorted by path) comes first, so each record header can be computed before the
file's bytes arrive, and those bytes are written right after their header as they are unpacked.
Nothing is held but the caller's file list: sizes of directories are recomputed by scanning it
(60 files: a few thousand steps, no allocation to speak of; a tree of dicts and a header list
took 9.4 KB, which a fragmented 123k heap did not have). Pure (no I/O); loaded for a stage.

The format is MicroPython's ROMFS (`vfs.VfsRom`; mpremote's VfsRomWriter writes it on the host):
the header b"\\xd2\\xcd\\x31", a varuint length (padded with a leading 0x80 so the whole image
has an even length), then records `varuint kind, varuint length, payload`: a directory (kind 4)
holds its name and its entries, a file (kind 5) its name and one verbatim data record (kind 2).
Varuints are big-endian groups of 7 bits, the high bit set on all but the last.
"""

HEADER = b"\xd2\xcd\x31"
_VERBATIM = 2
_DIR = 4
_FILE = 5


def uint(v):
    """The varuint encoding of v >= 0."""
    out = bytes((v & 0x7F,))
    v >>= 7
    while v:
        out = bytes((0x80 | (v & 0x7F),)) + out
        v >>= 7
    return out


def _file_head(name, size):
    """The bytes of a file record before its data (name: bytes)."""
    inner = uint(len(name)) + name + uint(_VERBATIM) + uint(size)
    return uint(_FILE) + uint(len(inner) + size) + inner


def _dir_head(name, payload):
    return uint(_DIR) + uint(payload) + uint(len(name)) + name


def _payload(files, prefix):
    """Bytes of the entries under directory `prefix` ("" or "a/b/")."""
    n = 0
    seen = []
    for f in files:
        path = f[0]
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix):]
        i = rest.find("/")
        if i < 0:
            n += len(_file_head(rest.encode(), f[1])) + f[1]
        elif rest[:i] not in seen:
            sub = rest[:i]
            seen.append(sub)
            name = sub.encode()
            p = len(uint(len(name))) + len(name) + _payload(files, prefix + sub + "/")
            n += len(uint(_DIR)) + len(uint(p)) + p
    return n


def _top(files):
    body = _payload(files, "")
    n = uint(body)
    if (len(HEADER) + len(n) + body) % 2:
        n = b"\x80" + n
    return HEADER + n, body


def image_length(files):
    """Bytes of the ROMFS image of `files` ([(path, size, ...)])."""
    head, body = _top(files)
    return len(head) + body


def records(files):
    """Yield (head, path, size) for each of `files` ([(path, size, ...)], "/"-separated
    relative paths, every directory's files together as sorting by path puts them): writing
    each head, then the file's `size` bytes, one after the other from offset 0 of erased flash
    makes the ROMFS image. Raises ValueError on an empty path part or a directory met again."""
    head = _top(files)[0]
    open_dirs = []  # prefixes of the directories the next file is inside of, outermost first
    closed = []
    for f in files:
        path = f[0]
        parts = path.split("/")
        if "" in parts:
            raise ValueError("bad path %r" % path)
        while open_dirs and not path.startswith(open_dirs[-1]):
            closed.append(open_dirs.pop())
        for j in range(len(open_dirs), len(parts) - 1):
            prefix = "/".join(parts[:j + 1]) + "/"
            if prefix in closed:
                raise ValueError("%s is not with the rest of %s" % (path, prefix))
            name = parts[j].encode()
            head += _dir_head(name, len(uint(len(name))) + len(name) + _payload(files, prefix))
            open_dirs.append(prefix)
        yield head + _file_head(parts[-1].encode(), f[1]), path, f[1]
        head = b""
