"""MRM meta-training on Ray Train: seen users sharded across workers, one global meta-batch.

The training loop is `personal_rm.mrm.meta_train`; this module is the adapter around it. Each
worker gets only its shard of the users (one object per rank), puts the net and its batches on
`ray.train.torch.get_device()`, and passes `meta_train` an all-reduce over torch.distributed on
that device (gloo on CPU, NCCL on GPU). `meta_train` spreads each meta-batch of
`tasks_per_batch` users over the workers and sums the batch's losses (so RPO weights the whole
batch) and the gradients, so N workers take the steps one process would. Rank 0 validates and
checkpoints every epoch; a restarted worker group, or a rerun with the same `name` and
`storage_path`, resumes from the latest checkpoint.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
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
from torch import Tensor, nn

from personal_rm.features import PairSet
from personal_rm.mrm import (
    MetaRewardModel,
    MRMConfig,
    build_net,
    make_optimizer,
    meta_train,
    save_model,
    split_support,
    tasks_from_pairs,
    trainable_tasks,
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


def _all_reduce(tensors: list[Tensor]) -> None:
    """Sum over workers, in place, on the tensors' own device."""
    for tensor in tensors:
        dist.all_reduce(tensor)


def _restore(
    net: nn.Module, optimizer: torch.optim.Optimizer, user_logits: nn.Parameter | None
) -> int:
    """Load the latest reported checkpoint, if any; return the epoch to start from."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    device = ray.train.torch.get_device()
    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / STATE_FILE, map_location=device, weights_only=True)
    net.load_state_dict(state["net"])
    if user_logits is not None:
        with torch.no_grad():
            user_logits.copy_(state["user_logits"])
    optimizer.load_state_dict(state["optimizer"])
    return state["epoch"] + 1


def train_loop_per_worker(loop: dict[str, Any]) -> None:
    """One worker: its shard of the users, the net on its device, `meta_train` in lockstep."""
    config = MRMConfig(**loop["mrm"])
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    tasks = ray.get(loop["shards"][rank])  # this worker's users; None for the others'
    net = ray.get(loop["net"]).to(device)  # built once by the driver: every worker starts equal
    # The no-meta ablation's per-user logits are replicated like the net: every worker applies
    # the same summed gradient, so rank 0's checkpoint holds all of them.
    user_logits = None
    if not config.meta:
        user_logits = nn.Parameter(torch.zeros(len(tasks), config.num_bases, device=device))
    optimizer = make_optimizer(net, config, user_logits)
    start_epoch = _restore(net, optimizer, user_logits)
    validation = None
    if rank == 0 and loop["validation"] is not None:  # Ray Train keeps rank 0's metrics only
        validation = split_support(ray.get(loop["validation"]), config.val_support, config.seed)

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        metrics = {**metrics, "epoch": epoch, "start_epoch": start_epoch}
        if validation is not None:
            net.eval()
            accuracy = user_accuracy(net, *validation, config)
            metrics["val_acc"] = float(np.mean(list(accuracy.values())))
            net.train()
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if rank == 0:
                state = {
                    "net": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch,
                    "user_logits": None if user_logits is None else user_logits.detach(),
                }
                torch.save(state, Path(directory) / STATE_FILE)
                save_model(net, config, Path(directory) / MODEL_DIR)
                checkpoint = Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=checkpoint)

    meta_train(
        net,
        tasks,
        config,
        optimizer=optimizer,
        user_logits=user_logits,
        start_epoch=start_epoch,
        on_epoch=on_epoch,
        all_reduce=_all_reduce if dist.is_initialized() else None,
    )


def fit_distributed(
    train: PairSet,
    config: MRMConfig,
    distributed: RayTrainConfig,
    *,
    validation: PairSet | None = None,
    callbacks: Sequence[UserCallback] = (),
    train_loop: Callable[[dict[str, Any]], None] = train_loop_per_worker,
) -> tuple[MetaRewardModel, ray.train.Result]:
    """Meta-train on Ray Train; return the best epoch's model (by validation accuracy if
    validation users are given, else the last epoch) and the Ray Train result.

    `callbacks` run in the Train controller after every report; inside a Ray Tune trial,
    `TuneReportCallback` forwards each epoch's metrics to Tune (for early stopping).
    `train_loop` is what each worker runs; a test wraps it to kill a worker mid-run."""
    storage_path = str(distributed.storage_path.resolve())
    tasks = trainable_tasks(tasks_from_pairs(train), config)
    if not tasks:
        raise ValueError("no user has enough comparisons to train on")
    world = distributed.num_workers
    # User i lives on worker i % world only; the others see None in its place.
    shards = [[t if i % world == r else None for i, t in enumerate(tasks)] for r in range(world)]
    loop = {
        "mrm": config.model_dump(),
        "net": ray.put(build_net(train, config)),  # global-BT init needs all of train: once
        "shards": [ray.put(shard) for shard in shards],
        "validation": ray.put(validation) if validation is not None else None,
    }
    score = "val_acc" if validation is not None else "epoch"
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop,
        scaling_config=ScalingConfig(
            num_workers=world,
            use_gpu=distributed.use_gpu,
            resources_per_worker=None
            if distributed.cpus_per_worker is None
            else {"CPU": distributed.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=distributed.name,
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
