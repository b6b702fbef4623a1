"""MRM meta-training on Ray Train: seen users sharded across workers, meta-gradients averaged.

The training loop is `personal_rm.mrm.meta_train`, unchanged; this module only gives each
worker its shard of users, all-reduces the meta-gradients after every backward pass (so all
workers apply the same update and stay identical), reports metrics every epoch with a
checkpoint, and restores from the latest checkpoint when a worker group is restarted after a
failure or the run is started again with the same `name` and `storage_path`.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    FailureConfig,
    RunConfig,
    ScalingConfig,
    UserCallback,
)
from ray.train.torch import TorchTrainer

from personal_rm.features import PairSet
from personal_rm.mrm import (
    MetaRewardModel,
    MRMConfig,
    MRMNet,
    build_net,
    make_optimizer,
    meta_train,
    save_model,
    split_support,
    tasks_from_pairs,
    user_accuracy,
)

STATE_FILE = "train_state.pt"
MODEL_DIR = "model"


class RayTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_workers: int = Field(2, description="Training workers; seen users are sharded across them.")
    use_gpu: bool = Field(False, description="One GPU per worker (on a GPU cluster).")
    cpus_per_worker: float | None = Field(
        None,
        gt=0,
        description="CPUs reserved per worker (default: Ray Train's, 1 without GPUs); a fraction "
        "lets several small runs, such as sweep trials, share a machine.",
    )
    max_failures: int = Field(2, description="Worker-group restarts before the run fails.")
    storage_path: Path = Field(
        Path("results/ray"), description="Checkpoints and results; shared storage on a cluster."
    )
    name: str = Field("mrm", description="Run name; rerunning the same name resumes it.")
    inject_failure_at_epoch: int | None = Field(
        None, description="Fault-tolerance drill: the last worker dies once after this epoch."
    )


def _average_gradients(net: MRMNet) -> None:
    world = dist.get_world_size()
    for param in net.parameters():
        if param.grad is None:  # every rank must join every all-reduce, in the same order
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad)
        param.grad /= world


def _restore(net: MRMNet, optimizer: torch.optim.Optimizer) -> int:
    """Load the latest reported checkpoint, if any; return the epoch to start from."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / STATE_FILE, weights_only=False)
    net.load_state_dict(state["net"])
    optimizer.load_state_dict(state["optimizer"])
    return state["epoch"] + 1


def train_loop_per_worker(loop: dict[str, Any]) -> None:
    config = MRMConfig(**loop["mrm"])
    train: PairSet = ray.get(loop["train"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    tasks = tasks_from_pairs(train)
    shard = tasks[rank::world]
    # Every worker takes the same number of steps: all-reduce is a barrier.
    steps = math.ceil(math.ceil(len(tasks) / world) / config.tasks_per_batch)
    net = build_net(train, config)  # same seed on every worker: identical starting weights
    optimizer = make_optimizer(net, config)
    start_epoch = _restore(net, optimizer)
    validation = None
    if loop["validation"] is not None:
        validation = split_support(ray.get(loop["validation"]), config.val_support, config.seed)
    fail_at = loop["inject_failure_at_epoch"]
    marker = Path(loop["storage_path"]) / f".{loop['name']}.failure-injected"

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        metrics = {**metrics, "epoch": epoch, "start_epoch": start_epoch}
        if validation is not None:
            net.eval()
            metrics["val_acc"] = float(
                np.mean(list(user_accuracy(net, *validation, config).values()))
            )
            net.train()
        if fail_at == epoch and rank == world - 1 and not marker.exists():
            # The controller collects reports when it polls the workers (every 2 s); dying
            # sooner would also lose the previous epoch's checkpoint, which no real failure
            # that follows a report by microseconds is worth simulating.
            marker.touch()
            time.sleep(5)
            os._exit(1)
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if rank == 0:
                state = {
                    "net": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch,
                }
                torch.save(state, Path(directory) / STATE_FILE)
                save_model(net, config, Path(directory) / MODEL_DIR)
                checkpoint = Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=checkpoint)

    grad_sync = _average_gradients if world > 1 else None
    meta_train(
        net,
        shard,
        config,
        optimizer=optimizer,
        start_epoch=start_epoch,
        steps_per_epoch=steps,
        on_epoch=on_epoch,
        grad_sync=grad_sync,
    )


def fit_distributed(
    train: PairSet,
    config: MRMConfig,
    distributed: RayTrainConfig,
    *,
    validation: PairSet | None = None,
    callbacks: Sequence[UserCallback] = (),
) -> tuple[MetaRewardModel, ray.train.Result]:
    """Meta-train on Ray Train; return the best epoch's model (by validation accuracy if
    validation users are given, else the last epoch) and the Ray Train result.

    `callbacks` run in the Train controller after every report; inside a Ray Tune trial,
    `TuneReportCallback` forwards each epoch's metrics to Tune (for early stopping)."""
    storage_path = str(distributed.storage_path.resolve())
    name = distributed.name
    loop = {
        "mrm": config.model_dump(),
        "train": ray.put(train),
        "validation": ray.put(validation) if validation is not None else None,
        "inject_failure_at_epoch": distributed.inject_failure_at_epoch,
        "storage_path": storage_path,
        "name": name,
    }
    score = "val_acc" if validation is not None else "epoch"
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop,
        scaling_config=ScalingConfig(
            num_workers=distributed.num_workers,
            use_gpu=distributed.use_gpu,
            resources_per_worker=None
            if distributed.cpus_per_worker is None
            else {"CPU": distributed.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=distributed.max_failures),
            callbacks=list(callbacks),
            # Every epoch's checkpoint is kept (a few KB each): the metrics history is read back
            # from them, and the best one by validation accuracy is the model we return.
            checkpoint_config=CheckpointConfig(
                checkpoint_score_attribute=score, checkpoint_score_order="max"
            ),
        ),
    )
    result = trainer.fit()
    best = result.get_best_checkpoint(metric=score, mode="max") or result.checkpoint
    with best.as_directory() as directory:
        model = MetaRewardModel.load(Path(directory) / MODEL_DIR)
    return model, result
