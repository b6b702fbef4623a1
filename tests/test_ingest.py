"""Ray Data ingestion (`actors.ingest`): shards in, the local loader's validation, and an
embedding cache that a rerun finds complete."""

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.ingest import embed, read_comparisons
from actors.task_rows import build_task_rows, user_vector_rows
from personal_rm.data import DataError, load_comparisons
from personal_rm.embed import MiniLMEncoder, pair_text, text_key
from personal_rm.mrm import Task, tasks_pairs
from personal_rm.pgenrm.prototypes import preference_vectors

pytestmark = pytest.mark.ray


@pytest.fixture(autouse=True)
def few_shuffle_partitions(ray_session):
    """Tens of rows: Ray Data's default of 200 hash-shuffle partitions would cost more than
    the data (the jobs keep the default, sized for a cluster)."""
    context = ray_session.data.DataContext.get_current()
    default = context.default_hash_shuffle_parallelism
    context.default_hash_shuffle_parallelism = 4
    yield
    context.default_hash_shuffle_parallelism = default


@pytest.fixture(scope="module")
def rows():
    return [c.to_row() for c in load_comparisons("llmfao").comparisons[:30]]


def write_shards(folder, rows):
    folder.mkdir(exist_ok=True)
    with gzip.open(folder / "a.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[:12])
    pq.write_table(pa.Table.from_pylist(rows[12:20]), folder / "b.parquet")


def cache_vectors(ray, cache):
    table = ray.data.read_parquet(str(cache)).to_pandas()
    return dict(zip(table["key"], table["vector"], strict=True))


def test_shards_are_embedded_once_as_the_local_encoder_embeds_them(ray_session, rows, tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    write_shards(data, rows)
    comparisons = read_comparisons(str(data))
    assert comparisons.count() == 20
    texts = sorted(
        {pair_text(r["prompt"], r[k]) for r in rows[:20] for k in ("chosen", "rejected")}
    )
    assert embed(comparisons, str(cache), actors=1) == len(texts)  # 1 actor: tens of texts
    stored = cache_vectors(ray_session, cache)
    expected = MiniLMEncoder().encode(texts)
    got = np.stack([stored[text_key(MiniLMEncoder.model_id, t)] for t in texts])
    np.testing.assert_allclose(got, expected, atol=1e-6)

    assert embed(read_comparisons(str(data)), str(cache), actors=1) == 0  # a rerun embeds nothing
    with open(data / "c.jsonl", "w") as f:  # a new shard: only its new texts
        f.writelines(json.dumps(r) + "\n" for r in rows[15:30])
    with pytest.raises(Exception, match="not in the embedding cache"):
        build_task_rows(read_comparisons(str(data)), str(cache)).materialize()
    new = {pair_text(r["prompt"], r[k]) for r in rows[20:30] for k in ("chosen", "rejected")}
    assert embed(read_comparisons(str(data)), str(cache), actors=1) == len(new - set(texts))
    assert len(cache_vectors(ray_session, cache)) == len(new | set(texts))


def test_a_bad_row_fails_naming_its_shard_line_and_field(ray_session, rows, tmp_path):
    (tmp_path / "d").mkdir()
    bad = [rows[0], {**rows[1], "chosen": 3}]
    (tmp_path / "d" / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
    with pytest.raises(Exception, match=r"x\.jsonl:2: field 'chosen'") as info:
        read_comparisons(str(tmp_path / "d")).materialize()
    assert isinstance(info.value, DataError) or "DataError" in repr(info.value)


def test_task_rows_join_each_users_comparisons_with_their_cached_vectors(
    ray_session, rows, tmp_path
):
    data, cache = tmp_path / "data", tmp_path / "cache"
    write_shards(data, rows)
    embed(read_comparisons(str(data)), str(cache), actors=1)
    stored = cache_vectors(ray_session, cache)
    rows_dataset = build_task_rows(read_comparisons(str(data)), str(cache), min_rows=1)
    tasks = {t.user: t for t in map(Task.from_row, rows_dataset.take_all())}
    by_user: dict[str, set] = {}
    for r in {json.dumps(r, sort_keys=True): r for r in rows[:20]}.values():  # distinct rows
        vectors = (
            stored[text_key(MiniLMEncoder.model_id, pair_text(r["prompt"], r[k]))]
            for k in ("chosen", "rejected")
        )
        by_user.setdefault(r["user_id"], set()).add(
            tuple(np.asarray(v, np.float16).tobytes() for v in vectors)
        )
    assert set(tasks) == set(by_user)
    for user, task in tasks.items():
        got = {
            (c.astype(np.float16).tobytes(), r.astype(np.float16).tobytes())
            for c, r in zip(task.chosen, task.rejected, strict=True)
        }
        assert got == by_user[user]  # every comparison once, chosen with rejected
    assert len({t.index for t in tasks.values()}) == len(tasks)
    expected = preference_vectors(tasks_pairs(list(tasks.values())))
    vectors = {r["user"]: r["vector"] for r in user_vector_rows(rows_dataset).take_all()}
    assert set(vectors) == set(expected)
    for user, vector in vectors.items():
        np.testing.assert_allclose(vector, expected[user], atol=1e-6)
