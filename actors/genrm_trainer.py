"""GenRM SFT and GRPO on Ray Train: a transformers causal LM, DDP (or FSDP for SFT) workers.

The steps are `personal_rm.pgenrm.training`'s; this module shards the rows across workers
(every worker takes the same number of steps: gradient all-reduce is a barrier), reports every
epoch with a checkpoint whose `model/` folder is Hugging Face format (weights + tokenizer:
transformers and vLLM load it as is), and resumes from the latest checkpoint when the worker
group restarts after a failure or the run is started again with the same `name` and `storage_path`.
The RL stage samples its groups from the live policy through the transformers backend, and
keeps the starting (SFT) model frozen on every worker as the KL reference.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import ray
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
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="ddp, or fsdp to shard a large model (SFT only; GPU)."
    )
    dtype: str = Field("float32", description="Training weights dtype (bfloat16 on GPU).")
    max_failures: int = Field(2, description="Worker-group restarts before the run fails.")
    storage_path: Path = Field(
        Path("results/ray"), description="Checkpoints and results; shared storage on a cluster."
    )
    name: str = Field("genrm", description="Run name (the stage is appended); reruns resume.")


def _steps(n_rows: int, world: int, batch: int) -> int:
    return math.ceil(math.ceil(n_rows / world) / batch)


def _shard(n_rows: int, epoch: int, seed: int, rank: int, world: int, batch: int) -> list[list]:
    """This worker's batches for one epoch: a seeded shuffle, dealt round-robin, the short
    shards topped up from their own start so every worker takes the same number of steps."""
    if n_rows < world:
        raise ValueError(f"{n_rows} rows cannot feed {world} workers")
    order = np.random.default_rng([seed, epoch]).permutation(n_rows)[rank::world].tolist()
    steps = _steps(n_rows, world, batch)
    order = (order * math.ceil(steps * batch / max(1, len(order))))[: steps * batch]
    return [order[i : i + batch] for i in range(0, len(order), batch)]


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


def sft_loop(loop: dict[str, Any]) -> list[dict[str, float]]:
    config = SFTConfig(**loop["sft"])
    model, optimizer, tokenizer, history = _start(loop, config.lr, config.weight_decay)
    start_epoch = len(history)
    device = next(model.parameters()).device
    encoded = [
        encode_sft(tokenizer, r["prompt"], r["completion"][0]["content"], config.max_length)
        for r in ray.get(loop["rows"])
    ]
    rows = [e for e in encoded if e is not None]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    steps = _steps(len(rows), world, config.batch_size)
    model.train()
    for epoch in range(start_epoch, config.epochs):
        losses = []
        batches = _shard(len(rows), epoch, config.seed, rank, world, config.batch_size)
        for step, batch in enumerate(batches):
            for group in optimizer.param_groups:  # linear decay to 0, from the step count alone
                group["lr"] = config.lr * (1 - (epoch * steps + step) / (config.epochs * steps))
            padded = collate([rows[i] for i in batch], tokenizer.pad_token_id)
            tensors = {k: v.to(device) for k, v in padded.items()}
            loss = sft_loss(model, tensors)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        history.append(
            {
                "epoch": epoch,
                "loss": float(np.mean(losses)),
                "skipped_too_long": len(encoded) - len(rows),
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
    backend = TransformersBackend(_unwrap(model), tokenizer, batch_size=config.prompts_per_step)
    rows = ray.get(loop["rows"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    model.train()
    for epoch in range(start_epoch, config.epochs):
        steps = []
        batches = _shard(len(rows), epoch, config.seed, rank, world, config.prompts_per_step)
        for step, batch in enumerate(batches):
            seed = config.seed + (epoch * len(batches) + step) * world + rank
            loss, metrics = grpo_step(
                model, reference, tokenizer, backend, [rows[i] for i in batch], config, seed
            )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad()
            steps.append(metrics)
        means = {k: float(np.mean([m[k] for m in steps])) for k in steps[0]}
        history.append({"epoch": epoch, **means, "start_epoch": start_epoch})
        _report(model, optimizer, tokenizer, history)
    return history


def fit_genrm(
    stage: Stage,
    rows: list[dict],
    model: str | Path,
    config: SFTConfig | GRPOConfig,
    distributed: GenRMRayConfig,
    out: Path,
) -> ray.train.Result:
    """Train `model` on `rows` (SFT: accepted chains; RL: any rows) and copy the final
    Hugging Face folder to `out`. `result.return_value` is every epoch's metrics."""
    if stage == "rl" and distributed.strategy == "fsdp":
        raise ValueError("the RL stage samples from the live policy: use strategy ddp")
    storage_path = str(distributed.storage_path.resolve())
    local = Path(resolve_model(model)).expanduser()  # a named model is converted here, once
    loop = {
        stage: config.model_dump(),
        "rows": ray.put(rows),
        "model": str(local.resolve()) if local.exists() else str(model),  # workers' cwd differs
        "ray": distributed.model_dump(mode="json"),
    }
    trainer = TorchTrainer(
        sft_loop if stage == "sft" else rl_loop,
        train_loop_config=loop,
        scaling_config=ScalingConfig(
            num_workers=distributed.num_workers, use_gpu=distributed.use_gpu
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
