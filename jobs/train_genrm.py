r"""Train the generative judge on Ray Train: SFT on accepted chains, then GRPO.

    python -m jobs.train_genrm --model results/tiny --chains results/chains/chains.jsonl \
        --sft.lr 3e-3 --rl.lr 1e-4 --out results/genrm
    python -m jobs.train_genrm --model smollm2-135m --stages sft --sft.max_length 1024
    python -m jobs.train_genrm --model Qwen/Qwen3-1.7B --train.use_gpu true \
        --train.num_workers 8 --train.dtype bfloat16 --stages sft,rl

SFT trains on the rows with a completion; RL on every row's prompt (reward: the chain prefers
the response the user chose, plus a format reward). Each stage writes a Hugging Face folder
(`out/sft`, `out/rl`) that transformers and vLLM load directly; RL starts from `out/sft`
when SFT ran. Rerunning with the same `--train.name` and `--train.storage_path` resumes each
stage from its last checkpoint. Writes `training.json` and `config.yaml` to `--out`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

from pydantic import Field

from actors.genrm_trainer import GenRMRayConfig
from personal_rm.config import Config, dump_config, parse_config
from personal_rm.pgenrm.training import GRPOConfig, SFTConfig


class TrainGenRMConfig(Config):
    model: str = Field(
        ..., description="Model to start from: a Hugging Face folder, a hub name, smollm2-135m."
    )
    chains: Path = Field(
        Path("results/chains/chains.jsonl"),
        description="Chain rows from jobs.build_chains: a JSONL file, a glob, or a URI.",
    )
    out: Path = Field(Path("results/genrm"), description="Folder for the trained models.")
    stages: list[Literal["sft", "rl"]] = Field(["sft", "rl"], description="Stages to run.")
    sft_max_rows: int | None = Field(None, description="Only the first N accepted chains.")
    rl_max_rows: int | None = Field(None, description="Only the first N RL prompts.")
    address: str | None = Field(None, description="Ray cluster address; default: local.")
    sft: SFTConfig = SFTConfig()
    rl: GRPOConfig = GRPOConfig()
    train: GenRMRayConfig = GenRMRayConfig()


def run(config: TrainGenRMConfig) -> dict[str, Path]:
    from actors.genrm_trainer import chain_dataset, fit_genrm
    from actors.local_ray import connect

    connect(config.address)
    model, outputs, history = config.model, {}, {}
    for stage in config.stages:
        stage_config = config.sft if stage == "sft" else config.rl
        max_rows = config.sft_max_rows if stage == "sft" else config.rl_max_rows
        rows = chain_dataset(config.chains, stage, max_rows)
        print(f"{stage}: {rows.count()} rows from {config.chains}")
        out = config.out / stage
        result = fit_genrm(stage, rows, model, stage_config, config.train, out)
        history[stage] = result.return_value
        outputs[stage] = model = out
        print(f"{stage}: wrote {out}")
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "training.json").write_text(json.dumps(history, indent=2, default=float))
    dump_config(config, config.out / "config.yaml")
    return outputs


def main(argv: list[str] | None = None) -> None:
    run(parse_config(TrainGenRMConfig, argv, description=__doc__))


if __name__ == "__main__":
    main(sys.argv[1:])
