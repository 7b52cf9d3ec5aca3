# Authentication primitives, on both interpreters.
from vectors import unhex

from protocol import auth


def test_hmac_rfc4231_vectors():
    # RFC 4231 test cases 1, 2 and 6 (a key longer than the block size)
    h = auth.Hmac(b"\x0b" * 20).digest(b"Hi There")
    assert h == unhex("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
    h = auth.Hmac(b"Jefe").digest(b"what do ya want for nothing?")
    assert h == unhex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    h = auth.Hmac(b"\xaa" * 131).digest(b"Test Using Larger Than Block-Size Key - Hash Key First")
    assert h == unhex("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")


def test_key_derivation_is_distinct_per_node_and_network():
    secret = bytes(range(32))
    k1 = auth.derive_node_key(secret, 1, 1)
    assert len(k1) == 32
    assert k1 != auth.derive_node_key(secret, 1, 2)
    assert k1 != auth.derive_node_key(secret, 2, 1)
    assert auth.derive_mesh_key(secret, 1) != auth.derive_mesh_key(secret, 2)
    assert auth.derive_mesh_key(secret, 1) not in (k1,)


def test_replay_window():
    w = auth.ReplayWindow(8)
    assert w.accept(10) == auth.NEW
    assert w.accept(10) == auth.DUPLICATE
    assert w.accept(7) == auth.NEW
    assert w.accept(7) == auth.DUPLICATE
    assert w.accept(30) == auth.NEW
    assert w.check(10) == auth.OLD  # fell out of the 8-wide window
    assert w.check(29) == auth.NEW
    assert w.accept(23) == auth.NEW  # 30 - 7: last slot in the window
    assert w.check(22) == auth.OLD


def test_replay_window_restored_after_a_restart():
    # the node persists only the highest accepted counter: after a restart everything up to it
    # counts as seen (a command accepted before the reboot is never accepted again)
    w = auth.ReplayWindow(8)
    w.restore(20)
    for c in (20, 19, 14, 13, 12, 0):
        assert w.accept(c) != auth.NEW, c
    assert w.check(12) == auth.OLD
    assert w.accept(22) == auth.NEW
    assert w.accept(21) == auth.NEW  # arrived after the restart, never seen: fine
    assert w.accept(21) == auth.DUPLICATE
    assert w.accept(19) == auth.DUPLICATE  # still remembered as seen after the window moved
