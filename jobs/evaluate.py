r"""Evaluate personalized reward methods on one dataset, seen and unseen users, k-shot.

    python -m jobs.evaluate --methods bt_global,bt_user,lowrank,mrm --k 0,4,8,16 --out results/
    python -m jobs.evaluate --data jester --config my.yaml --mrm.epochs 50
    python -m jobs.evaluate --methods bt_global,rubric,mrm,genrm --k 0,4,8 --test_per_user 2 \
        --genrm.backend.model results/smollm2/genrm/sft

`genrm` is the LLM judge (P-GenRM) through any backend (`--genrm.backend.kind vllm` on GPUs),
scored on the very comparisons the feature methods are; `--test_per_user` caps every user's
test comparisons (a seeded draw), as an LLM on CPU needs.

Writes `accuracy.json` (the contract every method reports through), `accuracy.png`,
`tables.md` and the resolved `config.yaml` to `--out`, and prints the tables.
"""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

from pydantic import Field

from personal_rm.backends import BackendConfig, SamplingConfig, TransformersBackendConfig
from personal_rm.baselines import BaselineConfig
from personal_rm.config import dump_config, parse_config
from personal_rm.data.splits import KShot
from personal_rm.methods import MethodsConfig
from personal_rm.pgenrm.chain_data import JudgeViewConfig
from personal_rm.pgenrm.llm_judge import JudgeFn
from personal_rm.prepare import DataConfig, SplitConfig

GENRM = "genrm"


class GenRMConfig(JudgeViewConfig):
    """The `genrm` method: an LLM judge (a trained SmolLM2 on CPU) through any backend."""

    name: str = Field("genrm", description="The method's name in the tables (e.g. genrm_sft).")
    backend: BackendConfig = TransformersBackendConfig(model="smollm2-135m", batch_size=8)
    n: int = Field(1, ge=1, description="Chains sampled per comparison; the margin is their mean.")
    batch_size: int = Field(8, ge=1, description="Comparisons per backend call (progress steps).")
    sampling: SamplingConfig = SamplingConfig(temperature=0.0, max_new_tokens=256, seed=0)


class EvaluateConfig(DataConfig, MethodsConfig):
    methods: list[str] = Field(
        ["bt_global", "bt_user", "lowrank"], description="Comma-separated method names."
    )
    k: list[KShot] = Field(
        [0, 4, 8, 16], description="Support sizes for unseen users ('all' = every train row)."
    )
    out: Path = Field(Path("results"), description="Folder for accuracy.json/png and tables.md.")
    n_boot: int = Field(1000, description="Bootstrap resamples of users for the 95% intervals.")
    seeds: list[int] = Field(
        [],
        description="Run every method on each of these user splits (overrides seed) and report "
        "the mean over seeds, a two-stage (seeds, then users) bootstrap interval and the paired "
        "difference against --baseline on the same users.",
    )
    baseline: str = Field("bt_global", description="Method the --seeds differences are against.")
    test_per_user: int | None = Field(
        None, ge=1, description="Score at most this many test comparisons per user (seeded)."
    )
    split: SplitConfig = SplitConfig()
    baselines: BaselineConfig = BaselineConfig()
    genrm: GenRMConfig = GenRMConfig()


def genrm_judge(config: GenRMConfig) -> JudgeFn:
    """The `genrm` method's judge: its backend, loaded once, over tasks a batch at a time."""
    from personal_rm.backends import build_backend
    from personal_rm.pgenrm.llm_judge import judge_in_batches

    return partial(
        judge_in_batches,
        build_backend(config.backend),
        n=config.n,
        sampling=config.sampling,
        budget=config.budget(),
        batch_size=config.batch_size,
        desc=config.name,
    )


def run(config: EvaluateConfig) -> list[dict]:
    if config.seeds:
        return run_seeds(config)
    from tqdm.auto import tqdm

    from personal_rm.evaluation import evaluate_judge, evaluate_method
    from personal_rm.methods import build_method
    from personal_rm.prepare import prepare
    from personal_rm.report import plot_accuracy, tables

    methods = [build_method(name, config) for name in config.methods if name != GENRM]
    prepared = prepare(config, config.split)
    split = prepared.split
    if config.test_per_user is not None:
        split = split.capped_test(prepared.pairs.user_ids, config.test_per_user, config.seed)
    validation = prepared.validation()
    rows = []
    for method in tqdm(methods, desc="methods", unit="method"):
        rows += evaluate_method(
            method,
            prepared.pairs,
            split,
            config.k,
            validation=validation,
            seed=config.seed,
            n_boot=config.n_boot,
        )
    if GENRM in config.methods:
        rows += evaluate_judge(
            genrm_judge(config.genrm),
            prepared.comparisons,
            split,
            config.k,
            history_size=config.genrm.history_size,
            seed=config.seed,
            n_boot=config.n_boot,
            name=config.genrm.name,
        )

    config.out.mkdir(parents=True, exist_ok=True)
    result = {
        "dataset": config.data,
        "path": str(prepared.source),
        "seed": config.seed,
        "rows": rows,
    }
    (config.out / "accuracy.json").write_text(json.dumps(result, indent=2))
    dump_config(config, config.out / "config.yaml")
    title = f"{Path(config.data).name}: pairwise accuracy (user-level, 95% CI)"
    plot_accuracy(rows, config.out / "accuracy.png", title=title)
    text = tables(rows, config.data)
    (config.out / "tables.md").write_text(text)
    print(text)
    print(f"wrote {config.out}/accuracy.json, accuracy.png, tables.md")
    return rows


def run_seeds(config: EvaluateConfig) -> list[dict]:
    """Every method on each seed's split; `accuracy_seeds.json` holds the per-seed rows (the
    usual contract, plus `seed`) and the aggregate rows; `tables_seeds.md`, `seeds.png`."""
    from personal_rm.evaluation import evaluate_method
    from personal_rm.methods import build_method
    from personal_rm.multiseed import aggregate, diff_table, plot_seeds, user_accuracies
    from personal_rm.prepare import prepare
    from personal_rm.report import markdown_table

    if GENRM in config.methods or config.test_per_user is not None:
        raise ValueError("--seeds runs feature methods on whole splits: drop genrm/test_per_user")
    per_seed_rows, runs = [], []
    for seed in config.seeds:
        seeded = config.model_copy(update={"seed": seed})
        prepared = prepare(seeded, config.split)
        validation = prepared.validation()
        run: dict = {}
        for name in config.methods:
            method = build_method(name, config)
            rows = evaluate_method(
                method,
                prepared.pairs,
                prepared.split,
                config.k,
                validation=validation,
                seed=seed,
                n_boot=config.n_boot,
            )
            per_seed_rows += [{**row, "seed": seed} for row in rows]
            run[name] = user_accuracies(method, prepared.pairs, prepared.split, config.k, seed)
        runs.append(run)
    baseline = config.baseline if config.baseline in config.methods else None
    rows = aggregate(runs, baseline, n_boot=config.n_boot)
    config.out.mkdir(parents=True, exist_ok=True)
    result = {"dataset": config.data, "seeds": config.seeds, "rows": rows}
    result["per_seed"] = per_seed_rows
    (config.out / "accuracy_seeds.json").write_text(json.dumps(result, indent=2))
    dump_config(config, config.out / "config.yaml")
    text = f"## {config.data}: user-level accuracy, mean over seeds {config.seeds}\n\n"
    text += markdown_table(rows, "user") + "\n"
    for name in config.methods:
        if baseline and name != baseline:
            text += f"\n## {name} - {baseline}, paired, same users\n\n"
            text += diff_table(rows, name, baseline) + "\n"
    (config.out / "tables_seeds.md").write_text(text)
    plot_seeds(rows, config.out / "seeds.png", baseline, title=str(config.data))
    print(text)
    print(f"wrote {config.out}/accuracy_seeds.json, tables_seeds.md, seeds.png")
    return rows


def main(argv: list[str] | None = None) -> None:
    run(parse_config(EvaluateConfig, argv, description=__doc__))


if __name__ == "__main__":
    main(sys.argv[1:])
