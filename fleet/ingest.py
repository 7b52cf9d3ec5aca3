"""Store operations the collector needs beyond the `fleet.store.Store` interface.

The store interface can add a gap and set its state; gap repair also shrinks and splits gaps
and forgets ones that turned out to be reordering. Until those join the interface (they belong
there: a PostgreSQL store would implement them too), they live here, written against
SQLiteStore's connection. A store that has its own `write_gaps(rows, now_s)` method is used
as is, so moving this into fleet/store.py later needs no change in the collector.
"""

GAP_ROW = ("id", "node", "first_seq", "last_seq", "state", "requests", "created_at")


def write_gaps(store, rows, now_s):
    """Persist gap rows (tuples in GAP_ROW order) inside the caller's transaction.

    id None: insert (unless state is 'gone'); state 'gone' with an id: delete the row (a gap
    filled by late frames before any request is not a loss); otherwise update range, state and
    request count. Returns the ids in row order (None for a 'gone' row never stored)."""
    own = getattr(store, "write_gaps", None)
    if own is not None:
        return own(rows, now_s)
    db = store.db
    now = int(now_s)
    ids = []
    with store.transaction():
        for gap_id, node, first, last, state, requests, created_s in rows:
            if gap_id is None:
                if state == "gone":
                    ids.append(None)
                    continue
                cur = db.execute(
                    "INSERT INTO gaps (node, first_seq, last_seq, state, created_at, updated_at, requests) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", (node, first, last, state, int(created_s), now, requests))
                ids.append(cur.lastrowid)
            elif state == "gone":
                db.execute("DELETE FROM gaps WHERE id = ?", (gap_id,))
                ids.append(None)
            else:
                db.execute("UPDATE gaps SET first_seq = ?, last_seq = ?, state = ?, requests = ?, updated_at = ? "
                           "WHERE id = ?", (first, last, state, requests, now, gap_id))
                ids.append(gap_id)
    return ids


def add_events(store, events):
    """Append many events (ts, kind, node, detail) inside the caller's transaction."""
    for ts, kind, node, detail in events:
        store.record_event(ts, kind, node=node, detail=detail)
