"""Throughput / delivery verification: what the rig offered vs what the store holds.

`delivery_report(home)` reads the fleet store and returns plain data: per node, the readings
stored against the sequence numbers issued (a node numbers its readings 0, 1, 2, ... so any
hole below its highest stored seq is a reading not (yet) stored), duplicates, gaps, and
end-to-end latency (reading time -> gateway receive time) overall and per hop count.
`verify_throughput(...)` drives a virtual rig at an offered rate and returns that report with
the rates. Latency has a resolution of one second: synthetic readings are created on a whole
second (firmware/node.py `load`) and the store keeps the gateway's receive time in whole seconds,
so a figure of 1.0 s means "within the second after it was made" (the discrete-event simulator,
`fleet sim des`, reports sub-second latencies). Sensor readings are stamped at the end of
their window.
"""
import time

FLAG_SYNTHETIC = 0x8000  # firmware/hal/simload.py marks the offered load with it


def _pct(sorted_vals, p):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * (len(sorted_vals) - 1)))))
    return round(sorted_vals[i], 3)


def delivery_report(home, exclude=()):
    """Return a dict: nodes, nodes_reporting, readings, issued, holes, duplicates_received,
    duplicates_stored, gaps_open, gaps_recovered, lost, min_per_node, latency_p50/p95/p99_s,
    per_hop {hops: {readings, latency_p50_s}}, rejects."""
    store = home.store()
    try:
        db = store.db
        nodes = db.execute("SELECT count(*) FROM nodes").fetchone()[0] - len(exclude)
        per_node = [r for r in db.execute("SELECT node, count(*), min(seq), max(seq) FROM readings GROUP BY node")
                    if r[0] not in exclude]
        dup_stored = db.execute(
            "SELECT count(*) FROM (SELECT node, seq FROM readings GROUP BY node, seq HAVING count(*) > 1)").fetchone()[0]
        dup_rx = db.execute("SELECT coalesce(sum(duplicates), 0) FROM node_state").fetchone()[0]
        gaps = {}
        for node, state, count in db.execute("SELECT node, state, count(*) FROM gaps GROUP BY node, state"):
            if node not in exclude:
                gaps[state] = gaps.get(state, 0) + count
        rows = db.execute("SELECT hops, rx_ts - ts, flags FROM readings WHERE rx_ts IS NOT NULL").fetchall()
        rejects = dict(db.execute("SELECT cause, count FROM rejects").fetchall()) if _has_table(db, "rejects") else {}
    finally:
        store.close()
    readings = sum(r[1] for r in per_node)
    issued = sum(r[3] + 1 for r in per_node)
    holes = issued - readings
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
        "holes": holes,
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


def _has_table(db, name):
    return db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


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
        end = time.monotonic() + settle_s
        rep = delivery_report(home)
        while time.monotonic() < end and (rep["holes"] or rep["gaps_open"]):
            time.sleep(2)
            rep = delivery_report(home)
    finally:
        rig.stop()
    elapsed = t_end - t0
    rep["offered_per_s"] = round(n / float(interval_s), 2)
    rep["delivered_per_s"] = round(rep["readings"] / elapsed, 2) if elapsed > 0 else None
    rep["duration_s"] = round(elapsed, 1)
    rep["loss"] = round(rep["holes"] / rep["issued"], 5) if rep["issued"] else None
    return rep
