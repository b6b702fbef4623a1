r"""Fit user prototypes for more users than one machine holds, on Ray Data.

    python -m jobs.fit_prototypes --users 'data/user_vectors/*.parquet' --k 64 \
        --sample 200000 --out results/prototypes
    ray job submit --working-dir . -- python -m jobs.fit_prototypes --users s3://bucket/users/

`--users` is anything Ray Data's `read_parquet` reads (a file, a folder, a glob, an object-store
URI) with a `user` column and a `vector` column (fixed-size lists or Ray tensors). K-means runs
on a seeded sample of `--sample` users; a Ray Data pass assigns everyone else. Writes
`members/prototype=<p>/*.parquet` and `centroids.{json,safetensors}` under `--out`
(`actors.user_prototypes`). `bench/prototypes_ray_data.py` measures how large a sample keeps
the centroids at a full fit's.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from personal_rm.config import parse_config
from personal_rm.pgenrm.prototypes import PrototypeConfig


class FitPrototypesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    users: str = Field(description="Parquet of {user, vector}: path, folder, glob or URI.")
    sample: int = Field(200_000, ge=1, description="Users K-means is fitted on (seeded sample).")
    out: Path = Field(Path("results/prototypes"), description="Member index and centroids.")
    address: str | None = Field(None, description="Ray cluster address (default: as jobs do).")
    verbose: bool = Field(False, description="Ray Data's own progress and INFO logs.")
    k: int = Field(PrototypeConfig().k, ge=1, description="Prototypes.")
    seed: int = Field(0, description="Seeds the sample and K-means.")


def run(config: FitPrototypesConfig) -> None:
    import ray.data

    from actors.local_ray import connect
    from actors.user_prototypes import build_member_index

    connect(config.address, verbose=config.verbose)
    users = ray.data.read_parquet(config.users)
    clustering = PrototypeConfig(k=config.k, seed=config.seed)
    centroids = build_member_index(users, clustering, config.sample, config.out)
    print(f"{len(centroids)} prototypes of {users.count():,} users in {config.out}")


def main(argv: list[str] | None = None) -> None:
    run(parse_config(FitPrototypesConfig, argv, description=__doc__))


if __name__ == "__main__":
    main(sys.argv[1:])
