"""Stores as an older fleet tool left them, for the migration tests."""
import sqlite3


def sqlite_schema1(path):
    """Turn the SQLite store at `path` (made by this version) into the schema-1 file an older
    fleet tool wrote: without the columns and tables later versions added."""
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE node_state DROP COLUMN radio_drops")
    db.execute("ALTER TABLE node_state DROP COLUMN readings_lost")
    db.execute("ALTER TABLE node_state DROP COLUMN status_seq")
    db.execute("ALTER TABLE node_state DROP COLUMN epoch")
    db.execute("DROP TABLE hourly")
    db.execute("DROP TABLE repair_nodes")  # schema 6 on; made by the migrations
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
