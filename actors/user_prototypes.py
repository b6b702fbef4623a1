"""Prototypes for more users than one process holds: fit on a seeded sample, assign on Ray Data.

User vectors are rows `{user, vector}` in any number of Parquet shards (a folder, a glob, or an
object-store URI that Ray Data reads). K-means runs in one process on a seeded sample of
`sample` users, with the clustering the in-memory `PrototypeIndex` uses, so a small index and
a large one are fitted alike; every user is then assigned to its nearest centroid in a
streaming Ray Data pass, whose memory is bounded by its blocks, not by the number of users.
The result, under one folder: `members/`, Parquet partitioned by prototype (`prototype=<p>/`,
each one shard's members with their vectors), and `centroids.{json,safetensors}`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet
import ray.data

from personal_rm.artefacts import Artefact, Format, load, save
from personal_rm.pgenrm.prototypes import PrototypeConfig, kmeans_centroids, nearest, unit

FORMAT = Format("personal-rm/prototype-centroids", 1)
CENTROIDS, MEMBERS = "centroids", "members"


def vectors_of(batch: dict[str, np.ndarray]) -> np.ndarray:
    """The (n, d) float32 vectors of a batch (Parquet list columns arrive as object arrays)."""
    return np.stack(batch["vector"]).astype(np.float32, copy=False)


def sample_vectors(users: ray.data.Dataset, size: int, seed: int) -> np.ndarray:
    """About `size` users' unit vectors, a seeded Bernoulli sample of the dataset."""
    fraction = min(1.0, size / users.count())
    sampled = users.random_sample(fraction, seed=seed) if fraction < 1 else users
    batches = sampled.select_columns(["vector"]).iter_batches(batch_size=65_536)
    return unit(np.concatenate([vectors_of(b) for b in batches]))


def fit_centroids(users: ray.data.Dataset, config: PrototypeConfig, sample: int) -> np.ndarray:
    """(K, d) unit centroids of K-means on a seeded sample of the users."""
    return unit(kmeans_centroids(sample_vectors(users, sample, config.seed), config))


def _assign(batch: dict[str, np.ndarray], centroids: np.ndarray) -> dict[str, np.ndarray]:
    """{user, vector, prototype}: the vectors as one float32 (n, d) tensor column."""
    vectors = vectors_of(batch)
    prototype = nearest(vectors, centroids).astype(np.int32)
    return {"user": batch["user"], "vector": vectors, "prototype": prototype}


def assign(users: ray.data.Dataset, centroids: np.ndarray) -> ray.data.Dataset:
    """Each user's prototype, added as a column (lazy: runs when written or iterated)."""
    return users.map_batches(_assign, fn_kwargs={"centroids": centroids}, batch_size=16_384)


def build_member_index(
    users: ray.data.Dataset, config: PrototypeConfig, sample: int, out: str | Path
) -> np.ndarray:
    """Fit on a sample, assign everyone, write `out`; returns the centroids."""
    centroids = fit_centroids(users, config, sample)
    members = str(Path(out) / MEMBERS)
    assign(users, centroids).write_parquet(members, partition_cols=["prototype"])
    save(Path(out) / CENTROIDS, Artefact({"centroids": centroids}, {"sample": sample}), FORMAT)
    return centroids


def load_centroids(out: str | Path) -> np.ndarray:
    return load(Path(out) / CENTROIDS, FORMAT, lambda artefact: artefact.arrays["centroids"])


def members(out: str | Path, prototype: int) -> tuple[np.ndarray, np.ndarray]:
    """(user ids, (n, d) vectors) of one prototype: what its shard loads, and nothing else."""
    table = pyarrow.parquet.read_table(Path(out) / MEMBERS / f"prototype={prototype}")
    users = np.asarray(table.column("user").to_pylist(), dtype=object)
    # Ray Data wrote the vectors as its tensor extension type: each chunk knows its numpy.
    chunks = [chunk.to_numpy() for chunk in table.column("vector").chunks]
    return users, np.concatenate(chunks).astype(np.float32, copy=False)
