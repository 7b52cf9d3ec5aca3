

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
    sr.report(2, 0)  # 2 lost its parent: 3's chain breaks there
    sr.report(3, 2)
    assert sr.choose(3, {100}, up) == (None, "fallback")
