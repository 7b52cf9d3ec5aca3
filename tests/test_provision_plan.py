"""fleet.provision.plan_copy without a board: what a board needs written, given what it holds.

The board's state is given as MpBoard.hash_files reports it ({path: (size, sha256 hex)}) and
the parsed slot pointer; the plan must never write the running slot unless it already holds
exactly this build, must skip what is identical, and must stage root files as `.new`."""
import hashlib

from firmware import boot as fw_boot
from fleet.provision import Bundle, plan_copy

APP = {"main.py": b"app main", "firmware/node.mpy": b"node v2", "protocol/frames.mpy": b"frames v2"}
OLD = {"main.py": b"app main", "firmware/node.mpy": b"node v1", "protocol/frames.mpy": b"frames v1",
       "firmware/gone.mpy": b"removed in v2"}
ROOT = {"/boot.py": b"boot", "/main.py": b"import main", "/config.cbor": b"config"}


def _bundle():
    return Bundle(dict(APP), "2.0.0", 2, "xtensawin", ROOT["/boot.py"], ROOT["/main.py"])


def _held(files):
    return {p: (len(b), hashlib.sha256(b).hexdigest()) for p, b in files.items()}


def _slot(slot, files):
    return {"/%s/%s" % (slot, rel): data for rel, data in files.items()}


def _pointer(slot, seq):
    return fw_boot.confirmed_pointer(slot, seq, "%d.0.0" % seq, 0)


def _active(pointer):
    return {"/active": fw_boot.format_kv(pointer).encode()}


def test_a_blank_board_gets_slot_a_everything_and_the_root_files_staged():
    plan = plan_copy({}, None, _bundle(), ROOT)
    assert plan.target == "a"
    assert plan.to_write == _slot("a", APP)
    assert plan.staged == {p + ".new": d for p, d in ROOT.items()}
    assert sorted(plan.renames) == sorted((p + ".new", p) for p in ROOT)
    assert plan.stale == [] and plan.skipped == 0 and plan.pointer_changes
    assert plan.need_bytes == 4096 * (len(APP) + len(ROOT))


def test_a_board_running_an_older_build_gets_the_other_slot_and_keeps_its_running_one():
    ptr = _pointer("a", 1)
    found = _held({**_slot("a", OLD), **ROOT, **_active(ptr)})
    plan = plan_copy(found, ptr, _bundle(), ROOT)
    assert plan.target == "b"  # never the slot it runs
    assert all(p.startswith("/b/") for p in plan.to_write) and plan.stale == []
    assert plan.staged == {} and plan.renames == [] and plan.skipped == len(ROOT)
    assert plan.pointer_changes and "slot=b" in plan.new_pointer


def test_a_board_already_holding_this_build_needs_nothing_written():
    ptr = _pointer("b", 2)
    found = _held({**_slot("b", APP), **_slot("a", OLD), **ROOT})
    found.update(_held({"/active": fw_boot.format_kv(ptr).encode()}))
    plan = plan_copy(found, ptr, _bundle(), ROOT)
    assert plan.target == "b"
    assert plan.to_write == {} and plan.staged == {} and plan.renames == [] and plan.stale == []
    assert plan.skipped == len(APP) + len(ROOT) and plan.need_bytes == 0
    assert not plan.pointer_changes


def test_a_half_written_inactive_slot_is_completed_and_cleaned():
    ptr = _pointer("a", 1)
    half = {"main.py": APP["main.py"], "firmware/node.mpy": b"torn", "firmware/gone.mpy": b"stale"}
    found = _held({**_slot("a", OLD), **_slot("b", half), **ROOT})
    plan = plan_copy(found, ptr, _bundle(), ROOT)
    assert plan.target == "b"
    assert set(plan.to_write) == {"/b/firmware/node.mpy", "/b/protocol/frames.mpy"}  # main.py is identical
    assert plan.stale == ["/b/firmware/gone.mpy"]


def test_a_root_file_already_staged_is_renamed_without_being_written_again():
    new_cfg = b"new config"
    want = dict(ROOT, **{"/config.cbor": new_cfg})
    found = _held({**ROOT, "/config.cbor.new": new_cfg})
    plan = plan_copy(found, None, _bundle(), want)
    assert ("/config.cbor.new", "/config.cbor") in plan.renames
    assert "/config.cbor.new" not in plan.staged


def test_a_board_with_romfs_partitions_gets_the_image_and_an_emptied_slot_directory():
    # the inactive slot held files of an old provisioning: its partition gets the image, its
    # directory's files go (all of them, even those equal to the build's)
    ptr = _pointer("a", 1)
    found = _held({**_slot("a", OLD), **_slot("b", {"main.py": b"app main", "old.mpy": b"x"}), **ROOT,
                   **_active(ptr)})
    plan = plan_copy(found, ptr, _bundle(), ROOT, rom_image=b"IMAGE")
    assert plan.target == "b" and plan.rom_image == b"IMAGE"
    assert plan.to_write == {} and sorted(plan.stale) == ["/b/main.py", "/b/old.mpy"]
    assert plan.skipped == len(ROOT) and plan.need_bytes == 0 and "slot=b" in plan.new_pointer
    # the running slot already holds this build (from its mounted partition): nothing is written
    ptr = _pointer("b", 2)
    found = _held({**_slot("b", APP), **ROOT, **_active(ptr)})
    plan = plan_copy(found, ptr, _bundle(), ROOT, rom_image=b"IMAGE")
    assert plan.target == "b" and plan.rom_image is None and plan.to_write == {} and plan.stale == []
