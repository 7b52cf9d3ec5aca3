# A forged manifest over the air and a tampered manifest on flash, at the OTA engine's level,
# on both interpreters (the shell-level twins are in tests/test_node_security.py).
# A rogue pole knows the mesh key (it was stolen with a node) but not the fleet's signing key:
# it serves a bundle signed by another key. The engine must refuse it, store nothing and ignore
# that sender for a while. A manifest already on flash is re-checked when the engine starts:
# one altered on flash (a bit flip, a hand edit) is dropped, with its pages.
import ota_fixtures as fx
import ota_vectors as vec

from firmware.fsutil import write_file
from firmware.ota import ST_IDLE, OtaAir, OtaEngine, OtaParams
from firmware.ota_store import PageStore

PUB = bytes.fromhex(vec.PUB)
OTHER_PUB = bytes.fromhex(vec.OTHER_PUB)
MESH_KEY = b"k" * 32
ROGUE = 9
VICTIM = 5


def _h(parts):
    return bytes.fromhex("".join(parts))


def _params():
    return OtaParams(adv_imin_ms=200, adv_doublings=4, tx_rate_per_s=50, req_delay_ms=50, req_timeout_ms=300)


def _exchange(a, b, until_ms, done):
    """Two OtaAir ends joined by a perfect broadcast link (frames encoded and decoded with the
    mesh key); returns the virtual time reached."""
    queue = []
    now = 0
    while now <= until_ms and not done():
        for src, dst in ((a, b), (b, a)):
            src.tick(now)
            while True:
                out = src.poll_tx()
                if out is None:
                    break
                queue.append((now + 3, dst, out[2]))
        keep = []
        for item in queue:
            if item[0] <= now:
                item[1].on_air(b"\x02\x00\x00\x00\x00\x09", item[2], now)
            else:
                keep.append(item)
        queue = keep
        now = max(now + 1, min([a.next_deadline_ms, b.next_deadline_ms] + [q[0] for q in queue]))
    return now


def _events(eng):
    out = []
    while True:
        e = eng.poll_event()
        if e is None:
            return out
        out.append(e)


def test_a_forged_manifest_over_the_air_is_refused_nothing_stored_sender_distrusted():
    rogue = OtaEngine(ROGUE, OTHER_PUB, PageStore(fx.MemFS()), 3, _params(), running_bseq=1)
    rogue.offer_bundle(_h(vec.V2_OTHER_KEY), fx.app_pages(2), 0)  # whole, under the rogue's own key
    assert rogue.complete()
    vfs = fx.MemFS()
    victim = OtaEngine(VICTIM, PUB, PageStore(vfs), 4, _params(), running_bseq=1)
    seen = []

    def refused():
        seen.extend(_events(victim))
        return any(e[0] == "refused" for e in seen)

    now = _exchange(OtaAir(rogue, MESH_KEY), OtaAir(victim, MESH_KEY), 30000, refused)
    assert refused(), ("the forged manifest was never refused", seen)
    ev = [e for e in seen if e[0] == "refused"][0]
    assert ev[1] == 2 and "signature" in ev[2], ev
    # nothing stored: no manifest, no page, no file at all on the victim's flash
    assert victim.m is None and PageStore(vfs).manifest() is None
    assert not vfs.files, sorted(vfs.files)
    assert victim.state == ST_IDLE and not victim.complete()
    # the sender is ignored for a while, and the refused bundle is not fetched again
    assert victim._distrusted(ROGUE, now)
    _exchange(OtaAir(rogue, MESH_KEY), OtaAir(victim, MESH_KEY), now + 10000, lambda: False)
    assert victim.m is None and not vfs.files
    assert not [e for e in _events(victim) if e[0] == "complete"]


def _tampered_store(signed_edit):
    """A flash holding the whole V2 bundle, its manifest then edited by `signed_edit`."""
    fs = fx.MemFS()
    eng = OtaEngine(VICTIM, PUB, PageStore(fs), 4, _params(), running_bseq=1)
    eng.offer_bundle(_h(vec.V2), fx.app_pages(2), 0)
    assert eng.complete()
    # edited in place, as flash damage would (put_manifest would start a new bundle)
    write_file(fs, "ota/m", signed_edit(PageStore(fs).manifest()))
    assert PageStore(fs).get_page(0) is not None
    return fs


def _bump_version(signed):
    i = signed.find(b"2.0.0")
    assert i > 0
    return signed[:i] + b"2.0.1" + signed[i + 5:]  # still a well-formed manifest, the signature no longer fits


def test_a_manifest_tampered_on_flash_is_dropped_at_start():
    fs = _tampered_store(_bump_version)
    eng = OtaEngine(VICTIM, PUB, PageStore(fs), 4, _params(), running_bseq=1)
    assert eng.m is None and not eng.complete() and eng.state == ST_IDLE
    assert PageStore(fs).manifest() is None
    assert PageStore(fs).get_page(0) is None  # its pages went with it


def test_a_manifest_signed_by_another_key_on_flash_is_dropped_at_start():
    fs = _tampered_store(lambda signed: _h(vec.V2_OTHER_KEY))
    eng = OtaEngine(VICTIM, PUB, PageStore(fs), 4, _params(), running_bseq=1)
    assert eng.m is None and PageStore(fs).manifest() is None


def test_an_intact_manifest_on_flash_resumes():
    # the control: the same flash untouched resumes complete (the checks above drop only damage)
    fs = _tampered_store(lambda signed: signed)
    eng = OtaEngine(VICTIM, PUB, PageStore(fs), 4, _params(), running_bseq=1)
    assert eng.complete() and eng.m.bseq == 2
