r"""MRM's training input at scale: one `Task.to_row` row per user, built by Ray Data.

    python -m jobs.build_tasks --data s3://bucket/prefs/ --cache s3://bucket/embeddings \
        --out s3://bucket/mrm_tasks

A comparison's features are the cached embeddings of its two (prompt, response) texts, so the
build is a join of the comparisons with the Parquet cache of `jobs.embed`, done as two hash
shuffles with Ray Data's own groupby (its `join` needs polars):
1. by text key: each comparison side meets its vector (a side whose text is not in the cache
   fails the run, naming the user and key);
2. by user: a user's sides become its (n, d) chosen and rejected arrays, in one row.
No process holds more than a block, or one key's or one user's rows. Every cached vector
takes part in the first shuffle, also those of texts the comparisons do not have. The output is what
`actors.mrm_trainer.fit_distributed` streams to its workers; `user_vector_rows` turns it into
the users' preference vectors that `jobs.fit_prototypes` clusters.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import ray.data

from actors.ingest import list_shards
from personal_rm.embed import MiniLMEncoder, pair_text, text_key
from personal_rm.mrm import Task, tasks_pairs
from personal_rm.pgenrm.prototypes import preference_vectors

SIDE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("user", pa.string()),
        ("pair", pa.string()),
        ("side", pa.int8()),  # 0 chosen, 1 rejected, -1 a cached vector
        ("vector", pa.binary()),
    ]
)
TASK_SCHEMA = pa.schema(
    [
        ("user", pa.string()),
        ("index", pa.int64()),
        ("dim", pa.int64()),
        ("dtype", pa.string()),
        ("chosen", pa.binary()),
        ("rejected", pa.binary()),
    ]
)


def _sides(batch: pa.Table, model_id: str) -> pa.Table:
    """Both sides of each comparison, keyed by their text; `pair` names the comparison (the
    same comparison twice is one pair)."""
    keys, users, pairs, sides = [], [], [], []
    for row in batch.to_pylist():
        pair = hashlib.sha256(
            "\0".join(row[c] for c in ("user_id", "prompt", "chosen", "rejected")).encode()
        ).hexdigest()
        for side, response in enumerate((row["chosen"], row["rejected"])):
            keys.append(text_key(model_id, pair_text(row["prompt"], response)))
            users.append(row["user_id"])
            pairs.append(pair)
            sides.append(side)
    blank = [b""] * len(keys)
    return pa.table([keys, users, pairs, sides, blank], schema=SIDE_SCHEMA)


def _cached(batch: dict[str, np.ndarray], dtype: str) -> pa.Table:
    """The cache's vectors as side rows (`side` -1), stored in the output dtype."""
    vectors = [np.asarray(v, dtype=dtype).tobytes() for v in batch["vector"]]
    n = len(vectors)
    return pa.table([list(batch["key"]), [""] * n, [""] * n, [-1] * n, vectors], schema=SIDE_SCHEMA)


def _attach(group: pa.Table) -> pa.Table:
    """One key's comparison sides, each given the key's vector."""
    rows = group.to_pylist()
    vector = next((r["vector"] for r in rows if r["side"] == -1), None)
    sides = [r for r in rows if r["side"] >= 0]
    if vector is None and sides:
        raise ValueError(
            f"user {sides[0]['user']}: text {rows[0]['key']} is not in the embedding cache; "
            "run jobs.embed on this data with the same --cache first"
        )
    return pa.Table.from_pylist([{**r, "vector": vector} for r in sides], schema=SIDE_SCHEMA)


def _user_row(group: pa.Table, dtype: str, min_rows: int) -> pa.Table:
    """One user's sides as one `Task` row; users with fewer than `min_rows` comparisons are
    dropped. The task index is a stable hash of the user id: it seeds the user's episodes."""
    rows = sorted({(r["pair"], r["side"]): r["vector"] for r in group.to_pylist()}.items())
    by_pair: dict[str, dict[int, bytes]] = {}
    for (pair, side), vector in rows:
        by_pair.setdefault(pair, {})[side] = vector
    user = group["user"][0].as_py()
    if len(by_pair) < min_rows:
        return TASK_SCHEMA.empty_table()
    first = next(iter(by_pair.values()))[0]
    dim = len(first) // np.dtype(dtype).itemsize
    chosen, rejected = (
        np.frombuffer(b"".join(p[side] for p in by_pair.values()), dtype=dtype).reshape(-1, dim)
        for side in (0, 1)
    )
    index = int.from_bytes(hashlib.sha256(user.encode()).digest()[:7], "big")
    row = Task(user, index, chosen, rejected).to_row(dtype)
    return pa.Table.from_pylist([row], schema=TASK_SCHEMA)


def build_task_rows(
    comparisons: ray.data.Dataset, cache: str, *, dtype: str = "float16", min_rows: int = 2
) -> ray.data.Dataset:
    """`Task.to_row` rows of every user of `comparisons` with at least `min_rows` comparisons
    (2: a support / query split), features from the Parquet embedding cache at `cache`."""
    shards = list_shards(cache)
    if not shards:
        raise FileNotFoundError(f"{cache}: no embedding cache; run jobs.embed first")
    sides = comparisons.map_batches(
        _sides, fn_kwargs={"model_id": MiniLMEncoder.model_id}, batch_format="pyarrow"
    )
    vectors = ray.data.read_parquet(shards).map_batches(
        _cached, fn_kwargs={"dtype": dtype}, batch_format="numpy"
    )
    attached = sides.union(vectors).groupby("key").map_groups(_attach, batch_format="pyarrow")
    return attached.groupby("user").map_groups(
        _user_row, fn_kwargs={"dtype": dtype, "min_rows": min_rows}, batch_format="pyarrow"
    )


def _preference_rows(batch: pa.Table) -> dict[str, np.ndarray]:
    vectors = preference_vectors(tasks_pairs([Task.from_row(r) for r in batch.to_pylist()]))
    users = sorted(vectors)
    return {"user": np.array(users), "vector": np.stack([vectors[u] for u in users])}


def user_vector_rows(tasks: ray.data.Dataset) -> ray.data.Dataset:
    """{user, vector} of every task row: the user's preference vector (the unit mean of chosen
    minus rejected, P-GenRM's `preference` representation), which `jobs.fit_prototypes`
    clusters into prototypes."""
    return tasks.map_batches(_preference_rows, batch_format="pyarrow")
