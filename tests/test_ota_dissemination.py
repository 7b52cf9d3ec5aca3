"""The OTA engine in a small discrete-event simulation (tests/ota_sim.py): a real app bundle
spreads from one gateway over a 6-node line and a 25-node grid with 10 % loss; absent, killed
and lying nodes. Figures are printed (pytest -s): time, transmissions, bytes on air."""
import hashlib
import json

import pytest
from ota_sim import OtaSim, grid, line

from firmware.ota import OtaEngine
from fleet import ota_bundle, signing

SEED = hashlib.sha256(b"redmesh ota test key").digest()
PUB = signing.public_key_of(SEED)
HOUR_MS = 3600 * 1000


@pytest.fixture(scope="module")
def bundle():
    """The real app (firmware/ + protocol/ through mpy-cross), as bseq 2."""
    files = ota_bundle.compile_app()
    return ota_bundle.build_bundle(files, 2, "2.0.0", lambda m: signing.sign(SEED, m))


def _size(b):
    return len(b.signed_manifest) + sum(len(p) for p in b.pages)


def _assert_has_bundle(sim, nid, b):
    store = sim.nodes[nid].engine.store
    assert store.manifest() == b.signed_manifest
    for i, page in enumerate(b.pages):
        assert store.get_page(i) == page, (nid, i)


def _report(name, sim, b):
    fig = sim.figures(_size(b))
    fig.update({"topology": name, "bundle_bytes": _size(b), "pages": len(b.pages)})
    print("\nOTA sim " + json.dumps(fig, sort_keys=True))
    return fig


@pytest.mark.parametrize("name,links", [("line-6", line(6)), ("grid-25", grid(5, 5))])
def test_every_node_gets_the_bundle(name, links, bundle):
    sim = OtaSim(links, PUB, loss=0.1, seed=3)
    sim.seed(1, bundle.signed_manifest, bundle.pages)
    sim.run(HOUR_MS, stop=sim.all_complete)
    assert sim.all_complete(), {n: (x.engine.have, x.engine.total) for n, x in sim.nodes.items()}
    for nid in links:
        _assert_has_bundle(sim, nid, bundle)
        assert sim.nodes[nid].engine.state == 2  # complete, newer than the running bseq 1: stage it
    fig = _report(name, sim, bundle)
    # the token bucket: no node ever sends more than rate + burst OTA frames in a second
    assert sim.max_frames_per_window(1000) <= sim.params.tx_rate_per_s + sim.params.tx_burst
    # one broadcast serves many: far fewer data frames than (receivers x packets in the bundle)
    packets = sum((len(p) + 223) // 224 for p in bundle.pages) + (len(bundle.signed_manifest) + 223) // 224
    assert fig["frames_by_type"]["ota_data"] < 2 * (len(links) - 1) * packets


def test_a_node_absent_during_the_campaign_catches_up(bundle):
    sim = OtaSim(grid(3, 3), PUB, loss=0.1, seed=5)
    sim.set_up(9, False)  # the far corner is off
    sim.seed(1, bundle.signed_manifest, bundle.pages)
    sim.run(HOUR_MS, stop=lambda: sim.all_complete([n for n in sim.nodes if n != 9]))
    assert sim.nodes[9].engine.have == 0 and not sim.nodes[9].fs.files
    t_back = sim.now + 10 * 60 * 1000  # ten quiet minutes: Trickle intervals at their maximum
    sim.run(t_back)
    sim.set_up(9, True)
    sim.run(t_back + HOUR_MS, stop=sim.all_complete)
    assert sim.all_complete()
    _assert_has_bundle(sim, 9, bundle)
    print("\nabsent node caught up in %.1f s" % ((sim.nodes[9].complete_ms - t_back) / 1000))


def test_a_node_killed_mid_transfer_resumes_from_verified_pages(bundle):
    sim = OtaSim(line(4), PUB, loss=0.1, seed=7)
    sim.seed(1, bundle.signed_manifest, bundle.pages)
    half = len(bundle.pages) // 2
    sim.run(HOUR_MS, stop=lambda: sim.nodes[4].engine.have >= half)
    victim = sim.nodes[4]
    had = victim.engine.have
    assert 0 < had < victim.engine.total
    # power lost while writing the next page: a truncated page file is left behind
    nxt = "ota/p%d" % (had - victim.engine.mpages)
    victim.fs.files[nxt] = bytearray(bundle.pages[had - victim.engine.mpages][:1000])
    sim.set_up(4, False)
    sim.run(sim.now + 30000)
    sim.set_up(4, True)  # a fresh engine over the same flash
    assert victim.engine.have == had  # resumed from every verified page, the torn one dropped
    assert nxt not in victim.fs.files
    sim.run(sim.now + HOUR_MS, stop=sim.all_complete)
    assert sim.all_complete()
    _assert_has_bundle(sim, 4, bundle)


class _Liar(OtaEngine):
    """Serves the bundle with one byte of every image packet flipped (the manifest intact)."""

    def poll_tx(self):
        f = super().poll_tx()
        if f is not None and f.type == 8 and f.page >= self.mpages:
            f.data = bytes([f.data[0] ^ 0xFF]) + f.data[1:]
        return f


def test_a_bad_page_is_dropped_and_its_sender_distrusted(bundle):
    # 2 hears only the liar 3 at first; the honest gateway 1 comes up later
    sim = OtaSim({1: [2], 2: [1, 3], 3: [2]}, PUB, loss=0.0, seed=9)
    liar = sim.nodes[3]
    liar.engine = _Liar(3, PUB, liar.engine.store, 1, sim.params, running_bseq=1)
    liar.engine.offer_bundle(bundle.signed_manifest, bundle.pages, 0)
    sim.set_up(1, False)
    sim.run(60000)
    victim = sim.nodes[2].engine
    assert victim.bad_pages >= 1 and victim._distrusted(3, sim.now)
    assert victim.have == victim.mpages  # the manifest (signed) came through; no image page did
    assert "ota/p0" not in sim.nodes[2].fs.files
    sim.set_up(1, True)
    sim.nodes[1].engine.offer_bundle(bundle.signed_manifest, bundle.pages, sim.now)
    sim.run(sim.now + HOUR_MS, stop=lambda: victim.complete())
    assert victim.complete()
    _assert_has_bundle(sim, 2, bundle)


def test_a_manifest_longer_than_one_page_travels_in_several_units():
    files = [("firmware/m%03d.mpy" % i, bytes([i]) * (50 + i)) for i in range(70)] + [("main.py", b"run()\n")]
    b = ota_bundle.build_bundle(sorted(files), 3, "3.0.0", lambda m: signing.sign(SEED, m))
    assert len(b.signed_manifest) > 3584  # two units of the manifest before the image pages
    sim = OtaSim(line(4), PUB, loss=0.1, seed=11)
    sim.seed(1, b.signed_manifest, b.pages)
    assert sim.nodes[1].engine.mpages == 2
    sim.run(HOUR_MS, stop=sim.all_complete)
    assert sim.all_complete()
    for nid in (2, 3, 4):
        _assert_has_bundle(sim, nid, b)
