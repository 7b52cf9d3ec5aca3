"""Store operations the collector needs, named once for it (the store backends implement them).

`write_gaps` shrinks, splits and forgets gaps (a gap filled by reordering is not a loss);
every backend has a `write_gaps(rows, now_s)` method doing it in the caller's transaction.
"""

GAP_ROW = ("id", "node", "first_seq", "last_seq", "state", "requests", "created_at")


def write_gaps(store, rows, now_s):
    """Persist gap rows (tuples in GAP_ROW order) inside the caller's transaction; see
    fleet.store.SQLiteStore.write_gaps. Returns the ids in row order."""
    return store.write_gaps(rows, now_s)


def add_events(store, events):
    """Append many events (ts, kind, node, detail) inside the caller's transaction."""
    for ts, kind, node, detail in events:
        store.record_event(ts, kind, node=node, detail=detail)
