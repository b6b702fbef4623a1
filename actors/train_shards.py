"""A Ray Train worker's dataset shard, read one epoch at a time in shuffled batches of rows.

Both trainers stream their input this way: Ray Train splits the dataset into equal shards
(`get_dataset_shard`, one per worker), so every worker takes the same number of steps (the
gradient all-reduce is a barrier), and a worker holds one batch plus a bounded shuffle buffer,
never the dataset.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import ray.data


def shard_steps(rows: int, world: int, batch_size: int) -> int:
    """Steps per epoch of every worker: an equal split gives each `rows // world` rows."""
    return math.ceil(rows // world / batch_size)


def epoch_batches(
    shard: ray.data.DataIterator, batch_size: int, *, shuffle_rows: int, seed: int, epoch: int
) -> Iterator[list[dict]]:
    """This epoch's batches as Python rows, shuffled within a buffer of `shuffle_rows` rows
    (0: in shard order) by a seed that changes every epoch."""
    batches = shard.iter_batches(
        batch_size=batch_size,
        batch_format="pyarrow",
        local_shuffle_buffer_size=shuffle_rows or None,
        local_shuffle_seed=seed * 7919 + epoch if shuffle_rows else None,
    )
    for batch in batches:
        yield batch.to_pylist()
