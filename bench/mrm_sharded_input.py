"""MRM meta-training input at scale: per-worker memory and throughput, streamed vs held shards.

Writes a seeded synthetic dataset of precomputed features (one Parquet row per user,
`Task.to_row` in float16) at each size, then meta-trains on Ray Train:

- **streamed** (the trainer as it is): each worker reads its `get_dataset_shard` a local
  meta-batch at a time;
- **held** (the baseline, the pre-Ray-Data path): the same loop, but each worker first holds its
  whole shard in memory, as it did when it `ray.get` its users, and replays it.

Memory runs (one epoch at every size, 2 workers) record each worker's peak RSS two ways:
`ru_maxrss`, which also counts the pages of the node's shared object store the worker has
mapped (bounded by `object_store_memory`, shared by every process on the node), and the peak of
its private memory (`RssAnon`, sampled every 20 ms), which is what a worker adds to the node.
Throughput runs (smallest size, 1 and 2 workers, per `--throughput_batches` meta-batch size)
time the steady state: the steps of the epochs after the first, each timed from its first batch, so
actor and Ray Data start-up are not counted. The table prints the ratios: 10M vs 1M peak
memory per path, and 2 vs 1 workers' steps/s on the same data.

    python -m bench.mrm_sharded_input --comparisons 1000000,10000000
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.train
import torch
from rich.console import Console
from rich.table import Table

from actors.mrm_trainer import RayTrainConfig, ShardTasks, fit_distributed, train_loop_per_worker
from personal_rm.mrm import MRMConfig, Task

USERS_PER_FILE = 2000


def write_users(out: Path, comparisons: int, per_user: int, dim: int, seed: int) -> Path:
    """`comparisons // per_user` users, each a Dirichlet mix of 4 true reward directions, whose
    choices are Bradley-Terry draws; one file per `USERS_PER_FILE` users, each seeded by its
    number, so a size's files are the same whichever run writes them."""
    folder = out / f"users_{comparisons}_{per_user}_{dim}_{seed}"
    users = comparisons // per_user
    files = -(-users // USERS_PER_FILE)
    if (folder / "_done").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    directions = np.random.default_rng(seed).standard_normal((4, dim)) / np.sqrt(dim)
    for f in range(files):
        rng = np.random.default_rng([seed, f])
        first, last = f * USERS_PER_FILE, min(users, (f + 1) * USERS_PER_FILE)
        rows = []
        for index in range(first, last):
            theta = rng.dirichlet(np.full(4, 0.3)) @ directions * 4.0
            a, b = rng.standard_normal((2, per_user, dim)).astype(np.float32)
            a_wins = rng.random(per_user) < 1 / (1 + np.exp(-(a - b) @ theta))
            chosen, rejected = np.where(a_wins[:, None], a, b), np.where(a_wins[:, None], b, a)
            rows.append(Task(f"u{index:09d}", index, chosen, rejected).to_row("float16"))
        pq.write_table(pa.Table.from_pylist(rows), folder / f"part-{f:05d}.parquet")
    (folder / "_done").touch()
    return folder


class HeldShard:
    """A worker's shard read whole on the first epoch and replayed after: the old path's
    memory (the worker holds all of its users), behind the `DataIterator` calls the loop makes."""

    def __init__(self, shard: ray.data.DataIterator) -> None:
        self.shard, self.batches = shard, None

    def iter_batches(self, **kwargs: Any) -> list[dict[str, np.ndarray]]:
        if self.batches is None:
            self.batches = list(self.shard.iter_batches(**kwargs))
        return self.batches


class PrivateMemory:
    """The peak of this process's private resident memory (`RssAnon`), sampled in a thread."""

    def __init__(self, every_s: float = 0.02) -> None:
        self.peak_kb, self.every_s = 0, every_s
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    @staticmethod
    def current_mb() -> float:
        status = Path("/proc/self/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("RssAnon:"))
        return int(line.split()[1]) / 1024

    def _sample(self) -> None:
        while not self.done.wait(self.every_s):
            self.peak_kb = max(self.peak_kb, self.current_mb() * 1024)

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        return self.peak_kb / 1024


def measured(path: str, out: Path):
    """The real worker loop, wrapped to hold its shard (`path="held"`) and to write its peak
    memory, torch threads and each epoch's step time (first batch in to stream exhausted, so
    epoch boundaries, checkpoints and reports are not counted) to `out/rank<r>.json`."""

    def loop(config: dict[str, Any]) -> None:
        if path == "held":
            real_shard = ray.train.get_dataset_shard
            ray.train.get_dataset_shard = lambda name: HeldShard(real_shard(name))
        epochs: list[float] = []
        real_epoch = ShardTasks.epoch

        def timed_epoch(self: ShardTasks, epoch: int) -> Iterator[list[Task]]:
            batches = real_epoch(self, epoch)
            first = next(batches)
            start = time.perf_counter()
            yield first
            yield from batches
            epochs.append(time.perf_counter() - start)

        ShardTasks.epoch = timed_epoch
        private = PrivateMemory()
        train_loop_per_worker(config)
        private_mb = private.stop()
        rank = ray.train.get_context().get_world_rank()
        record = {
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "private_mb": private_mb,
            "epoch_step_s": epochs,
            "torch_threads": torch.get_num_threads(),
        }
        (out / f"rank{rank}.json").write_text(json.dumps(record))

    return loop


def run(folder: Path, path: str, workers: int, config: MRMConfig, storage: Path) -> dict:
    with tempfile.TemporaryDirectory(dir=storage) as scratch:
        out = Path(scratch)
        # One block per file (25.6 MB): Ray Data would merge files into blocks up to 128 MiB,
        # and a worker's memory is bounded by its blocks in flight, not by the dataset.
        files = sorted(folder.glob("*.parquet"))
        dataset = ray.data.read_parquet([str(f) for f in files], override_num_blocks=len(files))
        distributed = RayTrainConfig(
            num_workers=workers, cpus_per_worker=0.5, storage_path=out, name="bench"
        )
        start = time.perf_counter()
        _, result = fit_distributed(dataset, config, distributed, train_loop=measured(path, out))
        wall = time.perf_counter() - start
        ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(workers)]
    steps = int(result.metrics["steps"])  # per epoch
    # Steady state: the epochs after the first (start-up, and the held path's first read), on
    # the slowest worker.
    steady_s = max(sum(r["epoch_step_s"][1:]) for r in ranks)
    return {
        "path": path,
        "workers": workers,
        "tasks_per_batch": config.tasks_per_batch,
        "epochs": config.epochs,
        "peak_rss_mb": [round(r["peak_mb"]) for r in ranks],
        "peak_private_mb": [round(r["private_mb"]) for r in ranks],
        "torch_threads": [r["torch_threads"] for r in ranks],
        "steps_per_epoch": steps,
        "steady_steps_per_s": steps * (config.epochs - 1) / steady_s if config.epochs > 1 else None,
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comparisons", default="1000000,10000000")
    parser.add_argument("--per_user", type=int, default=100)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--throughput_batches", default="16,128", help="Meta-batch sizes (users) to time."
    )
    parser.add_argument("--throughput_epochs", type=int, default=3)
    parser.add_argument("--data_dir", type=Path, default=Path("/tmp/prm_mrm_input"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/mrm_sharded_input.json"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.comparisons.split(",")]
    ray.init(address="local", num_cpus=2, object_store_memory=2 * 1024**3)
    config = MRMConfig(epochs=1, init="random", num_bases=16)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    folders = {s: write_users(args.data_dir, s, args.per_user, args.dim, args.seed) for s in sizes}
    plan = [(size, path, 2, config) for size in sizes for path in ("streamed", "held")]
    for batch in (int(b) for b in args.throughput_batches.split(",")):
        timed = config.model_copy(
            update={"epochs": args.throughput_epochs, "tasks_per_batch": batch}
        )
        plan += [(sizes[0], path, w, timed) for path in ("streamed", "held") for w in (1, 2)]
    rows = []
    for size, path, workers, run_config in plan:
        row = {"comparisons": size, **run(folders[size], path, workers, run_config, args.data_dir)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"args": vars(args) | {"data_dir": str(args.data_dir), "out": str(args.out)}}
    args.out.write_text(json.dumps(record | {"runs": rows}, indent=1))
    report(rows, sizes)


def report(rows: list[dict], sizes: list[int]) -> None:
    console = Console()
    memory = Table(title="Peak memory per worker, one epoch, 2 workers (MB)")
    for column in ("comparisons", "path", "private (RssAnon)", "RSS incl. object store pages"):
        memory.add_column(column)
    for r in (r for r in rows if r["epochs"] == 1):
        memory.add_row(
            f"{r['comparisons']:,}",
            r["path"],
            " / ".join(map(str, r["peak_private_mb"])),
            " / ".join(map(str, r["peak_rss_mb"])),
        )
    console.print(memory)
    small, large = sizes[0], sizes[-1]
    for path in ("streamed", "held"):
        pair = [
            next(r for r in rows if (r["comparisons"], r["path"], r["epochs"]) == (size, path, 1))
            for size in (small, large)
        ]
        for key, name in (("peak_private_mb", "private"), ("peak_rss_mb", "RSS")):
            growth = max(pair[1][key]) / max(pair[0][key])
            console.print(
                f"{path}: largest worker's peak {name}, {large:,} vs {small:,}: {growth:.2f}x"
            )

    throughput = Table(title=f"Steady-state steps/s at {small:,} comparisons")
    for column in ("path", "users per meta-batch", "1 worker", "2 workers", "2 vs 1"):
        throughput.add_column(column)
    timed = {
        (r["path"], r["tasks_per_batch"], r["workers"]): r["steady_steps_per_s"]
        for r in rows
        if r["epochs"] > 1
    }
    for path, batch in sorted({key[:2] for key in timed}, key=lambda k: (k[0] != "streamed", k[1])):
        one, two = timed[path, batch, 1], timed[path, batch, 2]
        throughput.add_row(path, str(batch), f"{one:.1f}", f"{two:.1f}", f"{two / one:.2f}x")
    console.print(throughput)


if __name__ == "__main__":
    main()
