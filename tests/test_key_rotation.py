"""`fleet keys rotate` (issue 14 part 3), one layer at a time: the keystore's epoch state, the
campaign's plan and frames (real Keystore, real SQLiteStore, frames checked by
protocol.decode and the node's own unwrap), and the collector switching epochs while it runs.
The whole campaign against real nodes is hil_tests/test_keys_rotate.py."""
import json

import pytest
from cli_run import assert_clean, run_fleet
from test_collector import GW, NET, NODES, T0, UP, Clock, envelope, make_ingest, nkey, reading, status

import protocol
from fleet import key_rotation
from fleet.collector import CollectorConfig, Ingest
from fleet.errors import FleetError
from fleet.home import FleetHome
from fleet.keys import Keystore, KeystoreError
from fleet.repair import RepairConfig
from fleet.store import SQLiteStore
from protocol import auth, keywrap

SECRET = bytes(range(1, 33))  # the secret of test_collector's frames


@pytest.fixture
def home(tmp_path):
    h = FleetHome.resolve(str(tmp_path / "home"))
    h.ensure()
    ks = h.keys()
    ks.init()
    with open(ks.secret_path, "wb") as f:
        f.write(SECRET)
    store = h.store(create=True)
    try:
        store.register_nodes([{"node": n} for n in NODES] + [{"node": GW, "role": "gateway"}])
    finally:
        store.close()
    return h


def _keystore(tmp_path):
    """A real Keystore under tmp_path holding SECRET (the secret of test_collector's frames)."""
    ks = Keystore(str(tmp_path / "keys"), NET)
    ks.init()
    with open(ks.secret_path, "wb") as f:
        f.write(SECRET)
    return Keystore(ks.dir, NET)


def _ks(home):
    return Keystore(home.keys().dir, home.net_id)


def test_epoch_state_roundtrip_validation_and_key_pair(tmp_path):
    ks = Keystore(str(tmp_path / "keys"), NET)
    ks.init()
    assert ks.epoch_state() == {"epoch": 0, "other": None}
    pair, phase = ks.mesh_keys()
    assert pair == (ks.mesh_key(0), None) and phase == 0
    ks.set_epoch_state(0, 1)
    assert ks.mesh_keys() == ((ks.mesh_key(0), ks.mesh_key(1)), 0)
    ks.set_epoch_state(1, 0)
    assert ks.mesh_keys() == ((ks.mesh_key(0), ks.mesh_key(1)), 1)
    ks.set_epoch_state(1)
    assert ks.mesh_keys() == ((None, ks.mesh_key(1)), 1)
    assert ks.mesh_key(1) != ks.mesh_key(0) and ks.mesh_key(2) not in (ks.mesh_key(0), ks.mesh_key(1))
    for bad in ("{", '{"epoch": -1}', '{"epoch": 2, "other": 4}', '{"epoch": "1"}', "[]"):
        with open(ks.epoch_path, "w") as f:
            f.write(bad)
        with pytest.raises(KeystoreError, match="damaged"):
            ks.epoch_state()  # never guessed: a wrong epoch would refuse every frame


def test_start_plans_the_next_epoch_for_the_nodes_not_revoked(home):
    ks = home.keys()
    ks.revoke(3, "stolen", now_s=T0)
    camp = key_rotation.start(home, grace_s=5)
    assert camp["epoch"] == 1 and camp["from_epoch"] == 0 and camp["state"] == "distributing"
    assert camp["targets"] == sorted(set(NODES) - {3} | {GW}) and camp["excluded"] == [3]
    assert _ks(home).epoch_state() == {"epoch": 0, "other": 1}  # early activators are heard
    with pytest.raises(FleetError, match="is distributing"):
        key_rotation.start(home)
    st = key_rotation.status(home)
    assert st["totals"] == {"pending": len(camp["targets"]), "revoked": 1}
    # the file holds no key byte
    raw = open(key_rotation.rotation_path(home), "rb").read()
    for e in (0, 1):
        assert ks.mesh_key(e).hex().encode() not in raw and ks.mesh_key(e) not in raw


def test_abort_before_activation_only_and_the_next_campaign_skips_the_handed_out_key(home):
    key_rotation.start(home)
    camp = key_rotation.abort(home)
    assert camp["state"] == "aborted" and _ks(home).epoch_state() == {"epoch": 0, "other": None}
    with pytest.raises(FleetError, match="no key rotation is running"):
        key_rotation.abort(home)
    again = key_rotation.start(home)
    # epoch 1's key went out: a node revoked since may hold it, so it is never activated; 3 keeps
    # the parity rule (the next epoch's key phase differs from the one in force)
    assert again["epoch"] == 3 and (again["epoch"] - again["from_epoch"]) % 2 == 1
    again["state"] = "grace"
    key_rotation.save(home, again)
    with pytest.raises(FleetError, match="cannot be aborted"):
        key_rotation.abort(home)


def test_rekey_frames_carry_the_next_key_wrapped_for_each_node(home):
    camp = key_rotation.start(home)
    ks = home.keys()
    store = home.store()
    try:
        frames = key_rotation.rekey_frames(home, store, camp, [1, 2])
        frames += key_rotation.rekey_frames(home, store, camp, [1])
    finally:
        store.close()
    assert camp["sent"] == {"1": [1, 2], "2": [1]}
    for fb, node in zip(frames, (1, 2, 1), strict=True):
        assert len(fb) <= protocol.MAX_FRAME
        cmd = protocol.decode(fb, auth.Hmac(ks.mesh_key(0)))  # hop-tagged in the epoch in force
        assert cmd.target == node and cmd.op == keywrap.OP_REKEY
        want = auth.Hmac(ks.node_key(node)).tag(protocol.signed_bytes(cmd), auth.E2E_TAG_LEN)
        assert cmd.auth == want  # authenticated with the node's own key
        epoch, w = keywrap.from_args(cmd.args)
        assert epoch == 1 and keywrap.unwrap(ks.node_key(node), home.net_id, node, 1, w) == ks.mesh_key(1)
        with pytest.raises(protocol.ProtocolError):
            keywrap.unwrap(ks.node_key(node + 1), home.net_id, node, 1, w)  # another node's key opens nothing


def test_epoch_frame_is_signed_and_its_counter_is_new_for_every_node(home):
    from protocol import ed25519

    camp = key_rotation.start(home)
    ks = home.keys()
    store = home.store()
    try:
        for _ in range(40):
            store.next_cseq(2)  # node 2 has had many commands
        fb = key_rotation.epoch_frame(home, store, camp, 0)
        after = {n: store.next_cseq(n) for n in camp["targets"]}
    finally:
        store.close()
    cmd = protocol.decode(fb, auth.Hmac(ks.mesh_key(0)))
    assert cmd.target == 0 and cmd.op == keywrap.OP_EPOCH and cmd.args == [1, 0]
    assert ed25519.verify(ks.public_key(), protocol.signed_bytes(cmd), cmd.auth)
    assert cmd.cseq > 40 and all(c > cmd.cseq for c in after.values()), (cmd.cseq, after)


def test_confirmations_match_the_replies_to_the_commands_sent(home):
    camp = key_rotation.start(home)
    camp["sent"] = {"1": [5, 6], "2": [7]}
    store = home.store()
    try:
        ts = int(camp["started_at"]) + 1
        store.record_event(ts, "reply", 1, json.dumps({"cseq": 6, "code": 0, "result": [1]}))
        store.record_event(ts, "reply", 2, json.dumps({"cseq": 7, "code": 1, "result": []}))  # refused
        store.record_event(ts, "reply", 4, json.dumps({"cseq": 1, "code": 0, "result": [1]}))  # never sent
        store.record_event(ts, "reply", 2, json.dumps({"cseq": 9, "code": 0, "result": [1]}))  # not ours
        got = key_rotation._confirmations(store, camp)
    finally:
        store.close()
    assert [k for k, _ in got] == ["1"]


def test_activation_waits_for_the_share_and_for_rounds_to_the_unconfirmed(home):
    """With --min-confirmed under 1 a node whose confirmations are lost (a stolen pole it routes
    through swallows them) is activated past only after it has been sent the key min_rounds
    times: it most likely holds it. Activating at the first confirmations stranded nodes the
    re-key had not reached yet (the rig: 10 of 20 left on the old epoch)."""
    camp = key_rotation.start(home, min_confirmed=0.5, min_rounds=3)
    targets = camp["targets"]
    half = targets[: len(targets) // 2]
    rest = targets[len(targets) // 2:]
    camp["confirmed"] = {str(n): 1.0 for n in half}
    assert camp["min_rounds"] == 3
    for rounds in range(3):
        assert not key_rotation.ready_to_activate(camp, rest), rounds
        for n in rest:
            camp["sent"].setdefault(str(n), []).append(100 + rounds)
    assert key_rotation.ready_to_activate(camp, rest)
    assert not key_rotation.ready_to_activate(camp, rest + half[:1])  # under the share
    assert key_rotation.ready_to_activate(camp, [])  # all confirmed: no rounds needed
    with pytest.raises(FleetError, match="min-rounds"):
        key_rotation.start(home, min_rounds=0)


def test_rekeys_go_out_a_few_at_a_time_longest_waiting_first():
    sent_at = {}
    todo = [5, 1, 9, 3, 7]
    first = key_rotation.due_for_rekey(todo, sent_at, 100.0, 10.0, 2)
    assert first == [1, 3]  # never sent: by node id
    for n in first:
        sent_at[n] = 100.0
    second = key_rotation.due_for_rekey(todo, sent_at, 101.0, 10.0, 2)
    assert second == [5, 7]
    for n in second:
        sent_at[n] = 101.0
    assert key_rotation.due_for_rekey(todo, sent_at, 102.0, 10.0, 2) == [9]
    sent_at[9] = 102.0
    assert key_rotation.due_for_rekey(todo, sent_at, 105.0, 10.0, 2) == []  # all sent within resend_s
    assert key_rotation.due_for_rekey(todo, sent_at, 111.0, 10.0, 9) == [1, 3, 5, 7]  # the oldest first


def test_a_first_rekey_goes_down_the_source_route_later_ones_flood(home):
    """A re-key is a command to one node: its first copy goes down the path compiled from the
    parents of the stored status reports (a flood per node would cost the whole mesh for each);
    a later round, and a node whose path is unknown, is flooded. A gateway's own goes to its
    topic, every round."""
    from protocol.routed import Routed  # noqa: F401 - the decoder loads it on demand

    store = home.store()
    try:
        ing = make_ingest(store, Clock())
        ing.on_message(UP, envelope([status(1, 1, parent=GW), status(2, 1, parent=1), status(3, 1, parent=99)]))
        ing.flush()
        camp = key_rotation.start(home)
        frames = key_rotation.rekey_frames(home, store, camp, [2, 3, 4, GW])
        topo = key_rotation.rekey_topology(store)
        mk, phase = home.keys().mesh_keys()
        routed, flood = key_rotation.route_rekeys(list(zip([2, 3, 4, GW], frames, strict=True)), {2, 3, GW}, topo,
                                                  mk, phase)
        later, flood2 = key_rotation.route_rekeys([(2, frames[0]), (GW, frames[3])], set(), topo, mk, phase)
    finally:
        store.close()
    mesh = auth.Hmac(home.keys().mesh_key(0))
    (gw, (fb, own)), = routed.items()
    r = protocol.decode(fb, mesh)
    assert gw == GW and r.path == [1, 2] and protocol.decode(r.cmd, mesh).target == 2
    assert own == frames[3] and protocol.decode(own, mesh).target == GW  # the gateway's own, on its topic
    assert [protocol.decode(f, mesh).target for f in flood] == [3, 4]  # 3's chain unknown; 4 not first
    assert later == {GW: [frames[3]]} and flood2 == [frames[0]]


def test_collector_switches_epochs_while_running(tmp_path):
    ks = _keystore(tmp_path)
    store = SQLiteStore(str(tmp_path / "fleet.db"))
    store.register_nodes([{"node": n} for n in NODES] + [{"node": GW, "role": "gateway"}])
    clock = Clock()
    rc = RepairConfig(grace_s=10, retry_s=5, retry_max_s=20, follow_s=1, max_attempts=3)
    ing = Ingest(store, ks, NET, now_fn=clock, config=CollectorConfig(batch_rows=1000, repair=rc))
    k0, k1 = ks.mesh_key(0), ks.mesh_key(1)

    def up(seq, phase, epoch=None):
        # a node in epoch e tags end to end with its node key of that epoch (keywrap.epoch_node_key)
        f = protocol.Telemetry(origin=1, seq=seq, time_s=T0, readings=[reading(0)],
                               hops=1, cost=20)
        nk = ks.node_key_at(1, phase if epoch is None else epoch)
        return envelope([protocol.encode(f, (k0, k1), nk, phase=phase)])

    assert ing.on_message(UP, up(0, 0))["readings"] == 1
    assert ing.on_message(UP, up(1, 1))["rejects"] == {"bad_hop_tag": 1}  # epoch 1 not accepted yet
    ks.set_epoch_state(0, 1)  # the campaign starts
    clock.t += 1.5
    assert ing.on_message(UP, up(2, 1))["readings"] == 1
    ks.set_epoch_state(1, 0)  # activated: grace window
    clock.t += 1.5
    assert ing.on_message(UP, up(3, 0))["readings"] == 1 and ing.on_message(UP, up(4, 1))["readings"] == 1
    # in the grace window a frame e2e-tagged with the old node key but hop-tagged in the new epoch
    # (in flight at activation, re-tagged by a relay) still verifies
    assert ing.on_message(UP, up(40, 1, epoch=0))["readings"] == 1
    ks.set_epoch_state(1)  # grace over: the old key (a stolen node's) fails
    clock.t += 1.5
    assert ing.on_message(UP, up(5, 0))["rejects"] == {"bad_hop_tag": 1}
    assert ing.on_message(UP, up(6, 1))["readings"] == 1
    assert ing.on_message(UP, up(41, 1, epoch=0))["rejects"] == {"bad_tag": 1}  # the old node key: no more
    with open(ks.epoch_path, "w") as f:
        f.write("{damaged")
    clock.t += 1.5
    assert ing.on_message(UP, up(7, 1))["readings"] == 1  # the last good keys stay
    store.close()


def test_a_node_reporting_an_old_epoch_is_sent_the_key_in_force_unless_revoked(tmp_path):
    """A status frame says the node's key epoch. The collector answers one reporting an epoch
    older than the one in force (a node that missed the rotation: its status is its key
    request) with OP_REKEY [epoch, wrap, 1], authenticated and wrapped with that node's own key,
    flooded from the gateway that heard it, scoped; a gateway's own goes to its topic. One
    answer per node per key_answer_s; none to a revoked node (its frames are refused)."""
    ks = _keystore(tmp_path)
    store = SQLiteStore(str(tmp_path / "fleet.db"))
    store.register_nodes([{"node": n} for n in NODES] + [{"node": GW, "role": "gateway"}])
    ks.set_epoch_state(1)  # epoch 1 in force, the grace window over
    clock = Clock()
    ing = Ingest(store, ks, NET, now_fn=clock, config=CollectorConfig(batch_rows=1000, key_answer_s=50))
    k0, k1 = ks.mesh_key(0), ks.mesh_key(1)

    def st(node, seq, epoch, phase=1):
        body = protocol.StatusBody(fw_version="1.2.0", parent=7, rssi=-70, epoch=epoch)
        f = protocol.Status(origin=node, seq=seq, time_s=T0, body=body, hops=2)
        # end to end with its node key of the epoch it is in
        return envelope([protocol.encode(f, (k0, k1), ks.node_key_at(node, epoch), phase=phase)])

    assert ing.on_message(UP, st(1, 1, 1))["frames"] == 1  # up to date: nothing to send
    assert ing.poll(send=True) == [] and ing.stats.key_requests == 0
    assert ing.on_message(UP, st(2, 1, 0))["frames"] == 1  # relayed (re-tagged in epoch 1): epoch 0
    out = ing.poll(send=True)
    assert ing.stats.key_requests == 1 and ing.stats.key_answers == 1
    (topic, payload), = out
    assert topic == f"redmesh/{NET}/down/{GW}"
    fb, = protocol.decode(payload).frames
    cmd = protocol.decode(fb, (None, k1), nkey(2))  # tagged in epoch 1, authenticated with node 2's key
    assert cmd.target == 2 and cmd.op == keywrap.OP_REKEY and cmd.args[0] == 1 and cmd.args[3] == 1
    assert cmd.hops > 0  # scoped: a few hops beyond the node's distance, not the whole mesh
    epoch, w = keywrap.from_args(cmd.args)
    assert keywrap.unwrap(nkey(2), NET, 2, 1, w) == k1
    ing.flush()
    assert store.node_state(2)["epoch"] == 0
    assert [e["node"] for e in store.events(kind="key_answer")] == [2]
    # it asks again within key_answer_s: no second answer yet; after it, one more
    assert ing.on_message(UP, st(2, 2, 0))["frames"] == 1
    assert ing.poll(send=True) == []
    clock.t += 51
    assert ing.on_message(UP, st(2, 3, 0))["frames"] == 1
    (_, payload2), = ing.poll(send=True)
    assert ing.stats.key_answers == 2
    fb2, = protocol.decode(payload2).frames
    assert protocol.decode(fb2, (None, k1), nkey(2)).hops <= cmd.hops  # asked again: the scope no narrower
    for seq in (4, 5, 6):  # by the fourth answer: the whole mesh
        clock.t += 51
        assert ing.on_message(UP, st(2, seq, 0))["frames"] == 1
        (_, payload2), = ing.poll(send=True)
    fb2, = protocol.decode(payload2).frames
    assert protocol.decode(fb2, (None, k1), nkey(2)).hops == 0 and ing.stats.key_answers == 5
    # a gateway that missed the rotation: its own status goes straight up, tagged in epoch 0
    assert ing.on_message(UP, st(GW, 1, 0, phase=0))["frames"] == 1
    (topic, payload), = ing.poll(send=True)
    assert topic == f"redmesh/{NET}/down/{GW}"
    fb, = protocol.decode(payload).frames
    assert protocol.decode(fb, (None, k1), nkey(GW)).args[3] == 1
    # ... but epoch-0 frames of anyone else, status or not, are still refused
    assert ing.on_message(UP, st(4, 1, 0, phase=0))["rejects"] == {"bad_hop_tag": 1}
    assert ing.on_message(UP, envelope([protocol.encode(protocol.Telemetry(
        origin=GW, seq=1, time_s=T0, readings=[reading(0)], hops=0, cost=0), (k0, k1), nkey(GW), phase=0)]))[
        "rejects"] == {"bad_hop_tag": 1}
    # a revoked node asks: refused as a frame, never answered
    ks.revoke(3, "stolen")
    clock.t += 2
    ing.poll(send=True)
    r = ing.on_message(UP, st(3, 1, 0))
    assert r["rejects"] == {"revoked": 1}
    assert ing.poll(send=True) == [] and ing.stats.key_answers == 6
    # two rotations later the gateway is still on epoch 0 (the same key phase as epoch 2)
    ks.set_epoch_state(2)
    clock.t += 51
    ing.poll(send=True)
    assert ing.on_message(UP, st(GW, 2, 0, phase=0))["frames"] == 1
    (topic, payload), = ing.poll(send=True)
    fb, = protocol.decode(payload).frames
    cmd = protocol.decode(fb, (ks.mesh_key(2), None), nkey(GW))
    assert cmd.args[0] == 2 and keywrap.unwrap(nkey(GW), NET, GW, 2, keywrap.from_args(cmd.args)[1]) == \
        ks.mesh_key(2)
    store.close()


def test_cli_rotation_status_abort_and_a_broker_that_is_not_there(home):
    h = home.path
    r = run_fleet(["keys", "rotation", "--home", h])
    assert_clean(r, (0,))
    assert "mesh key epoch in force: 0" in r.stdout and "no key rotation yet" in r.stdout
    r = run_fleet(["keys", "rotate", "--abort", "--home", h])
    assert_clean(r, (1,))
    assert "no key rotation is running" in r.stderr
    r = run_fleet(["keys", "rotate", "--min-confirmed", "0", "--home", h])
    assert_clean(r, (2,))
    # a broker that is not there: the campaign is recorded (resumable), the error says what to do
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r = run_fleet(["keys", "rotate", "--broker", f"mqtt://127.0.0.1:{port}", "--timeout", "5", "--home", h])
    assert_clean(r, (1,))
    assert "cannot reach the MQTT broker" in r.stderr and "run `fleet keys rotate` again" in r.stderr
    r = run_fleet(["keys", "rotation", "--json", "--home", h])
    assert_clean(r, (0,))
    st = json.loads(r.stdout)
    assert st["epoch"] == {"epoch": 0, "other": 1} and st["campaign"]["state"] == "distributing"
    r = run_fleet(["keys", "rotate", "--abort", "--home", h])
    assert_clean(r, (0,))
    assert "epoch 0 stays in force" in r.stdout
    assert _ks(home).epoch_state() == {"epoch": 0, "other": None}
    for r in (run_fleet(["keys", "rotation", "--home", h]),):
        for e in (0, 1, 3):
            assert _ks(home).mesh_key(e).hex() not in r.output


def test_provisioning_after_a_rotation_writes_the_key_of_the_epoch_in_force(home):
    from firmware.config import Config
    from fleet.provision.model import NodeSpec, ProvisionOptions
    from fleet.provision.run import _Fleet

    spec = NodeSpec(node_id=7)
    d = _Fleet(home, ProvisionOptions()).config_dict(spec, b"\x02\0\0\0\0\x07")
    assert "mesh_epoch" not in d and d["mesh_key"] == home.keys().mesh_key(0)  # configs as before
    home.keys().set_epoch_state(3, 2)  # epoch 3 in force (grace of 2)
    d = _Fleet(home, ProvisionOptions()).config_dict(spec, b"\x02\0\0\0\0\x07")
    assert d["mesh_epoch"] == 3 and d["mesh_key"] == home.keys().mesh_key(3)
    assert Config(d).mesh_epoch == 3


def test_decode_checks_the_tags_of_a_frame_made_in_a_later_epoch(tmp_path):
    """`fleet decode --key-file` with the fleet secret and the key epoch the frame was made in:
    the mesh key and the node key of that epoch (keywrap.epoch_node_key); another epoch fails."""
    ks = _keystore(tmp_path)
    f = protocol.Telemetry(origin=1, seq=5, time_s=T0, readings=[reading(0)], hops=1, cost=20)
    hexed = protocol.encode(f, (None, ks.mesh_key(3)), ks.node_key_at(1, 3), phase=1).hex()
    for epoch, code in ((3, 0), (1, 1)):
        path = tmp_path / f"k{epoch}.json"
        path.write_text(json.dumps({"fleet_secret": SECRET.hex(), "net_id": NET, "epoch": epoch}))
        r = run_fleet(["decode", hexed, "--key-file", str(path)])
        assert_clean(r, (code,))
        if code == 0:
            assert json.loads(r.stdout)["origin"] == 1, r
        else:
            assert "tag" in r.stderr, r
    path.write_text(json.dumps({"fleet_secret": SECRET.hex(), "net_id": NET, "epoch": -1}))
    r = run_fleet(["decode", hexed, "--key-file", str(path)])
    assert_clean(r, (1,))
    assert "epoch must be" in r.stderr
