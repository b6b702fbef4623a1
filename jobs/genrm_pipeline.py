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
stage reads: SFT starts from `--train.model`, GRPO from the SFT folder if there is one, and
evaluation reads the last trained folder (GRPO's, else SFT's, else the untrained model). A
stage is cached: the chains file resumes where it stopped, a training stage that wrote its
folder is skipped (one that was killed resumes from its last epoch's Ray Train checkpoint),
and evaluation is not rerun. `--force S` redoes stage S and every stage after it, dropping
their outputs first, so nothing downstream is left from an older model. Progress: the chains
and judge bars, and the trainer's per-step loss (`--train.train.log_every`).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from actors.genrm_trainer import GenRMRayConfig
from jobs.build_chains import BuildChainsConfig
from jobs.evaluate import EvaluateConfig
from jobs.train_genrm import TrainGenRMConfig
from personal_rm.backends import BackendConfig
from personal_rm.config import Config, dump_config, parse_config

Stage = Literal["chains", "sft", "rl", "evaluate"]
ORDER: tuple[Stage, ...] = ("chains", "sft", "rl", "evaluate")
TRAINED = ("sft", "rl")


class GenRMPipelineConfig(Config):
    data: str = Field("llmfao", description="Dataset name or file, for every stage.")
    seed: int = Field(0, description="The user split's seed, for every stage.")
    out: Path = Field(Path("results/genrm_pipeline"), description="Every stage's outputs.")
    stages: list[Stage] = Field(
        ["chains", "sft", "rl", "evaluate"], description="Stages to run, in this order."
    )
    force: list[Stage] = Field(
        [], description="Redo these stages and every stage after them, although cached."
    )
    chains: BuildChainsConfig = BuildChainsConfig()
    train: TrainGenRMConfig = TrainGenRMConfig(model="smollm2-135m")
    evaluate: EvaluateConfig = EvaluateConfig(
        methods=["bt_global", "rubric", "mrm", "genrm"], k=[0, 4, 8], test_per_user=1
    )


def run(config: GenRMPipelineConfig) -> dict[str, float]:
    """Run the stages; returns each stage's wall seconds."""
    from jobs import build_chains, evaluate, train_genrm

    out, joined = config.out, {"data": config.data, "seed": config.seed}
    chains = config.chains.model_copy(
        update={**joined, "out": out / "chains.jsonl", "teacher": _teacher(config)}
    )
    forced = min((ORDER.index(stage) for stage in config.force), default=len(ORDER))
    for stage in ORDER[forced:]:
        _drop(config, stage)
    seconds = {}
    for stage in config.stages:
        started = time.perf_counter()
        if stage == "chains":
            build_chains.run(chains)  # resumable by itself: it skips the rows it wrote
        elif stage in TRAINED and not (out / "genrm" / stage / "config.json").exists():
            base = config.train.model
            model = _trained(out, ("sft",), base) if stage == "rl" else base
            update = {"chains": chains.out, "out": out / "genrm", "stages": [stage]}
            update |= {"model": model, "train": _ray_run(config)}
            train_genrm.run(config.train.model_copy(update=update))
        elif stage == "evaluate" and not (out / "evaluate" / "accuracy.json").exists():
            model = _trained(out, TRAINED, config.train.model)
            genrm = config.evaluate.genrm
            genrm = genrm.model_copy(update={"backend": _with_model(genrm.backend, model)})
            update = {**joined, "out": out / "evaluate", "genrm": genrm}
            evaluate.run(config.evaluate.model_copy(update=update))
        else:
            print(f"{stage}: cached under {out}")
        seconds[stage] = round(time.perf_counter() - started, 1)
    dump_config(config, out / "config.yaml")
    print("seconds per stage:", seconds)
    return seconds


def _trained(out: Path, stages: tuple[str, ...], untrained: str) -> str:
    """The folder of the last of `stages` that was trained, else the untrained model."""
    done = [out / "genrm" / s for s in stages if (out / "genrm" / s / "config.json").exists()]
    return str(done[-1]) if done else untrained


def _ray_run(config: GenRMPipelineConfig) -> GenRMRayConfig:
    """Ray Train's run of this pipeline (its checkpoints are what a killed stage resumes)."""
    return config.train.train.model_copy(update={"name": f"{config.out.name}-genrm"})


def _drop(config: GenRMPipelineConfig, stage: str) -> None:
    """Remove a stage's outputs (and a training stage's checkpoints), so it runs afresh."""
    out = config.out
    if stage == "chains":  # the rows, and the rubric teacher that wrote them
        for path in (out / "chains.jsonl", *out.glob("rubric_teacher.*")):
            path.unlink(missing_ok=True)
    elif stage in TRAINED:
        run = _ray_run(config)
        shutil.rmtree(out / "genrm" / stage, ignore_errors=True)
        shutil.rmtree(run.storage_path / f"{run.name}-{stage}", ignore_errors=True)
    else:
        shutil.rmtree(out / "evaluate", ignore_errors=True)


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
