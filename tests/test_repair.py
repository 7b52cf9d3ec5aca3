

def test_source_routes_one_rule_for_collector_and_simulator():
    """fleet.repair.SourceRoutes: a path from the reported parents; a fallback (counted by the
    caller) when none is known or its gateway is offline; a retry goes down a path only when
    reports moved it since the last attempt."""
    from fleet.repair import SourceRoutes

    sr = SourceRoutes()
    for node, parent in ((1, 100), (2, 1), (3, 2)):
        sr.report(node, parent)
    up = lambda gw: True  # noqa: E731
    assert sr.choose(3, {100}, up) == ((100, [1, 2, 3]), None)
    assert sr.choose(3, {100}, up, retry=True) == (None, "same")  # the same path: the caller floods
    sr.report(3, 1)  # it moved
    assert sr.choose(3, {100}, up, retry=True) == ((100, [1, 3]), "rerouted")
    assert sr.choose(4, {100}, up) == (None, "fallback")  # never reported
    assert sr.choose(4, {100}, up, retry=True) == (None, None)  # a retry without a path: not a new fallback
    assert sr.choose(3, {100}, lambda gw: False) == (None, "fallback")  # its gateway is offline
    assert sr.report(2, 0) is True  # 2 lost its parent: 3's chain breaks there
    assert sr.report(3, 2) is True and sr.report(3, 2) is False  # another parent; then the same
    assert sr.report(2, 0) is False and sr.report(9, 0) is False  # none, as before
    assert sr.choose(3, {100}, up) == (None, "fallback")


def test_overdue_probes_learn_the_interval_wait_for_a_route_and_are_let_go():
    """fleet.repair.GapTracker.due_probes: the interval and the clock offset come from the
    readings' own times, so a late reading does not move the next probe early; a probe waits
    while no route reaches the node, only until the reading after it is due; an unanswered
    probe is let go after retry_s (not retried) and frees the node's request slot."""
    from fleet.repair import GapTracker, RepairConfig

    t = GapTracker(RepairConfig(overdue_s=60, retry_s=30))
    made0, rx0 = 1_760_000_000, 500.0  # our clock and the node's differ: only differences count
    cseq = iter(range(1000))
    for i in range(3):
        t.on_readings(7, i, i, rx0 + 300 * i + 0.2, gateway=1, made_s=made0 + 300 * i)
    t.on_readings(7, 3, 3, rx0 + 900 + 40, gateway=1, made_s=made0 + 900)  # 40 s late
    assert t.nodes[7].every_s == 300
    assert t.due_probes(rx0 + 1200 + 0.2 + 59, lambda n: next(cseq), lambda n: True) == []  # not 40 s early
    # no route: it waits, and gives up once reading 5 is due too (a gap will show then)
    for k in range(1, 40):
        assert t.due_probes(rx0 + 1260 + 10 * k, lambda n: next(cseq), lambda n: False) == []
    assert t.next_probe_s() is None and t.probes_sent == 0
    # reading 4 arrives; 5 goes missing and a route is known: one probe for [6, ...]
    t.on_readings(7, 5, 5, rx0 + 1500 + 0.2, gateway=1, made_s=made0 + 1500)
    assert t.nodes[7].gaps and t.nodes[7].gaps[0].first == 4  # 4 is a gap, repaired as before
    got = t.due_probes(rx0 + 1800 + 61, lambda n: next(cseq), lambda n: True)
    assert [(r.node, r.a, r.b, r.gap) for r in got] == [(7, 6, 53, None)] and t.nodes[7].outstanding == 1
    assert t.due_probes(rx0 + 1800 + 61 + 29, lambda n: next(cseq), lambda n: True) == []
    t.due_probes(rx0 + 1800 + 61 + 31, lambda n: next(cseq), lambda n: True)  # unanswered: let go
    assert t.nodes[7].outstanding == 0 and not t.outstanding and t.probes_sent == 1
    assert t.lost == 0


def test_a_probe_is_answered_by_its_readings_without_a_reply():
    """A node resends a probe's readings without a Reply (firmware/node_cmd.py answered): the
    readings answer the probe, the node's request slot is free at once (not after retry_s), and
    a reading outside the probe's range does not."""
    from fleet.repair import GapTracker, RepairConfig

    t = GapTracker(RepairConfig(overdue_s=60, retry_s=30))
    made0, rx0 = 1_760_000_000, 500.0
    cseq = iter(range(1000))
    for i in range(3):
        t.on_readings(7, i, i, rx0 + 300 * i + 0.2, gateway=1, made_s=made0 + 300 * i)
        t.on_readings(8, i, i, rx0 + 300 * i + 0.2, gateway=1, made_s=made0 + 300 * i)
    got = t.due_probes(rx0 + 900 + 61, lambda n: next(cseq), lambda n: True)
    assert sorted((r.node, r.a, r.b) for r in got) == [(7, 3, 50), (8, 3, 50)]
    assert t.nodes[7].outstanding == t.nodes[8].outstanding == 1
    t.on_readings(7, 1, 1, rx0 + 965, gateway=1, made_s=made0 + 300)  # a late copy of an old one
    assert t.nodes[7].outstanding == 1 and len(t.outstanding) == 2
    t.on_readings(7, 3, 3, rx0 + 966, gateway=1, made_s=made0 + 900)  # the probe's answer
    assert t.nodes[7].outstanding == 0 and [k[0] for k in t.outstanding] == [8]
    assert t.replies == 0 and t.lost == 0 and not t.nodes[7].gaps
    t.due_probes(rx0 + 900 + 61 + 31, lambda n: next(cseq), lambda n: True)  # 8's: let go as before
    assert not t.outstanding and t.nodes[8].outstanding == 0


def test_a_probe_waiting_for_a_route_goes_when_a_report_comes():
    """A probe that found no whole path is due again at routes_changed (a node reported another
    parent), not 30 s later; without a report it waits its 30 s."""
    from fleet.repair import GapTracker, RepairConfig

    t = GapTracker(RepairConfig(overdue_s=60, retry_s=30))
    made0, rx0 = 1_760_000_000, 500.0
    cseq = iter(range(1000))
    for i in range(3):
        t.on_readings(7, i, i, rx0 + 300 * i + 0.2, gateway=1, made_s=made0 + 300 * i)
    due = rx0 + 900 + 61
    assert t.due_probes(due, lambda n: next(cseq), lambda n: False) == []  # no path yet
    assert t.next_probe_s() == due + 30
    t.routes_changed(due + 2)
    assert t.next_probe_s() == due + 2
    got = t.due_probes(due + 2, lambda n: next(cseq), lambda n: True)
    assert [(r.node, r.a) for r in got] == [(7, 3)]
    t.routes_changed(due + 3)  # nothing waits now: nothing moves
    assert t.next_probe_s() == due + 2 + 30  # the probe's let-go time


def test_the_gaps_waiting_for_a_path_are_bounded_without_reports():
    """A quiet mesh sends no report of another parent for days: the gaps that waited for a path
    and closed since are forgotten once 4,096 are remembered, not kept for ever."""
    from fleet.repair import GapTracker, RepairConfig

    t = GapTracker(RepairConfig(grace_s=10, route_wait_s=150))
    for n in range(1, 4097):
        t.on_readings(n, 0, 0, 0.0)
        t.on_readings(n, 2, 2, 0.0)  # seq 1 missing
    assert t.due_requests(11.0, lambda n: 1, None, lambda n: True) == [] and len(t._route_gaps) == 4096
    for n in range(1, 4097):
        t.on_readings(n, 1, 1, 12.0)  # the late readings close them
    t.on_readings(5000, 0, 0, 12.0)
    t.on_readings(5000, 2, 2, 12.0)
    assert t.due_requests(23.0, lambda n: 1, None, lambda n: True) == []
    assert list(t._route_gaps) == t.nodes[5000].gaps and t.pending == 1
