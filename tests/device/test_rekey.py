# The node's mesh key state (firmware/rekey.py), under MicroPython and CPython: the rotation
# steps, replayed and forged offers refused, and a power cut at every flash write leaves the
# node on one epoch or the other, never without a key.
from flashfakes import CutFS, PowerCut, rmtree, tmpdir

from firmware import rekey
from firmware.fsutil import PosixFS
from protocol.auth import derive_mesh_key, derive_node_key
from protocol.errors import ProtocolError
from protocol.keywrap import wrap

SECRET = bytes(range(1, 33))
NET, NODE = 7, 42
NK = derive_node_key(SECRET, NET, NODE)


def mk(e):
    return derive_mesh_key(SECRET, NET, e)


def offer(fs, st, e, node=NODE, key=None):
    return rekey.offer(fs, st, NK, NET, NODE, e, wrap(NK, NET, node, e, key or mk(e)))


def _refused(fn, *a):
    try:
        fn(*a)
    except ProtocolError:
        return True
    return False


def test_rotation_steps_replay_and_forgery():
    d = tmpdir("rekey")
    try:
        fs = PosixFS(d)
        st = rekey.load(fs, mk(0))
        assert st == (0, mk(0), None, None)
        st = offer(fs, st, 1)
        assert st == (0, mk(0), 1, mk(1)) and rekey.load(fs, mk(0)) == st
        assert offer(fs, st, 1) == st  # a resent offer: same state
        st = rekey.activate(fs, st, 1)
        assert st == (1, mk(1), 0, mk(0)) and rekey.load(fs, mk(0)) == st
        assert _refused(offer, fs, st, 1)  # replay of the old offer after activation
        assert _refused(rekey.activate, fs, st, 2)  # activating an epoch it does not hold
        assert _refused(offer, fs, st, 2, NODE + 1)  # a wrap for another node (stolen pole's)
        w = bytearray(wrap(NK, NET, NODE, 2, mk(2)))
        w[3] ^= 1
        assert _refused(rekey.offer, fs, st, NK, NET, NODE, 2, bytes(w))  # forged
        assert rekey.load(fs, mk(0)) == st  # nothing written by refused steps
        st = rekey.end_grace(fs, st)
        assert st == (1, mk(1), None, None) and rekey.load(fs, mk(0)) == st
    finally:
        rmtree(d)


def test_corrupt_state_falls_back_to_the_provisioned_key():
    d = tmpdir("rekey")
    try:
        fs = PosixFS(d)
        rekey.save(fs, (3, mk(3), None, None))
        b = bytearray(fs.read_file(rekey.STATE_FILE))
        b[10] ^= 1
        with fs.open(rekey.STATE_FILE, "wb") as f:
            f.write(bytes(b))
        assert rekey.load(fs, mk(0)) == (0, mk(0), None, None)
    finally:
        rmtree(d)


def _steps(fs, st):
    st = offer(fs, st, 1)
    st = rekey.activate(fs, st, 1)
    st = rekey.end_grace(fs, st)
    st = offer(fs, st, 2)
    st = rekey.activate(fs, st, 2)
    # missed epoch 3's rotation, asked: the key in force at once, one write (no grace window)
    return rekey.offer(fs, st, NK, NET, NODE, 3, wrap(NK, NET, NODE, 3, mk(3)), True)


def test_power_cut_at_every_flash_write():
    valid = ((0, mk(0), None, None), (0, mk(0), 1, mk(1)), (1, mk(1), 0, mk(0)), (1, mk(1), None, None),
             (1, mk(1), 2, mk(2)), (2, mk(2), 1, mk(1)), (3, mk(3), None, None))
    cut = 1
    seen = set()
    for _ in range(100):  # bounded: every operation of the sequence, then one clean run
        for torn in (None, 7):
            d = tmpdir("rekeycut")
            try:
                fs = CutFS(d, cut_at=cut, torn=torn)
                finished = False
                saved = []
                orig = rekey.save

                def save(fs_, st_, orig=orig, saved=saved):
                    orig(fs_, st_)
                    saved.append(st_)
                rekey.save = save
                try:
                    _steps(fs, rekey.load(fs, mk(0)))
                    finished = True
                except PowerCut:
                    pass
                finally:
                    rekey.save = orig
                st = rekey.load(PosixFS(d), mk(0))  # reboot
                assert st in valid, (cut, torn, st[0], st[2])
                # the last state saved, or the one being saved when the power went: never older
                last = valid.index(saved[-1]) if saved else 0
                assert valid.index(st) in (last, last + 1), (cut, torn, last, valid.index(st))
                seen.add(valid.index(st))
                # and it can carry on from there
                st2 = _steps(PosixFS(d), st) if st[0] == 0 and st[2] is None else st
                assert st2[1] in (mk(0), mk(1), mk(2), mk(3))
            finally:
                rmtree(d)
        if finished:
            break
        cut += 1
    assert finished and cut > 9, cut  # every write of the sequence was cut once
    assert len(seen) == len(valid)
