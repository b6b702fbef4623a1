"""A Ray Train worker's private memory while it streams its shard, against the dataset's size.

`bench.mrm_sharded_input` compares peaks at 1M and 10M comparisons. This isolates the reading
half of a worker: two fresh actors (one per shard of `streaming_split(2, equal=True)`, as Ray
Train splits) each run `actors.train_shards.epoch_batches`, and `Task.from_row` on every row, as
the trainer does, over the first files of the largest set, with the trainer's batch and shuffle
buffer, and sample their private memory (`RssAnon`) through the pass. If the reader is bounded,
its peak stops growing once the dataset is larger than the blocks Ray Data keeps in flight, and
its memory is flat over the rest of the pass.

    python -m bench.shard_reader_memory --comparisons 1000000,2000000,5000000,10000000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import ray
import ray.data
from rich.console import Console
from rich.table import Table

from actors.train_shards import epoch_batches
from bench.mrm_sharded_input import USERS_PER_FILE, PrivateMemory, write_users
from personal_rm.mrm import Task


@ray.remote(num_cpus=0.5)
class Reader:
    """One worker's read loop, in its own fresh process."""

    def read(self, shard: ray.data.DataIterator, batch: int, shuffle: int, every: int) -> dict:
        private, trace = PrivateMemory(), []
        for step, rows in enumerate(
            epoch_batches(shard, batch, shuffle_rows=shuffle, seed=0, epoch=0)
        ):
            tasks = [Task.from_row(row) for row in rows]  # as the trainer's ShardTasks does
            if step % every == 0:
                trace.append(round(private.current_mb()))
        assert tasks, "an empty shard"
        return {"batches": step + 1, "peak_private_mb": round(private.stop()), "trace_mb": trace}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comparisons", default="1000000,2000000,5000000,10000000")
    parser.add_argument("--per_user", type=int, default=100)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8, help="Users per local meta-batch.")
    parser.add_argument("--shuffle_users", type=int, default=256)
    parser.add_argument("--every", type=int, default=1000, help="Batches between samples.")
    parser.add_argument("--data_dir", type=Path, default=Path("/tmp/prm_mrm_input"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/shard_reader_memory.json"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.comparisons.split(",")]
    ray.init(address="local", num_cpus=2, object_store_memory=2 * 1024**3, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    folder = write_users(args.data_dir, max(sizes), args.per_user, args.dim, 0)
    files = sorted(str(f) for f in folder.glob("*.parquet"))
    rows = []
    for size in sizes:
        chosen = files[: size // args.per_user // USERS_PER_FILE]
        dataset = ray.data.read_parquet(chosen, override_num_blocks=len(chosen))
        readers = [Reader.remote() for _ in range(2)]
        shards = dataset.streaming_split(2, equal=True)
        runs = ray.get(
            [
                r.read.remote(s, args.batch, args.shuffle_users, args.every)
                for r, s in zip(readers, shards, strict=True)
            ]
        )
        for reader in readers:
            ray.kill(reader)
        rows.append({"comparisons": size, "files": len(chosen), "readers": runs})
        print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"args": vars(args) | {"data_dir": str(args.data_dir), "out": str(args.out)}}
    args.out.write_text(json.dumps(record | {"runs": rows}, indent=1))

    table = Table(title="A reader's private memory (RssAnon, MB) streaming its half of the data")
    for column in (
        "comparisons",
        "blocks per reader",
        "batches",
        "peak",
        f"every {args.every} batches",
    ):
        table.add_column(column)
    for row in rows:
        worst = max(row["readers"], key=lambda r: r["peak_private_mb"])
        table.add_row(
            f"{row['comparisons']:,}",
            f"{row['files'] / 2:g}",
            str(worst["batches"]),
            str(worst["peak_private_mb"]),
            " ".join(map(str, worst["trace_mb"])),
        )
    Console().print(table)
    first, last = rows[0], rows[-1]
    peak = [max(r["peak_private_mb"] for r in row["readers"]) for row in (first, last)]
    print(f"largest / smallest dataset: {peak[1] / peak[0]:.2f}x the peak")


if __name__ == "__main__":
    main()
