"""Retention pruning in bounded steps, on both backends: readings written between the steps (as
the collector does while its pruner thread runs) are each stored once, a copy older than the
horizon is refused, a copy of a pruned reading stamped later (a node without a clock) is stored
again once; a prune stopped after any step is resumed by the next; PostgreSQL's key generations
are sealed, emptied of live keys and dropped whole. Ordering by on_step hooks, no timing."""
import pytest
from test_store import reading

import fleet.store.postgres
import fleet.store.sqlite
from fleet.store import SCHEMA_VERSION, open_url

JAN, FEB, MAR, APR, MAY, JUN = 1_704_067_200, 1_706_745_600, 1_709_251_200, 1_711_929_600, 1_714_521_600, 1_717_200_000  # 2024 UTC
DAY = 86400


class Model:
    """What the store must hold: (node, seq) -> ts of the one copy stored. A copy older than the
    horizon is refused; one whose stored copy is live (at or above the horizon) is a duplicate;
    otherwise it is stored (a new reading, or one whose only copy is pruned or being pruned)."""

    def __init__(self, store):
        self.store = store
        self.held = {}

    def horizon(self):
        row = self.store.query("SELECT value FROM store_meta WHERE key = 'pruned_before'")
        return row[0][0] if row else 0

    def send(self, rows):
        h = self.horizon()
        stored = 0
        for r in rows:
            key, ts = (r[0], r[1]), r[2]
            if ts >= h and not (key in self.held and self.held[key] >= h):
                self.held[key] = ts
                stored += 1
        assert self.store.add_readings(rows) == (stored, len(rows) - stored)

    def check(self, pg, done=False):
        """Every live reading stored once; PostgreSQL: none older than the horizon (dropped with
        its raising), and the live keys of every generation are exactly the readings."""
        h = self.horizon()
        got = self.store.query("SELECT node, seq, ts FROM readings")
        assert len(got) == len({(n, s) for n, s, _ in got})  # nothing twice
        live = {k: ts for k, ts in self.held.items() if ts >= h}
        assert {(n, s): ts for n, s, ts in got if ts >= h} == live
        if pg or done:
            assert all(ts >= h for _, _, ts in got), "a reading older than the horizon"
        if pg:
            keys = []
            for (gen,) in self.store.query("SELECT gen FROM key_gens"):
                keys += self.store.query(f"SELECT node, seq, ts FROM reading_keys_g{gen} WHERE ts >= ?", h)
            assert sorted(keys) == sorted((n, s, ts) for (n, s), ts in live.items())


def test_a_prune_between_batches_and_stopped_after_each_step_keeps_each_reading_once(store_url, monkeypatch):
    pg = store_url.startswith("postgresql")
    monkeypatch.setattr(fleet.store.postgres, "PRUNE_ROWS", 3)
    monkeypatch.setattr(fleet.store.sqlite, "PRUNE_ROWS", 3)
    pruner, writer = open_url(store_url), open_url(store_url)  # two connections: the collector's two
    try:
        if pg:  # the key generation began in January (the store was migrated then)
            pruner.db.execute("UPDATE key_gens SET started_at = ?", (JAN,))
        m = Model(writer)
        m.send([reading(1, i, ts=JAN + i * 3 * DAY) for i in range(50)]  # January to May
               + [reading(2, 0, ts=JUN + 5 * DAY),  # a clock ahead: a key outliving its generation
                  reading(3, 0, ts=JAN + 5 * DAY)])  # a node without a clock: later copies are stamped later
        news = iter(range(1000))

        def batch(what):
            m.check(pg)
            h = m.horizon()
            rows = [reading(9, next(news), ts=MAY + 20 * DAY)]  # new readings
            rows += [reading(n, s, ts=ts) for (n, s), ts in sorted(m.held.items()) if n != 3]  # resends
            rows += [reading(3, 0, ts=max(h, JAN + 5 * DAY) + 1)]  # the clockless copy, stamped now
            m.send(rows)

        # the first prune: whole, with a batch after every step
        horizon, dropped = pruner.prune(MAR + 1, now_s=APR + 5 * DAY, on_step=batch)
        assert horizon == (MAR if pg else MAR + 1) and dropped > 0
        m.check(pg, done=True)
        # the second: stopped after every step, and started again until there is nothing left
        steps = []
        for _ in range(100):
            n = len(steps)
            pruner.prune(MAY + 1, now_s=JUN + DAY, stop=lambda n=n: len(steps) > n,
                         on_step=lambda what: (steps.append(what), batch(what)))
            if len(steps) == n:
                break
        else:
            pytest.fail(f"the prune never ended: {steps}")
        m.check(pg, done=True)
        assert m.held[(2, 0)] == JUN + 5 * DAY and m.horizon() >= MAY
        if pg:  # generation 0 (sealed in April) emptied of live keys and dropped; 1 sealed in June
            assert "keys" in steps and pruner.query("SELECT gen FROM key_gens ORDER BY gen") == [(1,), (2,)]
            assert pruner.query("SELECT to_regclass('reading_keys_g0')") == [(None,)]
        batch("after")
        m.check(pg, done=True)
    finally:
        pruner.close()
        writer.close()


def test_postgresql_migration_from_7_keeps_the_keys_as_generation_0(pg_url):
    """Schema 8 renames schema 7's reading_keys to generation 0 (no copy, at any size): the keys
    it holds still make a resend a duplicate, and retention later drops the table whole."""
    import psycopg

    with open_url(pg_url) as s:
        s.add_readings([reading(1, i, ts=JAN + i * DAY) for i in range(5)] + [reading(1, 9, ts=MAR + DAY)])
    with psycopg.connect(pg_url, autocommit=True) as c:  # make it the version-7 store
        c.execute("DROP TABLE key_gens, sealed_seqs")
        c.execute("ALTER TABLE reading_keys_g0 RENAME TO reading_keys")
        c.execute("DELETE FROM redmesh_schema WHERE version >= 8")
        c.execute("ALTER TABLE repair_nodes DROP COLUMN reply_top, DROP COLUMN reply_bits")  # schema 9
    with open_url(pg_url) as s:
        assert s.migrate() == (7, SCHEMA_VERSION)
        assert s.add_readings([reading(1, 3, ts=JAN + 9 * DAY), reading(1, 5, ts=JAN + 5 * DAY)]) == (1, 1)
        assert s.info()["rows"]["reading_keys"] == 7
        s.db.execute("UPDATE key_gens SET started_at = ?", (JAN,))  # migrated in January
        assert s.prune(FEB, now_s=FEB + DAY) == (FEB, 6)  # January dropped; generation 0 sealed, keys of March live
        assert s.query("SELECT gen FROM key_gens ORDER BY gen") == [(0,), (1,)]
        assert s.add_readings([reading(1, 9, ts=MAR + DAY)]) == (0, 1)  # its key is in sealed generation 0
        assert s.prune(APR, now_s=MAR + DAY) == (APR, 1)  # March dropped: no live key left in 0 or 1
        assert s.query("SELECT gen FROM key_gens ORDER BY gen") == [(2,)]
        assert s.query("SELECT to_regclass('reading_keys_g0'), count(*) FROM readings") == [(None, 0)]
        assert s.add_readings([reading(1, 3, ts=APR)]) == (1, 0)  # pruned, stamped later: stored again
