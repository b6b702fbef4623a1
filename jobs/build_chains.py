r"""Build the GenRM chain dataset: a teacher writes chains for training comparisons.

    python -m jobs.build_chains --out results/chains/chains.jsonl            # rubric teacher
    python -m jobs.build_chains --teacher.kind vllm --teacher.model Qwen/Qwen3-8B \
        --teacher.tensor_parallel_size 2 --actor_gpus 2 --tries 4 --out results/chains/chains.jsonl

For each seen user's training comparison, the teacher sees the user's other training
comparisons (leave-one-out: h drawn, the latest that fit in `--history_tokens` of the
student's tokenizer shown, texts clipped, since this prompt is the student's SFT prompt) and
the two responses in a seeded random order, and samples `--tries` chains; the first chain
that prefers the user's actual choice, with consistent scores, becomes the SFT target
(rejection sampling). Every comparison gets a row, accepted or not, with provenance; a rerun
skips rows already written. The default teacher on CPU is the rubric judge
(`personal_rm/backends/rubric_teacher.py`), fitted here on the same split's seen users (and
validation users for its epoch choice) and saved to `--teacher.judge` unless that file
exists; `--teacher.kind heuristic` is the rule-based stand-in. Neither is an LLM, and each
row's provenance says which wrote it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import Field

from personal_rm.backends import BackendConfig, RubricTeacherConfig, SamplingConfig
from personal_rm.config import dump_config, parse_config
from personal_rm.pgenrm.chain_data import ChainDataConfig
from personal_rm.pgenrm.rubric import RubricConfig
from personal_rm.prepare import SplitConfig


class BuildChainsConfig(ChainDataConfig):
    out: Path = Field(Path("results/chains/chains.jsonl"), description="JSONL to append rows to.")
    tries: int = Field(4, description="R: chains sampled per comparison for rejection sampling.")
    max_rows: int | None = Field(None, description="Only the first N training comparisons.")
    num_actors: int = Field(2, description="Teacher actors (backend replicas).")
    actor_cpus: float = Field(1.0, description="CPUs per teacher actor.")
    actor_gpus: float = Field(0.0, description="GPUs per teacher actor (= tensor_parallel_size).")
    batch_size: int = Field(8, description="Comparisons per actor call.")
    address: str | None = Field(None, description="Ray cluster address; default: local.")
    teacher: BackendConfig = RubricTeacherConfig()
    sampling: SamplingConfig = SamplingConfig(temperature=1.0, max_new_tokens=1536)
    split: SplitConfig = SplitConfig()
    rubric: RubricConfig = Field(
        RubricConfig(), description="How the rubric teacher is fitted (when it is the teacher)."
    )


def fit_rubric_teacher(config: BuildChainsConfig, teacher: RubricTeacherConfig) -> None:
    """Fit the rubric judge on this split's seen users' training rows and save it."""
    from personal_rm.backends.rubric_teacher import save_teacher
    from personal_rm.embed import CachedEncoder, MiniLMEncoder
    from personal_rm.pgenrm.rubric import RubricJudge
    from personal_rm.prepare import DataConfig, prepare

    data = DataConfig(
        **config.model_dump(include=set(DataConfig.model_fields) - {"cache_dir"}),
        cache_dir=teacher.cache_dir,
    )
    prepared = prepare(data, config.split)
    judge = RubricJudge(config.rubric, CachedEncoder(MiniLMEncoder(), teacher.cache_dir))
    judge.fit(prepared.seen_train(), prepared.validation())
    save_teacher(judge, teacher.judge)
    print(f"rubric teacher fitted on {len(prepared.seen_train())} comparisons: {teacher.judge}")


def run(config: BuildChainsConfig) -> dict[str, int]:
    from actors.chain_builder import build_chains
    from actors.local_ray import connect
    from personal_rm.pgenrm.chain_data import load_split, select
    from personal_rm.pgenrm.llm_judge import make_tasks

    teacher = config.teacher
    if isinstance(teacher, RubricTeacherConfig) and not Path(f"{teacher.judge}.json").exists():
        fit_rubric_teacher(config, teacher)
    comparisons, split = load_split(config, config.split)
    train = select(comparisons, split, split.train, split.seen_users)
    tasks = make_tasks(train, train, config.history_size, config.seed)[: config.max_rows]
    print(f"{len(tasks)} training comparisons of {len(split.seen_users)} seen users")
    connect(config.address)
    provenance = {
        "teacher": config.teacher.kind,
        # an LLM's name, the rubric teacher's fitted judge, nothing for the heuristic
        "teacher_model": getattr(teacher, "model", None) or getattr(teacher, "judge", None),
        "llm_teacher": config.teacher.kind not in ("heuristic", "rubric"),
        "temperature": config.sampling.temperature,
        "history_size": config.history_size,
        "history_tokens": config.history_tokens,
        "max_text_chars": config.max_text_chars,
        "data": config.data,
        "seed": config.seed,
    }
    counts = build_chains(
        tasks,
        config.out,
        config.teacher,
        tries=config.tries,
        sampling=config.sampling,
        budget=config.budget(),
        provenance=provenance,
        num_actors=config.num_actors,
        actor_options={"num_cpus": config.actor_cpus, "num_gpus": config.actor_gpus},
        batch_size=config.batch_size,
    )
    dump_config(config, config.out.with_suffix(".config.yaml"))
    print(f"{config.out}: {counts}")
    return counts


def main(argv: list[str] | None = None) -> None:
    run(parse_config(BuildChainsConfig, argv, description=__doc__))


if __name__ == "__main__":
    main(sys.argv[1:])
