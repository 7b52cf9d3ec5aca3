"""Power cut at every write of an OTA update, proven by running it, not argued.

For each scenario (stage + switch + trial boot + confirm; a crash-loop rollback; a deadline
rollback; pages arriving in the OTA store) the steps run once to count their flash writes W;
then for every N in 1..W they run again on a fresh copy of the same flash with the power cut at
write N (tests/device/ota_fixtures.PowerCutFS), under three models of the files open at the cut:
"prefix" (the bytes of earlier writes stay), "torn" (half of the cut write lands too) and
"littlefs" (what the board's filesystem guarantees: content commits at close; the virtual
board's real littlefs is cut inside its block writes in tests/test_vboard_torn.py). The first
install on a blank flash is cut too, and one scenario runs through the node's own code
(firmware/ota_node.py deciding, main.py attaching OTA at each boot). The node then reboots: firmware/boot.py runs under the real MicroPython
interpreter on the resulting files (boot.run(), the device's own code path), and its slot must
hold exactly the files of the version the pointer names — the old or the new one, never a mix,
never nothing — and `import main` from it must load that version. The app then resumes what was
interrupted and must end on the new version confirmed (or the old one after a rollback).
"""
import hashlib
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "device"))

import node_harness  # noqa: E402
import ota_fixtures as fx  # noqa: E402
import ota_vectors as vec  # noqa: E402
import pytest  # noqa: E402
from mp_support import ROOT, micropython_bin  # noqa: E402

from firmware import boot  # noqa: E402
from firmware.fsutil import PosixFS  # noqa: E402
from firmware.ota import OtaEngine  # noqa: E402
from firmware.ota_store import PageStore  # noqa: E402
from firmware.slots import SlotError, SlotManager  # noqa: E402
from protocol import manifest as mf  # noqa: E402

PUB = bytes.fromhex(vec.PUB)
BOOT_PY_DIR = os.path.join(ROOT, "firmware")


def _h(parts):
    return bytes.fromhex("".join(parts))


V1, V2, V3Z = _h(vec.V1), _h(vec.V2), _h(vec.V3Z)
PAGES = {1: fx.app_pages(1), 2: fx.app_pages(2), 3: fx.paginate(_h(vec.V3Z_IMAGE))}
SIGNED = {1: V1, 2: V2, 3: V3Z}


def _manifest(v):
    return mf.parse_signed_manifest(SIGNED[v], PUB)


def _stage(fs, v):
    return SlotManager(fs).stage(_manifest(v), PAGES[v].__getitem__)


def _files_under(root):
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root).replace(os.sep, "/")] = f.read()
    return out


def _reboot(d):
    """Run firmware/boot.py's run() under MicroPython on flash directory d, then import the
    slot's main.py; return (slot, VERSION the slot's main.py defines)."""
    code = ("import sys\nsys.path.insert(0, %r)\nimport boot\nslot = boot.run(%r)\n"
            "assert sys.path[0] == %r + '/' + slot, sys.path\nimport main\nprint(slot, main.VERSION)\n"
            % (BOOT_PY_DIR, d, d))
    proc = subprocess.run([micropython_bin(), "-c", code], cwd="/", capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    slot, version = proc.stdout.split()
    return slot, int(version)


def _assert_boots_complete_version(d):
    """Reboot d and check the chosen slot holds exactly the files of the version it names."""
    slot, running = _reboot(d)
    p = boot.read_pointer(PosixFS(d))
    assert p["slot"] == slot
    want = {path: data for path, data in fx.app_files(p["bseq"])}
    got = _files_under(os.path.join(d, slot))
    assert got == want, "slot %s is not a complete copy of version %d" % (slot, p["bseq"])
    assert running == p["bseq"]
    return p


def _count_writes(template, tmp_path, steps):
    d = str(tmp_path / "count")
    shutil.copytree(template, d)
    fs = fx.PowerCutFS(PosixFS(d))
    steps(fs)
    shutil.rmtree(d)
    return fs.ops


def _cut_at_every_write(template, tmp_path, steps, after_reboot, model="prefix"):
    total = _count_writes(template, tmp_path, steps)
    assert total > 5
    for n in range(1, total + 1):
        d = str(tmp_path / ("cut%d" % n))
        shutil.copytree(template, d)
        fs = fx.PowerCutFS(PosixFS(d), cut_at=n, model=model)
        with pytest.raises(fx.PowerCut):
            steps(fs)
        after_reboot(d, n)
        shutil.rmtree(d)
    return total


@pytest.fixture()
def v1_installed(tmp_path):
    """A flash with v1 confirmed in slot a (the first install: no pointer before)."""
    d = str(tmp_path / "template")
    os.makedirs(d)
    _stage(PosixFS(d), 1)
    assert boot.read_pointer(PosixFS(d))["state"] == "confirmed"
    return d


def _update_to(v):
    def steps(fs):
        _stage(fs, v)  # unpack + verify + switch (trial)
        boot.select(fs)  # the reboot into the trial
        assert SlotManager(fs).confirm()  # the app found itself healthy
    return steps


def _resume_update(v):
    """After the reboot, what the app does: confirm a running trial, or stage again."""

    def resume(d, n):
        p = _assert_boots_complete_version(d)
        assert p["bseq"] in (v - 1 if v == 2 else 2, v)
        fs = PosixFS(d)
        mgr = SlotManager(fs)
        if mgr.in_trial():
            assert p["bseq"] == v
            assert mgr.confirm()
        else:
            assert mgr.wants(_manifest(v)) == (p["bseq"] != v)
            if p["bseq"] != v:
                _stage(fs, v)
                _reboot(d)
                assert SlotManager(fs).confirm()
        p = _assert_boots_complete_version(d)
        assert (p["bseq"], p["state"]) == (v, "confirmed"), n

    return resume


@pytest.mark.parametrize("model", fx.MODELS)
def test_power_cut_at_every_write_of_stage_switch_confirm(v1_installed, tmp_path, model):
    total = _cut_at_every_write(v1_installed, tmp_path, _update_to(2), _resume_update(2), model)
    print("\nstage + switch + trial boot + confirm (%s cuts): %d flash writes, each cut survived" % (model, total))


@pytest.mark.parametrize("model", fx.MODELS)
def test_power_cut_at_every_write_of_the_first_install(tmp_path, model):
    """The first install on a blank flash (no pointer yet): cut anywhere, the node boots no
    app at all (no pointer: boot.py names no slot; provisioning is run again) or the whole v1,
    never a slot with part of it; installing again then completes."""
    template = str(tmp_path / "blank")
    os.makedirs(template)

    def install(fs):
        _stage(fs, 1)

    def after(d, n):
        fs = PosixFS(d)
        if boot.read_pointer(fs) is None:
            assert boot.select(fs) is None, n  # nothing half-installed is ever booted
            _stage(fs, 1)  # run again
        p = _assert_boots_complete_version(d)
        assert (p["slot"], p["bseq"], p["state"]) == ("a", 1, "confirmed"), n

    total = _cut_at_every_write(template, tmp_path, install, after, model)
    print("\nfirst install (%s cuts): %d flash writes, each cut survived" % (model, total))


def test_power_cut_at_every_write_of_a_second_update_with_deflate(v1_installed, tmp_path):
    # v2 confirmed in b; v3 (deflate image) goes into a, whose v1 files are wiped first
    d = str(tmp_path / "template2")
    shutil.copytree(v1_installed, d)
    _update_to(2)(PosixFS(d))
    total = _cut_at_every_write(d, tmp_path, _update_to(3), _resume_update(3))
    print("\nwipe + inflate + stage + switch + confirm: %d flash writes, each cut survived" % total)


@pytest.fixture()
def v2_on_trial(v1_installed, tmp_path):
    d = str(tmp_path / "trial-template")
    shutil.copytree(v1_installed, d)
    _stage(PosixFS(d), 2)
    p = boot.read_pointer(PosixFS(d))
    assert (p["slot"], p["state"], p["boots"], p["fallback"]) == ("b", "trial", 0, "a")
    return d


def _assert_rolled_back(d):
    p = _assert_boots_complete_version(d)
    assert (p["slot"], p["bseq"], p["state"], p["failed"]) == ("a", 1, "confirmed", 2)
    mgr = SlotManager(PosixFS(d))
    assert mgr.last_result()["result"] == "rolled_back"
    with pytest.raises(SlotError):
        _stage(PosixFS(d), 2)  # the failed bseq is refused from now on


def test_power_cut_at_every_write_of_a_crash_loop_rollback(v2_on_trial, tmp_path):
    def crash_loop(fs):
        for _ in range(4):  # max_boots (3) trial boots without a confirm, then the rollback
            boot.select(fs)

    def after(d, n):
        for _ in range(6):  # keep crashing until boot.py has rolled back
            p = _assert_boots_complete_version(d)
            if p["state"] == "confirmed":
                break
        _assert_rolled_back(d)

    total = _cut_at_every_write(v2_on_trial, tmp_path, crash_loop, after)
    print("\ncrash-loop rollback: %d flash writes, each cut survived" % total)


def test_power_cut_at_every_write_of_a_deadline_rollback(v2_on_trial, tmp_path):
    def deadline(fs):
        boot.select(fs)
        assert SlotManager(fs).check_trial(uptime_ms=600000)

    def after(d, n):
        p = _assert_boots_complete_version(d)
        if p["state"] == "trial":
            assert SlotManager(PosixFS(d)).check_trial(uptime_ms=600000)
        _assert_rolled_back(d)

    _cut_at_every_write(v2_on_trial, tmp_path, deadline, after)


def test_power_cut_at_every_write_of_the_page_store(tmp_path):
    """OTA progress survives power loss: after a cut anywhere while pages arrive, a new engine
    over the flash resumes from exactly the pages that verify, and finishes."""
    template = str(tmp_path / "empty")
    os.makedirs(template)

    def receive(fs):
        OtaEngine(2, PUB, PageStore(fs), 1, running_bseq=1).offer_bundle(V2, PAGES[2], 0)

    def after(d, n):
        eng = OtaEngine(2, PUB, PageStore(PosixFS(d)), 1, running_bseq=1)
        if eng.m is not None:
            # the manifest stays on flash (a node keeps no copy in RAM): the resumed one is V2's
            assert PageStore(PosixFS(d)).manifest() == V2 and eng.m.mid == mf.manifest_id(V2)
            k = eng.have - eng.mpages
            for i in range(k):
                with open(os.path.join(d, "ota", "p%d" % i), "rb") as f:
                    assert hashlib.sha256(f.read()).digest() == mf.parse_signed_manifest(V2, PUB).pages[i]
            assert not os.path.exists(os.path.join(d, "ota", "p%d" % k))  # a torn page was dropped
        eng.offer_bundle(V2, PAGES[2], 0)
        assert eng.complete()
        assert OtaEngine(2, PUB, PageStore(PosixFS(d)), 1, running_bseq=1).complete()

    _cut_at_every_write(template, tmp_path, receive, after)


# ---- the same update driven through the node's own code ------------------------------------------
# firmware/ota_node.py decides when to stage (allowed + complete), flushes, resets; main.py
# attaches it at every boot (staging at boot what was allowed before a reset); boot.py picks the
# slot; the shell confirms a healthy trial. The cut can land in any of their writes (the node's
# counters and ring included), and after every one the node must boot a complete version and,
# running its code again, end on v2 confirmed.

def _node_boot(fs):
    """One boot of the node: boot.py's slot choice, then main.py's Node + OTA shell (which may
    stage and reset at once: returns None then)."""
    boot.select(fs)
    try:
        return node_harness.boot_node(fs, PUB, ota=True)
    except node_harness.Reset:
        return None


def _healthy_trial(node):
    """What the shell needs to confirm a trial: a route, a sensor frame, the uplink proven."""
    node.router.has_route = lambda: True
    node.last_frame_ms = 0
    node.ota.probe_ok = True
    node.ota.health(node.now_ms())


def _ota_node_update(fs):
    node = _node_boot(fs)
    assert node is not None and node.ota.engine.complete()  # v2 received, not yet allowed
    with pytest.raises(node_harness.Reset):
        node.ota.allow(2)  # the fleet's OP_SET ota_allow 2: stage, flush, reset
    node = _node_boot(fs)  # the trial boot
    assert node is not None and node.ota.in_trial
    _healthy_trial(node)
    assert boot.read_pointer(fs)["state"] == "confirmed"


def _ota_node_resume(d, n):
    _assert_boots_complete_version(d)  # boot.py + the slot's main.py, under MicroPython
    fs = PosixFS(d)
    for _ in range(4):  # the node runs its code again until the update is through
        node = _node_boot(fs)
        if node is None:
            continue  # staged at boot (allowed before the cut) and reset
        p = boot.read_pointer(fs)
        if p["bseq"] == 2 and p["state"] == "confirmed":
            break
        if node.ota.in_trial:
            _healthy_trial(node)
            continue
        try:
            node.ota.allow(2)  # the fleet repeats the allow it has no answer to
        except node_harness.Reset:
            pass
    p = _assert_boots_complete_version(d)
    assert (p["bseq"], p["state"]) == (2, "confirmed"), n


@pytest.fixture()
def v1_with_v2_received(v1_installed, tmp_path):
    """v1 confirmed in slot a, and the v2 bundle complete in the node's OTA page store."""
    d = str(tmp_path / "received")
    shutil.copytree(v1_installed, d)
    eng = OtaEngine(node_harness.NODE_ID, PUB, PageStore(PosixFS(d), "ota"), 1, running_bseq=1)
    eng.offer_bundle(V2, PAGES[2], 0)
    assert eng.complete()
    return d


@pytest.mark.parametrize("model", fx.MODELS)
def test_power_cut_at_every_write_of_an_update_driven_by_the_node(v1_with_v2_received, tmp_path, model):
    total = _cut_at_every_write(v1_with_v2_received, tmp_path, _ota_node_update, _ota_node_resume, model)
    print("\nallow + stage + reset + trial boot + confirm through ota_node (%s cuts): %d flash writes, each "
          "cut survived" % (model, total))


def test_power_cut_models_of_the_cut_write():
    def cut_second_write(model):
        fs = fx.PowerCutFS(fx.MemFS(), cut_at=4, model=model)
        fs.inner.files["old"] = b"before"
        f = fs.open("old", "wb")  # op 1
        f.write(b"new!")  # op 2
        f.close()
        g = fs.open("x", "wb")  # op 3
        with pytest.raises(fx.PowerCut):
            g.write(b"abcdef")  # op 4: the cut
        return fs.inner.files

    assert cut_second_write("prefix") == {"old": b"new!", "x": b""}
    assert cut_second_write("torn") == {"old": b"new!", "x": b"abc"}  # half of the cut write landed
    # littlefs: a closed file is committed; one still open keeps what it had at open (a new one: empty)
    assert cut_second_write("littlefs") == {"old": b"new!", "x": b""}
    fs = fx.PowerCutFS(fx.MemFS(), cut_at=3, model="littlefs")
    fs.inner.files["p"] = b"old pointer"
    f = fs.open("p", "wb")
    f.write(b"new ")
    with pytest.raises(fx.PowerCut):
        f.write(b"pointer")
    assert fs.inner.files["p"] == b"old pointer"


def test_power_cut_wrapper_counts_and_kills():
    fs = fx.PowerCutFS(fx.MemFS(), cut_at=3)
    f = fs.open("x", "wb")  # write 1
    f.write(b"abc")  # write 2
    with pytest.raises(fx.PowerCut):
        f.write(b"def")  # write 3: never happens
    assert fs.inner.files["x"] == b"abc"  # what was written before the cut stays
    with pytest.raises(fx.PowerCut):
        fs.listdir("")  # the board is off
    assert sys.implementation.name == "cpython"


def test_early_staging_looks_only_at_a_complete_allowed_bundle(tmp_path):
    """firmware/ota_attach.py stage_early builds an engine (an Ed25519 check, every page hashed)
    only for a bundle that looks complete: a manifest newer than the running slot, allowed by
    the fleet, and a file of the right size for every page. A download in progress is left to
    the node: checking it at boot left the signature code's pieces on the heap before the node
    was built, and the node's own import then did not fit a 123k heap."""
    from firmware import ota_attach

    fs = PosixFS(str(tmp_path))
    store = PageStore(fs)
    buf = bytearray(mf.MAX_SIGNED)
    assert not ota_attach._looks_complete(store, buf, 1, 2)  # nothing stored
    store.put_manifest(V2)
    for i, p in enumerate(PAGES[2]):
        assert not ota_attach._looks_complete(store, buf, 1, 2)  # pages 0..i-1 only
        store.put_page(i, p)
    assert ota_attach._looks_complete(store, buf, 1, 2)
    assert not ota_attach._looks_complete(store, buf, 1, 1)  # the fleet allows only bseq 1
    assert not ota_attach._looks_complete(store, buf, 2, 2)  # bseq 2 already runs (or failed)
    store.put_page(1, PAGES[2][1][:-1])  # a page cut short by a power loss
    assert not ota_attach._looks_complete(store, buf, 1, 2)
    # the engine is the judge of what looks complete: it hashes every page
    store.put_page(1, bytes(len(PAGES[2][1])))
    assert ota_attach._looks_complete(store, buf, 1, 2)
    assert not OtaEngine(2, PUB, store, 1, running_bseq=1).complete()
