"""Durable per-user feedback: the one piece of server state that must never be lost.

`SQLiteFeedbackStore.add` returns only after the row is committed with `synchronous=FULL` in
WAL mode, so a server that acknowledges feedback after `add` returns has it on disk even if
the process dies the next instant. One file per deployment is right for a single node; on a
cluster, every shard must see the same rows: implement `FeedbackStore` over a shared database
(PostgreSQL, say) — the interface is four methods — rather than putting SQLite on NFS, whose
locking SQLite cannot trust.
"""

from __future__ import annotations

import json
import sqlite3
import threading
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
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS feedback_user ON feedback (user_id, id);
"""


class FeedbackStore(Protocol):
    def add(self, comparison: Comparison) -> int:
        """Persist durably, then return the row id."""
        ...

    def history(self, user_id: str, limit: int | None = None) -> list[Comparison]:
        """The user's comparisons, oldest first; the newest `limit` when given."""
        ...

    def count(self, user_id: str | None = None) -> int: ...

    def users(self) -> list[str]: ...


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

    def add(self, comparison: Comparison) -> int:
        row = (
            comparison.user_id,
            comparison.prompt,
            comparison.chosen,
            comparison.rejected,
            json.dumps(comparison.meta),
        )
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._db.execute(
                    "INSERT INTO feedback (user_id, prompt, chosen, rejected, meta) "
                    "VALUES (?, ?, ?, ?, ?)",
                    row,
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return int(cursor.lastrowid)

    def add_many(self, comparisons: list[Comparison]) -> None:
        """Bulk import (seeding a server with a dataset): one transaction."""
        rows = [
            (c.user_id, c.prompt, c.chosen, c.rejected, json.dumps(c.meta)) for c in comparisons
        ]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO feedback (user_id, prompt, chosen, rejected, meta) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
            )
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

    def close(self) -> None:
        with self._lock:
            self._db.close()
