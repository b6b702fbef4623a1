r"""Build MRM's training input at scale: one Parquet row per user, from comparisons and the
embedding cache that `jobs.embed` filled.

    python -m jobs.build_tasks --data 'data/prefs/*.jsonl.gz' --cache results/embeddings \
        --out results/mrm_tasks
    ray job submit --working-dir . -- python -m jobs.build_tasks --data s3://bucket/prefs/ \
        --cache s3://bucket/embeddings --out s3://bucket/mrm_tasks

`--data` takes what `jobs.embed` takes; it should hold the seen (training) users only, since
every user in it is trained on. Each output row is a `personal_rm.mrm.Task`:
`jobs.meta_train_mrm --tasks OUT` streams them to its Ray Train workers. `--user_vectors PATH`
also writes every user's preference vector, {user, vector}, for `jobs.fit_prototypes --users`.
"""

from __future__ import annotations

import sys
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from personal_rm.config import parse_config


class BuildTasksConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field("llmfao", description="Comparisons in the normalized schema (shards).")
    cache: str = Field("results/embeddings", description="The Parquet cache of jobs.embed.")
    out: str = Field("results/mrm_tasks", description="Folder or URI for the task rows.")
    user_vectors: str | None = Field(
        None, description="Also write each user's preference vector here, for fit_prototypes."
    )
    dtype: Literal["float16", "float32"] = Field(
        "float16", description="Feature dtype on disk; training computes in float32."
    )
    min_rows: int = Field(2, ge=1, description="Fewest comparisons a user needs (2: meta).")
    address: str | None = Field(None, description="Ray cluster address (default: as jobs do).")
    verbose: bool = Field(False, description="Ray Data's own progress and INFO logs.")


def run(config: BuildTasksConfig) -> int:
    import ray.data

    from actors.ingest import read_comparisons
    from actors.local_ray import connect
    from actors.task_rows import build_task_rows, user_vector_rows

    connect(config.address, verbose=config.verbose)
    start = time.perf_counter()
    build_task_rows(
        read_comparisons(config.data), config.cache, dtype=config.dtype, min_rows=config.min_rows
    ).write_parquet(config.out)
    tasks = ray.data.read_parquet(config.out)
    if config.user_vectors is not None:
        user_vector_rows(tasks).write_parquet(config.user_vectors)
    users = tasks.count()  # from the files' metadata
    seconds = time.perf_counter() - start
    print(f"wrote {users:,} users' task rows to {config.out} in {seconds:.0f} s")
    return users


def main(argv: list[str] | None = None) -> None:
    run(parse_config(BuildTasksConfig, argv, description=__doc__))


if __name__ == "__main__":
    main(sys.argv[1:])
