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


_NO_GAPS = {}


def _node_view(r, now_s, stale_after_s, offline_after_s, rh_correction, gap_counts, index_cache, means):
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
    gaps = gap_counts.get(node, _NO_GAPS)
    expected = (last_seq - min_seq + 1) if last_seq is not None and min_seq is not None else 0
    if last_heard is None:
        state, age_s = "never", None
    else:
        age_s = now_s - last_heard
        state = "online" if age_s <= stale_after_s else "stale" if age_s <= offline_after_s else "offline"
        if age_s < 0:  # clock skew between gateway and fleet host
            age_s = 0
    m = _means(means.get(node), index_cache)
    return {
        "node": node,
        "role": role,
        "pole": pole,
        "state": state,
        "firmware": fw_version or registered_fw,
        "fw_seq": fw_seq,
        "pm25": None if pm is None else pm / 10,  # int / 10 prints with one decimal
        "pm25_raw": None if raw is None else raw / 10,
        "rh": rh,
        "ica": ica[2],
        "ica_index": ica[0],
        "ica_level": ica[1],
        "aqi": epa[0],
        "aqi_category": epa[2],
        "aqi_level": epa[1],
        "hops": hops,
        "parent": parent,
        # ETX and path cost travel in tenths (protocol: beacon cost); shown as ratios.
        "link_etx": None if link_etx is None else link_etx / 10,
        "path_cost": None if path_cost is None else path_cost / 10,
        "rssi": rssi,
        "uptime_s": uptime_s,
        "heap_free": heap_free,
        "backlog": backlog,
        "boot_count": boot_count,
        "gateway": gateway,
        "last_heard": last_heard,
        "age_s": age_s,
        "last_reading_ts": last_ts,
        "last_seq": last_seq,
        "delivered": delivered or 0,
        "duplicates": duplicates or 0,
        "delivery_ratio": round(delivered / expected, 4) if expected else None,
        "gaps": gaps.get("open", 0) + gaps.get("requested", 0) if gaps else 0,
        "gaps_lost": gaps.get("lost", 0) if gaps else 0,
        "ota_state": ota_state,
        "ota_progress": ota_progress,
        # lowest free heap the node saw, the ESP-NOW frames its receive buffer dropped and the
        # readings it had to discard, since its last boot (None: not reported, firmware 1.0)
        "heap_min": heap_min,
        "radio_drops": radio_drops,
        "readings_lost": readings_lost,
        "epoch": epoch,  # the mesh key epoch its last status reported (None: firmware before 1.2)
        "_expected": expected,
        "_gaps_recovered": gaps.get("recovered", 0) if gaps else 0,
        "pm25_1h": m[0],
        "coverage_1h": m[1],
        "pm25_24h": m[2],
        "coverage_24h": m[3],
        "ica_24h": m[4],
        "aqi_24h": m[5],
        "aqi_category_24h": m[6],
        "low_coverage_24h": m[7],
    }


# pm25_1h, coverage_1h, pm25_24h, coverage_24h, ica_24h, aqi_24h, aqi_category_24h, low_coverage_24h
_NO_MEANS = (None, 0.0, None, 0.0, None, None, None, True)


def _means(m, index_cache):
    """The 1-hour and 24-hour means of a node's (n_1h, sum_1h, n_24h, sum_24h), in _NO_MEANS order."""
    if m is None:
        return _NO_MEANS
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
    if sort == "node":
        return lambda n: n["node"]
    if sort == "pm25":
        return lambda n: (n["pm25"] is None, -(n["pm25"] or 0), n["node"])
    if sort == "age":
        return lambda n: (n["age_s"] is not None, -(n["age_s"] or 0), n["node"])
    if sort == "hops":
        return lambda n: (n["hops"] is None, -(n["hops"] or 0), n["node"])
    raise FleetError(f"unknown sort {sort!r}; expected one of {', '.join(SORTS)}")


def fleet_status(store, now_s, stale_after_s=300, offline_after_s=1800, nodes=None, states=None, gateway=None,
                 sort="node", reverse=False, aqi="ica", rh_correction="none", limit=None, revoked=None, epoch=0):
    """Return {'summary': ..., 'nodes': [...]} for the nodes selected by `nodes` (ids),
    `states` (subset of STATES) and `gateway` (last gateway heard through), sorted by `sort`
    (SORTS; `reverse` flips) and cut to `limit` rows (the summary still counts all selected).
    `aqi` ('ica' | 'epa') picks the index the summary's `categories` count; both are in every
    node. `rh_correction` ('none' | 'epa2021' | 'kappa') corrects PM2.5 for humidity.
    `revoked`: the node ids of the keystore's revocation list (`fleet keys revoke`), listed in
    the summary with the count of their frames the collector refused. `epoch`: the mesh key
    epoch in force (`fleet keys rotate`): the summary lists the nodes (not revoked) whose last
    status reported an older one (behind_epoch: they missed a rotation and have not caught up).
    Raises FleetError on inconsistent arguments."""
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

    rows = store.status_rows(nodes=list(nodes) if nodes else None, gateway=gateway, fields=_ROW_FIELDS)
    gap_counts = store.gap_counts()
    recent = store.recent_means(now_s, nodes=list(nodes) if nodes else None)
    cache = {}
    views = [_node_view(r, now_s, stale_after_s, offline_after_s, rh_correction, gap_counts, cache, recent)
             for r in rows]
    if states:
        wanted = set(states)
        views = [v for v in views if v["state"] in wanted]

    counts = {s: 0 for s in STATES}
    firmware = {}
    categories = {}
    readings = duplicates = expected = gaps = gaps_lost = gaps_recovered = 0
    cat_key = "ica" if aqi == "ica" else "aqi_category"
    out_of = set(revoked or ())
    behind = sorted(v["node"] for v in views if v["epoch"] is not None and v["epoch"] < epoch
                    and v["node"] not in out_of)
    for v in views:
        counts[v["state"]] += 1
        fw = v["firmware"] or "unknown"
        firmware[fw] = firmware.get(fw, 0) + 1
        cat = v[cat_key]
        if cat is not None:
            categories[cat] = categories.get(cat, 0) + 1
        readings += v["delivered"]
        duplicates += v["duplicates"]
        expected += v.pop("_expected")
        gaps += v["gaps"]
        gaps_lost += v["gaps_lost"]
        gaps_recovered += v.pop("_gaps_recovered")

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
    return {"summary": summary, "nodes": views}
