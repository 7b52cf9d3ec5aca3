"""Throughput / delivery verification: what the rig offered vs what the store holds.

`delivery_report(home, made=...)` reads the fleet store and returns plain data: per node, the
readings stored against what the nodes themselves say they made, duplicates, gaps, and
end-to-end latency (reading time -> gateway receive time) overall and per hop count.

Two counts, kept apart on purpose:
- `holes`: seqs missing below each node's highest STORED seq (a node numbers its readings 0, 1,
  2, ...). It comes from the store alone, so it cannot see readings lost after the last one
  stored: a collector that dropped every reading after each node's 18th has no holes.
- `made` / `missing`: the independent count. Every node prints one console line per reading it
  numbers ("node reading seq=N ..." for a sensor reading, "load reading seq=N" for an offered
  one, firmware/hal/simload.py); `made_by_node(consoles)` reads those lines back from the virtual
  nodes' console logs (the rig owns their paths: NodeProc.log_path), so `missing` counts each
  reading a node made that is not stored: lost, or still in flight at the end of the run
  (readings made after the snapshot passed as `made` are not asked for). Without consoles (a
  real rig) `made` is None and only `holes` is known; `issued_source` says which count
  `issued` is.
`verify_throughput(...)` drives a virtual rig at an offered rate and returns that report with
the rates. Latency has a resolution of one second: synthetic readings are created on a whole
second (firmware/node.py `load`) and the store keeps the gateway's receive time in whole seconds,
so a figure of 1.0 s means "within the second after it was made" (the discrete-event simulator,
`fleet sim des`, reports sub-second latencies). Sensor readings are stamped at the end of
their window.
"""
import re
import time

from protocol.frames import FLAG_SYNTHETIC

# The console line a node prints for every reading it numbers (firmware/node.py sensor / load).
_MADE_LINE = re.compile(rb"^(?:node|load) reading seq=(\d+)\b", re.M)


def made_by_node(consoles):
    """Return {node: set of seqs} the nodes say they made, read from their console logs
    (`consoles`: {node: path}, e.g. {n: p.log_path for n, p in rig.nodes.items()}). A log that
    cannot be read counts as made nothing (its node then shows every stored reading as
    `unexplained`)."""
    out = {}
    for node, path in consoles.items():
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            data = b""
        out[node] = {int(m.group(1)) for m in _MADE_LINE.finditer(data)}
    return out


def _pct(sorted_vals, p):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * (len(sorted_vals) - 1)))))
    return round(sorted_vals[i], 3)


def delivery_report(home, exclude=(), made=None):
    """Return a dict: nodes, nodes_reporting, readings, issued, issued_source, holes, made,
    missing, missing_by_node, unexplained, duplicates_received, duplicates_stored, gaps_open,
    gaps_recovered, lost, min_per_node, latency_p50/p95/p99_s, per_hop {hops: {readings,
    latency_p50_s}}, rejects.

    made: None, or {node: set of seqs} each node made (`made_by_node`), taken as a snapshot:
    `missing` = made but not stored (lost or in flight), `missing_by_node` {node: count},
    `unexplained` = stored readings no node says it made (forged, or a console line lost).
    `issued` is then that independent count (issued_source "node consoles"); without `made`
    it is the store's own Σ(highest stored seq + 1) (issued_source "store"), which cannot show
    a loss after a node's last stored reading."""
    store = home.store()
    try:
        c = store.delivery_counts(with_seqs=made is not None)
    finally:
        store.close()
    nodes = c["registered"] - len(exclude)
    per_node = [r for r in c["per_node"] if r[0] not in exclude]
    stored = {n: v for n, v in c.get("seqs", {}).items() if n not in exclude}
    dup_stored = c["stored_twice"]
    dup_rx = c["duplicates_received"]
    gaps = {}
    for node, by_state in c["gaps"].items():
        if node not in exclude:
            for state, count in by_state.items():
                gaps[state] = gaps.get(state, 0) + count
    rows = c["latency"]
    rejects = c["rejects"]
    readings = sum(r[1] for r in per_node)
    holes = sum(r[3] + 1 for r in per_node) - readings
    missing_by_node = {}
    unexplained = 0
    if made is not None:
        for node, seqs in made.items():
            if node in exclude:
                continue
            have = stored.get(node, set())
            if seqs - have:
                missing_by_node[node] = len(seqs - have)
            top = max(seqs) if seqs else -1
            unexplained += len({s for s in have if s <= top} - seqs)
        unexplained += sum(len(v) for n, v in stored.items() if n not in made)
        issued = sum(len(v) for n, v in made.items() if n not in exclude)
    else:
        issued = holes + readings
    synthetic = [r for r in rows if (r[2] or 0) & FLAG_SYNTHETIC]
    use = synthetic or rows
    lat = sorted(max(0.0, float(r[1])) for r in use)
    per_hop = {}
    for h, d, _f in use:
        per_hop.setdefault(h, []).append(max(0.0, float(d)))
    return {
        "nodes": nodes,
        "nodes_reporting": len(per_node),
        "readings": readings,
        "issued": issued,
        "issued_source": "node consoles" if made is not None else "store",
        "holes": holes,
        "made": None if made is None else issued,
        "missing": None if made is None else sum(missing_by_node.values()),
        "missing_by_node": missing_by_node,
        "unexplained": None if made is None else unexplained,
        "duplicates_received": dup_rx,
        "duplicates_stored": dup_stored,
        "gaps_open": gaps.get("open", 0) + gaps.get("requested", 0),
        "gaps_recovered": gaps.get("recovered", 0),
        "lost": gaps.get("lost", 0),
        "min_per_node": min((r[1] for r in per_node), default=0),
        "latency_p50_s": _pct(lat, 50),
        "latency_p95_s": _pct(lat, 95),
        "latency_p99_s": _pct(lat, 99),
        "per_hop": {int(h): {"readings": len(v), "latency_p50_s": _pct(sorted(v), 50)}
                    for h, v in sorted(per_hop.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))
                    if h is not None},
        "rejects": rejects,
    }


def verify_throughput(home, topology, rate_per_s, duration_s, settle_s=60, options=None, log=None):
    """Run a virtual rig offering `rate_per_s` readings/s in total for `duration_s`, let it
    settle (gap repair) for up to settle_s, and return the delivery report plus offered and
    delivered rates. Stops every process it started."""
    from fleet.sim.handle import RigHandle
    from fleet.sim.rig import RigOptions

    n = len(topology.nodes)
    interval_s = max(1, int(round(n / float(rate_per_s))))
    opts = options or RigOptions()
    opts.offered_interval_s = interval_s
    rig = RigHandle(home, topology, opts, log=log)
    try:
        rig.start()
        t0 = time.time()
        time.sleep(duration_s)
        t_end = time.time()
        # what the nodes made by now (their own console lines): each of these must be stored
        made = made_by_node({nid: np.log_path for nid, np in rig.rig.nodes.items()})
        end = time.monotonic() + settle_s
        rep = delivery_report(home, made=made)
        while time.monotonic() < end and (rep["holes"] or rep["gaps_open"] or rep["missing"]):
            time.sleep(2)
            rep = delivery_report(home, made=made)
    finally:
        rig.stop()
    elapsed = t_end - t0
    rep["offered_per_s"] = round(n / float(interval_s), 2)
    rep["delivered_per_s"] = round(rep["readings"] / elapsed, 2) if elapsed > 0 else None
    rep["duration_s"] = round(elapsed, 1)
    # made but not stored after the settle time: lost, or still in flight at the end
    rep["loss"] = round(rep["missing"] / rep["issued"], 5) if rep["issued"] else None
    return rep
