"""firmware/node.py without wall time (issue 10): a node's RTC reads its epoch until the mesh
brings time, so reports wait in the hold; when time arrives they are stamped by when they were
made, in order; when the hold overflows the oldest go, counted in readings_lost and logged, never
silently. And no telemetry leaves without wall time (the collector would stamp a backlog with its
arrival time). A real Node on a fake HAL (flash in a temp dir), CPython."""
import protocol
from firmware import node as node_mod
from firmware.config import Config
from firmware.fsutil import PosixFS
from firmware.sampler import Aggregate

T0 = 1_790_000_000


class FakeHal:
    """The HAL shape Node uses at construction and in _stamp: an unset RTC."""

    virtual = True

    def __init__(self, root):
        self.fs = PosixFS(root)
        self.mac = b"\x02\x00\x00\x00\x00\x07"

    def time_s(self):
        return 0

    def time_ms(self):
        return 0

    def mem_free(self):
        return 100_000


def _node(tmp_path, logs, monkeypatch):
    monkeypatch.setattr(node_mod, "log", lambda tag, msg: logs.append("%s %s" % (tag, msg)))
    cfg = Config({"config_version": 1, "node_id": 7, "role": "node", "net_id": 1, "node_key": bytes(32),
                  "mesh_key": bytes(range(32)), "fleet_pub": bytes(32), "report_interval_s": 300})
    return node_mod.Node(FakeHal(str(tmp_path)), cfg)


def _agg(i):
    return Aggregate(100 + i, 200 + i, 300 + i, 190, 210, 50, 215, 60, 0, 0, 0)


def test_held_readings_stamped_by_when_they_were_made(tmp_path, monkeypatch):
    logs = []
    n = _node(tmp_path, logs, monkeypatch)
    assert n.readings_lost == 0
    for i in range(10):  # a report a minute, no wall time
        n._stamp(_agg(i), (i + 1) * 60_000)
    assert len(n.unstamped) == 10 and len(n.ring) == 0 and not any("reading seq=" in m for m in logs)
    now = 10 * 60_000 + 30_000
    n.router.set_time(T0, now)  # time arrives (a gateway's beacon) 30 s after the last report
    n._stamp(None, now)
    assert n.unstamped == [] and n.readings_lost == 0
    held = n.ring.pending(20)
    assert [r[0] for r in held] == list(range(10))  # in order, none skipped
    assert [r[1] for r in held] == [T0 - 30 - 60 * (9 - i) for i in range(10)]
    assert [r[3] for r in held] == [200 + i for i in range(10)]
    # from now on a report is stamped at once
    n._stamp(_agg(10), now + 60_000)
    assert n.ring.pending(20)[-1][:2] == (10, T0 + 60)


def test_hold_overflow_is_counted_and_logged(tmp_path, monkeypatch):
    logs = []
    n = _node(tmp_path, logs, monkeypatch)
    cap = node_mod.UNSTAMPED_MAX
    assert cap >= 64  # hours of reports at a 5-minute interval
    extra = 5
    for i in range(cap + extra):
        n._stamp(_agg(i), (i + 1) * 1000)
    assert len(n.unstamped) == cap
    assert n.readings_lost == extra
    lost_lines = [m for m in logs if "the oldest is lost" in m]
    assert len(lost_lines) == extra and ("%d lost since boot" % extra) in lost_lines[-1]
    now = (cap + extra + 1) * 1000
    n.router.set_time(T0, now)
    n._stamp(None, now)
    held = n.ring.pending(cap + extra)
    assert len(held) == cap
    assert held[0][3] == 200 + extra  # the newest were kept, the oldest went
    assert held[-1][1] == T0 - 1


def test_no_telemetry_without_wall_time(tmp_path, monkeypatch):
    logs = []
    n = _node(tmp_path, logs, monkeypatch)
    n.router.set_time(T0, 0)
    n._stamp(_agg(0), 1000)  # a reading from a time when the clock was known ...
    n.router._wall_s = 0  # ... and a reboot later: no time yet, a backlog on flash
    sent = []
    n.router.has_route = lambda: True
    n.router.originate = lambda data, now, token: sent.append(protocol.decode(data))

    n._uplink_poll()
    assert sent == []
    n.router.set_time(T0 + 100, 2000)
    n._uplink_poll()
    assert len(sent) == 1 and sent[0].seq == 0 and sent[0].time_s > 0
