r"""Ray Data ingestion: comparisons from many shards, embedded by a pool of encoder actors.

    python -m jobs.embed --data 's3://bucket/prefs/' --cache s3://bucket/embeddings \
        --actors 8 --gpus_per_actor 1

`read_comparisons` reads any number of shards in the normalized schema (JSON lines, gzipped or
not, and Parquet) from a local folder, a glob or an object-store URI (pyarrow's filesystems),
one Ray task per shard, each row validated by the local loader's `parse_comparison`: a bad row
fails the run naming its shard, line and field. `embed` turns them into the distinct
(prompt, response) texts, drops those whose key (`embed.text_key`, the SQLite cache's key) the
Parquet cache already holds, embeds the rest in `map_batches` over a pool of `actors` MiniLM actors
(`num_gpus` each on a GPU cluster) and appends them to the cache as Parquet shards {key,
vector}; a rerun over the same data embeds nothing. The in-process `CachedEncoder` stays the
default for data that fits one machine.
"""

from __future__ import annotations

import glob
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow.fs
import pyarrow.parquet as pq
import ray.data

from personal_rm.data.comparison import DataError, parse_comparison
from personal_rm.data.io import SUFFIXES, json_rows, resolve_dataset, shard_files
from personal_rm.embed import MiniLMEncoder, pair_text, text_key

COMPARISON_COLUMNS = ("user_id", "prompt", "chosen", "rejected")


def list_shards(data: str) -> list[str]:
    """The shard files of `data`: a dataset name, a local file, folder or glob, or a URI whose
    folder (prefix) is listed for files of the supported formats."""
    if "://" not in data:
        return [str(path) for path in shard_files(resolve_dataset(data))]
    filesystem, root = pyarrow.fs.FileSystem.from_uri(data)
    if glob.has_magic(root):
        raise ValueError(f"{data}: name a folder (prefix) of shards, not a glob, in a URI")
    info = filesystem.get_file_info(root)
    if info.type == pyarrow.fs.FileType.File:
        return [data]
    listed = filesystem.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    scheme = data.split("://", 1)[0]
    return sorted(f"{scheme}://{f.path}" for f in listed if f.is_file and f.path.endswith(SUFFIXES))


def _numbered_rows(shard: str) -> Iterator[tuple[int, Any]]:
    filesystem, path = pyarrow.fs.FileSystem.from_uri(
        shard if "://" in shard else f"file://{shard}"
    )
    if path.endswith(".parquet"):
        yield from enumerate(pq.read_table(path, filesystem=filesystem).to_pylist(), start=1)
        return
    with filesystem.open_input_stream(path, compression="detect") as raw:
        yield from json_rows(io.TextIOWrapper(raw, encoding="utf-8"), shard)


def _read_shard(item: dict[str, Any]) -> Iterator[dict[str, str]]:
    for number, row in _numbered_rows(item["shard"]):
        if isinstance(row, DataError):
            raise row
        comparison = parse_comparison(row, source=item["shard"], line=number)
        yield {name: getattr(comparison, name) for name in COMPARISON_COLUMNS}


def read_comparisons(data: str) -> ray.data.Dataset:
    """{user_id, prompt, chosen, rejected} rows of every shard, one task per shard."""
    shards = list_shards(data)
    if not shards:
        raise FileNotFoundError(f"{data}: no shards ({', '.join(SUFFIXES)})")
    return ray.data.from_items([{"shard": s} for s in shards]).flat_map(_read_shard)


def _texts(batch: dict[str, np.ndarray], model_id: str) -> dict[str, np.ndarray]:
    """Both (prompt, response) texts of each comparison, with their cache keys, deduplicated
    within the batch (across batches the groupby in `embed` does it)."""
    rows = zip(batch["prompt"], batch["chosen"], batch["rejected"], strict=True)
    texts = sorted({pair_text(prompt, r) for prompt, *responses in rows for r in responses})
    keys = [text_key(model_id, t) for t in texts]
    return {
        "key": np.array(keys, dtype=object),
        "text": np.array(texts, dtype=object),
        "cached": np.zeros(len(texts), bool),
    }


class Encoder:
    """One MiniLM per actor, loaded once; the map_batches UDF of the embedding pool."""

    def __init__(self, batch_size: int) -> None:
        self.encoder = MiniLMEncoder(batch_size=batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"key": batch["key"], "vector": self.encoder.encode(list(batch["text"]))}


def cached_keys(cache: str) -> ray.data.Dataset | None:
    """The keys already in the Parquet cache, or None for an empty or missing cache."""
    try:
        shards = list_shards(cache)
    except FileNotFoundError:
        return None
    return ray.data.read_parquet(shards).select_columns(["key"]) if shards else None


def _uncached(group: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One text per key, none if the cache has the key."""
    keep = 0 if group["cached"].any() else 1
    return {"key": group["key"][:keep], "text": group["text"][:keep]}


def _as_cached(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    n = len(batch["key"])
    return {"key": batch["key"], "text": np.full(n, "", dtype=object), "cached": np.ones(n, bool)}


def embed(
    comparisons: ray.data.Dataset,
    cache: str,
    *,
    actors: int = 2,
    num_gpus: float = 0,
    batch_size: int = 64,
) -> int:
    """Embed the comparisons' texts that `cache` lacks and append them to it; returns how many
    were embedded (0 on a rerun). One hash shuffle by key deduplicates the texts and drops the
    cached ones (the cache's keys join the shuffle as rows marked `cached`)."""
    texts = comparisons.map_batches(_texts, fn_kwargs={"model_id": MiniLMEncoder.model_id})
    known = cached_keys(cache)
    if known is not None:
        texts = texts.union(known.map_batches(_as_cached))
    new = texts.groupby("key").map_groups(_uncached).materialize()
    if not new.count():
        return 0
    vectors = new.map_batches(
        Encoder,
        fn_constructor_kwargs={"batch_size": batch_size},
        batch_size=4 * batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=num_gpus,
    )
    vectors.write_parquet(cache)  # new files beside the old ones: Ray Data names them uniquely
    return new.count()
