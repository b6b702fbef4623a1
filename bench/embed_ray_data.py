"""Embedding on Ray Data vs the in-process encoder, on the same texts, in the same run.

    python -m bench.embed_ray_data --texts 50000 --actors 2

The texts are real Global Dialogues comparisons (or `--data`), repeated with the prompt
numbered until there are `--texts` distinct (prompt, response) texts, written as JSONL shards.
The in-process path is what jobs do on one machine (`load_comparisons` + `embed_comparisons`
with one MiniLM, no cache); the Ray Data path is `jobs.embed` (`actors.ingest`: a task per
shard, the key shuffle, `--actors` MiniLM actors, a Parquet cache). Reported: texts/s of each
and their ratio, the largest difference between the two paths' vectors, and a rerun, which
must embed nothing. Writes bench/results/embed_ray_data.json.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from personal_rm.config import parse_config


class EmbedBenchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field("global_dialogues", description="Source of the real comparisons.")
    texts: int = Field(50_000, description="Distinct texts to embed.")
    shards: int = Field(8, description="JSONL shards they are written as.")
    actors: int = Field(2, description="Encoder actors of the Ray Data path.")
    threads: int = Field(2, description="torch threads of the in-process encoder (the cores).")
    out: Path = Field(Path("bench/results/embed_ray_data.json"), description="Result JSON.")


def write_shards(folder: Path, config: EmbedBenchConfig) -> list:
    """Comparisons whose prompts are numbered copies, until `texts` distinct texts."""
    from personal_rm.data import load_comparisons
    from personal_rm.data.io import write_comparisons
    from personal_rm.embed import pair_text

    source = load_comparisons(config.data).comparisons
    comparisons, texts, copy = [], set(), 0
    while len(texts) < config.texts:
        for c in source:
            numbered = dataclasses.replace(c, prompt=f"{c.prompt} [{copy}]")
            comparisons.append(numbered)
            texts.update(pair_text(numbered.prompt, r) for r in (c.chosen, c.rejected))
            if len(texts) >= config.texts:
                break
        copy += 1
    folder.mkdir(parents=True)
    for i, part in enumerate(np.array_split(np.arange(len(comparisons)), config.shards)):
        write_comparisons([comparisons[j] for j in part], folder / f"part-{i:03d}.jsonl.gz")
    return comparisons


def run(config: EmbedBenchConfig) -> dict:
    import pyarrow.parquet as pq
    import torch

    from actors.ingest import embed, read_comparisons
    from actors.local_ray import connect
    from personal_rm.data import load_comparisons
    from personal_rm.embed import MiniLMEncoder, pair_text, text_key

    work = Path(tempfile.mkdtemp(prefix="embed-bench-"))
    comparisons = write_shards(work / "data", config)
    texts = sorted({pair_text(c.prompt, r) for c in comparisons for r in (c.chosen, c.rejected)})
    print(f"{len(comparisons):,} comparisons, {len(texts):,} distinct texts", flush=True)

    torch.set_num_threads(config.threads)
    start = time.perf_counter()
    loaded = load_comparisons(work / "data").comparisons
    local_texts = sorted({pair_text(c.prompt, r) for c in loaded for r in (c.chosen, c.rejected)})
    local = MiniLMEncoder().encode(local_texts, progress=True)
    local_s = time.perf_counter() - start

    connect(verbose=False, num_cpus=2)
    cache = str(work / "cache")
    start = time.perf_counter()
    embedded = embed(read_comparisons(str(work / "data")), cache, actors=config.actors)
    ray_s = time.perf_counter() - start
    start = time.perf_counter()
    rerun = embed(read_comparisons(str(work / "data")), cache, actors=config.actors)
    rerun_s = time.perf_counter() - start

    table = pq.read_table(cache)
    vectors = np.concatenate([chunk.to_numpy() for chunk in table.column("vector").chunks])
    row = {key: i for i, key in enumerate(table.column("key").to_pylist())}
    ray_vectors = vectors[[row[text_key(MiniLMEncoder.model_id, t)] for t in local_texts]]
    report = {
        "config": config.model_dump(mode="json"),
        "texts": len(texts),
        "in_process_s": round(local_s, 1),
        "ray_data_s": round(ray_s, 1),
        "in_process_texts_per_s": round(len(texts) / local_s, 1),
        "ray_data_texts_per_s": round(embedded / ray_s, 1),
        "ray_data_over_in_process": round(local_s / ray_s, 3),
        "embedded": embedded,
        "max_abs_difference": float(np.abs(ray_vectors - local).max()),
        "rerun_embedded": rerun,
        "rerun_s": round(rerun_s, 1),
    }
    print(
        "| path | texts/s | s |\n|---|---|---|\n"
        f"| in process (1 MiniLM, {config.threads} threads) | "
        f"{report['in_process_texts_per_s']} | {report['in_process_s']} |\n"
        f"| Ray Data ({config.actors} actors) | {report['ray_data_texts_per_s']} "
        f"| {report['ray_data_s']} |\n\n"
        f"ratio {report['ray_data_over_in_process']}x, max |diff| "
        f"{report['max_abs_difference']:.1e}, rerun embedded {rerun} in {rerun_s:.0f} s"
    )
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> None:
    run(parse_config(EmbedBenchConfig, argv, description=__doc__))


if __name__ == "__main__":
    main(sys.argv[1:])
