"""Can the prototype index hold a million users on two cores?

    python -m bench.prototypes_scale --users 1000000 --k 32

Synthetic users: unit vectors in 384-d (MiniLM's width) around `clusters` random tastes. Fits
`PrototypeIndex` (MiniBatchKMeans above its threshold) with at most `threads` BLAS/OpenMP
threads, and reports fit wall and CPU time, peak memory, the index's own size, and the median
latency of `assign` (one user, nearest of K centroids: O(K d), whatever the number of users)
and of `neighbours` (cosine over the members of one prototype: O(users / K)), at each size of
`sizes`, to show which is flat. Writes bench/results/prototypes_scale.json.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from personal_rm.config import parse_config


class ScaleBenchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    users: int = Field(1_000_000, description="Users in the largest index.")
    sizes: list[int] = Field(
        [10_000, 100_000], description="Smaller indexes, to show how latencies grow."
    )
    dim: int = Field(384, description="Vector width (MiniLM's).")
    k: int = Field(32, description="Prototypes.")
    clusters: int = Field(64, description="True tastes the synthetic users scatter around.")
    spread: float = Field(1.0, description="Noise norm relative to the taste vector's.")
    threads: int = Field(2, description="BLAS/OpenMP threads: the machine's two cores.")
    m: int = Field(8, description="Neighbours per query.")
    queries: int = Field(2000, description="Timed assign / neighbours calls.")
    seed: int = 0
    out: Path = Field(Path("bench/results/prototypes_scale.json"), description="Result JSON.")


def synthetic(n: int, config: ScaleBenchConfig):
    """(n, dim) float32 unit vectors: taste + noise, generated in chunks to bound memory."""
    import numpy as np

    from personal_rm.pgenrm.prototypes import norms

    rng = np.random.default_rng(config.seed)
    tastes = rng.standard_normal((config.clusters, config.dim), dtype=np.float32)
    tastes /= norms(tastes)
    out = np.empty((n, config.dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        rows = slice(start, min(n, start + 100_000))
        size = rows.stop - rows.start
        noise = rng.standard_normal((size, config.dim), dtype=np.float32)
        noise *= config.spread / np.sqrt(config.dim)
        out[rows] = tastes[rng.integers(0, config.clusters, size)] + noise
        out[rows] /= norms(out[rows])
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run(config: ScaleBenchConfig) -> dict:
    import numpy as np
    from threadpoolctl import threadpool_limits

    from personal_rm.pgenrm.prototypes import PrototypeConfig, PrototypeIndex

    rows = []
    with threadpool_limits(config.threads):
        for n in [*config.sizes, config.users]:
            vectors = synthetic(n, config)
            users = np.array([f"u{i}" for i in range(n)], dtype=object)
            before = peak_rss_mb()
            wall, cpu = time.perf_counter(), time.process_time()
            index = PrototypeIndex.fit(
                users, vectors, PrototypeConfig(k=config.k, seed=config.seed)
            )
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            queries = synthetic(config.queries, config.model_copy(update={"seed": config.seed + 1}))
            # Separate loops: a neighbour scan (up to ~100 MB of members at 1M users) would
            # evict the centroids from cache and charge that to the next assignment.
            assign, near = [], []
            for q in queries:
                t = time.perf_counter()
                index.assign(q)
                assign.append(time.perf_counter() - t)
            for q in queries:
                t = time.perf_counter()
                index.neighbours(q, config.m)
                near.append(time.perf_counter() - t)
            sizes = np.diff(index.offsets)
            rows.append(
                {
                    "users": n,
                    "k": len(index),
                    "fit_wall_s": round(wall, 2),
                    "fit_cpu_s": round(cpu, 2),
                    "peak_rss_mb": round(peak_rss_mb(), 0),
                    "rss_growth_during_fit_mb": round(peak_rss_mb() - before, 0),
                    "data_mb": round(vectors.nbytes / 2**20, 0),
                    "index_mb": round((index.vectors.nbytes + index.centroids.nbytes) / 2**20, 0),
                    "assign_median_us": round(1e6 * float(np.median(assign)), 1),
                    "neighbours_median_us": round(1e6 * float(np.median(near)), 1),
                    "members_per_prototype": [int(sizes.min()), int(sizes.max())],
                }
            )
            print(rows[-1], flush=True)
            del index, vectors, users
    lines = [
        f"prototype index, {config.dim}-d, K={config.k}, {config.threads} threads",
        "| users | fit wall s | fit CPU s | peak RSS MB | vectors MB | assign us | "
        f"neighbours (M={config.m}) us | members/prototype |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['users']:,} | {r['fit_wall_s']} | {r['fit_cpu_s']} | {r['peak_rss_mb']:.0f} "
        f"| {r['data_mb']:.0f} | {r['assign_median_us']} | {r['neighbours_median_us']} "
        f"| {r['members_per_prototype'][0]:,}-{r['members_per_prototype'][1]:,} |"
        for r in rows
    ]
    print("\n".join(lines))
    config.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"config": config.model_dump(mode="json"), "rows": rows}
    config.out.write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> None:
    run(parse_config(ScaleBenchConfig, argv, description=__doc__))


if __name__ == "__main__":
    main(sys.argv[1:])
