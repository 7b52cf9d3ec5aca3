"""The one grammar of text that reaches a node (MicroPython and CPython, sans-IO).

Two kinds of text, named in protocol/redmesh.cddl (`token`, `plain-text`):

  token       1..max characters, each an ASCII letter, digit or one of . _ + -, the first a
              letter or digit. For names a node stores, compares or shows: the firmware
              version and the target class of an OTA manifest (max 16), a pole id (max 32).
              No space, '/', '=', quote or control character: nothing that a key=value file,
              a path, a terminal or a shell would read as syntax.
  plain text  lo..hi bytes of UTF-8 holding no control character (U+0000..U+001F,
              U+007F..U+009F): free text in a node's config (broker host, Wi-Fi SSID and
              password, MQTT client id).

Rules: `token_problem` and `text_problem` return None when the value follows the grammar,
else a short reason saying what is allowed. The reason never repeats the value (a Wi-Fi
password is plain text): the caller adds what arrived when that is not a secret. The fleet tool
checks before it signs or writes anything, and the node checks again where it parses a manifest
or a config (defence in depth): one definition, both sides.
"""

TOKEN_MAX = 16  # version and target class: the status frame carries fw_version in 16 bytes
POLE_MAX = 32
_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def token_problem(v, max_len=TOKEN_MAX):
    """Return None when `v` is a token of at most `max_len` characters, else the reason."""
    ok = isinstance(v, str) and 0 < len(v) <= max_len and v[0] in _ALNUM
    if ok:
        for c in v:
            if c not in _ALNUM and c not in "._+-":
                ok = False
                break
    if ok:
        return None
    return "expected 1..%d characters: letters, digits and . _ + -, starting with a letter or digit" % max_len


def text_problem(v, lo=0, hi=64):
    """Return None when `v` is plain text of lo..hi UTF-8 bytes, else the reason."""
    if not isinstance(v, str):
        return "expected text"
    for c in v:
        o = ord(c)
        if o < 0x20 or 0x7F <= o <= 0x9F:
            return "expected text without control characters (line breaks, tabs, escapes)"
        if 0xD800 <= o <= 0xDFFF:  # CPython's stand-in for bytes that are not UTF-8
            return "expected valid UTF-8 text"
    n = len(v.encode())
    if n < lo or n > hi:
        return "expected text of %d..%d bytes, got %d" % (lo, hi, n)
    return None
