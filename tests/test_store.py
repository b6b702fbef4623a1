"""The feedback store's contract, run against both backends: SQLite files and a real PostgreSQL
server (started by the `postgres` fixture, never a mock)."""

import multiprocessing
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from personal_rm.data import Comparison
from personal_rm.serving.store import (
    POOL_TIMEOUT_S,
    RequestIdReused,
    SQLiteFeedbackStore,
    StoreUnavailable,
    open_store,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """A URL of an empty store on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.sqlite3'}"
    return request.getfixturevalue("postgres").create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def store(store_url):
    with open_store(store_url) as opened:
        yield opened


def write_then_die(url, n):
    """A process that acknowledges n rows and is then killed without any clean-up."""
    store = open_store(url)
    for i in range(n):
        store.add(Comparison("u", f"p{i}", "a", "b"))
    os._exit(0)  # no close(), no atexit: only what add() made durable survives


def test_acknowledged_rows_survive_a_killed_writer(store_url):
    process = multiprocessing.get_context("spawn").Process(
        target=write_then_die, args=(store_url, 25)
    )
    process.start()
    process.join(60)
    assert process.exitcode == 0
    with open_store(store_url) as store:
        assert store.count("u") == 25
        assert [c.prompt for c in store.history("u", limit=3)] == ["p22", "p23", "p24"]


def test_concurrent_adds_from_threads_lose_nothing(store):
    with ThreadPoolExecutor(8) as pool:
        ids = list(
            pool.map(lambda i: store.add(Comparison(f"u{i % 4}", "p", f"a{i}", "b")), range(200))
        )
    assert len(set(ids)) == 200
    assert store.count() == 200
    assert store.users() == ["u0", "u1", "u2", "u3"]
    assert {c.chosen for c in store.history("u1")} == {f"a{i}" for i in range(1, 200, 4)}


def test_meta_round_trips(store):
    store.add_many([Comparison("u", "p", "a", "b", {"source": "seed", "n": 1})])
    assert store.history("u")[0].meta == {"source": "seed", "n": 1}


def test_a_retried_add_is_stored_once_and_answered_with_the_first_id(store):
    first = store.add(Comparison("u", "p", "a", "b"), key_id="k", request_id="r1")
    with ThreadPoolExecutor(5) as pool:  # a retry storm: the same request five times at once
        retries = list(
            pool.map(lambda _: store.add(Comparison("u", "p", "a", "b"), "k", "r1"), range(5))
        )
    assert retries == [first] * 5 and store.count() == 1
    other_user = store.add(Comparison("v", "p", "a", "b"), request_id="r1")  # ids are per user
    assert other_user != first and store.count() == 2
    with pytest.raises(RequestIdReused):
        store.add(Comparison("u", "another prompt", "a", "b"), request_id="r1")
    store.add(Comparison("u", "p", "a", "b"))  # without a request_id, a repeat is a new row
    store.add(Comparison("u", "p", "a", "b"))
    assert store.count("u") == 3


OLD_SCHEMA = """
CREATE TABLE feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    prompt TEXT NOT NULL,
    chosen TEXT NOT NULL,
    rejected TEXT NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
INSERT INTO feedback (user_id, prompt, chosen, rejected) VALUES ('old', 'p', 'a', 'b');
"""


def test_a_store_written_before_provenance_is_migrated_in_place(tmp_path):
    """SQLite only: PostgreSQL stores were born with every column."""
    import sqlite3

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
    store = SQLiteFeedbackStore(path)
    assert [c.user_id for c in store.history("old")] == ["old"]  # the old row is kept
    row = store.add(Comparison("old", "p2", "a", "b"), key_id="k1", request_id="r")
    assert store.add(Comparison("old", "p2", "a", "b"), key_id="k1", request_id="r") == row
    assert [(r.id, r.key_id) for r in store.rows_by_key("k1")] == [(row, "k1")]
    store.close()
    reopened = SQLiteFeedbackStore(path)  # a second open finds the columns and adds nothing
    assert reopened.count("old") == 2 and reopened.rows_by_key("k1")[0].comparison.prompt == "p2"


def test_rows_by_key_and_delete_by_key_undo_one_key_only(store):
    store.add_many([Comparison("victim", f"seed{i}", "a", "b") for i in range(3)])
    good = store.add(Comparison("victim", "honest", "a", "b"), key_id="good")
    bad = [store.add(Comparison(u, f"poison{u}", "b", "a"), key_id="bad") for u in "xyx"]
    bad.append(store.add(Comparison("victim", "poison", "b", "a"), key_id="bad"))
    rows = store.rows_by_key("bad")
    assert [r.id for r in rows] == bad and all(r.key_id == "bad" and r.created_at for r in rows)
    assert [r.id for r in store.rows_by_key("bad", from_id=bad[1], limit=2)] == bad[1:3]
    assert store.delete_by_key("bad", from_id=bad[2]) == {"x": 1, "victim": 1}
    assert store.delete_by_key("bad") == {"x": 1, "y": 1}
    assert store.rows_by_key("bad") == [] and store.delete_by_key("bad") == {}
    assert [c.prompt for c in store.history("victim")] == ["seed0", "seed1", "seed2", "honest"]
    assert [r.id for r in store.rows_by_key("good")] == [good]


def test_created_at_reads_as_iso_utc_on_both_backends(store):
    store.add(Comparison("u", "p", "a", "b"), key_id="k")
    created = store.rows_by_key("k")[0].created_at
    assert time.strptime(created, "%Y-%m-%dT%H:%M:%S.%f" + "Z")


def test_open_store_reads_paths_and_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert open_store("plain.sqlite3").path.name == "plain.sqlite3"
    assert str(open_store("sqlite:///relative/f.sqlite3").path) == "relative/f.sqlite3"
    assert open_store(f"sqlite:///{tmp_path}/abs.sqlite3").path == tmp_path / "abs.sqlite3"
    with pytest.raises(ValueError, match="mysql"):
        open_store("mysql://host/db")


def test_a_killed_postgres_gives_store_unavailable_in_bounded_time_then_recovers(postgres):
    """The outage contract: while the server is down every call raises StoreUnavailable (the
    server's 503) within the pool's timeout, never hangs; rows acked before the kill are all
    there after the restart, and the same store object works again."""
    store = open_store(postgres.create_database(f"t_{uuid.uuid4().hex[:12]}"))
    acked = [store.add(Comparison("u", f"p{i}", "a", "b"), request_id=f"r{i}") for i in range(10)]
    postgres.kill()
    try:
        for call in (lambda: store.add(Comparison("u", "down", "a", "b")), store.count):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="retry"):
                call()
            assert time.monotonic() - started < POOL_TIMEOUT_S + 5
    finally:
        postgres.start()
    assert store.count("u") == 10 and [c.prompt for c in store.history("u")][-1] == "p9"
    assert store.add(Comparison("u", "p3", "a", "b"), request_id="r3") == acked[3]
    store.close()
