"""Run `fleet` through its real entry point (fleet.cli.main: the one place that turns an
unexpected exception into "unexpected ... this is a bug"), in-process, with stdout and stderr
captured apart. CliRunner.invoke(group) would skip main() and hide exactly those lines."""
import base64
import re

from click.testing import CliRunner

from fleet.cli import main


class Ran:
    """What one run printed: code, stdout, stderr (text)."""

    def __init__(self, code, stdout, stderr, raw=b""):
        self.code = code
        self.stdout = stdout
        self.stderr = stderr
        self.raw = raw  # stdout + stderr as bytes, before any decoding

    @property
    def output(self):
        return self.stdout + self.stderr

    def __repr__(self):
        return f"exit {self.code}\n--- stdout\n{self.stdout[-2000:]}\n--- stderr\n{self.stderr[-2000:]}"


def run_fleet(argv, env=None, input=None):  # noqa: A002 - CliRunner's name
    """Run `fleet ARGV` via fleet.cli.main; return Ran. REDMESH_DEBUG is unset so a bug shows as
    the operator would see it."""
    env = dict(env or {})
    env.setdefault("REDMESH_DEBUG", None)
    runner = CliRunner()
    with runner.isolation(input=input, env=env) as (out, err, _):
        try:
            main(list(argv))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        o, e = out.getvalue(), err.getvalue()
    ran = Ran(code, o.decode("utf-8", "replace"), e.decode("utf-8", "replace"), o + e)
    from key_leak_guard import check

    check(argv, env, ran.output, ran.raw)  # the keys of the homes it names (tests/key_leak_guard.py)
    return ran


def assert_clean(r, codes=(0, 1, 2)):
    """The exit-code contract: 0 ok, 1 failed / invalid / not found, 2 usage; no bug line, no
    traceback."""
    assert r.code in codes, r
    # fleet.cli.main's bug line; not the bare word "unexpected", which hostile input may echo back
    # in a usage error (hypothesis drew NODE='UNEXPECTED' once)
    assert "this is a bug in fleet" not in r.output and not re.search(r"(?m)^Error: unexpected ", r.stderr), r
    assert "Traceback (most recent call last)" not in r.output, r


def key_forms(key, window=8):
    """Text forms in which (part of) a key's bytes could show: hex (both cases) of the key and
    of every `window`-byte slice, the bytes-repr of each slice, and base64 (standard and
    URL-safe). Returns (texts, raw byte slices)."""
    texts, raws = set(), set()
    for i in range(0, len(key) - window + 1):
        part = key[i:i + window]
        texts.update((part.hex(), part.hex().upper(), " ".join("%02x" % b for b in part), repr(part)[2:-1]))
        raws.add(part)
    # one byte, as a codec error names it ("can't decode byte 0xa4 in position 0")
    texts.update("byte 0x%02x in position %d" % (b, i) for i, b in enumerate(key))
    for enc in (base64.b64encode, base64.urlsafe_b64encode):
        full = enc(key).decode().rstrip("=")
        texts.update(full[i:i + 12] for i in range(0, len(full) - 12, 4))  # aligned 9-byte runs
    return texts, raws


def assert_no_key_bytes(r, keys):
    """No form (key_forms) of any key in `keys` in what run `r` printed."""
    low = r.output.lower()
    for key in keys:
        texts, raws = key_forms(bytes(key))
        for t in texts:
            assert t.lower() not in low, "a key's bytes appeared in the output of a fleet command"
        for b in raws:
            assert b not in r.raw, "a key's raw bytes appeared in the output of a fleet command"
