"""The mesh router's tunables (firmware/mesh.py Router): their defaults and checks.

Router() reads them once, through configure(), and a board unloads this module after (its
dict, its ~25 names of more than 10 characters and this code would hold ~2 KB of a 112 KB heap
for good). Times in ms, costs/ETX in tenths."""
from firmware.trickle import Trickle
from protocol.frames import COST_INFINITE

# Router(params={...}) overrides any of them.
DEFAULTS = {
    "beacon_imin_ms": 1000,  # Trickle Imin
    "beacon_doublings": 9,  # Imax = 1 s * 2**9 = 512 s
    "beacon_k": 0,  # Trickle redundancy; 0 = never suppress (link estimation needs beacons)
    "max_hops": 48,  # TTL (= the longest source route, protocol/routed_scan.py MAX_ROUTE)
    "queue_len": 16,  # forwarding queue, frames
    "max_neighbors": 16,
    "dup_cache": 32,  # (origin, seq, type) entries
    "dup_memory_ms": 60000,
    "flood_cache": 16,  # (target, cseq) entries
    "flood_memory_ms": 600000,
    "flood_delay_ms": 40,  # rebroadcast after 1..this ms
    "flood_repeats": 1,
    "tries_per_parent": 3,  # consecutive failures before the link is penalised
    "max_tries": 9,  # sends per frame, across re-routes
    "retry_backoff_ms": 30,  # x tries (max 4), plus 0..this jitter
    "send_timeout_ms": 1000,  # no on_send_done by then = failure
    "switch_margin": 15,  # hysteresis: 1.5 ETX
    "switch_pct": 10,  # ... plus this percentage of the candidate's path cost
    "worse_pct": 10,  # a path worse than its best by switch_margin + this %: switch_pct is dropped
    "min_heard": 3,  # beacons heard before a neighbour may replace a working parent
    "max_link_etx": 100,  # worse links are not used
    "max_path_cost": 3000,  # a path this expensive is no route (bounds count-to-infinity)
    "neighbor_timeout_ms": 0,  # 0 = 4.5 x Imax
    "loop_hold_ms": 3000,  # a parent caught in a loop is not chosen again for this long
    "cost_reset_delta": 10,  # own cost rise that resets Trickle (a parent of earlier firmware, no root)
    "cost_wake_delta": 10,  # own cost change that is news: one beacon soon (Trickle wake)
    "weak_rssi_dbm": -80,  # a new neighbour heard weaker starts at ETX_INIT_WEAK
    "root_seq_ms": 60000,  # a gateway's beacons carry a sequence number one higher per this
    "fresh_wait_ms": 20000,  # no route: any neighbour beaconing this long after ours counts
    "poison_ms": 0,  # a gateway stopped answering: its old paths are not taken for this long (0: off)
}


def configure(r, params):
    """Set router `r`'s tunables from DEFAULTS and the overrides `params` (a dict, or None);
    r.rng must be set. Returns the merged parameters. Raises ValueError on an unknown or bad parameter."""
    p = dict(DEFAULTS)
    if params:
        for k in params:
            if k not in p:
                raise ValueError("unknown mesh parameter %r (known: %s)" % (k, ", ".join(sorted(p))))
            p[k] = params[k]
    for k in p:
        v = p[k]
        if not isinstance(v, int) or isinstance(v, bool) or (v < 0 and k != "weak_rssi_dbm"):
            raise ValueError("mesh parameter %s must be an int >= 0, got %r" % (k, v))
    if p["queue_len"] < 1 or p["max_neighbors"] < 1 or p["dup_cache"] < 1 or p["flood_cache"] < 1:
        raise ValueError("queue_len, max_neighbors, dup_cache and flood_cache must be >= 1")
    if p["tries_per_parent"] < 1 or p["max_tries"] < 1 or p["max_hops"] < 1 or p["max_hops"] > 255:
        raise ValueError("tries_per_parent, max_tries must be >= 1 and max_hops 1..255")
    r.trickle = Trickle(p["beacon_imin_ms"], p["beacon_doublings"], p["beacon_k"], r.rng)
    r.imin_ms = p["beacon_imin_ms"]
    r.max_hops = p["max_hops"]
    r.queue_len = p["queue_len"]
    r.max_neighbors = p["max_neighbors"]
    r.dup_memory_ms = p["dup_memory_ms"]
    r.flood_memory_ms = p["flood_memory_ms"]
    r.flood_delay_ms = max(1, p["flood_delay_ms"])
    r.flood_repeats = p["flood_repeats"]
    r.tries_per_parent = p["tries_per_parent"]
    r.max_tries = p["max_tries"]
    r.retry_backoff_ms = p["retry_backoff_ms"]
    r.send_timeout_ms = p["send_timeout_ms"]
    r.switch_margin = p["switch_margin"]
    r.switch_pct = p["switch_pct"]
    r.worse_pct = p["worse_pct"]
    r.min_heard = p["min_heard"]
    r.max_link_etx = p["max_link_etx"]
    r.max_path_cost = min(p["max_path_cost"], COST_INFINITE - 1)
    r.neighbor_timeout_ms = p["neighbor_timeout_ms"] or (r.trickle.imax_ms * 9) // 2
    r.loop_hold_ms = p["loop_hold_ms"]
    r.cost_reset_delta = p["cost_reset_delta"]
    r.cost_wake_delta = p["cost_wake_delta"]
    r.weak_rssi_dbm = p["weak_rssi_dbm"]
    r.root_seq_ms = max(1000, p["root_seq_ms"])
    r.fresh_wait_ms = p["fresh_wait_ms"]
    r.poison_ms = p["poison_ms"]
    return p
