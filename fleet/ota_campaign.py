"""OTA campaigns: push a signed bundle into the mesh and roll it out in stages (fleet side).

Theory of operation
- Seeding: the bundle goes to every gateway over MQTT, topic redmesh/<net>/ota, one unit per
  message (firmware/ota_seed.py: the signed manifest, then each page in order), published again
  every `seed_every_s` while the campaign runs, so a gateway that (re)connects late gets it.
  Gateways disseminate it Deluge-style; every node fetches, verifies and stores it.
- Targeting and order: dissemination is broadcast, so installing is gated per node. The
  campaign allows a node by a command OP_SET "ota_allow" <bseq>, HMAC'd with that node's key
  and flooded down (firmware/ota_node.py). Waves: `canary` nodes first (leaves), then the other
  nodes by their height in the collection tree (leaves, then relays whose children are done:
  parent info from the store's node_state), gateways last — so a bad version cannot cut off
  its own fix. A wave is allowed when the previous one is done (every node confirmed, rolled
  back or refused) or its wave_timeout_s ran out. Allows are re-sent while a node has not
  started its trial.
- Halting: when rollbacks reach `halt_after`, the campaign halts (no further allows). `abort`
  does the same by hand. Nodes already allowed may still install; the others stay as they are.
- State: <home>/ota/campaign.json (written atomically by the push process; abort flips its
  state). Per-node states come from the status frames the collector stores (fw_seq, ota_state,
  ota_progress) and the "ota" replies it records as events (the reason of a roll back).
"""
import asyncio
import json
import os
import time

from fleet import ota_bundle
from fleet.errors import FleetError

CAMPAIGN_FILE = "campaign.json"
STATES = ("pending", "receiving", "verifying", "trial", "confirmed", "rolled back", "refused")
TERMINAL = ("confirmed", "rolled back", "refused")
ACTIVE_STATES = ("receiving", "verifying", "trial")  # a node working on the campaign's bundle
# ota_state codes in status frames (firmware/ota.py 0..2, firmware/slots.py 3..6)
_CODE = {1: "receiving", 2: "verifying", 3: "trial", 4: "confirmed", 5: "rolled back", 6: "refused"}


def campaign_path(home):
    return os.path.join(home.path, ota_bundle.OTA_DIR, CAMPAIGN_FILE)


def load_campaign(home):
    """Return the campaign dict of this home, or None when there is none."""
    try:
        with open(campaign_path(home), encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise FleetError(f"cannot read {campaign_path(home)} ({e}): remove it to start afresh") from None


def save_campaign(home, camp):
    path = campaign_path(home)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(camp, f, sort_keys=True)
    os.replace(tmp, path)


# ---- planning -------------------------------------------------------------------------------


def resolve_targets(rows, to):
    """Node ids named by `to`: 'all', a comma list of ids, or a group ('gateways', 'nodes', or a
    pole prefix). Raises FleetError when nothing matches."""
    known = {r["node"]: r for r in rows}
    if to == "all":
        ids = sorted(known)
    elif all(p.strip().isdigit() for p in to.split(",")):
        ids = sorted({int(p) for p in to.split(",")})
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise FleetError(f"unknown node(s) {unknown}: `fleet status` lists the fleet's nodes")
    elif to in ("gateways", "nodes"):
        ids = sorted(n for n, r in known.items() if (r["role"] == "gateway") == (to == "gateways"))
    else:
        ids = sorted(n for n, r in known.items() if (r["pole"] or "").startswith(to))
    if not ids:
        raise FleetError(f"--to {to!r} matches no node: use all, ids like 3,5,8, gateways, nodes or a pole prefix")
    return ids


def plan_waves(rows, targets, canary=0):
    """Return the waves (lists of node ids): canary leaves first, then non-gateway nodes by
    height in the collection tree (0 = leaf), gateways last. rows: store status rows."""
    info = {r["node"]: dict(r) for r in rows}
    children = {}
    for r in rows:
        p = r["parent"]
        if p:
            children.setdefault(p, []).append(r["node"])

    height = {}

    def h(n, seen=()):
        if n in height:
            return height[n]
        if n in seen:
            return 0  # a loop in stale parent data: stop
        kids = children.get(n, [])
        height[n] = v = 0 if not kids else 1 + max(h(k, seen + (n,)) for k in kids)
        return v

    gws = [n for n in targets if info.get(n) is not None and info[n]["role"] == "gateway"]
    if any(not (info.get(n) or {}).get("parent") for n in targets if n not in gws):
        # some node has not reported its parent yet: order by hops instead (deepest first)
        deepest = max([(info.get(n) or {}).get("hops") or 0 for n in targets] + [0])
        height = {n: deepest - ((info.get(n) or {}).get("hops") or 0) for n in targets}
    rest = sorted((n for n in targets if n not in gws),
                  key=lambda n: (h(n), -(info[n]["hops"] or 0) if n in info else 0, n))
    waves = []
    if canary:
        waves.append(rest[:canary])
        rest = rest[canary:]
    by_h = {}
    for n in rest:
        by_h.setdefault(h(n), []).append(n)
    waves.extend(by_h[k] for k in sorted(by_h))
    if gws:
        waves.append(sorted(gws))
    return [w for w in waves if w]


def classify(row, bseq):
    """Return (state, progress %) of a node for a campaign of `bseq`, from its status row."""
    if row is None:
        return "pending", 0
    fw_seq = row["fw_seq"] or 0
    code = row["ota_state"] or 0
    if fw_seq >= bseq:
        return ("trial" if code == 3 else "confirmed"), 100
    st = _CODE.get(code)
    if st in ("confirmed", "trial", None):
        return "pending", 0
    return st, (row["ota_progress"] or 0) if st == "receiving" else (100 if st == "verifying" else 0)


def _reasons(store, since):
    """node -> (what, bseq, reason) of the "ota" roll-back and refusal replies recorded since
    `since` (a "bad_page" report is an event for the operator, not a node's outcome)."""
    out = {}
    for ev in store.events(since=since, kind="reply", limit=100000):
        try:
            d = json.loads(ev["detail"] or "{}")
        except ValueError:
            continue
        res = d.get("result") or []
        if len(res) >= 4 and res[0] == "ota" and res[1] in ("rolled_back", "refused"):
            out[ev["node"]] = (res[1], res[2], res[3])
    return out


def campaign_status(home):
    """`fleet ota status`: {"campaign": {...}, "nodes": [{node, role, version, fw_seq, state,
    progress, reason}], "totals": {state: count}}. Raises FleetError when there is no campaign."""
    camp = load_campaign(home)
    if camp is None:
        raise FleetError("no OTA campaign in this fleet home: start one with `fleet ota push BUNDLE`")
    store = home.store()
    try:
        rows = {r["node"]: r for r in store.status_rows(nodes=camp["targets"])}
        reasons = _reasons(store, camp["started_at"] - 5)
    finally:
        store.close()
    nodes = []
    totals = {s: 0 for s in STATES}
    allowed = set(camp.get("allowed", {}))
    active = set(camp.get("active", []))
    for n in camp["targets"]:
        r = rows.get(n)
        st, pct = classify(r, camp["bseq"])
        why = reasons.get(n)
        if why is not None and why[1] != camp["bseq"]:
            why = None  # about another bundle
        if st in ACTIVE_STATES:
            active.add(n)
        elif st in ("rolled back", "refused") and why is None and n not in active:
            # A status frame's ota_state names no bundle: a node that rolled back or refused
            # in an earlier campaign keeps saying so until this bundle reaches it. Counted for
            # this campaign only with a reply naming this bseq, or after the node was seen
            # working on it.
            st, pct = "pending", 0
        totals[st] += 1
        nodes.append({"node": n, "role": r["role"] if r is not None else None,
                      "version": r["fw_version"] if r is not None else None,
                      "fw_seq": r["fw_seq"] if r is not None else None, "state": st, "progress": pct,
                      "allowed": str(n) in allowed, "reason": why[2] if why and st in ("rolled back", "refused") else None})
    c = {k: camp[k] for k in ("bseq", "version", "state", "started_at", "canary", "halt_after", "wave", "waves",
                              "reason") if k in camp}
    c["targets"] = len(camp["targets"])
    c["elapsed_s"] = int((camp.get("ended_at") or time.time()) - camp["started_at"])
    return {"campaign": c, "nodes": nodes, "totals": totals}


def abort(home):
    """`fleet ota abort`: halt the campaign (no further allows). Returns the campaign dict."""
    camp = load_campaign(home)
    if camp is None:
        raise FleetError("no OTA campaign in this fleet home: nothing to abort")
    if camp["state"] in ("done", "aborted", "halted"):
        raise FleetError(f"the campaign is already {camp['state']}: nothing to abort")
    camp["state"] = "aborted"
    camp["reason"] = "aborted by the operator"
    camp["ended_at"] = time.time()
    save_campaign(home, camp)
    return camp


# ---- running ----------------------------------------------------------------------------------


def seed_messages(bundle):
    """The MQTT payloads that seed `bundle` (manifest first, then the pages in order)."""
    from firmware import ota_seed

    b = bundle.manifest.bseq
    out = [ota_seed.encode(ota_seed.KIND_MANIFEST, b, 0, 1, bundle.signed_manifest)]
    n = len(bundle.pages)
    out.extend(ota_seed.encode(ota_seed.KIND_PAGE, b, i, n, p) for i, p in enumerate(bundle.pages))
    return out


def allow_frames(home, store, nodes, bseq):
    """Air frames of OP_SET ota_allow <bseq> for each node (HMAC'd with its node key)."""
    import protocol

    ks = home.keys()
    mesh, phase = ks.mesh_keys()  # hop-tagged in the key epoch in force (fleet keys rotate)
    epoch = ks.epoch_state()["epoch"]  # and authenticated with the node key of that epoch
    out = []
    for n in nodes:
        cmd = protocol.Command(target=n, cseq=store.next_cseq(n), op=protocol.OP_SET, args=["ota_allow", bseq])
        out.append(protocol.encode(cmd, mesh, ks.node_key_at(n, epoch), phase=phase))
    return out


def pack_downlinks(frames, max_bytes=240):
    """Encode air frames into as few Downlink messages as fit: the gateway checks a downlink
    message against the radio's 250-byte bound (measured: 8 allow commands make 285 bytes)."""
    import protocol

    out, cur = [], []
    for fb in frames:
        if cur and len(protocol.encode(protocol.Downlink(cur + [fb]))) > max_bytes:
            out.append(protocol.encode(protocol.Downlink(cur)))
            cur = []
        cur.append(fb)
    if cur:
        out.append(protocol.encode(protocol.Downlink(cur)))
    return out


def start(home, bundle_path, to="all", canary=0, halt_after=1, wave_timeout_s=900):
    """Check the bundle against the fleet key, plan the waves and write a new campaign (state
    running). Returns (campaign dict, Bundle). Raises FleetError."""
    pub = home.keys().public_key()
    bundle = ota_bundle.read_bundle(bundle_path, pub)  # refuses a bad signature or damaged page
    old = load_campaign(home)
    if old is not None and old["state"] == "running":
        raise FleetError(f"campaign for bseq {old['bseq']} is still running: `fleet ota abort` it first")
    store = home.store()
    try:
        rows = store.status_rows(fields=("node", "role", "pole", "parent", "hops", "fw_seq"))
    finally:
        store.close()
    revoked = home.keys().revoked()
    rows = [r for r in rows if r["node"] not in revoked]  # no command to a revoked node (fleet keys revoke)
    targets = resolve_targets(rows, to)
    m = bundle.manifest
    if all((r["fw_seq"] or 0) >= m.bseq for r in rows if r["node"] in targets):
        raise FleetError(f"every target already runs bseq {m.bseq} or later (nodes refuse older bundles): "
                         f"build a new one with `fleet ota build`")
    if canary < 0 or canary > len(targets):
        raise FleetError(f"--canary must be 0..{len(targets)} (the targets), got {canary}")
    camp = {"bseq": m.bseq, "version": m.version, "bundle": os.path.abspath(bundle_path), "to": to,
            "targets": targets, "canary": canary, "halt_after": halt_after, "waves": plan_waves(rows, targets, canary),
            "wave": -1, "wave_started": None, "allowed": {}, "state": "running", "started_at": time.time(),
            "wave_timeout_s": wave_timeout_s, "reason": None}
    save_campaign(home, camp)
    return camp, bundle


async def run(home, bundle, broker_url=None, log=None, poll_s=2.0, seed_every_s=20.0, resend_allow_s=40.0,
              timeout_s=None):
    """Drive the campaign of `home` (see start) until done, halted, aborted or timeout_s.
    Returns the final campaign dict."""
    import aiomqtt

    from fleet.collector_mqtt import parse_broker_url
    from protocol.envelope import downlink_topic, ota_topic

    log = log or (lambda msg: None)
    host, port = parse_broker_url(broker_url or home.broker_url)
    net = home.net_id
    seeds = seed_messages(bundle)
    bseq = bundle.manifest.bseq
    t_end = None if timeout_s is None else time.monotonic() + timeout_s
    last_seed = last_allow = -1e9
    async with aiomqtt.Client(host, port, identifier=f"fleet-ota-{os.getpid()}") as client:
        while True:
            camp = load_campaign(home)
            if camp is None or camp["state"] != "running":
                return camp
            now = time.monotonic()
            if now - last_seed >= seed_every_s:
                for p in seeds:
                    await client.publish(ota_topic(net), p, qos=1)
                last_seed = now
            status = campaign_status(home)
            by_node = {n["node"]: n for n in status["nodes"]}
            # nodes seen working on this bundle: their later roll back or refusal is this
            # campaign's even if the reply naming it was lost (see campaign_status)
            active = set(camp.get("active", []))
            seen = active | {n["node"] for n in status["nodes"] if n["state"] in ACTIVE_STATES}
            if seen != active:
                fresh = load_campaign(home)  # abort may have been written meanwhile
                if fresh is not None and fresh["state"] != "running":
                    return fresh
                camp["active"] = sorted(seen)
                save_campaign(home, camp)
            rollbacks = sum(1 for n in status["nodes"] if n["state"] == "rolled back")
            if rollbacks >= camp["halt_after"]:
                camp.update(state="halted", ended_at=time.time(),
                            reason=f"{rollbacks} node(s) rolled back (halt after {camp['halt_after']})")
                save_campaign(home, camp)
                log(f"ota: campaign halted: {camp['reason']}")
                return camp
            if all(n["state"] in TERMINAL for n in status["nodes"]):
                camp.update(state="done", ended_at=time.time())
                save_campaign(home, camp)
                log(f"ota: campaign done: {status['totals']}")
                return camp
            w = camp["wave"]
            wave_done = w < 0 or all(by_node[n]["state"] in TERMINAL for n in camp["waves"][w])
            timed_out = w >= 0 and time.time() - camp["wave_started"] > camp["wave_timeout_s"]
            to_allow = []
            if (wave_done or timed_out) and w + 1 < len(camp["waves"]):
                camp["wave"] = w = w + 1
                camp["wave_started"] = time.time()
                to_allow = list(camp["waves"][w])
                log(f"ota: wave {w + 1}/{len(camp['waves'])}: allowing nodes {to_allow}")
                last_allow = now
            elif now - last_allow >= resend_allow_s:
                to_allow = [int(n) for n in camp["allowed"]
                            if by_node[int(n)]["state"] in ("pending", "receiving", "verifying")]
                last_allow = now
            if to_allow:
                store = home.store()
                try:
                    frames = allow_frames(home, store, to_allow, bseq)
                finally:
                    store.close()
                for dl in pack_downlinks(frames):
                    await client.publish(downlink_topic(net, None), dl, qos=1)
                for n in to_allow:
                    camp["allowed"].setdefault(str(n), time.time())
                fresh = load_campaign(home)  # abort may have been written meanwhile
                if fresh is not None and fresh["state"] != "running":
                    return fresh
                save_campaign(home, camp)
            if t_end is not None and time.monotonic() > t_end:
                return camp
            await asyncio.sleep(poll_s)
