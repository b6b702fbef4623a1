"""The whole system end to end on one dataset: the README's main command.

    python -m jobs.pipeline                        # shipped LLMFAO, local Ray, CPU models
    python -m jobs.pipeline --quick true           # a slice, a couple of minutes
    ray job submit --working-dir . -- python -m jobs.pipeline --data jester

Stages: embed -> baselines -> MRM meta-training (Ray Train), then `mrm_shrunk` around it ->
rubric chains + prototypes -> evaluation of every method (tables + plot) -> the Serve app,
where two seen users with opposite tastes pick different winners and a cold-start user's
feedback flips a ranking (`serve_app.deploy.demo_personalization`) -> shut down. Each stage's
results are cached under `--out`, keyed by the config it depends on; `--skip` reuses a cached
stage, `--force` recomputes one. A stage shows one progress bar; Ray's own INFO logs are off
unless `--verbose true`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    "mrm": ("split", "mrm", "train", "shrinkage", "baselines", "k", "n_boot"),
    "prototypes": (
        "split",
        "mrm",
        "train",
        "shrinkage",
        "baselines",
        "rubric",
        "prototypes",
        "scaling",
        "k",
        "n_boot",
    ),
}
# What the console shows of the evaluation; tables.md has every section.
PRINTED_TABLES = ("user", "worst10")


class PipelineConfig(DataConfig, MethodsConfig):
    out: Path = Field(Path("results/pipeline"), description="Stage caches and final results.")
    quick: bool = Field(False, description=f"Start from {QUICK.name}: a small, fast run.")
    k: list[KShot] = Field([0, 2, 4, 8, 16], description="Support sizes for unseen users.")
    n_boot: int = Field(1000, description="Bootstrap resamples for the 95% intervals.")
    skip: list[str] = Field([], description="Stages to take from the cache as they are.")
    force: list[str] = Field([], description="Stages to recompute even if cached.")
    port: int = Field(8000, description="Port of the Serve app (127.0.0.1).")
    verbose: bool = Field(
        False, description="Ray's own INFO logs: Train's per-epoch reports, Serve's per request."
    )
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
            print(f"{stage:<12} cached: {path}")
            return saved["rows"]
    rows = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "rows": rows}, indent=2))
    return rows


@contextmanager
def progress_bar(stage: str, total: int) -> Iterator[Callable[[int], None]]:
    """One bar for a stage; yields `advance(steps)`. Lines printed meanwhile go above it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn(f"{stage:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns) as progress:
        task = progress.add_task(stage, total=total)
        yield lambda steps=1: progress.advance(task, steps)


def checkpoints(run_dir: Path) -> int:
    return len(list(run_dir.glob("checkpoint_*"))) if run_dir.exists() else 0


@contextmanager
def epochs_bar(run_dir: Path, epochs: int) -> Iterator[None]:
    """MRM's bar: epochs done = the checkpoints Ray Train has written (one per epoch; a
    resumed run starts at the epochs it already has), polled while the body runs."""
    done = threading.Event()
    with progress_bar("mrm", epochs) as advance:
        shown = checkpoints(run_dir)
        advance(shown)

        def poll() -> None:
            nonlocal shown
            while not done.wait(1.0):
                now = min(checkpoints(run_dir), epochs)
                advance(now - shown)
                shown = now

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        try:
            yield
        finally:
            done.set()
            watcher.join()
            advance(epochs - shown)


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

        models = (GlobalBT, PerUserBT, LowRankBT)

        def compute() -> list[dict]:
            rows = []
            with progress_bar("baselines", len(models)) as advance:
                for model in models:
                    rows += self._evaluate(model(self.config.baselines))
                    advance()
            return rows

        self.rows += cached_rows(self.config, "baselines", compute)

    def mrm(self) -> None:
        from actors.mrm_trainer import fit_distributed
        from personal_rm.mrm import MetaRewardModel
        from personal_rm.shrinkage import ShrunkMRM

        model_dir = self.config.out / "mrm" / "model"

        def compute() -> list[dict]:
            train = self.config.train.model_copy(
                update={
                    "storage_path": self.config.out / "ray",
                    "name": "mrm-" + stage_key(self.config, "mrm"),
                }
            )
            with epochs_bar(train.storage_path / train.name, self.config.mrm.epochs):
                model, _ = fit_distributed(
                    self.prepared.seen_train(),
                    self.config.mrm,
                    train,
                    validation=self.prepared.validation(),
                )
            model.save(model_dir)
            with progress_bar("mrm_shrunk", 2) as advance:
                shrunk = ShrunkMRM.around(
                    model,
                    self.prepared.seen_train(),
                    self.prepared.validation(),
                    self.config.shrinkage,
                    self.config.baselines,
                )
                advance()
                rows = self._evaluate(model, fitted=True) + self._evaluate(shrunk, fitted=True)
                advance()
            return rows

        self.rows += cached_rows(self.config, "mrm", compute)
        self.mrm_model = MetaRewardModel.load(model_dir)

    def prototypes(self) -> None:
        from personal_rm.embed import CachedEncoder, MiniLMEncoder
        from personal_rm.serving.state import build_state, save_state

        def compute() -> list[dict]:
            encoder = CachedEncoder(MiniLMEncoder(), self.config.cache_dir)
            with progress_bar("prototypes", 3) as advance:
                router, shards = build_state(
                    self.prepared.seen_train(),
                    self.prepared.validation(),
                    self.config,
                    encoder,
                    self.mrm_model,
                    self.config.baselines,
                )
                advance()
                rows = self._evaluate(router.judges["rubric"], fitted=True)
                advance()
                rows += self._evaluate(router.model, fitted=True)
                advance()
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
        (out / "tables.md").write_text(tables(self.rows, self.config.data))
        print(tables(self.rows, self.config.data, PRINTED_TABLES), end="")
        print(f"sample-level accuracy: {out / 'tables.md'}; plot: {out / 'accuracy.png'}")

    def global_reward(self) -> Callable[[str, list[str]], Any]:
        """Global BT's reward of responses to a prompt: the demo's "global reward", fitted on
        the seen users' training rows as the `bt_global` row is."""
        from personal_rm.baselines import fit_global_theta
        from personal_rm.embed import CachedEncoder, MiniLMEncoder, pair_text

        theta = fit_global_theta(self.prepared.seen_train(), self.config.baselines)
        encoder = CachedEncoder(MiniLMEncoder(), self.config.cache_dir)
        return lambda prompt, responses: (
            encoder.encode([pair_text(prompt, r) for r in responses]) @ theta
        )

    def serve(self) -> None:
        """The app on a fresh copy of the data's feedback (the demo writes feedback, and a
        rerun shows the same), then the personalization demo as its client."""
        from ray import serve

        from personal_rm import showcase
        from personal_rm.data import load_comparisons
        from serve_app.deploy import (
            CANDIDATES,
            DEMO_METHOD,
            ServeJobConfig,
            demo_personalization,
            deploy,
            seed_store,
        )

        app = {
            "state_dir": self.config.out / "state",
            "store_path": self.config.out / "feedback.sqlite3",
            "cache_dir": self.config.cache_dir,
        }
        serve_config = ServeJobConfig(port=self.config.port, app=app)
        store = serve_config.app.store_path
        for path in (
            store,
            store.with_name(store.name + "-wal"),
            store.with_name(store.name + "-shm"),
        ):
            path.unlink(missing_ok=True)
        seed_store(store, self.prepared.source)
        split = self.prepared.split
        with progress_bar("serve", 3) as advance:
            global_reward = self.global_reward()
            comparisons = load_comparisons(self.prepared.source, on_error="skip").comparisons
            advance()
            base_url = deploy(serve_config, verbose=self.config.verbose)
            advance()
            try:
                pair, cold = demo_personalization(
                    base_url,
                    serve_config.app,
                    comparisons,
                    split.seen_users,
                    split.unseen_users,
                    global_reward,
                )
            finally:
                serve.shutdown()
            advance()
        shown = {"method": DEMO_METHOD, "pair": pair, "cold": cold}
        (self.config.out / "demo.json").write_text(json.dumps(shown, default=to_json, indent=2))
        print(showcase.render(DEMO_METHOD, CANDIDATES, pair, cold))

    def run(self) -> None:
        import ray

        if not self.config.verbose:  # the encoder's weight-loading bars, once per load
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        self.config.out.mkdir(parents=True, exist_ok=True)
        dump_config(self.config, self.config.out / "config.yaml")
        owns_ray = connect(verbose=self.config.verbose)
        for stage in STAGES:
            started = time.perf_counter()
            getattr(self, stage)()
            self.timings[stage] = time.perf_counter() - started
        spent = ", ".join(f"{s} {t:.0f}" for s, t in self.timings.items())
        print(f"seconds: {spent}; total {sum(self.timings.values()):.0f}")
        (self.config.out / "timings.json").write_text(json.dumps(self.timings, indent=2))
        if owns_ray:
            ray.shutdown()


def to_json(value: Any) -> Any:
    """The demo's records as JSON: dataclasses as their fields, and the derived figures."""
    from dataclasses import asdict

    fields = asdict(value)
    for name in ("winners", "flip", "agrees"):
        if hasattr(value, name):
            fields[name] = getattr(value, name)
    return fields


def quick_preset(config: PipelineConfig) -> Path | None:
    """`--quick true` puts the quick file under whatever else was given."""
    return QUICK if config.quick else None


def main(argv: list[str] | None = None) -> None:
    Pipeline(parse_config(PipelineConfig, argv, description=__doc__, preset=quick_preset)).run()


if __name__ == "__main__":
    main(sys.argv[1:])
