"""GenRM SFT and GRPO on Ray Train: a transformers causal LM, DDP (or FSDP for SFT) workers.

The steps are `personal_rm.pgenrm.training`'s; this module feeds them. The rows (a list, or a
Ray Dataset such as `chain_dataset` of a chains file too large for one machine) go through
Ray Data: SFT rows are tokenised, and those over `max_length` dropped, before Ray Train splits
them, so every worker's shard (`get_dataset_shard`) has the same number of rows and takes the
same number of steps (gradient all-reduce is a barrier). Each worker streams its shard a batch
at a time (`actors.train_shards`) and never holds the dataset. The module reports every
epoch with a checkpoint whose `model/` folder is Hugging Face format (weights + tokenizer:
transformers and vLLM load it as is), and resumes from the latest checkpoint when the worker
group restarts after a failure or the run is started again with the same `name` and `storage_path`.
The RL stage samples its groups from the live policy, through the transformers backend or
(`rollout: vllm`) an in-process vLLM engine that is given the policy's weights before every
step, and keeps the starting (SFT) model frozen on every worker as the KL reference.
"""

from __future__ import annotations

import json
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import ray
import ray.data
import ray.train
import torch
from pydantic import Field
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer, prepare_model
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_optimizer_state_dict,
)

from actors.train_shards import epoch_batches, shard_steps
from personal_rm.config import Config
from personal_rm.models import resolve_model
from personal_rm.pgenrm.training import (
    GRPOConfig,
    SFTConfig,
    collate,
    encode_sft,
    grpo_step,
    sft_loss,
)

MODEL_DIR = "model"
STATE_FILE = "train_state.pt"
Stage = Literal["sft", "rl"]


class GenRMRayConfig(Config):
    num_workers: int = Field(2, description="Training workers (one GPU each with use_gpu).")
    use_gpu: bool = Field(False, description="One GPU per worker (on a GPU cluster).")
    cpus_per_worker: int | None = Field(
        None,
        gt=0,
        description="CPUs reserved per worker, and its torch threads (default: Ray Train's, 1 "
        "without GPUs); a CPU-only run on one machine wants all of its cores.",
    )
    log_every: int = Field(10, ge=1, description="Rank 0 prints loss and s/step every N steps.")
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="ddp, or fsdp to shard a large model (SFT only; GPU)."
    )
    dtype: str = Field("float32", description="Training weights dtype (bfloat16 on GPU).")
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute each layer's activations in the backward pass instead of keeping "
        "them: less memory for more compute (a GRPO step on a judge's long prompts keeps B x T "
        "activations of every layer).",
    )
    shuffle_rows: int = Field(
        256, ge=0, description="Each worker's seeded local shuffle buffer, in rows (0: none)."
    )
    max_failures: int = Field(2, description="Worker-group restarts before the run fails.")
    storage_path: Path = Field(
        Path("results/ray"), description="Checkpoints and results; shared storage on a cluster."
    )
    name: str = Field("genrm", description="Run name (the stage is appended); reruns resume.")


class SFTEncoder:
    """Ray Data UDF: tokenise chain rows for SFT and drop those over `max_length`; one
    tokenizer per actor, loaded once."""

    def __init__(self, model: str, max_length: int) -> None:
        from transformers import AutoTokenizer

        self.tokenizer, self.max_length = AutoTokenizer.from_pretrained(model), max_length

    def __call__(self, batch: pa.Table) -> pa.Table:
        encoded = [
            encode_sft(self.tokenizer, r["prompt"], r["completion"], self.max_length)
            for r in batch.to_pylist()
        ]
        kept = [e for e in encoded if e is not None]
        ids = pa.list_(pa.int32())
        return pa.table(
            {
                "input_ids": pa.array([e["input_ids"] for e in kept], ids),
                "labels": pa.array([e["labels"] for e in kept], ids),
            }
        )


def _project(row: dict[str, Any], stage: Stage) -> dict[str, Any]:
    """The fields a stage reads: SFT the prompt and the accepted chain, RL the prompt and the
    shown order of the responses (its reward is the chain's verdict against it)."""
    if stage == "sft":
        return {"prompt": row["prompt"], "completion": row["completion"][0]["content"]}
    return {"prompt": row["prompt"], "order": row["order"]}


def chain_dataset(path: Path | str, stage: Stage, max_rows: int | None = None) -> ray.data.Dataset:
    """A stage's rows of a `jobs.build_chains` JSONL file (or glob, or object-store URI), read
    by Ray Data: SFT takes the rows with an accepted chain, RL every row."""

    def rows(line: dict[str, str]) -> list[dict[str, Any]]:
        row = json.loads(line["text"])
        return [_project(row, stage)] if stage == "rl" or "completion" in row else []

    dataset = ray.data.read_text(str(path)).flat_map(rows)
    return dataset if max_rows is None else dataset.limit(max_rows)


def _start(loop: dict[str, Any], lr: float, weight_decay: float = 0.0) -> tuple:
    """Model (from the latest checkpoint if any), wrapped for DDP/FSDP; optimizer; tokenizer;
    the metrics of the epochs already done (their count is the epoch to start from)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ray_config = GenRMRayConfig(**loop["ray"])
    dtype = getattr(torch, ray_config.dtype)
    state, checkpoint = None, ray.train.get_checkpoint()
    if checkpoint is None:
        model = AutoModelForCausalLM.from_pretrained(loop["model"], dtype=dtype)
    else:
        with checkpoint.as_directory() as directory:
            model = AutoModelForCausalLM.from_pretrained(Path(directory) / MODEL_DIR, dtype=dtype)
            state = torch.load(Path(directory) / STATE_FILE, weights_only=False)
    if ray_config.gradient_checkpointing:  # active in train mode only: generation keeps its cache
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = prepare_model(model, parallel_strategy=ray_config.strategy)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    if state is not None:
        set_optimizer_state_dict(
            model,
            optimizer,
            optim_state_dict=state["optimizer"],
            options=StateDictOptions(full_state_dict=True),
        )
    tokenizer = AutoTokenizer.from_pretrained(loop["model"])
    if tokenizer.pad_token is None:  # e.g. Llama 3: padding is masked, any id will do
        tokenizer.pad_token = tokenizer.eos_token
    return model, optimizer, tokenizer, [] if state is None else state["history"]


def _unwrap(model: torch.nn.Module) -> Any:
    return getattr(model, "module", model)


def _report(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    tokenizer: Any,
    history: list[dict[str, float]],
) -> None:
    """Report the last epoch of `history`. Every worker gathers the full state (a
    collective); rank 0 writes the HF folder, and the history so a resumed run keeps it."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights, optim_state = get_state_dict(model, optimizer, options=options)
    rank = ray.train.get_context().get_world_rank()
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            _unwrap(model).save_pretrained(Path(directory) / MODEL_DIR, state_dict=weights)
            tokenizer.save_pretrained(Path(directory) / MODEL_DIR)
            state = {"optimizer": optim_state, "history": history}
            torch.save(state, Path(directory) / STATE_FILE)
            checkpoint = Checkpoint.from_directory(directory)
            print(", ".join(f"{k}={v:.4g}" for k, v in history[-1].items()))
        ray.train.report(history[-1], checkpoint=checkpoint)


@dataclass(frozen=True)
class WorkerShard:
    """This worker's shard of the stage's rows: its place in the group, its steps per epoch
    (the same on every worker), and each epoch's batches, shuffled by a per-worker seed."""

    shard: ray.data.DataIterator
    rank: int
    world: int
    steps: int
    batch_size: int
    shuffle_rows: int
    seed: int

    @classmethod
    def of(cls, loop: dict[str, Any], batch_size: int, seed: int) -> WorkerShard:
        context = ray.train.get_context()
        rank, world = context.get_world_rank(), context.get_world_size()
        steps = shard_steps(loop["rows"], world, batch_size)
        shard = ray.train.get_dataset_shard("train")
        return cls(shard, rank, world, steps, batch_size, loop["shuffle_rows"], seed + rank)

    def epoch(self, epoch: int) -> Iterator[list[dict[str, Any]]]:
        return epoch_batches(
            self.shard, self.batch_size, shuffle_rows=self.shuffle_rows, seed=self.seed, epoch=epoch
        )


class StepLog:
    """Rank 0's progress inside an epoch: on CPU an epoch of an LLM judge takes an hour, and
    Ray Train reports only at its end."""

    def __init__(self, stage: Stage, shard: WorkerShard, every: int) -> None:
        self.stage, self.steps, self.every = stage, shard.steps, every
        self.quiet = shard.rank != 0
        self.started = time.perf_counter()

    def step(self, epoch: int, step: int, metrics: str) -> None:
        if self.quiet or (step + 1) % self.every:
            return
        per_step = (time.perf_counter() - self.started) / self.every
        self.started = time.perf_counter()
        where = f"{self.stage} epoch {epoch} step {step + 1}/{self.steps}"
        print(f"{where} {metrics} {per_step:.1f} s/step")


def sft_loop(loop: dict[str, Any]) -> list[dict[str, float]]:
    config = SFTConfig(**loop["sft"])
    model, optimizer, tokenizer, history = _start(loop, config.lr, config.weight_decay)
    start_epoch = len(history)
    device = next(model.parameters()).device
    shard = WorkerShard.of(loop, config.batch_size, config.seed)
    total = config.epochs * shard.steps
    progress = StepLog("sft", shard, GenRMRayConfig(**loop["ray"]).log_every)
    model.train()
    for epoch in range(start_epoch, config.epochs):
        losses = []
        for step, batch in enumerate(shard.epoch(epoch)):
            for group in optimizer.param_groups:  # linear decay to 0, from the step count alone
                group["lr"] = config.lr * (1 - (epoch * shard.steps + step) / total)
            padded = collate(batch, tokenizer.pad_token_id)
            tensors = {k: v.to(device) for k, v in padded.items()}
            loss = sft_loss(model, tensors)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            progress.step(epoch, step, f"loss={np.mean(losses[-progress.every :]):.4f}")
        history.append(
            {
                "epoch": epoch,
                "loss": float(np.mean(losses)),
                "skipped_too_long": loop["skipped_too_long"],
                "start_epoch": start_epoch,
            }
        )
        _report(model, optimizer, tokenizer, history)
    return history


def rl_loop(loop: dict[str, Any]) -> list[dict[str, float]]:
    from transformers import AutoModelForCausalLM

    from personal_rm.backends.transformers_backend import TransformersBackend

    config = GRPOConfig(**loop["rl"])
    model, optimizer, tokenizer, history = _start(loop, config.lr)
    start_epoch = len(history)
    device = next(model.parameters()).device
    dtype = getattr(torch, GenRMRayConfig(**loop["ray"]).dtype)
    reference = AutoModelForCausalLM.from_pretrained(loop["model"], dtype=dtype).to(device)
    reference.eval().requires_grad_(False)
    policy = _unwrap(model)
    backend = (
        VLLMRollouts.start(policy, loop["model"], config, device)
        if config.rollout == "vllm"
        else TransformersBackend(policy, tokenizer, batch_size=config.prompts_per_step)
    )
    shard = WorkerShard.of(loop, config.prompts_per_step, config.seed)
    progress = StepLog("rl", shard, GenRMRayConfig(**loop["ray"]).log_every)
    model.train()
    for epoch in range(start_epoch, config.epochs):
        steps = []
        for step, batch in enumerate(shard.epoch(epoch)):
            seed = config.seed + (epoch * shard.steps + step) * shard.world + shard.rank
            started = time.perf_counter()
            loss, metrics = grpo_step(model, reference, tokenizer, backend, batch, config, seed)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad()
            steps.append({**metrics, "step_seconds": time.perf_counter() - started})
            progress.step(epoch, step, f"reward={metrics['reward']:.3f}")
        means = {k: float(np.mean([m[k] for m in steps])) for k in steps[0]}
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        history.append({"epoch": epoch, **means, "peak_rss_gib": peak, "start_epoch": start_epoch})
        _report(model, optimizer, tokenizer, history)
    return history


class VLLMRollouts:
    """`GenerationBackend` for GRPO's groups: an in-process vLLM engine (this worker's) that
    samples from the live policy, its weights copied in before every step's sampling."""

    def __init__(self, policy: torch.nn.Module, engine: Any) -> None:
        self.policy, self.engine = policy, engine

    @classmethod
    def start(
        cls, policy: torch.nn.Module, model: str, config: GRPOConfig, device: torch.device
    ) -> VLLMRollouts:
        """The engine on `model` (the policy's starting folder), sized by `config`."""
        from personal_rm.backends.vllm_backend import VLLMBackend

        engine = VLLMBackend(
            model,
            dtype=config.rollout_dtype,
            max_model_len=config.rollout_max_model_len,
            gpu_memory_utilization=config.rollout_memory,
            enforce_eager=device.type != "cuda",
            in_process=True,
            cpu_kvcache_gib=None if device.type == "cuda" else config.rollout_cpu_kvcache_gib,
        )
        return cls(policy, engine)

    def generate(self, prompts, n: int, sampling) -> list[list[str]]:
        self.engine.load_weights(self.policy.state_dict())
        return self.engine.generate(prompts, n, sampling)


def stage_dataset(
    stage: Stage, rows: list[dict] | ray.data.Dataset, model: str, config: SFTConfig | GRPOConfig
) -> tuple[ray.data.Dataset, int, int]:
    """The dataset the workers split, its row count, and how many rows SFT dropped as too long.

    Both are materialised in the object store (spilled to disk past its size), so no read
    waits on the CPUs the workers hold; SFT rows are tokenised once first, on a Ray Data actor,
    as the split needs the count of the rows that fit."""
    if not isinstance(rows, ray.data.Dataset):
        rows = ray.data.from_items([_project(row, stage) for row in rows])
    if stage == "rl":
        rows = rows.materialize()
        return rows, rows.count(), 0
    total = rows.count()
    encoded = rows.map_batches(
        SFTEncoder,
        fn_constructor_kwargs={"model": model, "max_length": config.max_length},
        batch_format="pyarrow",
        batch_size=256,
        compute=ray.data.ActorPoolStrategy(size=1),
    ).materialize()
    kept = encoded.count()
    return encoded, kept, total - kept


def fit_genrm(
    stage: Stage,
    rows: list[dict] | ray.data.Dataset,
    model: str | Path,
    config: SFTConfig | GRPOConfig,
    distributed: GenRMRayConfig,
    out: Path,
) -> ray.train.Result:
    """Train `model` on `rows` (chain rows, or `chain_dataset`: SFT the accepted chains, RL any
    rows) and copy the final Hugging Face folder to `out`. `result.return_value` is every
    epoch's metrics."""
    if stage == "rl" and distributed.strategy == "fsdp":
        raise ValueError("the RL stage samples from the live policy: use strategy ddp")
    storage_path = str(distributed.storage_path.resolve())
    local = Path(resolve_model(model)).expanduser()  # a named model is converted here, once
    model_path = str(local.resolve()) if local.exists() else str(model)  # workers' cwd differs
    dataset, count, skipped = stage_dataset(stage, rows, model_path, config)
    if count < distributed.num_workers:
        raise ValueError(f"{count} {stage} rows cannot feed {distributed.num_workers} workers")
    loop = {
        stage: config.model_dump(),
        "rows": count,
        "skipped_too_long": skipped,
        "shuffle_rows": distributed.shuffle_rows,
        "model": model_path,
        "ray": distributed.model_dump(mode="json"),
    }
    trainer = TorchTrainer(
        sft_loop if stage == "sft" else rl_loop,
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
            name=f"{distributed.name}-{stage}",
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=distributed.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as directory:
        shutil.copytree(Path(directory) / MODEL_DIR, out, dirs_exist_ok=True)
    return result
