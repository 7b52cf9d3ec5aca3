"""The fleet status service: what `fleet status` shows, as plain data.

`fleet_status(store, now_s, ...)` reads one row per node (Store.status_rows: registration
joined with the latest state; readings are never scanned) and returns

    {"summary": {...}, "nodes": [{...}, ...]}

with stable keys (see NODE_KEYS and SUMMARY_KEYS). The summary describes the nodes the filters
selected (all of them when there are none).

A node's state comes from the age of the last time it was heard (any frame):
    online   age <= stale_after_s
    stale    stale_after_s < age <= offline_after_s
    offline  age > offline_after_s
    never    registered (provisioned) but never heard: shown at once, not after a timeout.

PM2.5 is shown in ug/m3 with one decimal, with the category of Colombia's ICA and of the US
EPA AQI for the node's LATEST reading (indicative: both indices are defined on 24-h means).
"""
from operator import itemgetter

from fleet import aqi as aqimod
from fleet.errors import FleetError

STATES = ("online", "stale", "offline", "never")
SORTS = ("node", "pm25", "age", "hops")

NODE_KEYS = (
    "node", "role", "pole", "state", "firmware", "fw_seq", "pm25", "pm25_raw", "rh", "ica", "ica_index",
    "ica_level", "aqi", "aqi_category", "aqi_level", "hops", "parent", "link_etx", "path_cost", "rssi",
    "uptime_s", "heap_free", "backlog", "boot_count", "gateway", "last_heard", "age_s", "last_reading_ts",
    "last_seq", "delivered", "duplicates", "delivery_ratio", "gaps", "gaps_lost", "ota_state", "ota_progress",
    "heap_min", "radio_drops", "readings_lost", "pm25_1h", "coverage_1h", "pm25_24h", "coverage_24h",
    "ica_24h", "aqi_24h", "aqi_category_24h", "low_coverage_24h", "epoch",
)
# Means (raw PM2.5, no humidity correction) over the last complete UTC hour and the 24 before
# now. Coverage = readings / those a node makes at the firmware's default report interval
# (firmware/config.py report_interval_s = 300 s: 12 an hour); under 75 % the 24-hour figure is
# not a valid regulatory mean and is marked (low_coverage_24h).
EXPECTED_PER_HOUR = 3600 // 300
MIN_COVERAGE = 0.75
SUMMARY_KEYS = (
    "generated_at", "nodes", "online", "stale", "offline", "never_heard", "readings", "duplicates",
    "expected", "delivery_ratio", "gaps", "gaps_recovered", "gaps_lost", "rejects", "firmware", "categories",
    "aqi", "rh_correction", "stale_after_s", "offline_after_s", "revoked_nodes", "revoked_frames", "key_epoch",
    "behind_epoch",
)


def state_of(last_heard, now_s, stale_after_s, offline_after_s):
    """Return 'online', 'stale', 'offline' or 'never' for a node last heard at `last_heard`."""
    if last_heard is None:
        return "never"
    age = now_s - last_heard
    if age <= stale_after_s:
        return "online"
    if age <= offline_after_s:
        return "stale"
    return "offline"


# What the views read from the store (Store.status_rows fields).
_ROW_FIELDS = (
    "node", "role", "pole", "registered_fw", "last_heard", "last_seq", "last_ts", "pm25", "rh", "delivered",
    "duplicates", "min_seq", "parent", "link_etx", "path_cost", "uptime_s", "heap_free", "backlog", "gateway",
    "rssi", "hops", "fw_version", "fw_seq", "boot_count", "ota_state", "ota_progress", "heap_min", "radio_drops",
    "readings_lost", "epoch",
)


_NO_INDEX = ((None, None, None), (None, None, None))



def _node_row(r, now_s, stale_after_s, offline_after_s, rh_correction, gap_counts, index_cache, means):
    """A node's view as a tuple in NODE_KEYS order, then (expected, gaps recovered) for the
    summary. A tuple, not a dict: at 100,000 nodes a 56-key dict per node costs ~0.3 s, and the
    table never needs one (the JSON makes them: _as_dicts)."""
    # Unpacked by position (_ROW_FIELDS order): a name lookup per field costs ~40 % of the time
    # at 100k nodes.
    (node, role, pole, registered_fw, last_heard, last_seq, last_ts, raw, rh, delivered, duplicates, min_seq,
     parent, link_etx, path_cost, uptime_s, heap_free, backlog, gateway, rssi, hops, fw_version, fw_seq,
     boot_count, ota_state, ota_progress, heap_min, radio_drops, readings_lost, epoch) = r
    pm = raw if raw is None or rh_correction == "none" else aqimod.correct_pm25(rh_correction, raw, rh)
    if pm is None:
        ica, epa = _NO_INDEX
    else:
        # PM values repeat across thousands of nodes: compute each index once per value
        both = index_cache.get(pm)
        if both is None:
            both = index_cache[pm] = (aqimod.ica_pm25(pm), aqimod.epa_aqi_pm25(pm))
        ica, epa = both
    gaps = gap_counts.get(node)
    expected = (last_seq - min_seq + 1) if last_seq is not None and min_seq is not None else 0
    if last_heard is None:
        state, age_s = "never", None
    else:
        age_s = now_s - last_heard
        state = "online" if age_s <= stale_after_s else "stale" if age_s <= offline_after_s else "offline"
        if age_s < 0:  # clock skew between gateway and fleet host
            age_s = 0
    m = means.get(node)
    return (
        node, role, pole, state,
        fw_version or registered_fw,  # firmware
        fw_seq,
        None if pm is None else pm / 10,  # pm25: int / 10 prints with one decimal
        None if raw is None else raw / 10,  # pm25_raw
        rh,
        ica[2], ica[0], ica[1],  # ica, ica_index, ica_level
        epa[0], epa[2], epa[1],  # aqi, aqi_category, aqi_level
        hops, parent,
        # ETX and path cost travel in tenths (protocol: beacon cost); shown as ratios.
        None if link_etx is None else link_etx / 10,
        None if path_cost is None else path_cost / 10,
        rssi, uptime_s, heap_free, backlog, boot_count, gateway, last_heard, age_s,
        last_ts,  # last_reading_ts
        last_seq,
        delivered or 0,
        duplicates or 0,
        round(delivered / expected, 4) if expected else None,  # delivery_ratio
        gaps.get("open", 0) + gaps.get("requested", 0) if gaps else 0,  # gaps
        gaps.get("lost", 0) if gaps else 0,  # gaps_lost
        ota_state, ota_progress,
        # lowest free heap the node saw, the ESP-NOW frames its receive buffer dropped and the
        # readings it had to discard, since its last boot (None: not reported, firmware 1.0)
        heap_min, radio_drops, readings_lost,
    ) + (_NO_MEANS if m is None else _means(m, index_cache)) + (
        epoch,  # the mesh key epoch its last status reported (None: firmware before 1.2)
        expected, gaps.get("recovered", 0) if gaps else 0)


# Positions in a node row (NODE_KEYS order).
COL = {k: i for i, k in enumerate(NODE_KEYS)}
_STATE, _EPOCH, _NODE = COL["state"], COL["epoch"], COL["node"]
_N = len(NODE_KEYS)


def _as_dicts(rows):
    """The node rows as dicts with NODE_KEYS (the JSON and the service's `nodes`)."""
    keys = NODE_KEYS
    return [dict(zip(keys, t, strict=False)) for t in rows]  # not strict: the 2 summary figures stay out


# pm25_1h, coverage_1h, pm25_24h, coverage_24h, ica_24h, aqi_24h, aqi_category_24h, low_coverage_24h
_NO_MEANS = (None, 0.0, None, 0.0, None, None, None, True)


def _means(m, index_cache):
    """The 1-hour and 24-hour means of a node's (n_1h, sum_1h, n_24h, sum_24h), in _NO_MEANS order."""
    n1, s1, n24, s24 = m
    cov24 = min(1.0, n24 / (24 * EXPECTED_PER_HOUR))
    mean = round(s24 / n24 / 10, 1) if n24 else None
    if mean is None:
        ica = aqi = cat = None
    else:
        pm = int(round(mean * 10))
        both = index_cache.get(pm)
        if both is None:
            both = index_cache[pm] = (aqimod.ica_pm25(pm), aqimod.epa_aqi_pm25(pm))
        ica, aqi, cat = both[0][2], both[1][0], both[1][2]
    return (round(s1 / n1 / 10, 1) if n1 else None, round(min(1.0, n1 / EXPECTED_PER_HOUR), 3), mean,
            round(cov24, 3), ica, aqi, cat, cov24 < MIN_COVERAGE)


def _sort_key(sort):
    # Each sort puts first what an operator looks for: highest PM2.5, longest silence
    # (never-heard first), most hops. Unknown values go last; ties by node id.
    node = _NODE
    if sort == "node":
        return itemgetter(node)
    if sort in ("pm25", "hops"):
        i = COL[sort]
        return lambda n: (n[i] is None, -(n[i] or 0), n[node])
    if sort == "age":
        i = COL["age_s"]
        return lambda n: (n[i] is not None, -(n[i] or 0), n[node])
    raise FleetError(f"unknown sort {sort!r}; expected one of {', '.join(SORTS)}")


def fleet_status(store, now_s, stale_after_s=300, offline_after_s=1800, nodes=None, states=None, gateway=None,
                 sort="node", reverse=False, aqi="ica", rh_correction="none", limit=None, revoked=None, epoch=0,
                 as_rows=False):
    """Return {'summary': ..., 'nodes': [...]} for the nodes selected by `nodes` (ids),
    `states` (subset of STATES) and `gateway` (last gateway heard through), sorted by `sort`
    (SORTS; `reverse` flips) and cut to `limit` rows (the summary still counts all selected).
    `aqi` ('ica' | 'epa') picks the index the summary's `categories` count; both are in every
    node. `rh_correction` ('none' | 'epa2021' | 'kappa') corrects PM2.5 for humidity.
    `revoked`: the node ids of the keystore's revocation list (`fleet keys revoke`), listed in
    the summary with the count of their frames the collector refused. `epoch`: the mesh key
    epoch in force (`fleet keys rotate`): the summary lists the nodes (not revoked) whose last
    status reported an older one (behind_epoch: they missed a rotation and have not caught up).
    `as_rows`: {'summary': ..., 'rows': [tuple, ...]} instead of dicts, each tuple NODE_KEYS'
    values in order, then two figures the summary used (what the table reads; ~0.3 s less at
    100,000 nodes). Raises FleetError on inconsistent arguments."""
    if stale_after_s >= offline_after_s:
        raise FleetError(f"the stale threshold ({stale_after_s} s) must be below the offline threshold ({offline_after_s} s)")
    if aqi not in aqimod.SCHEMES:
        raise FleetError(f"unknown air-quality index {aqi!r}; expected one of {', '.join(aqimod.SCHEMES)}")
    if rh_correction not in aqimod.CORRECTIONS:
        raise FleetError(f"unknown humidity correction {rh_correction!r}; expected one of {', '.join(aqimod.CORRECTIONS)}")
    key = _sort_key(sort)
    for s in states or ():
        if s not in STATES:
            raise FleetError(f"unknown state {s!r}; expected some of {', '.join(STATES)}")

    rows = store.status_rows(nodes=list(nodes) if nodes else None, gateway=gateway, fields=_ROW_FIELDS,
                             tuples=True, ordered=False)  # sorted here
    gap_counts = store.gap_counts()
    recent = store.recent_means(now_s, nodes=list(nodes) if nodes else None)
    cache = {}
    views = [_node_row(r, now_s, stale_after_s, offline_after_s, rh_correction, gap_counts, cache, recent)
             for r in rows]
    del rows
    if states:
        wanted = set(states)
        views = [v for v in views if v[_STATE] in wanted]

    counts = {s: 0 for s in STATES}
    firmware = {}
    categories = {}
    out_of = set(revoked or ())
    behind = sorted(v[_NODE] for v in views if v[_EPOCH] is not None and v[_EPOCH] < epoch and v[_NODE] not in out_of)
    # Column by column: a builtin's loop per figure beats one Python loop over the nodes.
    for state in (v[_STATE] for v in views):
        counts[state] += 1
    for fw in (v[COL["firmware"]] or "unknown" for v in views):
        firmware[fw] = firmware.get(fw, 0) + 1
    ci = COL["ica" if aqi == "ica" else "aqi_category"]
    for cat in (v[ci] for v in views):
        if cat is not None:
            categories[cat] = categories.get(cat, 0) + 1

    def total(i):
        return sum(v[i] for v in views)

    readings, duplicates, gaps, gaps_lost = (total(COL[k]) for k in ("delivered", "duplicates", "gaps", "gaps_lost"))
    expected, gaps_recovered = total(_N), total(_N + 1)

    views.sort(key=key, reverse=reverse)
    if limit is not None:
        views = views[:limit]
    rejects = store.rejects()
    summary = {
        "generated_at": now_s,
        "nodes": sum(counts.values()),
        "online": counts["online"],
        "stale": counts["stale"],
        "offline": counts["offline"],
        "never_heard": counts["never"],
        "readings": readings,
        "duplicates": duplicates,
        "expected": expected,
        "delivery_ratio": round(readings / expected, 4) if expected else None,
        "gaps": gaps,
        "gaps_recovered": gaps_recovered,
        "gaps_lost": gaps_lost,
        "rejects": sum(r["count"] for r in rejects.values()),
        "firmware": dict(sorted(firmware.items())),
        "categories": categories,
        "aqi": aqi,
        "rh_correction": rh_correction,
        "stale_after_s": stale_after_s,
        "offline_after_s": offline_after_s,
        "revoked_nodes": sorted(revoked or ()),
        "revoked_frames": rejects.get("revoked", {}).get("count", 0),
        "key_epoch": epoch,
        "behind_epoch": behind,
    }
    if as_rows:
        return {"summary": summary, "rows": views}
    return {"summary": summary, "nodes": _as_dicts(views)}
