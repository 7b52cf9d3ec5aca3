"""fleet/sim/topology.py: the link model's numbers, determinism, the generators' shapes and
connectivity, JSON round trips."""
import math

import pytest

from fleet.sim import topology as T


def test_mac_is_locally_administered_and_carries_the_id():
    mac = T.mac_for(0x012345)
    assert mac == bytes.fromhex("02524d012345")
    assert mac[0] & 0x02 and not mac[0] & 0x01  # locally administered, unicast
    assert T.mac_str(mac) == "02:52:4d:01:23:45"
    assert T.parse_mac("02:52:4d:01:23:45") == mac == T.parse_mac("02524d012345")
    with pytest.raises(T.TopologyError):
        T.parse_mac("02:52")
    with pytest.raises(T.TopologyError):
        T.mac_for(1 << 24)


def test_mean_prr_curve_matches_the_pole_spacing_story():
    r = T.RadioModel()
    assert r.mean_prr(35) > 0.999          # next pole: near-perfect
    assert r.mean_prr(60) > 0.95           # still near-perfect at 60 m
    assert 0.8 < r.mean_prr(70) < 0.97     # two poles: usable
    assert 0.05 < r.mean_prr(105) < 0.3    # three poles: marginal
    assert r.mean_prr(130) < 0.03          # ~0 by 110-130 m
    assert r.mean_prr(150) < 0.01
    prrs = [r.mean_prr(d) for d in range(1, 200)]
    assert prrs == sorted(prrs, reverse=True)
    assert -85 < r.mean_rssi_dbm(35) < -75


def test_links_are_deterministic_for_a_seed_and_differ_between_seeds():
    a = T.grid(4, 4, spacing_m=35, seed=7)
    b = T.grid(4, 4, spacing_m=35, seed=7)
    c = T.grid(4, 4, spacing_m=35, seed=8)
    pairs = [(n.id, m) for n in a.nodes for m in a.neighbours(n.id)]
    assert pairs == [(n.id, m) for n in b.nodes for m in b.neighbours(n.id)]
    assert all(a.rssi_dbm(x, y) == b.rssi_dbm(x, y) for x, y in pairs)
    assert any(a.rssi_dbm(x, y) != c.rssi_dbm(x, y) for x, y in pairs if c.link(x, y))


def test_asymmetry_is_small_and_shadowing_is_bounded():
    topo = T.district(300, 2, seed=3)
    r = topo.radio
    for n in topo.nodes:
        for m, lk in topo.links_from(n.id).items():
            back = topo.link(m, n.id)
            assert back is not None  # the neighbour relation is symmetric
            assert abs(lk.rssi_dbm - back.rssi_dbm) <= 4 * r.asym_sigma_db + 1e-9
            dev = lk.rssi_dbm - r.mean_rssi_dbm(lk.distance_m)
            assert abs(dev) <= 2 * (r.shadowing_sigma_db + r.asym_sigma_db) + 1e-9
            assert lk.distance_m <= r.max_range_m


def test_line_hops_and_strict_one_pole_hops():
    topo = T.line(8, spacing_m=35)
    assert topo.gateways() == [1]
    assert topo.check_connected()[8] <= 4  # 70 m links skip poles
    strict = T.line(8, spacing_m=35, radio=T.RadioModel(max_range_m=50))
    assert strict.check_connected() == {i: i - 1 for i in range(1, 9)}
    assert strict.neighbours(4) == [3, 5]
    two = T.line(9, n_gateways=2, radio=T.RadioModel(max_range_m=50))
    assert two.gateways() == [1, 9] and max(two.check_connected().values()) == 4


def test_grid_and_star_shapes():
    assert T.grid(3, 4, spacing_m=35).gateways() == [1]
    g = T.grid(3, 4, spacing_m=35, n_gateways=2)
    assert len(g) == 12 and len(g.gateways()) == 2
    a, b = (g.node(i) for i in g.gateways())
    assert abs(a.x_m - b.x_m) >= 70  # spread apart, one on each half of the grid
    assert math.isclose(g.distance_m(1, 2), 35) and math.isclose(g.distance_m(1, 5), 35)
    assert len(T.grid(3, 4, n=10)) == 10  # last row short
    with pytest.raises(T.TopologyError, match="try 12"):
        T.generate("grid", 10, 1)
    s = T.star(7, radius_m=35)
    assert s.gateways() == [1] and s.check_connected() == {1: 0, **{i: 1 for i in range(2, 8)}}


def test_disconnected_topologies_are_refused_with_advice():
    with pytest.raises(T.TopologyError, match="cannot reach a gateway"):
        T.line(3, spacing_m=200)
    with pytest.raises(T.TopologyError):
        T.generate("star", 5, 2)
    with pytest.raises(T.TopologyError, match="unknown topology"):
        T.generate("ring", 5, 1)


@pytest.mark.parametrize("n,g", [(1, 1), (8, 1), (25, 2), (400, 4)])
def test_district_patch_is_compact_connected_and_in_the_box(n, g):
    topo = T.district(n, g, seed=11)
    assert len(topo) == n and len(topo.gateways()) == g
    hops = topo.check_connected()
    assert all(h is not None for h in hops.values())
    box = T.DISTRICT_BOX
    for node in topo.nodes:
        assert box["lat_min"] <= node.lat <= box["lat_max"] and box["lon_min"] <= node.lon <= box["lon_max"]
        assert node.street.startswith(("Calle", "Carrera")) and node.pole.startswith("P")
    # compact: the patch's extent grows like sqrt(n) poles, not like the whole 3.9 x 2.8 km box
    ext = topo.summary()["extent_m"]
    assert max(ext) <= 60 * math.sqrt(n) + 50
    if n >= 25:  # poles 30-40 m apart along streets (12 m near crossings, where two streets meet)
        nearest = sorted(min(topo.distance_m(x.id, y) for y in topo.neighbours(x.id)) for x in topo.nodes)
        median = nearest[len(nearest) // 2]
        assert 25 <= median <= 40 and nearest[-1] <= 45


def test_district_grid_fills_the_box_and_gateways_spread():
    poles, origin = T.district_poles(seed=0)
    assert 5000 < len(poles) < 8000  # the first phase's 5,000 nodes fit the box
    assert origin == (T.DISTRICT_BOX["lat_min"], T.DISTRICT_BOX["lon_min"])
    topo = T.district(600, 4, seed=0)
    gws = [topo.node(i) for i in topo.gateways()]
    closest = min(math.hypot(a.x_m - b.x_m, a.y_m - b.y_m) for a in gws for b in gws if a is not b)
    assert closest > 300  # spread over the ~1.4 km patch, not bunched


def test_json_round_trip_keeps_nodes_model_and_links(tmp_path):
    topo = T.district(60, 2, seed=5, radio=T.RadioModel(path_loss_exp=3.2))
    back = T.Topology.from_json(topo.to_json())
    assert back == topo
    assert back.radio.path_loss_exp == 3.2
    assert [back.prr(1, m) for m in back.neighbours(1)] == [topo.prr(1, m) for m in topo.neighbours(1)]
    path = tmp_path / "t.json"
    topo.save(str(path))
    assert T.Topology.load(str(path)).summary() == topo.summary()
    with pytest.raises(T.TopologyError):
        T.Topology.from_json("{not json")
    with pytest.raises(T.TopologyError):
        T.Topology.from_json('{"version": 99}')
    with pytest.raises(T.TopologyError):
        T.Topology.load(str(tmp_path / "missing.json"))


def test_duplicate_ids_and_macs_are_refused():
    n = T.Node(1, 0, 0, 6.26, -75.58, "gateway")
    with pytest.raises(T.TopologyError, match="twice"):
        T.Topology([n, T.Node(1, 10, 0, 6.26, -75.58)])
    with pytest.raises(T.TopologyError, match="role"):
        T.Node(2, 0, 0, 0, 0, role="router")
