"""Durable per-user feedback: the one piece of server state that must never be lost.

`SQLiteFeedbackStore.add` returns only after the row is committed with `synchronous=FULL` in
WAL mode, so a server that acknowledges feedback after `add` returns has it on disk even if
the process dies the next instant. One file per deployment is right for a single node; on a
cluster, every shard must see the same rows: implement `FeedbackStore` over a shared database
(PostgreSQL, say) — the interface is six methods — rather than putting SQLite on NFS, whose
locking SQLite cannot trust.

Every row records which API key wrote it (`key_id`; NULL for seeded rows and keyless servers),
so a poisoned batch from one key can be listed and deleted (`rows_by_key`, `delete_by_key`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from personal_rm.data.comparison import Comparison

SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    prompt TEXT NOT NULL,
    chosen TEXT NOT NULL,
    rejected TEXT NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    key_id TEXT
);
CREATE INDEX IF NOT EXISTS feedback_user ON feedback (user_id, id);
"""
INSERT = (
    "INSERT INTO feedback (user_id, prompt, chosen, rejected, meta, key_id) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True)
class FeedbackRow:
    """A stored comparison with where it came from: what an admin reviews before deleting."""

    id: int
    comparison: Comparison
    key_id: str | None
    created_at: str


class FeedbackStore(Protocol):
    def add(self, comparison: Comparison, key_id: str | None = None) -> int:
        """Persist durably, recording the API key that wrote it, then return the row id."""
        ...

    def history(self, user_id: str, limit: int | None = None) -> list[Comparison]:
        """The user's comparisons, oldest first; the newest `limit` when given."""
        ...

    def count(self, user_id: str | None = None) -> int: ...

    def users(self) -> list[str]: ...

    def rows_by_key(self, key_id: str, from_id: int = 0, limit: int = 100) -> list[FeedbackRow]:
        """The key's rows with id >= from_id, oldest first."""
        ...

    def delete_by_key(self, key_id: str, from_id: int = 0) -> dict[str, int]:
        """Delete the key's rows with id >= from_id; rows deleted per user."""
        ...


class SQLiteFeedbackStore:
    def __init__(self, path: str | Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(path)
        # One connection shared by a replica's threads, serialised by a lock: SQLite allows
        # one writer at a time anyway, and this keeps commit order equal to call order.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            self._migrate()

    def _migrate(self) -> None:
        """Bring a file written before provenance up to date: its rows get key_id NULL (their
        writer is unknown). In one write transaction, so replicas opening the same old file at
        once do not both add the column."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(feedback)")}
            if "key_id" not in columns:
                self._db.execute("ALTER TABLE feedback ADD COLUMN key_id TEXT")
            self._db.execute("CREATE INDEX IF NOT EXISTS feedback_key ON feedback (key_id, id)")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def add(self, comparison: Comparison, key_id: str | None = None) -> int:
        c = comparison
        row = (c.user_id, c.prompt, c.chosen, c.rejected, json.dumps(c.meta), key_id)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._db.execute(INSERT, row)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return int(cursor.lastrowid)

    def add_many(self, comparisons: list[Comparison], key_id: str | None = None) -> None:
        """Bulk import (seeding a server with a dataset): one transaction."""
        rows = [
            (c.user_id, c.prompt, c.chosen, c.rejected, json.dumps(c.meta), key_id)
            for c in comparisons
        ]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(INSERT, rows)
            self._db.execute("COMMIT")

    def history(self, user_id: str, limit: int | None = None) -> list[Comparison]:
        query = "SELECT user_id, prompt, chosen, rejected, meta FROM feedback WHERE user_id = ?"
        with self._lock:
            if limit is None:
                rows = self._db.execute(query + " ORDER BY id", (user_id,)).fetchall()
            else:
                newest = self._db.execute(query + " ORDER BY id DESC LIMIT ?", (user_id, limit))
                rows = newest.fetchall()[::-1]
        return [Comparison(u, p, c, r, json.loads(m)) for u, p, c, r, m in rows]

    def count(self, user_id: str | None = None) -> int:
        with self._lock:
            if user_id is None:
                return self._db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
            query = "SELECT COUNT(*) FROM feedback WHERE user_id = ?"
            return self._db.execute(query, (user_id,)).fetchone()[0]

    def users(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT user_id FROM feedback ORDER BY user_id")
            return [row[0] for row in rows.fetchall()]

    def rows_by_key(self, key_id: str, from_id: int = 0, limit: int = 100) -> list[FeedbackRow]:
        query = (
            "SELECT id, user_id, prompt, chosen, rejected, meta, key_id, created_at FROM feedback "
            "WHERE key_id = ? AND id >= ? ORDER BY id LIMIT ?"
        )
        with self._lock:
            rows = self._db.execute(query, (key_id, from_id, limit)).fetchall()
        return [
            FeedbackRow(i, Comparison(u, p, c, r, json.loads(m)), k, t)
            for i, u, p, c, r, m, k, t in rows
        ]

    def delete_by_key(self, key_id: str, from_id: int = 0) -> dict[str, int]:
        where = "WHERE key_id = ? AND id >= ?"
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                counted = self._db.execute(
                    f"SELECT user_id, COUNT(*) FROM feedback {where} GROUP BY user_id",
                    (key_id, from_id),
                ).fetchall()
                self._db.execute(f"DELETE FROM feedback {where}", (key_id, from_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return dict(counted)

    def close(self) -> None:
        with self._lock:
            self._db.close()
