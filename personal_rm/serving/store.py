"""Durable per-user feedback: the one piece of server state that must never be lost.

One interface, `FeedbackStore`, two backends, chosen by `open_store(url)`:
- SQLite (a path or `sqlite:///path`), the embedded default: one file per node. `add` returns
  only after the row is committed with `synchronous=FULL` in WAL mode, so a server that
  acknowledges feedback after `add` returns has it on disk even if the process dies next.
- PostgreSQL (`postgresql://...`), for a cluster: every replica on every node reads and writes
  the same rows through a connection pool, and `add` returns after a COMMIT made with
  `synchronous_commit=on` (the server has flushed it to its WAL). Not SQLite on NFS, whose
  locking SQLite cannot trust.

Every row records which API key wrote it (`key_id`; NULL for seeded rows and keyless servers),
so a poisoned batch from one key can be listed and deleted (`rows_by_key`, `delete_by_key`).
A row may carry the client's `request_id`: (user_id, request_id) is unique, so a retried write
stores nothing and returns the first row's id. A store that cannot be reached raises
`StoreUnavailable` within bounded time (connect, pool and statement timeouts) rather than
hanging; the server answers 503 and the client retries.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from personal_rm.data.comparison import Comparison

COLUMNS = "user_id, prompt, chosen, rejected, meta, key_id, request_id"
INSERT = f"INSERT INTO feedback ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
# The unique index on (user_id, request_id) turns a retry into a no-op; NULL ids never clash.
INSERT_ONCE = INSERT + " ON CONFLICT (user_id, request_id) DO NOTHING RETURNING id"
INDEXES = """
CREATE INDEX IF NOT EXISTS feedback_user ON feedback (user_id, id);
CREATE INDEX IF NOT EXISTS feedback_key ON feedback (key_id, id);
CREATE UNIQUE INDEX IF NOT EXISTS feedback_request ON feedback (user_id, request_id);
"""
SQLITE_TABLE = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    prompt TEXT NOT NULL,
    chosen TEXT NOT NULL,
    rejected TEXT NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    key_id TEXT,
    request_id TEXT
)
"""
POSTGRES_TABLE = """
CREATE TABLE IF NOT EXISTS feedback (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id TEXT NOT NULL,
    prompt TEXT NOT NULL,
    chosen TEXT NOT NULL,
    rejected TEXT NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    key_id TEXT,
    request_id TEXT
)
"""
# Replicas starting at once would race CREATE TABLE IF NOT EXISTS; this lock serialises them.
POSTGRES_SCHEMA_LOCK = 0x7072_6D66  # "prmf"
# Bounds on every wait for PostgreSQL, so a request during an outage gets a 503, not a hang.
POSTGRES_DEFAULTS = {
    "connect_timeout": "3",  # libpq: seconds to establish a connection
    "tcp_user_timeout": "10000",  # ms a sent packet may go unacknowledged (a dead network)
    "application_name": "personal-rm",
}
POOL_TIMEOUT_S = 5.0  # the longest a request waits for a pooled connection
POOL_MAX_SIZE = 8  # per replica: the ingress's threads that write at once
STATEMENT_TIMEOUT = "10s"


class StoreUnavailable(RuntimeError):
    """The database cannot be reached or gave up on a statement: retry later (503)."""


class RequestIdReused(ValueError):
    """A request_id already names a different comparison of this user (409): the first wins,
    and a second, different write under the same id would otherwise vanish silently."""


@dataclass(frozen=True)
class FeedbackRow:
    """A stored comparison with where it came from: what an admin reviews before deleting."""

    id: int
    comparison: Comparison
    key_id: str | None
    created_at: str


class FeedbackStore(Protocol):
    def add(
        self, comparison: Comparison, key_id: str | None = None, request_id: str | None = None
    ) -> int:
        """Persist durably, recording the API key that wrote it, then return the row id; with a
        request_id already stored for this user, store nothing and return that row's id."""
        ...

    def add_many(self, comparisons: list[Comparison], key_id: str | None = None) -> None:
        """Bulk import (seeding a server with a dataset): one transaction."""
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

    def close(self) -> None: ...


def open_store(url: str | Path) -> FeedbackStore:
    """The store `url` names: `postgresql://` (or `postgres://`) a shared database, in libpq's
    URL syntax; `sqlite:///relative/path`, `sqlite:////absolute/path` or a plain path a file."""
    url = str(url)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresFeedbackStore(url)
    if "://" in url and not url.startswith("sqlite:///"):
        scheme = url.split("://")[0]
        raise ValueError(f"feedback store URL {scheme}://...: neither sqlite nor postgresql")
    return SQLiteFeedbackStore(url.removeprefix("sqlite:///"))


class SQLFeedbackStore:
    """The queries, shared by both backends, written with `?` placeholders. A backend opens a
    transaction (`_begin`), says which of its errors mean "unreachable", and how its
    `created_at` reads as ISO-8601 text."""

    placeholder = "?"
    created_at = "created_at"
    unavailable: tuple[type[BaseException], ...] = ()

    def _begin(self, write: bool) -> AbstractContextManager[Any]:
        """The backend's connection in a transaction (SQLite: holding the write lock when
        `write`), committed on a clean exit."""
        raise NotImplementedError

    @contextmanager
    def _transaction(self, write: bool = False) -> Iterator[Any]:
        """A connection in a transaction, committed on exit, rolled back on an error."""
        try:
            with self._begin(write) as db:
                yield db
        except self.unavailable as error:
            raise StoreUnavailable(
                f"feedback store unavailable ({type(error).__name__}); retry"
            ) from error

    def _sql(self, query: str) -> str:
        return query.replace("?", self.placeholder)

    def add(
        self, comparison: Comparison, key_id: str | None = None, request_id: str | None = None
    ) -> int:
        c = comparison
        row = (c.user_id, c.prompt, c.chosen, c.rejected, json.dumps(c.meta), key_id, request_id)
        with self._transaction(write=True) as db:
            inserted = db.execute(self._sql(INSERT_ONCE), row).fetchall()
            if inserted:
                return int(inserted[0][0])
            first = db.execute(
                self._sql(
                    "SELECT id, prompt, chosen, rejected FROM feedback "
                    "WHERE user_id = ? AND request_id = ?"
                ),
                (c.user_id, request_id),
            ).fetchone()
        if first is None:  # the first row was deleted (delete_by_key) after it blocked ours
            return self.add(comparison, key_id, request_id)
        if tuple(first[1:]) != (c.prompt, c.chosen, c.rejected):
            raise RequestIdReused(f"request_id {request_id!r} names another comparison")
        return int(first[0])

    def add_many(self, comparisons: list[Comparison], key_id: str | None = None) -> None:
        rows = [
            (c.user_id, c.prompt, c.chosen, c.rejected, json.dumps(c.meta), key_id, None)
            for c in comparisons
        ]
        with self._transaction(write=True) as db:
            db.cursor().executemany(self._sql(INSERT), rows)

    def history(self, user_id: str, limit: int | None = None) -> list[Comparison]:
        query = "SELECT user_id, prompt, chosen, rejected, meta FROM feedback WHERE user_id = ?"
        with self._transaction() as db:
            if limit is None:
                rows = db.execute(self._sql(query + " ORDER BY id"), (user_id,)).fetchall()
            else:
                newest = self._sql(query + " ORDER BY id DESC LIMIT ?")
                rows = db.execute(newest, (user_id, limit)).fetchall()[::-1]
        return [Comparison(u, p, c, r, json.loads(m)) for u, p, c, r, m in rows]

    def count(self, user_id: str | None = None) -> int:
        with self._transaction() as db:
            if user_id is None:
                return int(db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])
            query = self._sql("SELECT COUNT(*) FROM feedback WHERE user_id = ?")
            return int(db.execute(query, (user_id,)).fetchone()[0])

    def users(self) -> list[str]:
        with self._transaction() as db:
            rows = db.execute("SELECT DISTINCT user_id FROM feedback ORDER BY user_id")
            return [row[0] for row in rows.fetchall()]

    def rows_by_key(self, key_id: str, from_id: int = 0, limit: int = 100) -> list[FeedbackRow]:
        query = (
            f"SELECT id, user_id, prompt, chosen, rejected, meta, key_id, {self.created_at} "
            "FROM feedback WHERE key_id = ? AND id >= ? ORDER BY id LIMIT ?"
        )
        with self._transaction() as db:
            rows = db.execute(self._sql(query), (key_id, from_id, limit)).fetchall()
        return [
            FeedbackRow(i, Comparison(u, p, c, r, json.loads(m)), k, t)
            for i, u, p, c, r, m, k, t in rows
        ]

    def delete_by_key(self, key_id: str, from_id: int = 0) -> dict[str, int]:
        query = "DELETE FROM feedback WHERE key_id = ? AND id >= ? RETURNING user_id"
        with self._transaction(write=True) as db:
            deleted = db.execute(self._sql(query), (key_id, from_id)).fetchall()
        return dict(Counter(user for (user,) in deleted))

    def __enter__(self) -> SQLFeedbackStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class SQLiteFeedbackStore(SQLFeedbackStore):
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
            self._db.execute(SQLITE_TABLE)
        self._migrate()

    def _migrate(self) -> None:
        """Bring a file written before provenance or idempotency up to date: its rows get
        key_id and request_id NULL (unknown writer, no retry to match). In one write
        transaction, so replicas opening the same old file at once do not both add a column."""
        with self._transaction(write=True) as db:
            columns = {row[1] for row in db.execute("PRAGMA table_info(feedback)")}
            for column in ("key_id", "request_id"):
                if column not in columns:
                    db.execute(f"ALTER TABLE feedback ADD COLUMN {column} TEXT")
            for statement in filter(str.strip, INDEXES.split(";")):
                db.execute(statement)

    @contextmanager
    def _begin(self, write: bool) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()


class PostgresFeedbackStore(SQLFeedbackStore):
    """A pool of connections per replica (`POOL_MAX_SIZE`); a connection is checked when taken,
    so after a database restart the broken ones are replaced instead of failing requests."""

    placeholder = "%s"
    created_at = """to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""

    def __init__(self, url: str):
        import psycopg
        from psycopg.conninfo import conninfo_to_dict, make_conninfo
        from psycopg_pool import ConnectionPool

        self.unavailable = (psycopg.OperationalError, psycopg.InterfaceError)
        given = conninfo_to_dict(url)  # what the URL sets wins over our defaults
        defaults = {k: v for k, v in POSTGRES_DEFAULTS.items() if k not in given}
        self._pool = ConnectionPool(
            make_conninfo(url, **defaults),
            min_size=1,
            max_size=POOL_MAX_SIZE,
            timeout=POOL_TIMEOUT_S,
            # A reconnection backs off (1 s, doubling) until it gives up; giving up this soon
            # keeps the wait short once the database is back: the next request starts afresh.
            reconnect_timeout=POOL_TIMEOUT_S,
            configure=self._configure,
            check=ConnectionPool.check_connection,
            open=True,
        )
        try:
            with self._transaction(write=True) as db:
                db.execute("SELECT pg_advisory_xact_lock(%s)", (POSTGRES_SCHEMA_LOCK,))
                db.execute(POSTGRES_TABLE)
                db.execute(INDEXES)
        except BaseException:
            self._pool.close()
            raise

    @staticmethod
    def _configure(connection: Any) -> None:
        """Per new connection: an ack means flushed to the server's WAL whatever the server's
        own default, and no statement runs unbounded."""
        connection.autocommit = True
        connection.execute("SET synchronous_commit = on")
        connection.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
        connection.autocommit = False

    @contextmanager
    def _begin(self, write: bool) -> Iterator[Any]:
        with self._pool.connection() as connection:  # commits on exit, rolls back on error
            yield connection

    def close(self) -> None:
        self._pool.close()
