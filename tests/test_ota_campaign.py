"""fleet/ota_campaign.py planning and status, and the `fleet ota status|abort` commands, on a
store filled by hand (the end-to-end runs are in hil_tests/test_ota.py)."""
import json
import time

import pytest
from click.testing import CliRunner

from fleet import ota_campaign
from fleet.cli import group
from fleet.errors import FleetError
from fleet.home import FleetHome


def _row(node, role="node", parent=0, hops=0, fw_seq=1, ota_state=0, ota_progress=0, pole=None, version="1.0.0"):
    return {"node": node, "role": role, "parent": parent, "hops": hops, "fw_seq": fw_seq, "ota_state": ota_state,
            "ota_progress": ota_progress, "pole": pole, "fw_version": version}


def test_waves_put_canary_leaves_first_relays_by_height_gateways_last():
    # 1 gateway <- 2 <- 3 <- 4 (line) and 1 <- 5 (leaf)
    rows = [_row(1, "gateway"), _row(2, parent=1, hops=1), _row(3, parent=2, hops=2), _row(4, parent=3, hops=3),
            _row(5, parent=1, hops=1)]
    assert ota_campaign.plan_waves(rows, [1, 2, 3, 4, 5]) == [[4, 5], [3], [2], [1]]
    assert ota_campaign.plan_waves(rows, [1, 2, 3, 4, 5], canary=1) == [[4], [5], [3], [2], [1]]


def test_targets_all_ids_groups_and_unknown():
    rows = [_row(1, "gateway", pole="A-1"), _row(2, pole="A-2"), _row(3, pole="B-1")]
    assert ota_campaign.resolve_targets(rows, "all") == [1, 2, 3]
    assert ota_campaign.resolve_targets(rows, "3,2") == [2, 3]
    assert ota_campaign.resolve_targets(rows, "gateways") == [1]
    assert ota_campaign.resolve_targets(rows, "A-") == [1, 2]
    with pytest.raises(FleetError, match="unknown node"):
        ota_campaign.resolve_targets(rows, "9")


@pytest.mark.parametrize("fw_seq,code,pct,want", [
    (1, 0, 0, ("pending", 0)), (1, 1, 40, ("receiving", 40)), (1, 2, 100, ("verifying", 100)),
    (2, 3, 100, ("trial", 100)), (2, 4, 100, ("confirmed", 100)), (1, 5, 0, ("rolled back", 0)),
    (1, 6, 0, ("refused", 0)), (1, 4, 0, ("pending", 0)),
])
def test_classify(fw_seq, code, pct, want):
    assert ota_campaign.classify(_row(1, fw_seq=fw_seq, ota_state=code, ota_progress=pct), 2) == want


def test_status_json_and_abort(tmp_path):
    home = FleetHome.resolve(str(tmp_path / "h"))
    store = home.store(create=True)
    now = int(time.time())
    store.register_nodes([{"node": n, "mac": None, "role": "gateway" if n == 1 else "node", "pole": None,
                           "lat": None, "lon": None, "registered_at": now} for n in (1, 2, 3)])
    store.update_state(1, now, fw_seq=1, fw_version="1.0.0", ota_state=1, ota_progress=50)
    store.update_state(2, now, fw_seq=2, fw_version="2.0.0", ota_state=4, ota_progress=100)
    store.update_state(3, now, fw_seq=1, fw_version="1.0.0", ota_state=5, ota_progress=0)
    store.record_event(now, "reply", node=3, detail={"cseq": 0, "code": 0,
                                                     "result": ["ota", "rolled_back", 2, "not confirmed within 40 s"]})
    store.close()
    ota_campaign.save_campaign(home, {"bseq": 2, "version": "2.0.0", "targets": [1, 2, 3], "canary": 0,
                                      "halt_after": 1, "waves": [[2, 3], [1]], "wave": 0, "allowed": {"2": now},
                                      "state": "running", "started_at": now - 10, "reason": None})
    r = CliRunner().invoke(group, ["ota", "status", "--json", "--home", home.path])
    assert r.exit_code == 0, r.output
    st = json.loads(r.output)
    by = {n["node"]: n for n in st["nodes"]}
    assert by[1]["state"] == "receiving" and by[1]["progress"] == 50
    assert by[2]["state"] == "confirmed" and by[2]["version"] == "2.0.0"
    assert by[3]["state"] == "rolled back" and by[3]["reason"] == "not confirmed within 40 s"
    assert st["campaign"]["bseq"] == 2 and st["totals"]["confirmed"] == 1
    r = CliRunner().invoke(group, ["ota", "status", "--home", home.path])
    assert r.exit_code == 0 and "receiving 50%" in r.output
    r = CliRunner().invoke(group, ["ota", "abort", "--home", home.path])
    assert r.exit_code == 0, r.output
    assert ota_campaign.load_campaign(home)["state"] == "aborted"
    r = CliRunner().invoke(group, ["ota", "abort", "--home", home.path])
    assert r.exit_code != 0 and "already aborted" in r.output


def test_waves_fall_back_to_hops_without_parents_and_downlinks_fit_the_radio():
    import protocol

    rows = [_row(1, "gateway"), _row(2, hops=1), _row(3, hops=3), _row(4, hops=2)]
    assert ota_campaign.plan_waves(rows, [1, 2, 3, 4]) == [[3], [4], [2], [1]]
    frames = [protocol.encode(protocol.Command(target=n, cseq=n, op=protocol.OP_SET, args=["ota_allow", 2]),
                              bytes(32), bytes(32)) for n in range(2, 40)]
    out = ota_campaign.pack_downlinks(frames)
    assert all(len(m) <= 240 for m in out)
    assert sum(len(protocol.decode(m).frames) for m in out) == len(frames)


def test_an_earlier_campaigns_roll_back_is_not_this_ones(tmp_path):
    # Status frames say "rolled back" / "refused" without naming a bundle: a node that rolled
    # back bundle 2 keeps reporting it. A campaign for bundle 3 must not count that (it would
    # halt at once), until a reply names bundle 3 or the node was seen working on bundle 3.
    home = FleetHome.resolve(str(tmp_path / "h"))
    store = home.store(create=True)
    now = int(time.time())
    store.register_nodes([{"node": n, "mac": None, "role": "node", "pole": None, "lat": None, "lon": None,
                           "registered_at": now} for n in (2, 3, 4)])
    for n in (2, 3, 4):
        store.update_state(n, now, fw_seq=1, fw_version="1.0.0", ota_state=5, ota_progress=0)
    for n in (2, 3):
        store.record_event(now, "reply", node=n, detail={"cseq": 0, "code": 0, "result": [
            "ota", "rolled_back", 2 if n == 2 else 3, "not confirmed within 40 s"]})
    store.close()
    camp = {"bseq": 3, "version": "3.0.0", "targets": [2, 3, 4], "canary": 0, "halt_after": 1,
            "waves": [[2, 3, 4]], "wave": 0, "allowed": {}, "state": "running", "started_at": now - 10,
            "reason": None}
    ota_campaign.save_campaign(home, camp)
    by = {n["node"]: n for n in ota_campaign.campaign_status(home)["nodes"]}
    assert by[2]["state"] == "pending" and by[2]["reason"] is None  # its reply was about bundle 2
    assert by[3]["state"] == "rolled back" and by[3]["reason"] == "not confirmed within 40 s"
    assert by[4]["state"] == "pending"  # no reply at all: an old outcome
    camp["active"] = [4]  # the campaign saw node 4 receiving bundle 3; its reply was lost
    ota_campaign.save_campaign(home, camp)
    by = {n["node"]: n for n in ota_campaign.campaign_status(home)["nodes"]}
    assert by[4]["state"] == "rolled back" and by[2]["state"] == "pending"
