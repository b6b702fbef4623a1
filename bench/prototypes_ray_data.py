"""Prototypes at 1M and 10M users on Ray Data, and how large a sample keeps a full fit's centroids.

    python -m bench.prototypes_ray_data --users 1000000,10000000 --sample 200000

Synthetic users (unit vectors in 384-d around `clusters` random tastes, `tests/synthetic_users`)
are written to Parquet shards first, as a user's data would arrive (float16, half the disk).
For each size, `actors.user_prototypes.build_member_index` (seeded sample -> K-means -> a Ray
Data assignment pass -> the member index as Parquet) is timed, while a sampler thread records
the peak RSS of the driver and of every Ray worker process. At the smallest size the centroids
of sample fits of several sizes are compared with a full in-process fit (matched one to one by
cosine), next to a full fit with another seed: the noise floor. Writes
bench/results/prototypes_ray_data.json and prints the tables, with the extrapolation to 100M.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from pydantic import BaseModel, ConfigDict, Field

from personal_rm.config import parse_config

DIM = 384  # MiniLM's width


class RayDataPrototypesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    users: list[int] = Field([1_000_000, 10_000_000], description="Sizes to run.")
    sample: int = Field(200_000, description="Sample the build fits K-means on.")
    samples: list[int] = Field(
        [10_000, 30_000, 100_000, 300_000],
        description="Sample sizes compared with a full fit (at the smallest size).",
    )
    k: int = Field(32, description="Prototypes.")
    clusters: int = Field(
        32, description="True tastes the users scatter around (= k: one best clustering)."
    )
    spread: float = Field(1.0, description="Noise norm relative to the taste vector's.")
    shard_users: int = Field(250_000, description="Users per input Parquet shard.")
    work_dir: Path | None = Field(None, description="Scratch folder (default: a temp dir).")
    out: Path = Field(Path("bench/results/prototypes_ray_data.json"), description="Result.")


def write_users(folder: Path, n: int, config: RayDataPrototypesConfig) -> float:
    """n users as Parquet shards of {user, vector: fixed_size_list<float16>}; returns GB."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.synthetic_users import taste_vectors

    folder.mkdir(parents=True)
    for start in range(0, n, config.shard_users):
        ids = np.arange(start, min(n, start + config.shard_users))
        _, vectors = taste_vectors(ids, DIM, config.clusters, config.spread)
        values = pa.array(vectors.astype(np.float16).ravel())
        table = pa.table(
            {
                "user": pa.array(np.char.add("u", ids.astype(str))),
                "vector": pa.FixedSizeListArray.from_arrays(values, DIM),
            }
        )
        pq.write_table(table, folder / f"users-{start:010d}.parquet", compression="none")
    return sum(f.stat().st_size for f in folder.iterdir()) / 1e9


class PeakMemory:
    """Peak RSS of this process and of its Ray's worker processes (`ray::` in their name, among
    this process's descendants: not another Ray on the machine), sampled every 0.2 s."""

    def __enter__(self) -> PeakMemory:
        self.driver = self.worker = self.workers_total = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.2):
            self.driver = max(self.driver, me.memory_info().rss / 2**20)
            workers = []
            for process in me.children(recursive=True):
                try:
                    if process.name().startswith("ray::"):
                        workers.append(process.memory_info().rss / 2**20)
                except psutil.NoSuchProcess:
                    continue
            if workers:
                self.worker = max(self.worker, max(workers))
                self.workers_total = max(self.workers_total, sum(workers))

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def matched_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each centroid of `a` with its partner in `b`, matched one to one (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-(a @ b.T))
    return (a[rows] * b[cols]).sum(1)


def inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    """K-means' objective on the unit vectors: mean squared distance to the nearest centroid."""
    return float(np.mean(2 - 2 * (x @ centroids.T).max(1)))


def sample_error(folder: Path, config: RayDataPrototypesConfig) -> list[dict]:
    """Sample fits of each size vs a full fit, and a full fit with another seed (the floor):
    centroids matched one to one, and the objective on all users relative to the full fit's."""
    import ray.data

    from actors.user_prototypes import fit_centroids, sample_vectors
    from personal_rm.pgenrm.prototypes import PrototypeConfig, kmeans_centroids, unit

    users = ray.data.read_parquet(str(folder))
    everyone = sample_vectors(users, users.count(), seed=0)  # fraction 1: all of them
    clustering = PrototypeConfig(k=config.k)
    full = unit(kmeans_centroids(everyone, clustering))
    rows = []
    for name, centroids in [
        (
            "full fit, seed 1",
            unit(kmeans_centroids(everyone, clustering.model_copy(update={"seed": 1}))),
        ),
        *((f"sample {s:,}", fit_centroids(users, clustering, s)) for s in config.samples),
    ]:
        cosine = matched_cosines(centroids, full)
        rows.append(
            {
                "fit": name,
                "mean_cosine_distance": float(1 - cosine.mean()),
                "max_cosine_distance": float(1 - cosine.min()),
                "objective_vs_full": inertia(everyone, centroids) / inertia(everyone, full) - 1,
            }
        )
        print(rows[-1], flush=True)
    return rows


def run(config: RayDataPrototypesConfig) -> dict:
    import ray.data

    from actors.local_ray import connect
    from actors.user_prototypes import build_member_index
    from personal_rm.pgenrm.prototypes import PrototypeConfig

    connect(verbose=False, num_cpus=2, object_store_memory=2 * 1024**3)
    work = Path(config.work_dir or tempfile.mkdtemp(prefix="prototypes-"))
    sizes, errors = [], []
    for n in sorted(config.users):
        folder = work / f"users-{n}"
        t = time.perf_counter()
        gigabytes = write_users(folder, n, config)
        write_s = time.perf_counter() - t
        users = ray.data.read_parquet(str(folder))
        t = time.perf_counter()
        with PeakMemory() as memory:
            build_member_index(
                users, PrototypeConfig(k=config.k), config.sample, work / f"index-{n}"
            )
        build_s = time.perf_counter() - t
        sizes.append(
            {
                "users": n,
                "input_gb": round(gigabytes, 2),
                "write_input_s": round(write_s, 1),
                "build_s": round(build_s, 1),
                "users_per_s": round(n / build_s),
                "peak_rss_driver_mb": round(memory.driver),
                "peak_rss_worker_mb": round(memory.worker),
                "peak_rss_workers_total_mb": round(memory.workers_total),
            }
        )
        print(sizes[-1], flush=True)
        if not errors:
            errors = sample_error(folder, config)
        shutil.rmtree(folder)
    report = {
        "config": config.model_dump(mode="json"),
        "sizes": sizes,
        "sample_vs_full_fit": errors,
        "extrapolated_100m": extrapolate(sizes),
    }
    print(tables(report))
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(report, indent=2))
    return report


def extrapolate(sizes: list[dict]) -> dict:
    """100M from the two largest measured sizes: build time linear in users (the sample fit is a
    fixed cost), the slope measured between them; memory as at the largest (streaming)."""
    if len(sizes) < 2:
        return {}
    a, b = sizes[-2], sizes[-1]
    per_user = (b["build_s"] - a["build_s"]) / (b["users"] - a["users"])
    return {
        "build_s": round(b["build_s"] + per_user * (100_000_000 - b["users"])),
        "seconds_per_million_users": round(per_user * 1e6, 1),
        "peak_rss_worker_mb": b["peak_rss_worker_mb"],
        "input_gb": round(b["input_gb"] * 100_000_000 / b["users"]),
    }


def tables(report: dict) -> str:
    lines = [
        "| users | input GB | build s | users/s | peak RSS driver MB | worker MB | workers MB |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['users']:,} | {r['input_gb']} | {r['build_s']} | {r['users_per_s']:,} "
        f"| {r['peak_rss_driver_mb']} | {r['peak_rss_worker_mb']} "
        f"| {r['peak_rss_workers_total_mb']} |"
        for r in report["sizes"]
    ]
    lines += [
        "",
        "| fit vs full fit | mean cosine distance | max | objective vs full |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['fit']} | {r['mean_cosine_distance']:.2e} | {r['max_cosine_distance']:.2e} "
        f"| {100 * r['objective_vs_full']:+.3f}% |"
        for r in report["sample_vs_full_fit"]
    ]
    if report["extrapolated_100m"]:
        x = report["extrapolated_100m"]
        lines += [
            "",
            f"100M users (extrapolated): ~{x['build_s']:,} s on this machine "
            f"({x['seconds_per_million_users']} s per extra million), worker peak RSS "
            f"~{x['peak_rss_worker_mb']} MB, {x['input_gb']} GB of float16 input",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    run(parse_config(RayDataPrototypesConfig, argv, description=__doc__))


if __name__ == "__main__":
    main(sys.argv[1:])
