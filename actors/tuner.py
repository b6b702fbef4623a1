"""Ray Tune over the served MRM method: each trial trains on Ray Train, ASHA stops weak ones.

A trial (`run_trial`, a Tune function trainable: the Train driver) meta-trains MRM with Ray
Train; a `TuneReportCallback` forwards every epoch to Tune with `best_val_acc`, MRM's best
validation accuracy so far, on which ASHA compares trials at equal epochs and stops the weak
ones, in the first half of training (later rungs would save little and judge on noise). A
trial that finishes puts its best epoch behind prototypes and dual-granularity scaling and
reports the objective, `val_acc_tts` (personal_rm/tuning.py). ASHA can only judge what
training shows, MRM's own accuracy; K, N, M and alpha act after training, on the objective.

Search: Tune's seeded random search (`BasicVariantGenerator`; `grid` entries are crossed with
the samples), the base config as the first trial so the table shows what tuning bought.
Resources: a trial reserves `trial_cpus` for its driver (it scores after training) and one
Train worker with `worker_cpus` (the Train controller takes none), so on 2 CPUs two trials run
at once with the defaults. Resume: the same name and storage path restore the experiment
(`Tuner.restore`); an interrupted trial's Train run resumes from its last epoch checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import reduce
from operator import getitem
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from actors.mrm_trainer import MODEL_DIR, RayTrainConfig, fit_distributed
from personal_rm.config import Config
from personal_rm.data.splits import KShot
from personal_rm.methods import MethodsConfig
from personal_rm.tuning import SearchSpace, SweepData, apply_params, scaled_mrm, validation_accuracy

SAMPLERS = {
    "choice": tune.choice,
    "grid": tune.grid_search,
    "uniform": lambda bounds: tune.uniform(*bounds),
    "loguniform": lambda bounds: tune.loguniform(*bounds),
    "randint": lambda bounds: tune.randint(*bounds),
}


class SweepSettings(Config):
    name: str = Field("sweep", description="Experiment name; rerunning the same name resumes it.")
    storage_path: Path = Field(
        Path("results/ray"), description="Tune and Train results; shared storage on a cluster."
    )
    num_samples: int = Field(8, ge=1, description="Random samples (each crossed with any grids).")
    max_concurrent_trials: int = Field(
        2, ge=1, description="Trials at once; each holds trial_cpus + worker_cpus."
    )
    trial_cpus: float = Field(
        0.5, gt=0, description="CPUs of a trial's driver: idle while it trains, busy scoring."
    )
    worker_cpus: float = Field(0.5, gt=0, description="CPUs of a trial's one Ray Train worker.")
    grace_period: int = Field(
        3, ge=1, description="ASHA: epochs every trial gets before it can be stopped."
    )
    reduction_factor: float = Field(
        2, gt=1, description="ASHA: the top 1/factor of trials at a rung go on."
    )
    val_k: list[KShot] = Field(
        [0, 4, 8, 16], description="Validation support sizes the objective is averaged over."
    )
    include_base: bool = Field(True, description="Run the base config as the first trial.")


def expected_trials(space: SearchSpace, settings: SweepSettings) -> int:
    """How many trials the experiment has when it is complete: the base point fixes every
    key (one trial) and takes the place of one sample; each other sample crosses the grids."""
    grid = math.prod(len(spec["grid"]) for spec in space.values() if "grid" in spec)
    base = int(settings.include_base)
    return base + (settings.num_samples - base) * grid


class ReportBestSoFar(TuneReportCallback):
    """Each epoch's metrics to Tune, plus `best_val_acc`: what the trial would deliver if
    stopped now (it keeps its best epoch), and a steadier signal than one epoch's accuracy."""

    def __init__(self) -> None:
        super().__init__()
        self.best = -math.inf

    def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
        self.best = max(self.best, metrics[0]["val_acc"])
        super().after_report(run_context, [{**metrics[0], "best_val_acc": self.best}], checkpoint)


def run_trial(
    params: dict[str, Any],
    *,
    data: SweepData,
    base: MethodsConfig,
    settings: SweepSettings,
    seed: int,
) -> None:
    """One configuration: meta-train on Ray Train (epochs reported to Tune), then score."""
    torch.set_num_threads(1)  # the driver scores on its own share; its worker trains
    state = apply_params(base, params)
    train = RayTrainConfig(
        num_workers=1,
        cpus_per_worker=settings.worker_cpus,
        storage_path=settings.storage_path / settings.name / "train",
        name=f"trial-{tune.get_context().get_trial_id()}",  # stable: a resumed trial resumes
    )
    mrm, result = fit_distributed(
        data.train, state.mrm, train, validation=data.validation, callbacks=[ReportBestSoFar()]
    )
    scores = validation_accuracy(scaled_mrm(mrm, state, data.train), data, settings.val_k, seed)
    best = result.get_best_checkpoint(metric="val_acc", mode="max")
    # Tune wants the scheduler's metric in every report; without "epoch" ASHA ignores this one.
    best_val_acc = float(result.metrics_dataframe["val_acc"].max())
    model_path = str(Path(best.path) / MODEL_DIR)
    tune.report({**scores, "best_val_acc": best_val_acc, "model_path": model_path})


def trial_dirname(trial: Trial) -> str:
    return f"trial_{trial.trial_id}"  # the default name lists every parameter: too long a path


def tune_sweep(
    data: SweepData,
    base: MethodsConfig,
    space: SearchSpace,
    settings: SweepSettings,
    *,
    seed: int,
    callbacks: Sequence[tune.Callback] = (),
) -> tune.ResultGrid:
    """Run (or resume) the sweep; `callbacks` are Tune callbacks (loggers, drills)."""
    storage = settings.storage_path.resolve()  # here: a trial runs in its own working dir
    settings = settings.model_copy(update={"storage_path": storage})
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, data=data, base=base, settings=settings, seed=seed),
        {"cpu": settings.trial_cpus},
    )
    path = storage / settings.name
    if tune.Tuner.can_restore(path):
        print(f"resuming the sweep in {path} (delete it, or pick another name, to start over)")
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
        return tuner.fit()
    values = base.model_dump()
    base_point = {key: reduce(getitem, key.split("."), values) for key in space}
    scheduler = ASHAScheduler(
        time_attr="epoch",  # 0-based; survives a resume, unlike Tune's iteration count
        metric="best_val_acc",
        mode="max",
        max_t=max(base.mrm.epochs // 2, settings.grace_period),  # the last rung, mid-training
        grace_period=settings.grace_period,
        reduction_factor=settings.reduction_factor,
        stop_last_trials=False,  # past the last rung a trial trains to the end, then scores
    )
    tuner = tune.Tuner(
        trainable,
        param_space={
            key: SAMPLERS[kind](args) for key, spec in space.items() for kind, args in spec.items()
        },
        tune_config=tune.TuneConfig(
            search_alg=BasicVariantGenerator(
                points_to_evaluate=[base_point] if settings.include_base else [],
                max_concurrent=settings.max_concurrent_trials,  # TuneConfig's is ignored here
                random_state=seed,
            ),
            scheduler=scheduler,
            num_samples=settings.num_samples,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=settings.name, storage_path=str(storage), callbacks=list(callbacks)
        ),
    )
    return tuner.fit()
