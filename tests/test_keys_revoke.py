"""`fleet keys revoke` (issue 14 part 2): the revocation list in the keystore, the collector
refusing a revoked node's frames (counted, never silent) and sending it no command, and
`fleet status` showing it. Real Keystore, real SQLiteStore, frames from protocol.encode."""
import json
import os
import time

import pytest
from cli_run import assert_clean, run_fleet
from test_collector import GW, NET, NODES, T0, UP, Clock, decode_commands, envelope, seqs, telemetry

import protocol
from fleet.collector import CollectorConfig, Ingest
from fleet.keys import Keystore, KeystoreError
from fleet.repair import RepairConfig
from fleet.store import SQLiteStore
from protocol import auth

SECRET = bytes(range(1, 33))  # the secret of test_collector's frames


@pytest.fixture
def ks(tmp_path):
    k = Keystore(str(tmp_path / "keys"), NET)
    k.init()
    with open(k.secret_path, "wb") as f:  # the fixed secret test_collector's frames are made with
        f.write(SECRET)
    return Keystore(k.dir, NET)


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(str(tmp_path / "fleet.db"))
    s.register_nodes([{"node": n} for n in NODES] + [{"node": GW, "role": "gateway"}])
    yield s
    s.close()


def test_revocation_list_roundtrip_and_validation(ks):
    assert ks.revoked() == {}
    entry, new = ks.revoke(3, "  pole 3   reported stolen,\nticket 4411 ", now_s=T0)
    assert new and entry == {"reason": "pole 3 reported stolen, ticket 4411", "at": T0}
    again, new2 = ks.revoke(3, "other reason", now_s=T0 + 5)
    assert not new2 and again["reason"].startswith("pole 3")  # first reason kept
    assert Keystore(ks.dir, NET).revoked() == {3: entry}
    assert os.stat(ks.revoked_path).st_mode & 0o077 == 0
    for bad in ("", "   ", "x" * 201):
        with pytest.raises(KeystoreError):
            ks.revoke(4, bad)
    with open(ks.revoked_path, "w") as f:
        f.write("{not json")
    with pytest.raises(KeystoreError, match="cannot be read"):
        ks.revoked()  # a damaged list is an error, never an empty list


def make(store, ks, clock):
    rc = RepairConfig(grace_s=10, retry_s=5, retry_max_s=20, follow_s=1, max_attempts=3)
    return Ingest(store, ks, NET, now_fn=clock, config=CollectorConfig(batch_rows=1000, repair=rc))


def test_collector_refuses_revoked_node_from_that_moment(store, ks):
    clock = Clock()
    ing = make(store, ks, clock)
    assert ing.on_message(UP, envelope([telemetry(1, 0), telemetry(2, 0)]))["readings"] == 2
    ing.on_message(UP, envelope([telemetry(2, 3)]))  # a gap 1..2 for node 2
    ks.revoke(2, "stolen", now_s=T0)
    clock.t += 1.5  # the running collector sees the list change within revoked_recheck_s
    res = ing.on_message(UP, envelope([telemetry(1, 1), telemetry(2, 4), telemetry(2, 5, k=3)]))
    assert res["rejects"] == {"revoked": 2} and res["readings"] == 1
    ing.flush()
    assert seqs(store, 2) == [0, 3] and seqs(store, 1) == [0, 1]
    assert store.rejects()["revoked"]["count"] == 2
    assert [e["kind"] for e in store.events(node=2)] == ["revoked"]
    # the gap of node 2 is due: no resend command goes to a revoked node
    clock.t += 30
    out = ing.poll()
    assert decode_commands(out, 2) == []
    assert ing.stats.commands_withheld >= 1
    # a restarted collector refuses it at once
    ing.close()
    ing2 = make(store, ks, clock)
    assert ing2.on_message(UP, envelope([telemetry(2, 9)]))["rejects"] == {"revoked": 1}
    ing2.close()


def test_cli_revoke_and_status(tmp_path):
    home = str(tmp_path / "home")
    assert run_fleet(["keys", "init", "--home", home]).code == 0
    r = run_fleet(["keys", "revoke", "7"], env={"REDMESH_HOME": home})
    assert r.code == 2 and "--reason" in r.output
    r = run_fleet(["keys", "revoke", "0", "--reason", "x", "--home", home])
    assert r.code == 2, r
    r = run_fleet(["keys", "revoke", "7", "--reason", "pole 7 stolen", "--json", "--home", home])
    assert_clean(r, (0,))
    out = json.loads(r.stdout)
    assert out["node"] == 7 and out["newly_revoked"] and out["reason"] == "pole 7 stolen"
    r = run_fleet(["keys", "revoke", "7", "--reason", "again", "--home", home])
    assert r.code == 0 and "already revoked" in r.stdout
    r = run_fleet(["keys", "revoked", "--json", "--home", home])
    assert [e["node"] for e in json.loads(r.stdout)] == [7]
    # fleet status names it
    s = SQLiteStore(os.path.join(home, "fleet.db"))
    s.register_nodes([{"node": 7}, {"node": 8}])
    s.close()
    r = run_fleet(["status", "--home", home])
    assert_clean(r, (0,))
    assert "REVOKED 1 (7)" in r.stdout
    r = run_fleet(["status", "--json", "--home", home])
    assert json.loads(r.stdout)["summary"]["revoked_nodes"] == [7]
    # after a rotation: the nodes whose last status reported an older key epoch are listed
    # (a revoked one is left out of every epoch: not listed)
    s = SQLiteStore(os.path.join(home, "fleet.db"))
    s.register_nodes([{"node": 9}])
    for node, epoch in ((7, 0), (8, 0), (9, 1)):
        s.update_state(node, int(time.time()), epoch=epoch)
    s.close()
    Keystore(os.path.join(home, "keys"), 1).set_epoch_state(1)
    r = run_fleet(["status", "--json", "--home", home])
    out = json.loads(r.stdout)
    assert (out["summary"]["key_epoch"], out["summary"]["behind_epoch"]) == (1, [8])
    assert {n["node"]: n["epoch"] for n in out["nodes"]} == {7: 0, 8: 0, 9: 1}
    r = run_fleet(["status", "--home", home])
    assert_clean(r, (0,))
    assert "KEYS epoch 1: 1 node(s) on an older one (8)" in r.stdout


def test_epoch_keys_in_keystore(ks):
    assert ks.mesh_key(0) == ks.mesh_key() == auth.derive_mesh_key(SECRET, NET)
    assert ks.mesh_key(1) == auth.derive_mesh_key(SECRET, NET, 1) != ks.mesh_key()
    f = protocol.Telemetry(origin=1, seq=0, time_s=T0, readings=[protocol.Reading(0, 1, 2, 3, 4, 5, 6, 0)])
    assert protocol.decode(protocol.encode(f, (ks.mesh_key(2), ks.mesh_key(1)), ks.node_key(1), 1),
                           (None, ks.mesh_key(1))).phase == 1
