r"""Embed a preference dataset on Ray Data, into a Parquet cache that reruns reuse.

    python -m jobs.embed --data 'data/prefs/*.jsonl.gz' --cache results/embeddings
    ray job submit --working-dir . -- python -m jobs.embed --data s3://bucket/prefs/ \
        --cache s3://bucket/embeddings --actors 16 --gpus_per_actor 1

`--data`: a dataset name, a file, a folder or glob of shards, or an object-store URI (a folder
of shards), in the normalized schema. Each distinct (prompt, response) text not yet in
`--cache` is embedded once by a pool of `--actors` MiniLM actors (`actors.ingest`); the cache
is Parquet {key, vector}, keyed as the in-process SQLite cache is. A rerun embeds nothing.
"""

from __future__ import annotations

import sys
import time

from pydantic import BaseModel, ConfigDict, Field

from personal_rm.config import parse_config


class EmbedJobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field("llmfao", description="Shards in the normalized schema (see above).")
    cache: str = Field("results/embeddings", description="Parquet cache: a folder or a URI.")
    actors: int = Field(2, ge=1, description="Encoder actors (one model each).")
    gpus_per_actor: float = Field(0, ge=0, description="GPUs per encoder actor (on a cluster).")
    batch_size: int = Field(64, ge=1, description="Texts per forward pass.")
    address: str | None = Field(None, description="Ray cluster address (default: as jobs do).")
    verbose: bool = Field(False, description="Ray Data's own progress and INFO logs.")


def run(config: EmbedJobConfig) -> int:
    from actors.ingest import embed, read_comparisons
    from actors.local_ray import connect

    connect(config.address, verbose=config.verbose)
    start = time.perf_counter()
    embedded = embed(
        read_comparisons(config.data),
        config.cache,
        actors=config.actors,
        num_gpus=config.gpus_per_actor,
        batch_size=config.batch_size,
    )
    seconds = time.perf_counter() - start
    print(f"embedded {embedded:,} new texts into {config.cache} in {seconds:.0f} s")
    return embedded


def main(argv: list[str] | None = None) -> None:
    run(parse_config(EmbedJobConfig, argv, description=__doc__))


if __name__ == "__main__":
    main(sys.argv[1:])
