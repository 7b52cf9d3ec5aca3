"""`fleet plot`: the PNG a node's plot draws (flagged readings marked in FLAG_MARK, found in
the picture's pixels), the fleet plot, and the CLI's errors."""
from cli_run import assert_clean, run_fleet
from PIL import Image

from fleet.home import FleetHome
from fleet.web.plot import FLAG_MARK, LATENCY_P50, LATENCY_P90, fleet_series
from protocol.frames import FLAG_HIGH_RH

NOW = 1_780_000_000


def _home(tmp_path, flagged, latency=None):
    home = FleetHome.resolve(str(tmp_path / "home"))
    store = home.store(create=True)
    store.register_node(2, pole="P2", lat=6.2, lon=-75.6)
    rows = []
    for i in range(120):
        if 40 <= i < 70:
            continue  # a 30-minute gap
        flags = FLAG_HIGH_RH if flagged and i % 10 == 0 else 0
        ts = NOW - 7200 + i * 60
        rows.append((2, i + 1, ts, None if latency is None else ts + latency(i, ts), 10, 80 + i % 20, 150, 80, 250, 10, flags, 1, 1, -60))
    store.add_readings(rows)
    store.close()
    return ["--home", str(tmp_path / "home")]


def _marks(png, colour=FLAG_MARK):
    want = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
    import numpy as np

    px = np.asarray(Image.open(png).convert("RGB"), dtype=int)
    return int((np.abs(px - np.array(want)).max(axis=2) < 25).sum())


def test_flagged_readings_are_marked(tmp_path):
    h = _home(tmp_path / "a", flagged=True)
    r = run_fleet(["plot", "--node", "2", "--since", str(NOW - 8000), "--until", str(NOW), "--out",
                   str(tmp_path / "a.png"), *h])
    assert_clean(r, (0,))
    h2 = _home(tmp_path / "b", flagged=False)
    r = run_fleet(["plot", "--node", "2", "--since", str(NOW - 8000), "--until", str(NOW), "--out",
                   str(tmp_path / "b.png"), *h2])
    assert_clean(r, (0,))
    assert _marks(tmp_path / "a.png") > 20 and _marks(tmp_path / "b.png") == 0


def test_fleet_plot_and_errors(tmp_path):
    h = _home(tmp_path, flagged=False)
    r = run_fleet(["plot", "--fleet", "--since", str(NOW - 8000), "--until", str(NOW), "--out",
                   str(tmp_path / "f.png"), *h])
    assert_clean(r, (0,))
    assert Image.open(tmp_path / "f.png").size[0] > 100
    assert_clean(run_fleet(["plot", "--out", str(tmp_path / "x.png"), *h]), (2,))
    assert_clean(run_fleet(["plot", "--node", "2", "--fleet", "--out", str(tmp_path / "x.png"), *h]), (2,))
    r = run_fleet(["plot", "--node", "9", "--out", str(tmp_path / "x.png"), *h])
    assert_clean(r, (1,))
    assert "no PM2.5 readings" in r.stderr


def test_fleet_plot_draws_latency(tmp_path):
    """Latency (rx_ts - ts) p50/p90 per bucket: the numbers, and the panel's lines in the PNG -
    absent when the store holds no reception times."""
    # 20, 60, 100 s in the three hour buckets the readings span; every 5th reading 300 s (resent)
    b0 = (NOW - 7200) // 3600
    h = _home(tmp_path / "a", flagged=False,
              latency=lambda i, ts: 300 if i % 5 == 0 else 20 + 40 * (ts // 3600 - b0))
    store = FleetHome.resolve(h[1]).store()
    try:
        series = fleet_series(store, NOW - 7200, NOW, bucket_s=3600)
    finally:
        store.close()
    assert [v[2:] for v in series.values()] == [(20, 300), (60, 300), (100, 300)]
    r = run_fleet(["plot", "--fleet", "--since", str(NOW - 8000), "--until", str(NOW), "--out",
                   str(tmp_path / "a.png"), *h])
    assert_clean(r, (0,))
    h2 = _home(tmp_path / "b", flagged=False)
    r = run_fleet(["plot", "--fleet", "--since", str(NOW - 8000), "--until", str(NOW), "--out",
                   str(tmp_path / "b.png"), *h2])
    assert_clean(r, (0,))
    assert _marks(tmp_path / "a.png", LATENCY_P50) > 50 and _marks(tmp_path / "a.png", LATENCY_P90) > 20
    assert _marks(tmp_path / "b.png", LATENCY_P50) == 0 and _marks(tmp_path / "b.png", LATENCY_P90) == 0
