"""MRM meta-training on Ray Train: users streamed to workers by Ray Data, one global meta-batch.

The training loop is `personal_rm.mrm.meta_train`; this module is the adapter around it. The
input is a Ray Dataset with one row per seen user (`Task.to_row`: a Parquet folder at scale, or
built here from an in-memory `PairSet`). Ray Train splits it into equal shards
(`get_dataset_shard`), and each worker streams its shard a local meta-batch at a time, so a
worker holds one batch (plus a bounded shuffle buffer), never the dataset or even its shard.

A global meta-batch is `local * workers` users, `local = ceil(tasks_per_batch / workers)`.
`meta_train` sums the batch's losses over workers (so RPO weights the whole batch) and the
gradients, over torch.distributed on the workers' device (gloo on CPU, NCCL on GPU): each step
is the one a single process would take on that meta-batch. Which users share a meta-batch
depends on the streaming split (and a seeded local shuffle per epoch); with one meta-batch per
epoch it does not, and N workers end where one does. Rank 0 validates and checkpoints every
epoch; a restarted worker group, or a rerun with the same `name` and `storage_path`, resumes
from the latest checkpoint.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
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

from actors.train_shards import epoch_batches, shard_steps
from personal_rm.features import PairSet
from personal_rm.mrm import (
    MetaRewardModel,
    MRMConfig,
    Task,
    build_net,
    make_optimizer,
    meta_train,
    save_model,
    split_support,
    tasks_pairs,
    training_tasks,
    user_accuracy,
)

STATE_FILE = "train_state.pt"
MODEL_DIR = "model"


class RayTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_workers: int = Field(2, description="Training workers; seen users are sharded across them.")
    shuffle_users: int = Field(
        256, ge=0, description="Each worker's seeded local shuffle buffer, in users (0: none)."
    )
    init_users: int = Field(
        2000,
        ge=1,
        description="Users of a dataset input read on the driver to build the net (input scale, "
        "global-BT init); a PairSet input uses all of its rows.",
    )
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


@dataclass(frozen=True)
class ShardTasks:
    """A worker's `TaskStream`: its Ray Train dataset shard, a local meta-batch at a time."""

    shard: ray.data.DataIterator
    users: int
    steps: int
    batch_size: int
    offset: int
    local: int
    shuffle_users: int
    seed: int

    @classmethod
    def of(
        cls, shard: ray.data.DataIterator, loop: dict[str, Any], config: MRMConfig
    ) -> ShardTasks:
        context = ray.train.get_context()
        rank, world = context.get_world_rank(), context.get_world_size()
        local = math.ceil(config.tasks_per_batch / world)
        steps = shard_steps(loop["users"], world, local)
        return cls(
            shard,
            loop["users"],
            steps,
            local * world,
            rank * local,
            local,
            loop["shuffle_users"],
            config.seed * 1_000_003 + rank,
        )

    def epoch(self, epoch: int) -> Iterator[list[Task]]:
        batches = epoch_batches(
            self.shard, self.local, shuffle_rows=self.shuffle_users, seed=self.seed, epoch=epoch
        )
        for rows in batches:
            yield [Task.from_row(row) for row in rows]


def train_loop_per_worker(loop: dict[str, Any]) -> None:
    """One worker: the net on its device, its shard of the users streamed into `meta_train`."""
    config = MRMConfig(**loop["mrm"])
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    tasks = ShardTasks.of(ray.train.get_dataset_shard("train"), loop, config)
    net = ray.get(loop["net"]).to(device)  # built once by the driver: every worker starts equal
    # The no-meta ablation's per-user logits are replicated like the net: every worker applies
    # the same summed gradient, so rank 0's checkpoint holds all of them.
    user_logits = None
    if not config.meta:
        user_logits = nn.Parameter(torch.zeros(tasks.users, config.num_bases, device=device))
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


def task_dataset(train: PairSet, config: MRMConfig) -> ray.data.Dataset:
    """The in-memory path's input: one row per trainable user of `train`, in the object store."""
    return ray.data.from_items([t.to_row() for t in training_tasks(train, config)])


def _warn_if_no_cpu_to_read(distributed: RayTrainConfig) -> None:
    """Ray Data streams a read dataset with the CPUs that training leaves free (it excludes the
    workers' own): with none left, the read waits for the autoscaler to add a node, for ever on a
    fixed-size cluster."""
    reserved = distributed.num_workers * (distributed.cpus_per_worker or 1)
    total = ray.cluster_resources().get("CPU", 0)
    if total - reserved < 1:
        warnings.warn(
            f"{distributed.num_workers} workers reserve {reserved:g} of the cluster's {total:g} "
            "CPUs, leaving Ray Data none to read the training input: it waits for a new node. "
            "On a fixed-size cluster, lower --train.cpus_per_worker or --train.num_workers.",
            stacklevel=3,
        )


def fit_distributed(
    train: PairSet | ray.data.Dataset,
    config: MRMConfig,
    distributed: RayTrainConfig,
    *,
    validation: PairSet | None = None,
    callbacks: Sequence[UserCallback] = (),
    train_loop: Callable[[dict[str, Any]], None] = train_loop_per_worker,
) -> tuple[MetaRewardModel, ray.train.Result]:
    """Meta-train on Ray Train; return the best epoch's model (by validation accuracy if
    validation users are given, else the last epoch) and the Ray Train result.

    `train` is a `PairSet` (held by the caller; its users go to the object store once) or a
    Ray Dataset of `Task.to_row` rows with a dense `index` (e.g. `ray.data.read_parquet` of a
    folder too large for any one machine; the workers stream it). `callbacks` run in the Train
    controller after every report; inside a Ray Tune trial, `TuneReportCallback` forwards each
    epoch's metrics to Tune (for early stopping). `train_loop` is what each worker runs; a test
    wraps it to kill a worker mid-run, a benchmark to measure one."""
    storage_path = str(distributed.storage_path.resolve())
    if isinstance(train, PairSet):
        net, dataset = build_net(train, config), task_dataset(train, config)
    else:
        sample = [Task.from_row(row) for row in train.take(distributed.init_users)]
        net, dataset = build_net(tasks_pairs(sample), config), train
        _warn_if_no_cpu_to_read(distributed)
    users = dataset.count()
    if users < distributed.num_workers:
        raise ValueError(f"{users} users cannot feed {distributed.num_workers} workers")
    if not config.meta and dataset.max("index") != users - 1:
        raise ValueError("the no-meta ablation needs task indices 0..users-1, one per user")
    loop = {
        "mrm": config.model_dump(),
        "net": ray.put(net),
        "users": users,
        "shuffle_users": distributed.shuffle_users,
        "validation": ray.put(validation) if validation is not None else None,
    }
    score = "val_acc" if validation is not None else "epoch"
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop,
        datasets={"train": dataset},
        scaling_config=ScalingConfig(
            num_workers=distributed.num_workers,
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
