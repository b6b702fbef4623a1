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
