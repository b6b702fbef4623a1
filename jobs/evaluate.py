"""Evaluate personalized reward methods on one dataset, seen and unseen users, k-shot.

    python -m jobs.evaluate --methods bt_global,bt_user,lowrank --k 0,4,8,16 --out results/
    python -m jobs.evaluate --data jester --config my.yaml --split.seed 3

Writes `accuracy.json` (the contract every method reports through), `accuracy.png`,
`tables.md` and the resolved `config.yaml` to `--out`, and prints the tables.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from personal_rm.baselines import BaselineConfig
from personal_rm.config import dump_config, parse_config
from personal_rm.data.splits import KShot
from personal_rm.embed import DEFAULT_CACHE


class SplitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    unseen_fraction: float = Field(0.4, description="Share of users held out as unseen.")
    validation_fraction: float = Field(
        0.1, description="Share of users kept for model selection, never scored."
    )
    test_fraction: float = Field(
        0.5, description="Share of each user's comparisons held out for scoring."
    )
    min_comparisons: int = Field(
        2, description="Users with fewer comparisons are left out (one train, one test)."
    )


class EvaluateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field(
        "llmfao",
        description="A file in the normalized schema, or a dataset name (llmfao is shipped).",
    )
    format: str = Field(
        "normalized",
        description="Input format: normalized, personal_reward_bench, prism, summarize_feedback.",
    )
    on_error: Literal["raise", "skip"] = Field(
        "raise", description="Stop at the first malformed row, or skip and count them."
    )
    methods: list[str] = Field(
        ["bt_global", "bt_user", "lowrank"], description="Comma-separated method names."
    )
    k: list[KShot] = Field(
        [0, 4, 8, 16], description="Support sizes for unseen users ('all' = every train row)."
    )
    out: Path = Field(
        Path("results"), description="Folder for accuracy.json, accuracy.png, tables.md."
    )
    seed: int = Field(0, description="Seed of the user split, support draws and bootstrap.")
    max_users: int | None = Field(
        None, description="Keep only this many users (a seeded sample), for quick runs."
    )
    n_boot: int = Field(1000, description="Bootstrap resamples of users for the 95% intervals.")
    cache_dir: Path = Field(DEFAULT_CACHE, description="Embedding cache folder.")
    split: SplitConfig = SplitConfig()
    baselines: BaselineConfig = BaselineConfig()


def run(config: EvaluateConfig) -> list[dict]:
    import numpy as np
    from tqdm.auto import tqdm

    from personal_rm.data import resolve_dataset
    from personal_rm.data.formats import load_any
    from personal_rm.data.splits import user_protocol_split
    from personal_rm.embed import CachedEncoder, MiniLMEncoder, embed_comparisons
    from personal_rm.evaluation import evaluate_method
    from personal_rm.methods import build_method
    from personal_rm.report import markdown_table, plot_accuracy

    methods = [build_method(name, config) for name in config.methods]
    path = resolve_dataset(config.data)
    loaded = load_any(path, config.format, on_error=config.on_error)
    if loaded.skipped:
        print(f"skipped {len(loaded.skipped)} malformed rows; first: {loaded.skipped[0]}")
    comparisons = loaded.comparisons
    if config.max_users is not None:
        users = sorted({c.user_id for c in comparisons})
        keep = set(np.random.default_rng(config.seed).permutation(users)[: config.max_users])
        comparisons = [c for c in comparisons if c.user_id in keep]
    print(f"{path}: {len(comparisons)} comparisons, {len({c.user_id for c in comparisons})} users")

    pairs = embed_comparisons(
        comparisons, CachedEncoder(MiniLMEncoder(), config.cache_dir), progress=True
    )
    split = user_protocol_split(pairs.user_ids, seed=config.seed, **config.split.model_dump())
    print(f"users: {len(split.seen_users)} seen, {len(split.validation_users)} validation, "
          f"{len(split.unseen_users)} unseen")  # fmt: skip

    rows = []
    for method in tqdm(methods, desc="methods", unit="method"):
        rows += evaluate_method(
            method, pairs, split, config.k, seed=config.seed, n_boot=config.n_boot
        )

    config.out.mkdir(parents=True, exist_ok=True)
    result = {"dataset": str(config.data), "path": str(path), "seed": config.seed, "rows": rows}
    (config.out / "accuracy.json").write_text(json.dumps(result, indent=2))
    dump_config(config, config.out / "config.yaml")
    title = f"{Path(config.data).name}: pairwise accuracy (user-level, 95% CI)"
    plot_accuracy(rows, config.out / "accuracy.png", title=title)
    tables = (
        f"## {config.data}: user-level accuracy (mean over users) [95% CI]\n\n"
        f"{markdown_table(rows, 'user')}\n\n"
        f"## {config.data}: sample-level accuracy (mean over comparisons) [95% CI]\n\n"
        f"{markdown_table(rows, 'sample')}\n\n"
        "worst-10%-users accuracy (unseen k / seen): "
        + ", ".join(f"{r['method']}@{r['split']}:{r['k']}={r['worst10_user']:.3f}" for r in rows)
        + "\n"
    )
    (config.out / "tables.md").write_text(tables)
    print(tables)
    print(f"wrote {config.out}/accuracy.json, accuracy.png, tables.md")
    return rows


def main(argv: list[str] | None = None) -> None:
    run(parse_config(EvaluateConfig, argv, description=__doc__))


if __name__ == "__main__":
    main(sys.argv[1:])
