import multiprocessing
import os
from concurrent.futures import ThreadPoolExecutor

from personal_rm.data import Comparison
from personal_rm.serving.store import SQLiteFeedbackStore


def write_then_die(path, n):
    """A process that acknowledges n rows and is then killed without any clean-up."""
    store = SQLiteFeedbackStore(path)
    for i in range(n):
        store.add(Comparison("u", f"p{i}", "a", "b"))
    os._exit(0)  # no close(), no atexit: only what add() made durable survives


def test_acknowledged_rows_survive_a_killed_writer(tmp_path):
    path = tmp_path / "feedback.sqlite3"
    process = multiprocessing.get_context("spawn").Process(target=write_then_die, args=(path, 25))
    process.start()
    process.join(60)
    assert process.exitcode == 0
    store = SQLiteFeedbackStore(path)
    assert store.count("u") == 25
    assert [c.prompt for c in store.history("u", limit=3)] == ["p22", "p23", "p24"]


def test_concurrent_adds_from_threads_lose_nothing(tmp_path):
    store = SQLiteFeedbackStore(tmp_path / "f.sqlite3")
    with ThreadPoolExecutor(8) as pool:
        ids = list(
            pool.map(lambda i: store.add(Comparison(f"u{i % 4}", "p", f"a{i}", "b")), range(200))
        )
    assert len(set(ids)) == 200
    assert store.count() == 200
    assert store.users() == ["u0", "u1", "u2", "u3"]
    assert {c.chosen for c in store.history("u1")} == {f"a{i}" for i in range(1, 200, 4)}


def test_meta_round_trips(tmp_path):
    store = SQLiteFeedbackStore(tmp_path / "f.sqlite3")
    store.add_many([Comparison("u", "p", "a", "b", {"source": "seed", "n": 1})])
    assert store.history("u")[0].meta == {"source": "seed", "n": 1}


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
    import sqlite3

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
    store = SQLiteFeedbackStore(path)
    assert [c.user_id for c in store.history("old")] == ["old"]  # the old row is kept
    row = store.add(Comparison("old", "p2", "a", "b"), key_id="k1")
    assert [(r.id, r.key_id) for r in store.rows_by_key("k1")] == [(row, "k1")]
    store.close()
    reopened = SQLiteFeedbackStore(path)  # a second open finds the column and adds nothing
    assert reopened.count("old") == 2 and reopened.rows_by_key("k1")[0].comparison.prompt == "p2"


def test_rows_by_key_and_delete_by_key_undo_one_key_only(tmp_path):
    store = SQLiteFeedbackStore(tmp_path / "f.sqlite3")
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
