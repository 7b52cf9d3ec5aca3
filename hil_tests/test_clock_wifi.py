"""Issue 10 on the virtual rig: a gateway's Wi-Fi uplink and the mesh's clock, as on a board.

One rig, three phases (the gateway's access point is the rig's, fleet/sim/rig.py set_ap):
1. The AP is down at start: the gateway cannot join, so no NTP, no wall time anywhere, no MQTT.
   Nodes hold their readings unstamped. When the AP comes up the gateway joins, runs NTP, puts
   time in its beacons; every held reading is stamped by when it was made (checked against the
   host clock within one report interval), none stored with a bogus time, none lost.
2. The AP goes down and comes back: nothing reaches the broker while the link is down (MQTT is
   gated on it), the gateway rejoins and the backlog drains without a hole.
3. The AP moves to another channel: the gateway's station follows it, ESP-NOW with it, so the
   gateway no longer hears its mesh; it says so (log + the status errors bit), and recovers when
   the AP comes back to the mesh's channel."""
import time

import pytest

from fleet.sim import topology as topo_mod
from fleet.sim.verify import delivery_report

INTERVAL_S = 31  # report interval (continuous sampling needs more than the 30 s warm-up)
WARMUP_S = 30  # the rig's warmup_s
ERR_WIFI_CHANNEL = 2  # firmware/gateway.py


def _log(rig, node_id):
    with open(rig.rig.nodes[node_id].log_path, "rb") as f:
        return f.read().decode("utf-8", "replace")


def _count(rig):
    return rig.query("SELECT count(*) FROM readings")[0][0]


@pytest.mark.timeout(1200)
def test_gateway_wifi_down_up_drop_and_channel_change(make_rig, needs_virtual_rig):
    topo = topo_mod.line(4, spacing_m=35, n_gateways=1, seed=6, radio=topo_mod.RadioModel(max_range_m=50))
    (gw,) = list(topo.gateways())
    ids = [n.id for n in topo.nodes]
    t_before = time.time()
    rig = make_rig(topo, wifi_up=False, report_interval_s=INTERVAL_S, seed=6)
    t_started = time.time()

    # ---- 1. no uplink at start: nothing stored, readings held --------------------------------
    time.sleep(WARMUP_S + 3 * INTERVAL_S)  # at least two readings held per node
    assert _count(rig) == 0, "readings reached the store while the gateway had no uplink"
    assert "cannot join the Wi-Fi network" in _log(rig, gw)
    for n in ids:
        log = _log(rig, n)
        assert "reading seq=" not in log, "node %d stamped a reading without wall time:\n%s" % (n, log[-1500:])
    t_up = time.time()
    rig.set_ap(gw, up=True)

    def all_held_stored():
        rep = delivery_report(rig.home)
        before = dict(rig.query("SELECT node, count(*) FROM readings WHERE ts < ? GROUP BY node", t_up))
        after = dict(rig.query("SELECT node, count(*) FROM readings WHERE ts >= ? GROUP BY node", t_up))
        ok = (rep["nodes_reporting"] == len(ids) and rep["holes"] == 0 and rep["gaps_open"] == 0
              and all(before.get(n, 0) >= 1 and after.get(n, 0) >= 2 for n in ids))
        return rep if ok else (False, rep, before, after)

    rig.wait_until(all_held_stored, 300, "the readings held before time arrived stored, and newer ones after them")
    gw_log = _log(rig, gw)
    assert "joined the Wi-Fi network on channel 1" in gw_log and "clock set by NTP" in gw_log
    rows = rig.query("SELECT node, seq, ts, rx_ts FROM readings ORDER BY node, seq")
    for node, seq, ts, rx_ts in rows:  # no bogus time: never before the rig started, never ahead
        assert t_before + WARMUP_S - 3 <= ts <= rx_ts + 2, (node, seq, ts, rx_ts, t_before)
    # made before time was known: as many as the node made (none dropped), each stamped by when it
    # was made: every interval apart, the first about a warm-up after boot, the last within one
    # interval before time arrived
    expected = int((t_up - t_started - WARMUP_S) // INTERVAL_S) - 1
    for n in ids:
        held = [ts for node, _, ts, _ in rows if node == n and ts < t_up]
        assert len(held) >= expected, "node %d: %d readings made before time arrived, expected >= %d" % (
            n, len(held), expected)
        for a, b in zip(held, held[1:], strict=False):
            assert abs((b - a) - INTERVAL_S) <= 2, "node %d: held readings stamped %s" % (n, held)
        assert held[0] <= t_started + WARMUP_S + INTERVAL_S + 5, (n, held[0] - t_started)
        assert held[-1] >= t_up - INTERVAL_S - 3, (n, t_up - held[-1])
    for n in ids:
        assert "oldest is lost" not in _log(rig, n)

    # ---- 2. the uplink drops and comes back: MQTT waits, the backlog drains ------------------
    t_down = time.time()
    rig.set_ap(gw, up=False)
    rig.wait_until(lambda: "uplink lost" in _log(rig, gw), 60, "the gateway noticing its uplink is gone")
    time.sleep(5)  # what was on the wire when the link went
    c1 = _count(rig)
    time.sleep(2 * INTERVAL_S + 5)
    assert _count(rig) == c1, "readings reached the broker while the gateway's Wi-Fi was down"
    t_restore = time.time()
    rig.set_ap(gw, up=True)

    def drained():
        rep = delivery_report(rig.home)
        per = dict(rig.query("SELECT node, count(*) FROM readings WHERE ts > ? AND ts < ? GROUP BY node",
                             t_down + 5, t_restore))
        want = int((t_restore - t_down - 5) // INTERVAL_S) - 1
        ok = rep["holes"] == 0 and rep["gaps_open"] == 0 and all(per.get(n, 0) >= want for n in ids)
        return rep if ok else (False, rep, per, want)

    rep = rig.wait_until(drained, 300, "the backlog made while the uplink was down stored without holes")
    print(rep)
    assert _log(rig, gw).count("joined the Wi-Fi network") >= 2
    assert rep["lost"] == 0

    # ---- 3. the AP moves to another channel: the gateway notices and says so -----------------
    rig.set_ap(gw, channel=6)
    rig.wait_until(lambda: "ALERT: the Wi-Fi AP is on channel 6 but the mesh uses channel 1" in _log(rig, gw), 120,
                   "the gateway reporting that its AP left the mesh's channel")
    rig.wait_until(lambda: any(e & ERR_WIFI_CHANNEL for (e,) in rig.query(
        "SELECT errors FROM node_state WHERE node = ?", gw) if e), 120,
        "the gateway's status carrying the wrong-channel error to the fleet")
    faults = rig.medium({"op": "faults"})["faults"]
    assert faults["channels"][str(gw)] == 6, faults
    rig.wait_until(lambda: rig.medium({"op": "stats"})["stats"]["dropped"].get("channel", 0) > 0, 60,
                   "the medium dropping frames between channels 6 and 1")
    rig.set_ap(gw, channel=1)
    rig.wait_until(lambda: "the AP is back on the mesh channel 1" in _log(rig, gw), 120,
                   "the gateway back on the mesh's channel")
    n_before = _count(rig)
    rig.wait_until(lambda: _count(rig) > n_before, 120, "readings flowing again")
