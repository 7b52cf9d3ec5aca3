"""Device builds carry exception messages as codes (fleet/devstrings.py); the host turns them
back into the text. The board's own message, read through `expand`, must be the host's."""
import ast
import os
import subprocess
import sys

import pytest
from mp_support import ROOT, micropython_bin

import protocol
from fleet import devstrings, ota_bundle
from fleet.sim import interp

# Frames that fail in different places of protocol.decode: each raises a formatted message.
BAD_FRAMES = [
    b"",  # truncated
    b"\x83\x02\x01\x00",  # wrong version
    b"\x83\x01\x63\x00",  # unknown frame type
    b"\x81\x01",  # too few items
    b"\x8a\x01\x02\x01\x02\x03\x80\x00\x00\x48" + bytes(8) + b"\x44" + bytes(4),  # zero readings
    b"\x89\x01\x01\x18\x2a\x05\x00\x00\x00\x00\x00\x44" + bytes(4),  # beacon, a field out of range
    b"\x86\x01\x09\x01\x02\x03",  # routed, truncated
    bytes([0x9F]),  # indefinite array
]

_MP_SCRIPT = r"""
import sys
sys.path[:0] = [%(build)r]
import protocol
for h in %(frames)r:
    try:
        protocol.decode(bytes.fromhex(h))
        print("OK")
    except protocol.ProtocolError as e:
        print("ERR " + str(e))
"""


def _host_message(buf):
    try:
        protocol.decode(buf)
    except protocol.ProtocolError as e:
        return str(e)
    return "OK"


@pytest.fixture(scope="module")
def coded_build(tmp_path_factory):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import mpy_build

    out = str(tmp_path_factory.mktemp("coded"))
    assert mpy_build.build(out) == []
    return out


def test_the_boards_coded_messages_read_back_as_the_hosts_text(coded_build):
    code = _MP_SCRIPT % {"build": coded_build, "frames": [f.hex() for f in BAD_FRAMES]}
    proc = subprocess.run([micropython_bin(), "-X", interp.heap_arg(64), "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=coded_build)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("ERR ", "OK"))]
    assert len(lines) == len(BAD_FRAMES), proc.stdout + proc.stderr
    coded = 0
    for buf, line in zip(BAD_FRAMES, lines, strict=True):
        board = line[4:] if line.startswith("ERR ") else line
        coded += board.startswith("~")
        assert devstrings.expand(board) == _host_message(buf), (buf.hex(), board)
    assert coded >= 4, "the board build should carry codes, not texts: " + repr(lines)


def test_every_device_source_keeps_its_lines_and_parses():
    table = {}
    for rel in ota_bundle.device_sources(ROOT):
        with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
            src = f.read()
        out = devstrings.shrink_source(src, table)
        ast.parse(out)
        assert len(out.splitlines()) == len(src.splitlines()), rel
        for i, (a, b) in enumerate(zip(src.splitlines(), out.splitlines(), strict=True)):
            if a.lstrip().startswith("raise "):  # a raise stays on its line (tracebacks point at it)
                assert b.lstrip().startswith("raise "), (rel, i + 1, b)
    assert len(table) > 100  # the node's and gateway's messages are coded


def test_formatted_plain_and_added_messages_round_trip():
    src = ('def f(x, name):\n'
           '    if x:\n'
           '        raise ValueError("value out of range: %d (at most %d)" % (x, 9))\n'
           '    if name:\n'
           '        raise KeyError("no such setting here: " + name)\n'
           '    raise OSError("the flash is not mounted "\n'
           '                  "yet, retry later")\n')
    table = {}
    out = devstrings.shrink_source(src, table)
    assert "out of range" not in out and "no such setting" not in out and "not mounted" not in out
    ns = {}
    exec(compile(out, "x", "exec"), ns)
    for args, want in (((12, None), "value out of range: 12 (at most 9)"),
                       ((0, "rh_max"), "no such setting here: rh_max"),
                       ((0, None), "the flash is not mounted yet, retry later")):
        with pytest.raises(Exception) as ei:
            ns["f"](*args)
        msg = ei.value.args[0]
        assert msg.startswith("~") and devstrings.expand("drop: " + msg, table) == "drop: " + want


def test_texts_that_cannot_be_coded_stay_exact():
    src = ('def f(d):\n'
           '    raise ValueError("100%% of %(name)s" % d)\n'
           'def g():\n'
           '    raise ValueError("a template with %d left for the caller")\n'
           'def h():\n'
           '    raise ValueError("short")\n')
    assert devstrings.shrink_source(src) == src


def test_unknown_codes_and_broken_arguments_are_left_as_they_are():
    table = {"abcde": "expected %d items, got %d"}
    assert devstrings.expand("x ~abcde{1|2} y", table) == "x expected 1 items, got 2 y"
    assert devstrings.expand("x ~abcde{1} y", table) == "x ~abcde{1} y"  # wrong count: raw
    assert devstrings.expand("~zzzzz{1}", table) == "~zzzzz{1}"  # not a code of ours: raw (z is outside the alphabet)
    assert devstrings.expand("~bcdef", table) == "~bcdef"  # unknown code
    assert devstrings.expand("no codes here", table) == "no codes here"


def test_two_texts_with_one_code_stop_the_build():
    text = "value out of range: %d"
    table = {devstrings.code_of(text): "some other text entirely"}
    with pytest.raises(devstrings.DevStringsError):
        devstrings.shrink_source('def f(x):\n    raise ValueError("%s" %% x)\n' % text, table)
