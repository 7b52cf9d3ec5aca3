"""The node shell's own defences, driven through its real code on a fake HAL (CPython):
firmware/node.py builds its router, ring and counters on a host directory as its flash, and
firmware/main.py `_attach_ota` wires the real OTA shell, exactly as on a board.

- Replayed commands: a command counter (cseq) already accepted, or one below the replay window,
  is refused; so after a reboot, when the window is rebuilt from the persisted counter "cseq".
  Commands arrive as air frames through the node's router (its flood memory is waited out, so
  the node's own window is what refuses them).
- A forged OTA manifest over the air (a rogue pole that knows the mesh key but signs with its
  own key): refused by the node's OTA shell, nothing stored on its flash, the sender distrusted.
- A manifest tampered on flash: dropped when the node starts (main.py attaches OTA).
The engine-level twins run on both interpreters: tests/device/test_ota_forged.py.
"""
import asyncio
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "device"))

import ota_fixtures as fx  # noqa: E402
import ota_vectors as vec  # noqa: E402
from node_harness import MESH_KEY, NODE_ID, NODE_KEY, boot_node, deliver  # noqa: E402

import protocol  # noqa: E402
from firmware import boot, ota_attach  # noqa: E402
from firmware.fsutil import PosixFS, write_file  # noqa: E402
from firmware.ota import ST_IDLE, OtaAir, OtaEngine, OtaParams  # noqa: E402
from firmware.ota_store import PageStore  # noqa: E402

PUB = bytes.fromhex(vec.PUB)
OTHER_PUB = bytes.fromhex(vec.OTHER_PUB)
ROGUE = 9
GATEWAY_MAC = b"\x02\x00\x00\x00\x00\x01"


def _h(parts):
    return bytes.fromhex("".join(parts))


def _boot(flash, logs=None):
    """Start the node on `flash` as main.py does; console lines go to `logs`."""
    node = boot_node(str(flash), PUB)
    if logs is not None:
        import firmware.node as node_mod

        node_mod.log = lambda tag, msg: logs.append("%s %s" % (tag, msg))
    return node


@pytest.fixture(autouse=True)
def _restore_log():
    import firmware.node as node_mod

    saved = node_mod.log
    yield
    node_mod.log = saved


# ---- replayed commands ------------------------------------------------------------------------

class Commander:
    """The fleet side: commands HMAC'd with the node's key, delivered as air frames through the
    node's router, each after the router's flood memory has passed."""

    def __init__(self):
        self.now = 0

    def send(self, node, cseq, op=protocol.OP_PING, args=(1,)):
        """Deliver command `cseq`; return True when the node accepted it (it replied)."""
        frame = protocol.encode(protocol.Command(target=NODE_ID, cseq=cseq, op=op, args=list(args)),
                                MESH_KEY, NODE_KEY)
        self.now += node.router.flood_memory_ms + 1000
        return deliver(node, frame, self.now, GATEWAY_MAC, must_pass=True)


def test_a_repeated_command_counter_is_refused(tmp_path):
    logs = []
    node = _boot(tmp_path, logs)
    c = Commander()
    assert c.send(node, 7)
    assert not c.send(node, 7), "a replayed command (same cseq) was accepted"
    assert "cmd refused: replayed (cseq 7)" in logs
    assert c.send(node, 8)
    assert c.send(node, 6)  # not seen yet, inside the window: out-of-order delivery is fine
    assert not c.send(node, 6) and not c.send(node, 8)


def test_an_old_command_counter_is_refused(tmp_path):
    node = _boot(tmp_path)
    c = Commander()
    assert c.send(node, 100)
    assert not c.send(node, 100 - 32), "a command below the replay window was accepted"
    assert not c.send(node, 3)
    assert not c.send(node, 0)


def test_a_replayed_set_changes_nothing(tmp_path):
    node = _boot(tmp_path)
    c = Commander()
    assert c.send(node, 10, protocol.OP_SET, ("report_interval_s", 120))
    assert c.send(node, 11, protocol.OP_SET, ("report_interval_s", 90))
    assert not c.send(node, 10, protocol.OP_SET, ("report_interval_s", 120))
    assert node.sampler._pending.report_interval_s == 90  # applied from the next report on


def test_replays_are_refused_after_a_reboot(tmp_path):
    node = _boot(tmp_path)
    c = Commander()
    for cseq in (20, 21, 23):
        assert c.send(node, cseq)
    # power cut: no sync, no flush; the next boot rebuilds the window from the flash
    node = _boot(tmp_path)
    assert node.counters.peek("cseq") == 23
    for cseq in (23, 21, 20):
        assert not c.send(node, cseq), "command %d, accepted before the reboot, was accepted again" % cseq
    assert not c.send(node, 22), "a counter below the highest accepted one was accepted after a reboot"
    assert not c.send(node, 23 - 20)
    assert c.send(node, 24)
    # and again after a second reboot: the newest accepted counter was persisted before acting
    node = _boot(tmp_path)
    assert not c.send(node, 24)
    assert c.send(node, 25)


# ---- OTA: forged manifest over the air, tampered manifest on flash ------------------------------

def _slot_flash(flash):
    """A node running bseq 1 from slot a (the pointer main.py looks for before attaching OTA)."""
    fs = PosixFS(str(flash))
    boot.write_kv(fs, boot.POINTER, boot.confirmed_pointer("a", 1, "1.0.0"))
    return fs


def _boot_with_ota(flash, logs):
    node = _boot(flash, logs)
    ota_attach.attach(node, node.cfg, node.hal.fs, None)
    assert node.ota is not None, logs
    return node


def test_a_forged_manifest_over_the_air_is_refused_by_the_node(tmp_path, capsys):
    fs = _slot_flash(tmp_path)
    logs = []
    node = _boot_with_ota(tmp_path, logs)
    rogue_fs = fx.MemFS()
    rogue = OtaEngine(ROGUE, OTHER_PUB, PageStore(rogue_fs), 3,
                      OtaParams(adv_imin_ms=200, adv_doublings=4, tx_rate_per_s=50), running_bseq=1)
    rogue.offer_bundle(_h(vec.V2_OTHER_KEY), fx.app_pages(2), 0)
    rogue_air = OtaAir(rogue, MESH_KEY)
    shell = node.ota
    replies_before = node.counters.peek("reply")
    now = 0
    queue = []
    while now < 60000 and shell.refused is None:
        rogue_air.tick(now)
        shell.tick(now)
        for src, dst in ((rogue_air, shell), (shell, rogue_air)):
            while True:
                out = src.poll_tx()
                if out is None:
                    break
                queue.append((now + 3, dst, out[2]))
        due = [q for q in queue if q[0] <= now]
        queue = [q for q in queue if q[0] > now]
        for _, dst, data in due:
            dst.on_air(b"\x02\x00\x00\x00\x00\x09", data, now)
        now = max(now + 1, min([rogue_air.next_deadline_ms, shell.next_deadline_ms] + [q[0] for q in queue]))
    assert shell.refused is not None, ("the node never refused the forged bundle", logs, capsys.readouterr().out)
    assert shell.refused[0] == 2 and "signature" in shell.refused[1], shell.refused
    # nothing stored: no manifest, no page on the node's flash; the running slot untouched
    assert PageStore(fs).manifest() is None
    assert not os.path.exists(tmp_path / "ota") or not os.listdir(tmp_path / "ota")
    assert boot.read_pointer(fs)["bseq"] == 1 and not os.path.exists(tmp_path / "b")
    assert shell.engine._distrusted(ROGUE, now), "the rogue pole is not distrusted"
    assert node.hal.resets == 0
    # the node told the fleet (an unsolicited Reply ["ota", "refused", 2, reason])
    assert node.counters.peek("reply") > replies_before
    assert shell.state != ST_IDLE  # status frames report the refusal (slots.ST_REFUSED)


def test_an_ota_report_made_without_a_route_is_sent_once_there_is_one_until_acknowledged(tmp_path, capsys):
    """A node refuses a bad bundle while it has no route (its parent, the rogue, just rebooted: on
    the rig the fleet never heard of node 5's refusal). The report waits for a route, is sent
    again, the same bytes, when its first hop does not acknowledge it, and goes once one does."""
    _slot_flash(tmp_path)
    logs = []
    node = _boot_with_ota(tmp_path, logs)
    shell, r = node.ota, node.router
    shell.on_refused(4, "manifest signature does not verify with the fleet key")
    assert not r.has_route() and r.stats["originated"] == 0 and len(shell._reports) == 1
    assert r.poll_tx() is None
    shell.health(1000)  # still no route: nothing sent, nothing given up
    assert r.stats["originated"] == 0 and shell._reports[0][2] == 0
    gw_mac = b"\x02\x00\x00\x00\x00\x01"
    beacon = protocol.encode(protocol.Beacon(1, 1, 0, 0, 0, 0, 1, 1), MESH_KEY)
    deliver(node, beacon, 2000, gw_mac)
    r.tick(2000)
    assert r.has_route(), logs
    while r.poll_tx() is not None:  # the route's own beacon
        pass
    sent = []
    now = 2000
    for ok in (False, True):  # the first send's every MAC try fails; the second is acknowledged
        now += 5000
        if not r.has_route():  # its failures may have cost the route: the gateway beacons again
            deliver(node, protocol.encode(protocol.Beacon(1, 2, 0, 0, 0, 0, 1, 1), MESH_KEY), now, gw_mac)
        shell.health(now)
        for _ in range(r.max_tries):
            r.tick(now)
            out = [o for o in iter(r.poll_tx, None) if o[1] == gw_mac]
            if not out:
                now += 200  # the MAC's backoff before its next try
                continue
            assert len(out) == 1, out
            sent.append(out[0][2])
            r.on_send_done(out[0][0], ok, now)
            if ok:
                break
        for ev in iter(r.poll_event, None):
            asyncio.run(node._on_event(ev))
        assert len(shell._reports) == (0 if ok else 1), (ok, len(sent))
    assert len(sent) >= 2
    rep = protocol.decode(sent[0], MESH_KEY)
    assert rep.result[:3] == ["ota", "refused", 4] and "signature" in rep.result[3]
    # the same frame each time (one reply seq): the collector stores it once
    assert all(protocol.decode(x, MESH_KEY).seq == rep.seq for x in sent)
    shell.health(now + 30000)
    r.tick(now + 30000)
    assert not [o for o in iter(r.poll_tx, None) if o[1] == gw_mac], "an acknowledged report was sent again"


def _store_v2_on_flash(fs, edit):
    eng = OtaEngine(NODE_ID, PUB, PageStore(fs, "ota"), 4, OtaParams(), running_bseq=1)
    eng.offer_bundle(_h(vec.V2), fx.app_pages(2), 0)
    assert eng.complete()
    write_file(fs, "ota/m", edit(PageStore(fs).manifest()))  # changed in place, pages kept


def _bump_version(signed):
    i = signed.find(b"2.0.0")
    assert i > 0
    return signed[:i] + b"2.0.1" + signed[i + 5:]


@pytest.mark.parametrize("edit", [_bump_version, lambda s: _h(vec.V2_OTHER_KEY)], ids=["edited", "other_key"])
def test_a_manifest_tampered_on_flash_is_dropped_at_boot(tmp_path, edit):
    fs = _slot_flash(tmp_path)
    _store_v2_on_flash(fs, edit)
    logs = []
    node = _boot_with_ota(tmp_path, logs)
    # main.py also asked to stage at boot (allowed or not, nothing complete remains to stage)
    node.counters.set_min("ota_allow", 99)
    assert node.ota.maybe_stage(at_boot=True) is False
    assert node.ota.engine.m is None and not node.ota.engine.complete()
    assert PageStore(fs).manifest() is None and PageStore(fs).get_page(0) is None
    assert boot.read_pointer(fs)["bseq"] == 1 and node.hal.resets == 0


def test_an_intact_manifest_on_flash_is_kept_at_boot(tmp_path):
    # the control: the check above drops damage only
    fs = _slot_flash(tmp_path)
    _store_v2_on_flash(fs, lambda s: s)
    node = _boot_with_ota(tmp_path, [])
    assert node.ota.engine.complete() and node.ota.engine.m.bseq == 2


def test_a_bundle_that_cannot_be_staged_resets_the_node_a_bounded_number_of_times(tmp_path, capsys, monkeypatch):
    """A complete, allowed bundle makes the running node reset to stage it on a fresh heap
    (firmware/ota_attach.py stage_early). When staging keeps failing (on the 25-node rig some
    nodes ran out of heap in it, every boot), the node must not reset for ever: it resets at most
    MAX_STAGE_RESETS times for that bundle, counted on flash across boots, then refuses it and
    tells the fleet."""
    from node_harness import Reset

    from firmware import slots
    from firmware.ota_node import MAX_STAGE_RESETS

    def no_heap(self, manifest, read_page):
        raise MemoryError("memory allocation failed, allocating 1024 bytes")

    monkeypatch.setattr(slots.SlotManager, "stage", no_heap)  # as at every boot of node 5 on the rig
    fs = _slot_flash(tmp_path)
    _store_v2_on_flash(fs, lambda s: s)
    resets = 0
    for boot_no in range(MAX_STAGE_RESETS + 2):
        logs = []
        node = _boot_with_ota(tmp_path, logs)  # a fresh boot: counters read back from flash
        node.counters.set_min("ota_allow", 2)
        replies = node.counters.peek("reply")
        try:
            staged = node.ota.maybe_stage()
        except Reset:
            resets += 1
            assert boot_no < MAX_STAGE_RESETS, logs
            out = capsys.readouterr().out  # the OTA shell logs with print
            assert "resetting to stage it on a fresh heap (%d of %d)" % (resets, MAX_STAGE_RESETS) in out, out
            continue
        assert staged is False and boot_no >= MAX_STAGE_RESETS, logs
        assert node.ota.refused is not None and node.ota.refused[0] == 2, logs
        assert "staging failed after %d resets" % MAX_STAGE_RESETS in node.ota.refused[1]
        assert "refused bseq 2: staging failed" in capsys.readouterr().out
        assert node.counters.peek("reply") > replies  # the fleet is told (Reply ["ota", "refused", ...])
    assert resets == MAX_STAGE_RESETS
    assert boot.read_pointer(fs)["slot"] == "a"  # the running slot untouched
