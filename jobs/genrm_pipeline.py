r"""P-GenRM's judge end to end: teacher chains -> SFT -> GRPO -> evaluation, each stage cached.

    python -m jobs.genrm_pipeline                                  # SmolLM2 on CPU, LLMFAO
    python -m jobs.genrm_pipeline --stages chains,sft,evaluate --train.sft_max_rows 400
    python -m jobs.genrm_pipeline --train.model Qwen/Qwen3-1.7B --train.train.use_gpu true \
        --evaluate.genrm.backend.kind vllm --chains.teacher.kind vllm \
        --chains.teacher.model Qwen/Qwen3-8B

The stages are the jobs `build_chains`, `train_genrm` (its `sft` and `rl` stages) and
`evaluate`, with their own config sections (`--chains.*`, `--train.*`, `--evaluate.*`); this
job sets what joins them: one `--data` and `--seed` (so the chains come from the seen users
that evaluation holds out from its unseen ones), the files under `--out`, and the model each
stage reads (GRPO starts from the SFT folder, evaluation reads the last trained one). A stage
is cached: the chains file resumes where it stopped and is not rebuilt, a training stage that
wrote its folder is skipped (and one that was killed resumes from its last epoch's Ray Train
checkpoint), evaluation reruns only with `--force evaluate`. Progress: the chains and judge
bars, and the trainer's per-step loss (`--train.train.log_every`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from jobs.build_chains import BuildChainsConfig
from jobs.evaluate import EvaluateConfig
from jobs.train_genrm import TrainGenRMConfig
from personal_rm.backends import BackendConfig
from personal_rm.config import Config, dump_config, parse_config

Stage = Literal["chains", "sft", "rl", "evaluate"]


class GenRMPipelineConfig(Config):
    data: str = Field("llmfao", description="Dataset name or file, for every stage.")
    seed: int = Field(0, description="The user split's seed, for every stage.")
    out: Path = Field(Path("results/genrm_pipeline"), description="Every stage's outputs.")
    stages: list[Stage] = Field(
        ["chains", "sft", "rl", "evaluate"], description="Stages to run, in this order."
    )
    force: list[Stage] = Field([], description="Stages to redo although cached.")
    chains: BuildChainsConfig = BuildChainsConfig()
    train: TrainGenRMConfig = TrainGenRMConfig(model="smollm2-135m")
    evaluate: EvaluateConfig = EvaluateConfig(
        methods=["bt_global", "rubric", "mrm", "genrm"], k=[0, 4, 8], test_per_user=1
    )


def run(config: GenRMPipelineConfig) -> dict[str, float]:
    """Run the stages; returns each stage's wall seconds (0.0 for a cached one)."""
    from jobs import build_chains, evaluate, train_genrm

    out, joined = config.out, {"data": config.data, "seed": config.seed}
    chains = config.chains.model_copy(
        update={**joined, "out": out / "chains.jsonl", "teacher": _teacher(config)}
    )
    model, seconds = config.train.model, {}
    for stage in config.stages:
        started, redo = time.perf_counter(), stage in config.force
        if stage == "chains":
            build_chains.run(chains)  # resumable by itself: it skips the rows it wrote
        elif stage in ("sft", "rl"):
            folder = out / "genrm" / stage
            if redo or not (folder / "config.json").exists():
                ray_run = config.train.train.model_copy(update={"name": f"{out.name}-genrm"})
                update = {"model": model, "chains": chains.out, "out": out / "genrm"}
                update |= {"stages": [stage], "train": ray_run}
                train_genrm.run(config.train.model_copy(update=update))
            else:
                print(f"{stage}: cached, {folder}")
            model = str(folder)
        elif redo or not (out / "evaluate" / "accuracy.json").exists():
            genrm = config.evaluate.genrm
            genrm = genrm.model_copy(update={"backend": _with_model(genrm.backend, model)})
            evaluate.run(
                config.evaluate.model_copy(
                    update={**joined, "out": out / "evaluate", "genrm": genrm}
                )
            )
        else:
            print(f"evaluate: cached, {out / 'evaluate' / 'tables.md'}")
        seconds[stage] = round(time.perf_counter() - started, 1)
    dump_config(config, out / "config.yaml")
    print("seconds per stage:", seconds)
    return seconds


def _teacher(config: GenRMPipelineConfig) -> BackendConfig:
    """The rubric teacher's fitted judge lives with this run's outputs."""
    teacher = config.chains.teacher
    if teacher.kind == "rubric":
        return teacher.model_copy(update={"judge": str(config.out / "rubric_teacher")})
    return teacher


def _with_model(backend: BackendConfig, model: str) -> BackendConfig:
    """The evaluated judge is the last model trained (a backend with no model is not an LLM)."""
    return backend.model_copy(update={"model": model}) if hasattr(backend, "model") else backend


def main(argv: list[str] | None = None) -> None:
    run(parse_config(GenRMPipelineConfig, argv, description=__doc__))


if __name__ == "__main__":
    main(sys.argv[1:])
