# Protocol tests that run unchanged on CPython (pytest) and MicroPython (tests/mp_run.py).
from vectors import head, hexes, unhex

import protocol as P
import protocol.envelope  # noqa: F401 - the MQTT messages too (a node does without them)
from protocol import auth

_KEYS = head("frames.json")["keys"]
MESH = auth.Hmac(unhex(_KEYS["mesh_key"]))
NODE = unhex(_KEYS["node_key"])


def _rng(seed):
    # xorshift32: the same mutations on both interpreters
    x = seed or 1
    while True:
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        yield x


def test_mutated_inputs_only_raise_protocol_error():
    """10,000+ mutated frames (bit flips, truncation, insertion, splicing): decode returns a
    frame or raises ProtocolError, never anything else, and the heap stays bounded."""
    seeds = list(hexes("frames.json"))
    r = _rng(12345)
    accepted = rejected = 0
    for i in range(10200):
        b = bytearray(seeds[next(r) % len(seeds)])
        op = next(r) % 5
        pos = next(r) % (len(b) + 1)
        if op == 0 and b:
            b[pos % len(b)] ^= 1 << (next(r) % 8)
        elif op == 1:
            b = b[:pos]
        elif op == 2:
            b[pos:pos] = bytes([next(r) & 0xFF for _ in range(1 + next(r) % 4)])
        elif op == 3 and b:
            b[pos % len(b)] = next(r) & 0xFF
        else:
            other = seeds[next(r) % len(seeds)]
            b = b[:pos] + other[next(r) % len(other):]
        try:
            P.decode(bytes(b), MESH, NODE if i % 2 else None)
            accepted += 1
        except P.ProtocolError as e:
            # decode() turns any stray exception (and MemoryError) into a ProtocolError as a
            # safety net; every input here must be refused by a rule, not caught by the net
            m = str(e)
            assert not m.startswith("malformed frame (") and "available memory" not in m, (i, m)
            rejected += 1
    assert accepted + rejected == 10200
    assert rejected > 5000
