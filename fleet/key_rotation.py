"""`fleet keys rotate`: hand every node that is not revoked the next mesh key, then switch the
whole fleet to it with one signed command (issue 14).

A campaign, like an OTA one (fleet/ota_campaign.py), kept in `<home>/keys/rotation.json` (no key
bytes: every epoch's mesh key derives from the fleet secret):

1. **start**: the next epoch is the one in force + 1 (+ 2 past an aborted campaign's epoch, so
   no key handed out before is ever activated: a node revoked since may hold it). The targets
   are the registered nodes that are not revoked. `epoch.json` now accepts the next epoch's hop
   tags too (a node that activated early is heard).
2. **distributing**: each target not yet confirmed gets OP_REKEY [epoch, wrap] to it alone, the
   key wrapped with its own node key (protocol/keywrap.py) and the command authenticated with
   it, re-sent every `resend_s`, a few per poll. The first goes down the node's source route
   (compiled from the parents in the stored status reports, as the collector routes resend
   requests; the parents are re-read once a minute), later ones and nodes without a known path
   are flooded; a gateway's own always goes to its topic. A node confirms with its reply (code
   0, result [epoch]) to one of those commands' counters.
3. **activating**: once the confirmed share reaches `min_confirmed` (default: every target)
   and every target not confirmed has been sent the key `min_rounds` times (default 3: a node
   whose confirmations are lost - swallowed by a stolen pole it routes through - most likely
   holds the key all the same; it still counts as missed),
   one Ed25519-signed OP_EPOCH [epoch, 0] goes to every node, sent `activate_repeats` times,
   each with its own counter (relays flood a counter once: a copy would not get past them);
   `epoch.json` = the new epoch in force, the old one still accepted (grace window: no reading
   tagged in the old epoch, in flight or queued, is lost).
4. **grace**: after `grace_s`, signed OP_EPOCH [epoch, 1] ends the grace window; `epoch.json`
   accepts only the new epoch: frames tagged with the old key (a stolen node's) fail every hop.

`abort` works before activation only (the old epoch stays in force; nodes keep the next key
unused). A campaign interrupted (the process killed) is resumed by running it again: its state
is on disk after every step. A target that has not confirmed at activation is `missed`: it
cannot check the new epoch's beacons, so it asks for the key by itself (its status reports its
epoch; firmware/node.py, firmware/mesh.py) and the collector, not this campaign, answers it
(fleet/collector.py `_key_answers`) unless it is revoked.
"""
import asyncio
import json
import os
import time

from firmware.rekey import GRACE_MAX_S
from fleet.errors import FleetError

ROTATION_NAME = "rotation.json"
MAX_ROUNDS = 8  # re-key counters kept per node (camp["sent"]): the rounds sent are counted up to this
ACTIVE_STATES = ("distributing", "grace")
# the longest grace window: well under the one after which a node ends it by itself
MAX_GRACE_S = GRACE_MAX_S * 5 / 6


def rotation_path(home):
    return os.path.join(home.path, "keys", ROTATION_NAME)


def load(home):
    """The campaign dict, or None when none was ever started. Raises FleetError when damaged."""
    path = rotation_path(home)
    try:
        with open(path, encoding="utf-8") as f:
            camp = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise FleetError(f"cannot read the key rotation state {path}: {e}") from None
    if not isinstance(camp, dict) or not isinstance(camp.get("epoch"), int) or camp.get("state") not in (
            "distributing", "grace", "done", "aborted"):
        raise FleetError(f"the key rotation state {path} is damaged: restore it from a backup")
    return camp


def save(home, camp):
    from fleet.keys import write_file_atomic

    data = (json.dumps(camp, indent=1, sort_keys=True) + "\n").encode("utf-8")
    write_file_atomic(rotation_path(home), data, 0o600, overwrite=True)


def start(home, min_confirmed=1.0, grace_s=600.0, now_s=None, min_rounds=3):
    """Plan a rotation to the next epoch and write it (state distributing). Raises FleetError
    when one is already running, or there is no node to re-key."""
    if not 0.0 < min_confirmed <= 1.0:
        raise FleetError(f"--min-confirmed must be in (0, 1], got {min_confirmed}")
    if not 1 <= min_rounds <= MAX_ROUNDS:
        raise FleetError(f"--min-rounds must be 1..{MAX_ROUNDS}, got {min_rounds}")
    if not 0 <= grace_s <= MAX_GRACE_S:
        raise FleetError(f"--grace must be 0..{MAX_GRACE_S:.0f} seconds, got {grace_s:g}: a node ends a grace window by "
                         f"itself after {GRACE_MAX_S} s (firmware/rekey.py GRACE_MAX_S)")
    ks = home.keys()
    old = load(home)
    if old is not None and old["state"] in ACTIVE_STATES:
        raise FleetError(f"a key rotation to epoch {old['epoch']} is {old['state']}: `fleet keys rotate` resumes it, "
                         f"`fleet keys rotate --abort` stops it (before activation)")
    st = ks.epoch_state()
    cur = st["epoch"]
    epoch = cur + 1
    if old is not None and old["state"] == "aborted" and old["epoch"] >= epoch:
        epoch = old["epoch"] + 2  # never activate a key an aborted campaign handed out
    revoked = ks.revoked()
    store = home.store()
    try:
        rows = store.status_rows(fields=("node", "role"))
    finally:
        store.close()
    targets = sorted(r["node"] for r in rows if r["node"] not in revoked)
    if not targets:
        raise FleetError("no node to re-key: the store knows no node that is not revoked (`fleet status`)")
    now_s = time.time() if now_s is None else now_s
    camp = {"epoch": epoch, "from_epoch": cur, "state": "distributing", "targets": targets,
            "excluded": sorted(revoked), "sent": {}, "confirmed": {}, "min_confirmed": min_confirmed,
            "min_rounds": min_rounds,
            "grace_s": grace_s, "started_at": now_s, "activated_at": None, "ended_at": None, "missed": []}
    save(home, camp)
    ks.set_epoch_state(cur, epoch)  # a node that activated early is heard
    return camp


def abort(home):
    """Stop a campaign that has not activated; the old epoch stays in force alone."""
    camp = load(home)
    if camp is None or camp["state"] not in ACTIVE_STATES:
        raise FleetError("no key rotation is running")
    if camp["state"] == "grace":
        raise FleetError(f"epoch {camp['epoch']} is already active on the fleet: it cannot be aborted; "
                         f"the grace window ends by itself")
    camp.update(state="aborted", ended_at=time.time())
    save(home, camp)
    home.keys().set_epoch_state(camp["from_epoch"], None)
    return camp


def status(home):
    """{"campaign": dict or None, "nodes": [{"node", "state"}], "totals": {state: n}}: states
    pending (nothing sent yet), sent (re-key sent, no confirmation), confirmed, missed (left
    out at activation), revoked (excluded)."""
    camp = load(home)
    if camp is None:
        return {"campaign": None, "nodes": [], "totals": {}}
    missed = set(camp.get("missed") or [])
    nodes = []
    for n in camp["targets"]:
        k = str(n)
        state = ("confirmed" if k in camp["confirmed"] else "missed" if n in missed
                 else "sent" if k in camp["sent"] else "pending")
        nodes.append({"node": n, "state": state})
    nodes.extend({"node": n, "state": "revoked"} for n in camp["excluded"])
    totals = {}
    for r in nodes:
        totals[r["state"]] = totals.get(r["state"], 0) + 1
    return {"campaign": camp, "nodes": sorted(nodes, key=lambda r: r["node"]), "totals": totals}


def rekey_frames(home, store, camp, nodes):
    """Air frames of OP_REKEY for each node (the next key wrapped with its node key, the command
    tagged with it, hop-tagged in the epoch in force); records the counters sent in camp."""
    import protocol
    from protocol.keywrap import OP_REKEY, to_args, wrap

    ks = home.keys()
    mesh, phase = ks.mesh_keys()
    key = ks.mesh_key(camp["epoch"])
    out = []
    for n in nodes:
        nk = ks.node_key_at(n, camp["from_epoch"])  # the node key of the epoch the node is in
        cmd = protocol.Command(target=n, cseq=store.next_cseq(n), op=OP_REKEY,
                               args=to_args(camp["epoch"], wrap(nk, ks.net_id, n, camp["epoch"], key)))
        out.append(protocol.encode(cmd, mesh, nk, phase=phase))
        camp["sent"].setdefault(str(n), []).append(cmd.cseq)
        del camp["sent"][str(n)][:-MAX_ROUNDS]  # the last few are enough to match a late reply
    return out


def epoch_frame(home, store, camp, stage):
    """The signed OP_EPOCH [epoch, stage] frame for every node (stage 0 activates, 1 ends the
    grace window). Its counter is above every node's, and every node's next one above it (one
    replay window per node holds unicast and broadcast commands alike)."""
    import protocol
    from protocol.keywrap import OP_EPOCH

    ks = home.keys()
    mesh, phase = ks.mesh_keys()
    top = max(store.next_cseq(n) for n in camp["targets"])
    cseq = store.next_cseq(0, floor=top + 1)
    for n in camp["targets"]:
        store.next_cseq(n, floor=cseq + 1)
    cmd = protocol.Command(target=0, cseq=cseq, op=OP_EPOCH, args=[camp["epoch"], stage])
    cmd.auth = ks.sign(protocol.signed_bytes(cmd))
    return protocol.encode(cmd, mesh, None, phase=phase)


def _confirmations(store, camp):
    """Nodes whose reply to one of the re-key commands sent says the next key is stored."""
    out = []
    for ev in store.events(since=int(camp["started_at"]) - 1, kind="reply", limit=1000000):
        k = str(ev["node"])
        if k in camp["confirmed"] or k not in camp["sent"]:
            continue
        try:
            d = json.loads(ev["detail"] or "{}")
        except ValueError:
            continue
        if d.get("code") == 0 and d.get("cseq") in camp["sent"][k] and d.get("result") == [camp["epoch"]]:
            out.append((k, ev["ts"]))
    return out


def ready_to_activate(camp, todo):
    """Whether campaign `camp` may activate with the targets `todo` unconfirmed: the confirmed
    share reaches min_confirmed and each of them has been sent the key min_rounds times."""
    share = 1.0 - len(todo) / len(camp["targets"])
    rounds = camp.get("min_rounds", 1)  # campaigns recorded before min_rounds: as they were
    return share >= camp["min_confirmed"] and all(len(camp["sent"].get(str(n), ())) >= rounds for n in todo)


def rekey_topology(store):
    """(parents, gateways): node -> parent from the stored status reports, and the gateway ids
    (read once a minute by run(): every node's row, which at 100,000 nodes is not free)."""
    rows = store.status_rows(fields=("node", "role", "parent"))
    return {r["node"]: r["parent"] or 0 for r in rows}, {r["node"] for r in rows if r["role"] == "gateway"}


def route_rekeys(frames_by_node, first, topo, mesh, phase):
    """Split re-key frames into ({gateway: [frames for its topic]}, [frames to flood]): a
    gateway's own goes to its topic (it takes a command for itself off MQTT, as the collector
    sends it a resend request); a node's first re-key goes down the source route compiled from
    topo (rekey_topology: protocol/routed.py compile_path, as the collector routes resend
    requests; hop-tagged with `mesh` in key phase `phase`), a flood through the whole mesh for
    one node otherwise; later rounds (the route may be stale, or swallowed) and nodes without a
    known path are flooded."""
    import protocol
    from protocol.routed import Routed, compile_path

    routed, flood = {}, []
    parents, gws = topo
    for n, fb in frames_by_node:
        if n in gws:
            routed.setdefault(n, []).append(fb)
            continue
        r = compile_path(parents, n, gws) if n in first else None
        if r is not None:
            try:
                routed.setdefault(r[0], []).append(protocol.encode(Routed(path=r[1], at=0, cmd=fb), mesh,
                                                                   phase=phase))
                continue
            except ValueError:
                pass  # too long for one frame: flooded
        flood.append(fb)
    return routed, flood


def due_for_rekey(todo, sent_at, now, resend_s, batch):
    """The next targets to send the key to: those of `todo` not sent it within resend_s
    (sent_at: node -> monotonic time of its last re-key), at most `batch`, the longest waiting
    first. Each re-key is a flood through the whole mesh: a burst of them at once overflows the
    radios' receive buffers (the rig showed a far node missing three rounds of 11 at once)."""
    due = [n for n in todo if now - sent_at.get(n, -1e18) >= resend_s]
    due.sort(key=lambda n: (sent_at.get(n, -1e18), n))
    return due[:batch]


async def run(home, broker_url=None, log=None, poll_s=2.0, resend_s=30.0, activate_repeats=3, timeout_s=None,
              batch=4):
    """Drive the campaign of `home` until done or aborted (or timeout_s: it stays resumable).
    Re-keys go out `batch` per poll at most (see due_for_rekey). Returns the campaign dict."""
    import aiomqtt

    from fleet.collector_mqtt import parse_broker_url
    from fleet.ota_campaign import pack_downlinks
    from protocol.envelope import downlink_topic

    log = log or (lambda msg: None)
    host, port = parse_broker_url(broker_url or home.broker_url)
    topic = downlink_topic(home.net_id, None)
    t_end = None if timeout_s is None else time.monotonic() + timeout_s
    sent_at = {}
    topo, topo_at = None, None  # rekey_topology, re-read once a minute
    async with aiomqtt.Client(host, port, identifier=f"fleet-keys-{os.getpid()}") as client:
        while True:
            camp = load(home)
            if camp is None or camp["state"] not in ACTIVE_STATES:
                return camp
            now = time.monotonic()
            store = home.store()
            epochs = None  # epoch.json after this step, written once its frames are out
            try:
                out = []
                routed = {}
                if camp["state"] == "distributing":
                    for k, _ts in _confirmations(store, camp):
                        camp["confirmed"][k] = time.time()
                    todo = [n for n in camp["targets"] if str(n) not in camp["confirmed"]]
                    if ready_to_activate(camp, todo):
                        camp["missed"] = todo
                        out = [epoch_frame(home, store, camp, 0) for _ in range(activate_repeats)]
                        camp.update(state="grace", activated_at=time.time())
                        epochs = (camp["epoch"], camp["from_epoch"])
                        log(f"keys: epoch {camp['epoch']} activated ({len(camp['confirmed'])} confirmed, "
                            f"{len(todo)} missed); grace window {camp['grace_s']:.0f} s")
                    else:
                        due = due_for_rekey(todo, sent_at, now, resend_s, batch)
                        if due:
                            first = {n for n in due if not camp["sent"].get(str(n))}
                            frames = rekey_frames(home, store, camp, due)
                            if topo is None or now - topo_at >= 60:
                                topo, topo_at = rekey_topology(store), now
                            mesh, phase = home.keys().mesh_keys()
                            routed, out = route_rekeys(list(zip(due, frames, strict=True)), first, topo, mesh, phase)
                            for n in due:
                                sent_at[n] = now
                            log(f"keys: re-key sent to {len(due)} node(s), {sum(map(len, routed.values()))} "
                                f"down source routes ({len(camp['confirmed'])} of {len(camp['targets'])} confirmed)")
                elif time.time() - camp["activated_at"] >= camp["grace_s"]:
                    out = [epoch_frame(home, store, camp, 1) for _ in range(activate_repeats)]
                    camp.update(state="done", ended_at=time.time())
                    epochs = (camp["epoch"], None)
                    log(f"keys: grace window of epoch {camp['epoch']} ended: the old key is refused everywhere"
                        + (f"; missed: {camp['missed']}" if camp["missed"] else ""))
            finally:
                store.close()
            fresh = load(home)  # an abort may have been written meanwhile: nothing more is sent
            if fresh is not None and fresh["state"] == "aborted":
                return fresh
            # frames first: killed before the save, the step is taken again on resume (a repeated
            # activation is harmless); saved first, a resumed campaign would never send it
            for gw, frames in routed.items():
                for dl in pack_downlinks(frames):
                    await client.publish(downlink_topic(home.net_id, gw), dl, qos=1)
            for dl in pack_downlinks(out):
                await client.publish(topic, dl, qos=1)
            save(home, camp)
            if epochs is not None:
                home.keys().set_epoch_state(*epochs)
            if camp["state"] == "done":
                return camp
            if t_end is not None and time.monotonic() > t_end:
                return camp
            await asyncio.sleep(poll_s)
