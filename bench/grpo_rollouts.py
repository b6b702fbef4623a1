r"""GRPO with its groups sampled through vLLM from the live policy, against through the policy
itself (transformers generate): the same prompts, steps and seeds, one run after the other.

    python -m bench.grpo_rollouts --model results/smollm2/genrm/sft \
        --chains results/smollm2/chains.jsonl --rl_max_rows 4 --rl.prompts_per_step 2 \
        --rl.group_size 4 --rl.max_new_tokens 256 --rl.lr 1e-5 --rl.temperature 0.7 \
        --train.num_workers 1 --train.cpus_per_worker 2

Each run is `jobs.train_genrm --stages rl` with `--rl.rollout policy`, then `vllm` (an
in-process engine per worker, its weights reloaded from the policy before every step). Per
run: the wall time (Ray Train's start, the engine's, every step and the checkpoint), the mean
seconds a step and of its sampling and the worker's peak resident memory (measured in the
worker: with vLLM rollouts it holds the engine too), and the stage's metrics. The two
runs' rewards differ only through sampling: the policies start from the same weights. Writes
`--out` (JSON) and prints a table.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from jobs.train_genrm import TrainGenRMConfig
from personal_rm.config import parse_config


class GRPORolloutsConfig(TrainGenRMConfig):
    """`jobs.train_genrm`'s flags (its `--stages` is ignored: RL only)."""

    bench_out: Path = Field(Path("bench/results/grpo_rollouts.json"), description="Result JSON.")
    rollouts: list[Literal["policy", "vllm"]] = Field(
        ["policy", "vllm"], description="Runs, in order; the ratios need both."
    )


def run(config: GRPORolloutsConfig) -> dict:
    from jobs.train_genrm import run as train

    rows = []
    for rollout in config.rollouts:
        name = f"{config.train.name}-rollout-{rollout}-{time.strftime('%Y%m%d-%H%M%S')}"
        each = config.model_copy(
            update={
                "stages": ["rl"],
                "out": config.out / f"rollout-{rollout}",
                "rl": config.rl.model_copy(update={"rollout": rollout}),
                "train": config.train.model_copy(update={"name": name}),
            }
        )
        started = time.perf_counter()
        train(each)
        wall = time.perf_counter() - started
        epochs = json.loads((each.out / "training.json").read_text())["rl"]
        rows.append({"rollout": rollout, "wall_seconds": round(wall, 1), "epochs": epochs})
        print(rows[-1], flush=True)
    table = [
        "| rollout | wall (s) | s/step | sampling s/step | worker peak RSS (GiB) | reward | "
        "parse rate | KL |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        last = r["epochs"][-1]
        table.append(
            f"| {r['rollout']} | {r['wall_seconds']:.0f} | {last['step_seconds']:.1f} | "
            f"{last['rollout_seconds']:.1f} | {last['peak_rss_gib']:.1f} | "
            f"{last['reward']:.3f} | {last['parse_rate']:.2f} | "
            f"{last['kl']:.1e} |"
        )
    summary = ""
    if len(rows) == 2:
        policy, vllm = (r["epochs"][-1] for r in rows)
        summary = (
            f"vLLM rollouts: sampling {policy['rollout_seconds'] / vllm['rollout_seconds']:.1f}x, "
            f"step {policy['step_seconds'] / vllm['step_seconds']:.1f}x, "
            f"wall {rows[0]['wall_seconds'] / rows[1]['wall_seconds']:.1f}x the policy's"
        )
    print("\n".join(table) + "\n" + summary)
    result = {
        "command": "python -m bench.grpo_rollouts " + " ".join(sys.argv[1:]),
        "rows": rows,
        "table": "\n".join(table),
        "summary": summary,
    }
    config.bench_out.parent.mkdir(parents=True, exist_ok=True)
    config.bench_out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":  # vLLM may start processes with spawn
    run(parse_config(GRPORolloutsConfig, sys.argv[1:], description=__doc__))
