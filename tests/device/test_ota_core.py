# OTA cores on both interpreters: signed manifest vectors, page checks, the Deluge engine between
# three nodes over a tiny broadcast medium (frames really encoded and decoded with the mesh key),
# and staging into an A/B slot on an in-memory flash (deflate included).
import ota_fixtures as fx
import ota_vectors as vec

import protocol
from firmware import boot
from firmware.ota import OtaAir, OtaEngine, OtaParams
from firmware.ota_store import PageStore
from firmware.slots import SlotError, SlotManager
from protocol import ProtocolError
from protocol import manifest as mf

PUB = bytes.fromhex(vec.PUB)
MESH_KEY = b"k" * 32


_CACHE = {}


def _h(parts):
    """The bytes of a vector (hex split over lines), decoded once: a 64-bit port's heap is tight."""
    key = id(parts)
    if key not in _CACHE:
        _CACHE[key] = bytes.fromhex("".join(parts))
    return _CACHE[key]


def _raises(fn, *args):
    try:
        fn(*args)
    except ProtocolError as e:
        return str(e)
    raise AssertionError("expected ProtocolError from %r" % (fn,))


def _pages(v):
    return fx.app_pages(v)


def test_manifest_vector_verifies():
    m = mf.parse_signed_manifest(_h(vec.V2), PUB)
    assert (m.bseq, m.version, m.target_class, m.compression) == (2, "2.0.0", "esp32", "none")
    pages = _pages(2)
    assert m.npages == len(pages) == 3
    assert m.page_size == fx.PAGE
    assert m.image_size == sum(len(p) for p in pages)
    for i, p in enumerate(pages):
        assert m.pages[i] == fx.sha256(p)
        assert m.page_len(i) == len(p)
    assert [(f[0], f[1]) for f in m.files] == [("firmware/app.mpy", 3100), ("main.py", 12),
                                               ("protocol/wire.mpy", 5000)]
    assert m.files[1][2] == fx.sha256(b"VERSION = 2\n")
    assert m.mid == mf.manifest_id(_h(vec.V2))


def test_manifest_refusals():
    signed = _h(vec.V2)
    assert "signature" in _raises(mf.parse_signed_manifest, _h(vec.V2_OTHER_KEY), PUB)
    assert "signature" in _raises(mf.parse_signed_manifest, signed, bytes.fromhex(vec.OTHER_PUB))
    flipped = bytearray(signed)
    flipped[40] ^= 1
    _raises(mf.parse_signed_manifest, bytes(flipped), PUB)
    _raises(mf.parse_signed_manifest, signed[:-1], PUB)
    _raises(mf.parse_signed_manifest, signed + b"\x00", PUB)
    _raises(mf.parse_signed_manifest, b"\x82" + b"\x59\x30\x00" + b"\x00" * 9000, PUB)  # oversize
    _raises(mf.parse_signed_manifest, b"", PUB)
    # fields out of spec are refused even when signed (the parser runs before the signature
    # check, and its result is used only when the signature verifies)
    for bad in (
        [1, 2, "v", "esp32", 10, 3584, [b"\x00" * 31], [["main.py", 1, b"\x00" * 32]], "none"],  # digest length
        [1, 2, "v", "esp32", 10, 3584, [], [["main.py", 1, b"\x00" * 32]], "none"],  # page count
        [1, 2, "v", "esp32", 10, 3584, [b"\x00" * 32], [["../boot.py", 1, b"\x00" * 32]], "none"],  # path
        [1, 2, "v", "esp32", 10, 3584, [b"\x00" * 32], [["main.py", 1, b"\x00" * 32]], "lzma"],
        [1, 2, "v", "esp32", 10, 4000, [b"\x00" * 32], [["main.py", 1, b"\x00" * 32]], "none"],  # page size
        [2, 2, "v", "esp32", 10, 3584, [b"\x00" * 32], [["main.py", 1, b"\x00" * 32]], "none"],  # format
    ):
        _raises(mf.parse_manifest, protocol.cbor.dumps(bad))


def test_manifest_parsed_in_place_points_at_its_digests():
    # a node parses in place (files=False): no list of digests, only where each one sits in the
    # manifest bytes (the engine reads digest i from the stored manifest on flash)
    signed = _h(vec.V2)
    kept = mf.parse_signed_manifest(signed, PUB)
    m = mf.parse_signed_manifest(bytearray(signed), PUB, None, False)
    assert m.files is None and isinstance(m.pages, mf.PageDigests)
    assert m.npages == len(m.pages) == kept.npages == 3
    at = mf.manifest_at(signed)
    for i in range(m.npages):
        o = at + m.pages.offset(i)
        assert signed[o:o + mf.DIGEST_LEN] == kept.pages[i]
    # the offsets are computed: they hold because a digest's head can only be the shortest one
    raw = protocol.cbor.dumps([1, 2, "v", "esp32", 10, 3584, [b"\x11" * 32], [["main.py", 1, b"\x00" * 32]],
                               "none"])
    canon = b"\x58\x20" + b"\x11" * 32
    assert raw.count(canon) == 1
    long_form = raw.replace(canon, b"\x59\x00\x20" + b"\x11" * 32)
    assert "non-shortest" in _raises(mf.parse_manifest, long_form, None, False)
    # a path listed twice: refused where the file list is kept (the host, a node staging), not
    # looked for in place (no list is kept; a dict of paths cost the node a 584-byte table)
    dup = protocol.cbor.dumps([1, 2, "v", "esp32", 10, 3584, [b"\x11" * 32],
                               [["main.py", 1, b"\x00" * 32], ["main.py", 1, b"\x00" * 32]], "none"])
    assert "twice" in _raises(mf.parse_manifest, dup)
    assert mf.parse_manifest(dup, None, False).npages == 1


def test_page_verification_in_engine():
    eng = OtaEngine(5, PUB, PageStore(fx.MemFS()), 1)
    eng.offer_manifest(_h(vec.V2), 0)
    pages = _pages(2)
    bad = bytearray(pages[0])
    bad[100] ^= 0x80
    assert "does not match" in _raises(eng.offer_page, 0, bytes(bad))
    _raises(eng.offer_page, 1, pages[1])  # out of order
    eng.offer_page(0, pages[0])
    assert eng.have == 2 and not eng.complete()
    assert "different manifest" in _raises(eng.offer_manifest, _h(vec.V2_CONFLICT))
    assert "signature" in _raises(eng.offer_manifest, _h(vec.V2_OTHER_KEY))
    assert "below" in _raises(eng.offer_manifest, _h(vec.V1))


class _Medium:
    """Broadcast to the neighbours of each sender after 3 ms; frames go through encode/decode."""

    def __init__(self, links):
        self.links = links
        self.queue = []
        self.frames = 0

    def send(self, src, data, now):
        self.frames += 1
        for dst in self.links[src]:
            self.queue.append((now + 3, dst, data))


def _run(nodes, links, until_ms, done):
    medium = _Medium(links)
    airs = {}
    for nid in nodes:
        airs[nid] = OtaAir(nodes[nid], MESH_KEY)
    now = 0
    while now <= until_ms and not done():
        for nid in airs:
            air = airs[nid]
            air.tick(now)
            while True:
                out = air.poll_tx()
                if out is None:
                    break
                assert out[1] == OtaAir.BROADCAST and len(out[2]) <= protocol.MAX_FRAME
                medium.send(nid, out[2], now)
        keep = []
        for item in medium.queue:
            if item[0] <= now:
                airs[item[1]].on_air(b"\x00" * 6, item[2], now)
            else:
                keep.append(item)
        medium.queue = keep
        nxt = min([airs[n].next_deadline_ms for n in airs] + [q[0] for q in medium.queue])
        now = max(now + 1, nxt)
    return medium.frames


def _params():
    return OtaParams(adv_imin_ms=200, adv_doublings=4, tx_rate_per_s=50, req_delay_ms=50, req_timeout_ms=300)


def test_engine_three_nodes_line():
    fs = {1: fx.MemFS(), 2: fx.MemFS(), 3: fx.MemFS()}
    nodes = {}
    for nid in fs:
        nodes[nid] = OtaEngine(nid, PUB, PageStore(fs[nid]), 7, _params(), running_bseq=1)
    nodes[1].offer_bundle(_h(vec.V2), _pages(2), 0)  # pages checked against the manifest
    assert nodes[1].complete()
    events = []

    def done():
        for nid in (2, 3):
            while True:
                ev = nodes[nid].poll_event()
                if ev is None:
                    break
                events.append((nid, ev))
        return nodes[2].complete() and nodes[3].complete()

    frames = _run(nodes, {1: [2], 2: [1, 3], 3: [2]}, 60000, done)
    assert done()
    for nid in (2, 3):
        store = PageStore(fs[nid])
        assert store.manifest() == _h(vec.V2)
        for i in range(3):
            assert store.get_page(i) == PageStore(fs[1]).get_page(i)
        assert (nid, ("complete", 2)) in events
        assert (nid, ("progress", 100)) in events
    assert frames < 3 * 4 * 16 * 3  # a handful of rounds, not a storm
    # a fresh engine over node 3's flash resumes complete (progress survives a reboot)
    again = OtaEngine(3, PUB, PageStore(fs[3]), 9, _params(), running_bseq=1)
    assert again.complete() and again.state == 2


def test_engine_never_fetches_an_older_bundle():
    fs_a, fs_b = fx.MemFS(), fx.MemFS()
    a = OtaEngine(1, PUB, PageStore(fs_a), 1, _params(), running_bseq=1)
    a.offer_bundle(_h(vec.V2), _pages(2), 0)
    b = OtaEngine(2, PUB, PageStore(fs_b), 2, _params(), running_bseq=3)  # runs a newer app
    _run({1: a, 2: b}, {1: [2], 2: [1]}, 5000, lambda: False)
    assert b.m is None and not fs_b.files  # never fetched, nothing written
    assert a.tx_frames > 0 and b.tx_frames > 0  # both advertised


def test_engine_refuses_a_conflicting_manifest():
    a = OtaEngine(1, PUB, PageStore(fx.MemFS()), 1, _params(), running_bseq=1)
    a.offer_bundle(_h(vec.V2), _pages(2), 0)
    c = OtaEngine(3, PUB, PageStore(fx.MemFS()), 3, _params(), running_bseq=1)
    c.offer_manifest(_h(vec.V2_CONFLICT), 0)  # same bseq, another manifest
    _run({1: a, 3: c}, {1: [3], 3: [1]}, 5000, lambda: False)
    ev = []
    while True:
        e = a.poll_event()
        if e is None:
            break
        ev.append(e)
    assert ("refused", 2, "a different manifest for bseq 2") in ev
    assert a.m.mid == mf.manifest_id(_h(vec.V2)) and c.m.mid == mf.manifest_id(_h(vec.V2_CONFLICT))
    assert c.have == 1  # c took nothing of a's pages: they belong to another manifest


def _stage(fs, signed, pages):
    m = mf.parse_signed_manifest(signed, PUB)
    return m, SlotManager(fs).stage(m, lambda i: pages[i])


def _slot_ok(fs, slot, v):
    for path, data in fx.app_files(v):
        assert bytes(fs.files.get(slot + "/" + path, b"")) == data, (slot, path)


def test_stage_trial_confirm_and_deflate():
    fs = fx.MemFS()
    _stage(fs, _h(vec.V1), _pages(1))  # first install: no pointer yet, confirmed at once
    assert boot.select(fs) == "a"
    _slot_ok(fs, "a", 1)
    m3, slot = _stage(fs, _h(vec.V3Z), fx.paginate(_h(vec.V3Z_IMAGE)))  # deflate image
    assert m3.compression == "deflate" and slot == "b"
    _slot_ok(fs, "b", 3)
    mgr = SlotManager(fs)
    assert mgr.in_trial() and mgr.running() == (3, "3.0.0")
    assert boot.select(fs) == "b"
    try:
        _stage(fs, _h(vec.V2), _pages(2))
        raise AssertionError("staged during a trial")
    except SlotError as e:
        assert "trial" in str(e)
    assert mgr.confirm()
    assert mgr.last_result()["result"] == "confirmed"
    try:
        _stage(fs, _h(vec.V2), _pages(2))  # older than the running 3
        raise AssertionError("staged an older bseq")
    except SlotError as e:
        assert "not above" in str(e)
    assert mgr.last_result()["result"] == "refused"
    assert boot.select(fs) == "b"


def test_a_bundle_for_another_hardware_class_is_refused():
    # the vectors are "esp32" bundles; a node of another class takes none of them
    signed = _h(vec.V1)
    eng = OtaEngine(5, PUB, PageStore(fx.MemFS(), "ota"), 1, OtaParams(target_class="esp32s3"))
    assert "bundle is for 'esp32', not 'esp32s3'" in _raises(eng.offer_manifest, signed)
    assert eng.m is None
    fs = fx.MemFS()
    m = mf.parse_signed_manifest(signed, PUB)
    try:
        SlotManager(fs, target_class="esp32s3").stage(m, lambda i: _pages(1)[i])
        raise AssertionError("staged a bundle for another class")
    except SlotError as e:
        assert "this node is 'esp32s3'" in str(e)
    assert boot.select(fs) is None or "a/main.py" not in fs.files
    # the class the firmware runs as is the one `fleet ota build` targets by default
    eng = OtaEngine(5, PUB, PageStore(fx.MemFS(), "ota"), 1, OtaParams(target_class="esp32"))
    eng.offer_manifest(signed)
    assert eng.m is not None and eng.m.bseq == 1


def test_stage_refuses_a_damaged_page():
    fs = fx.MemFS()
    _stage(fs, _h(vec.V1), _pages(1))
    pages = _pages(2)
    pages[1] = pages[1][:-1] + b"\x00"
    try:
        _stage(fs, _h(vec.V2), pages)
        raise AssertionError("staged a damaged image")
    except SlotError as e:
        assert "page 1" in str(e)
    assert boot.read_pointer(fs)["slot"] == "a" and boot.select(fs) == "a"


def _oom(*args):
    raise MemoryError("memory allocation failed")


def test_running_out_of_heap_is_not_a_verdict_on_the_manifest():
    # parse_manifest must let MemoryError through (a full heap, not bad input): turned into a
    # ProtocolError it made nodes refuse a good bundle for good and distrust honest neighbours
    real = mf._parse
    mf._parse = _oom
    try:
        try:
            mf.parse_signed_manifest(_h(vec.V2), PUB)
        except MemoryError:
            pass
        else:
            raise AssertionError("MemoryError did not pass through parse_signed_manifest")
    finally:
        mf._parse = real
    # a bundle stored on flash survives a boot whose heap cannot parse its manifest
    import firmware.ota as ota_mod

    fs = fx.MemFS()
    a = OtaEngine(1, PUB, PageStore(fs), 1, _params(), running_bseq=1)
    a.offer_bundle(_h(vec.V2), _pages(2), 0)
    held = sorted(fs.files)
    assert held
    real_signed, real_plain = ota_mod.parse_signed_manifest, ota_mod.parse_manifest
    ota_mod.parse_signed_manifest = ota_mod.parse_manifest = _oom
    try:
        b = OtaEngine(1, PUB, PageStore(fs), 1, _params(), running_bseq=1)
    finally:
        ota_mod.parse_signed_manifest, ota_mod.parse_manifest = real_signed, real_plain
    assert b.m is None and sorted(fs.files) == held  # nothing refused, nothing dropped
    c = OtaEngine(1, PUB, PageStore(fs), 1, _params(), running_bseq=1)  # the next boot resumes it
    assert c.m is not None and c.m.bseq == 2 and c.have == a.have


def test_engine_dropped_and_rebuilt_from_its_carry_goes_on():
    # firmware/ota_node.py drops a quiescent engine between campaigns and builds another from
    # carry(): the next one must hold the same bundle, Trickle, bucket, tables and floor
    fs = fx.MemFS()
    a = OtaEngine(2, PUB, PageStore(fs), 7, _params(), running_bseq=1)
    a.offer_bundle(_h(vec.V2), _pages(2), 0)
    a.tick(100000)  # Trickle has fired: an advert waits for a token
    assert not a.quiescent()  # its events are not read yet
    while a.poll_event() is not None:
        pass
    assert a.quiescent() and a.complete()
    c = a.carry()
    assert c["adv_due"] and c["floor"] == 1 and c["complete_state"] == 2
    b = OtaEngine(2, PUB, PageStore(fs), 99, OtaParams(reverify_stored=False), running_bseq=0, now_ms=100000,
                  carry=c)
    assert b.complete() and b.summary() == a.summary() == (2, len(_h(vec.V2)), a.m.mid, a.m.npages, a.have)
    assert b.floor == 1 and b.trickle is a.trickle and b._nbs is a._nbs and b._tokens == a._tokens
    assert b.m.files is None and b.stage_manifest().files == mf.parse_signed_manifest(_h(vec.V2), PUB).files
    out = b.poll_tx()
    assert out is not None and out.type == protocol.T_OTA_ADV and out.have == a.have and out.bseq == 2
    # an engine fetching or answering is not quiescent: it is not dropped
    f = OtaEngine(3, PUB, PageStore(fx.MemFS()), 7, _params(), running_bseq=1)
    f.on_frame(a._advert(), b"\x00" * 6, 0)
    assert f.t_bseq == 2 and not f.quiescent()


def test_idle_shell_state_codes_are_the_cores():
    from firmware import ota as ota_mod
    from firmware import ota_node
    from firmware import slots as slots_mod

    assert ota_node.ST_RECEIVING == ota_mod.ST_RECEIVING and ota_node.ST_REFUSED == slots_mod.ST_REFUSED
    assert ota_node._PHASES[ota_mod.ST_RECEIVING] == "receive" and ota_node._PHASES[slots_mod.ST_TRIAL] == "trial"
