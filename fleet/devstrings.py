"""Error texts kept on the host: a device build carries a 5-character code in place of each
exception message, and the host turns codes back into the text.

Why. A board loads every .mpy into its ~112 KB Python heap, and each message string there is
interned there for good: the raise messages of a plain node's modules alone pinned 6.7 KB of
32-bit heap (bench/heap_bench.py --imports, before/after). The messages still matter: a
technician reading `fleet node logs`, a test reading a console. So, as embedded logging does it
(Rust's defmt, Zephyr's dictionary logging), the text stays on the host and the device says
which one:

    raise ProtocolError("hop tag: no mesh key for key phase %d" % phase)
on the device becomes
    raise ProtocolError("~k3v0a{%d}" % phase)        -> "~k3v0a{1}" in a log
which `expand` turns back into "hop tag: no mesh key for key phase 1".

Rules of the rewrite (`shrink_source`), applied only to `raise X(<message>)` where <message> is
a string literal, a literal `% args`, or a literal `+ expr`, and only where it saves bytes:
- the code is the first 25 bits of SHA-256 of the text, base 32 (stable across builds and
  versions: an old firmware's code still names its text while the sources hold it);
- conversion specs are kept in order between braces, joined by '|'; a literal with `%%`,
  `%(name)` or `*` widths is left as it is, and so is anything else (f-strings, names);
- line numbers do not move (a rewritten literal keeps its line breaks), so device tracebacks
  still point at the source line.
Two different texts with the same code stop the build (`DevStringsError`).

`expand(text)` replaces every code it knows in `text`; an unknown code, or one whose arguments
do not parse, is left as it is (still a greppable reference). The table comes from the
device sources beside this package (`source_table`), i.e. the texts of this version.
"""
import ast
import hashlib
import os
import re

_ALPHABET = "0123456789abcdefghijklmnopqrstuv"
_SPEC = re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa]")
_CODE = re.compile(r"~([0-9a-v]{5})(?:\{([^{}\n]*)\})?")
_MIN_LEN = 12  # a code costs ~7 characters (and a brace pair per formatted message)


class DevStringsError(Exception):
    """Two device messages share a code: the build must not ship (rename one text)."""


def code_of(text):
    """The 5-character code of a message text."""
    n = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big") >> 7
    out = ""
    for _ in range(5):
        out = _ALPHABET[n & 31] + out
        n >>= 5
    return out


def _specs(text):
    """The conversion specs of a %-format literal in order, or None when it cannot be coded."""
    if "%%" in text or "%(" in text or "%*" in text or ".*" in text:
        return None
    specs = _SPEC.findall(text)
    if text.count("%") != len(specs):
        return None
    return specs


def _messages(tree):
    """Yield (literal node, kind, whole-argument node) for each codable raise message."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Raise) or not isinstance(node.exc, ast.Call) or not node.exc.args:
            continue
        arg = node.exc.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            yield arg, "plain", arg
        elif isinstance(arg, ast.BinOp) and isinstance(arg.left, ast.Constant) and isinstance(arg.left.value, str):
            if isinstance(arg.op, ast.Mod):
                yield arg.left, "mod", arg
            elif isinstance(arg.op, ast.Add):
                yield arg.left, "add", arg


def _offsets(source):
    starts = [0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return starts


def shrink_source(source, table=None):
    """Return `source` with each codable raise message replaced by its code (see the module
    text). `table`, when given, collects {code: text} and is checked for collisions."""
    tree = ast.parse(source)
    # ast offsets are in UTF-8 bytes per line: work on bytes
    raw = source.encode("utf-8")
    starts = _offsets(raw.decode("latin-1"))
    edits = []
    for lit, kind, whole in _messages(tree):
        text = lit.value
        if len(text) < _MIN_LEN:
            continue
        code = code_of(text)
        if kind == "mod":
            specs = _specs(text)
            if specs is None:
                continue
            new = '"~%s{%s}"' % (code, "|".join(specs))
            lo, hi = lit, lit
        elif kind == "add":
            if "%" in text:  # a literal that is added to cannot be %-formatted later: keep it exact
                continue
            right = ast.get_source_segment(source, whole.right)
            if right is None:
                continue
            new = '("~%s{" + (%s) + "}")' % (code, right)
            lo, hi = whole, whole
        else:
            if "%" in text:  # a plain literal might be formatted by the caller later: keep it exact
                continue
            new = '"~%s"' % code
            lo, hi = lit, lit
        old = table.get(code) if table is not None else None
        if old is not None and old != text:
            raise DevStringsError("device messages %r and %r share code %s: reword one" % (old, text, code))
        if table is not None:
            table[code] = text
        a = starts[lo.lineno - 1] + lo.col_offset
        b = starts[hi.end_lineno - 1] + hi.end_col_offset
        breaks = raw[a:b].count(b"\n")
        edits.append((a, b, (new + "\n" * breaks).encode("utf-8") if breaks else new.encode("utf-8")))
    for a, b, new in sorted(edits, reverse=True):
        raw = raw[:a] + new + raw[b:]
    return raw.decode("utf-8")


_TABLE = None


def source_table(root=None):
    """{code: text} of every device message in this version's sources (cached)."""
    global _TABLE
    if _TABLE is not None and root is None:
        return _TABLE
    from fleet.ota_bundle import device_sources, source_root  # the device build's own list

    table = {}
    base = root or source_root()
    for rel in device_sources(base):
        with open(os.path.join(base, rel), encoding="utf-8") as f:
            shrink_source(f.read(), table)
    if root is None:
        _TABLE = table
    return table


def _render(text, args):
    specs = _SPEC.findall(text)
    if len(args) != len(specs):
        return None
    parts = _SPEC.split(text)
    out = parts[0]
    for arg, part in zip(args, parts[1:], strict=True):  # _render checked the counts
        out += arg + part
    return out


def expand(text, table=None):
    """`text` with every known device message code replaced by its message."""
    if "~" not in text:
        return text
    tab = source_table() if table is None else table

    def one(m):
        msg = tab.get(m.group(1))
        if msg is None:
            return m.group(0)
        if m.group(2) is None:
            return msg
        specs = _SPEC.findall(msg)
        if not specs:  # a literal + expr: the braces hold what was added
            return msg + m.group(2)
        args = m.group(2).split("|")
        got = _render(msg, args)
        return m.group(0) if got is None else got

    return _CODE.sub(one, text)


def prepared(root, rel, tmp, table=None):
    """Write the device build's form of source `rel` (messages coded) under `tmp`; return its path
    (what mpy-cross compiles, with `-s rel` so tracebacks name the source)."""
    with open(os.path.join(root, rel), encoding="utf-8") as f:
        text = shrink_source(f.read(), table)
    path = os.path.join(tmp, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path
