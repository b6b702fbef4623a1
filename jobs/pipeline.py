"""The whole system end to end on one dataset: the README's main command.

    python -m jobs.pipeline                        # shipped LLMFAO, local Ray, CPU models
    python -m jobs.pipeline --quick true           # a slice, a couple of minutes
    ray job submit --working-dir . -- python -m jobs.pipeline --data jester

Stages: embed -> baselines -> MRM meta-training (Ray Train) -> rubric chains + prototypes
-> evaluation of every method (table + plot) -> the Serve app: post a feedback, score a
request, print the answer -> shut down. Each stage's results are cached under `--out`, keyed
by the config it depends on; `--skip` reuses a cached stage, `--force` recomputes one.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from actors.local_ray import connect
from actors.mrm_trainer import RayTrainConfig
from personal_rm.baselines import BaselineConfig
from personal_rm.config import dump_config, parse_config
from personal_rm.data.splits import KShot
from personal_rm.methods import MethodsConfig
from personal_rm.prepare import DataConfig, SplitConfig

QUICK = Path(__file__).resolve().parents[1] / "configs" / "pipeline_quick.yaml"
STAGES = ("embed", "baselines", "mrm", "prototypes", "evaluate", "serve")
# The config sections each stage's cached result depends on (data fields always count).
DEPENDS = {
    "baselines": ("split", "baselines", "k", "n_boot"),
    "mrm": ("split", "mrm", "train", "k", "n_boot"),
    "prototypes": ("split", "mrm", "train", "rubric", "prototypes", "scaling", "k", "n_boot"),
}


class PipelineConfig(DataConfig, MethodsConfig):
    out: Path = Field(Path("results/pipeline"), description="Stage caches and final results.")
    quick: bool = Field(False, description=f"Start from {QUICK.name}: a small, fast run.")
    k: list[KShot] = Field([0, 2, 4, 8, 16], description="Support sizes for unseen users.")
    n_boot: int = Field(1000, description="Bootstrap resamples for the 95% intervals.")
    skip: list[str] = Field([], description="Stages to take from the cache as they are.")
    force: list[str] = Field([], description="Stages to recompute even if cached.")
    port: int = Field(8000, description="Port of the Serve app (127.0.0.1).")
    split: SplitConfig = SplitConfig()
    baselines: BaselineConfig = BaselineConfig()
    train: RayTrainConfig = RayTrainConfig()


def stage_key(config: PipelineConfig, stage: str) -> str:
    fields = list(DataConfig.model_fields) + list(DEPENDS.get(stage, ()))
    wanted = config.model_dump(mode="json", include=set(fields))
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:16]


def cached_rows(config: PipelineConfig, stage: str, compute: Callable[[], list[dict]]) -> list:
    """Rows of a stage, from `out/<stage>/rows.json` when its config key matches."""
    path = config.out / stage / "rows.json"
    key = stage_key(config, stage)
    if path.exists() and stage not in config.force:
        saved = json.loads(path.read_text())
        if saved["key"] == key or stage in config.skip:
            return saved["rows"]
    rows = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "rows": rows}, indent=2))
    return rows


class Pipeline:
    def __init__(self, config: PipelineConfig):
        self.config = config
        self.timings: dict[str, float] = {}
        self.rows: list[dict] = []

    def embed(self) -> None:
        from personal_rm.prepare import prepare

        self.prepared = prepare(self.config, self.config.split)

    def _evaluate(self, model: Any, fitted: bool = False) -> list[dict]:
        from personal_rm.evaluation import evaluate_method

        p = self.prepared
        return evaluate_method(
            model,
            p.pairs,
            p.split,
            self.config.k,
            validation=p.validation(),
            seed=self.config.seed,
            n_boot=self.config.n_boot,
            fitted=fitted,
        )

    def baselines(self) -> None:
        from personal_rm.baselines import GlobalBT, LowRankBT, PerUserBT

        def compute() -> list[dict]:
            models = (GlobalBT, PerUserBT, LowRankBT)
            return [row for m in models for row in self._evaluate(m(self.config.baselines))]

        self.rows += cached_rows(self.config, "baselines", compute)

    def mrm(self) -> None:
        from actors.mrm_trainer import fit_distributed
        from personal_rm.mrm import MetaRewardModel

        model_dir = self.config.out / "mrm" / "model"

        def compute() -> list[dict]:
            train = self.config.train.model_copy(
                update={
                    "storage_path": self.config.out / "ray",
                    "name": "mrm-" + stage_key(self.config, "mrm"),
                }
            )
            model, _ = fit_distributed(
                self.prepared.seen_train(),
                self.config.mrm,
                train,
                validation=self.prepared.validation(),
            )
            model.save(model_dir)
            return self._evaluate(model, fitted=True)

        self.rows += cached_rows(self.config, "mrm", compute)
        self.mrm_model = MetaRewardModel.load(model_dir)

    def prototypes(self) -> None:
        from personal_rm.embed import CachedEncoder, MiniLMEncoder
        from personal_rm.serving.state import build_state, save_state

        def compute() -> list[dict]:
            encoder = CachedEncoder(MiniLMEncoder(), self.config.cache_dir)
            router, shards = build_state(
                self.prepared.seen_train(),
                self.prepared.validation(),
                self.config,
                encoder,
                self.mrm_model,
            )
            rows = self._evaluate(router.judges["rubric"], fitted=True)
            rows += self._evaluate(router.model, fitted=True)
            save_state(router, shards, self.config.out / "state")
            return rows

        self.rows += cached_rows(self.config, "prototypes", compute)

    def evaluate(self) -> None:
        from personal_rm.report import plot_accuracy, tables

        out = self.config.out
        result = {
            "dataset": self.config.data,
            "path": str(self.prepared.source),
            "seed": self.config.seed,
            "rows": self.rows,
        }
        (out / "accuracy.json").write_text(json.dumps(result, indent=2))
        plot_accuracy(
            self.rows,
            out / "accuracy.png",
            title=f"{Path(self.config.data).name}: every method, same split",
        )
        text = tables(self.rows, self.config.data)
        (out / "tables.md").write_text(text)
        print(text)

    def serve(self) -> None:
        from ray import serve

        from serve_app.deploy import ServeJobConfig, demo, deploy, seed_store

        app = {
            "state_dir": self.config.out / "state",
            "store_path": self.config.out / "feedback.sqlite3",
            "cache_dir": self.config.cache_dir,
        }
        serve_config = ServeJobConfig(port=self.config.port, app=app)
        seed_store(serve_config.app.store_path, self.prepared.source)
        base_url = deploy(serve_config)
        try:
            demo(base_url, self.prepared.split.unseen_users[0])
        finally:
            serve.shutdown()

    def run(self) -> None:
        import ray
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.config.out.mkdir(parents=True, exist_ok=True)
        dump_config(self.config, self.config.out / "config.yaml")
        owns_ray = connect()
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), TimeElapsedColumn())
        with Progress(*columns) as progress:
            task = progress.add_task("pipeline", total=len(STAGES))
            for stage in STAGES:
                progress.update(task, description=f"pipeline: {stage}")
                started = time.perf_counter()
                getattr(self, stage)()
                self.timings[stage] = time.perf_counter() - started
                progress.advance(task)
        print("| stage | seconds |\n|---|---|")
        print("\n".join(f"| {s} | {t:.1f} |" for s, t in self.timings.items()))
        print(f"| total | {sum(self.timings.values()):.1f} |")
        (self.config.out / "timings.json").write_text(json.dumps(self.timings, indent=2))
        if owns_ray:
            ray.shutdown()


def quick_preset(config: PipelineConfig) -> Path | None:
    """`--quick true` puts the quick file under whatever else was given."""
    return QUICK if config.quick else None


def main(argv: list[str] | None = None) -> None:
    Pipeline(parse_config(PipelineConfig, argv, description=__doc__, preset=quick_preset)).run()


if __name__ == "__main__":
    main(sys.argv[1:])
