"""Meta Reward Modeling (MRM, arXiv 2601.18731) on frozen text features.

A user's reward is a mixture of K shared base reward functions,

    r_u(x) = sum_k softmax(w_u)_k * b_k(x),

and personalizing to a user means adapting only the K logits w_u. MRM meta-learns the base
functions b_k and the initial logits w_0 so that a few SGD steps on a handful of a user's
comparisons (the inner loop) give a good reward on that user's other comparisons (the outer
loop, MAML). The Robust Personalization Objective (RPO) reweights the outer loss towards the
hardest users of each meta-batch so the model is not tuned for the easy majority only.

Layout, top to bottom: config -> network -> losses (BT, RPO) -> episodes -> the per-user
objectives (MAML's inner loop and query loss; the no-meta ablation's multi-task loss) ->
training loop -> fast adaptation -> `MetaRewardModel` (the `RewardModel` protocol) -> I/O.

The logits only ever see a comparison through its base margins b(chosen) - b(rejected), (K,),
so the inner loop is a pure function of those margins, computed once per batch: adapting
mutates nothing, and threads can adapt users concurrently. The training loop runs in one
process over an in-memory list of users or, streaming its shard of the users and given an
`all_reduce`, in a data-parallel worker (`actors/mrm_trainer.py`) whose every step is the one a
single process would take on the same meta-batch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from personal_rm.artefacts import Format, load_tensors, save_tensors
from personal_rm.baselines import BaselineConfig, fit_global_theta
from personal_rm.config import Config
from personal_rm.features import PairSet
from personal_rm.reward import LinearReward, UserReward

# ---------------------------------------------------------------------------------------------
# Config


class MetaLearningConfig(Config):
    """The meta-learning loop over a mixture of base rewards (MAML, with RPO), shared by MRM
    and the rubric judge; defaults follow the paper's released runs except where a description
    says why not (tuned on validation users of a held-out split)."""

    # Ablations (same code path, different switches).
    meta: bool = Field(
        True,
        description="False: multi-task training of the heads jointly with free per-user logits, "
        "no inner loop (the mrm_no_meta ablation).",
    )
    rpo: bool = Field(True, description="False = mrm_no_rpo: plain MAML (uniform user weights).")
    rpo_rho: float = Field(0.5, gt=0, le=1, description="Hard-user fraction; paper uses 0.5.")
    rpo_gamma: float = Field(
        0.5, description="Soft-weight temperature (paper: 0.5); <= 0 gives the hard top-rho mask."
    )

    # Inner loop (per-user adaptation of the K logits only).
    inner_steps: int = Field(5, ge=0, description="Few steps: cheap to serve, still expressive.")
    inner_lr: float = Field(
        1.0, gt=0, description="SGD on K logits; softmax gradients are small, so lr is O(1)."
    )
    first_order: bool = Field(
        False, description="True drops second-order terms (FOMAML); they are cheap at K logits."
    )

    # Episodes: each epoch every seen user's comparisons are re-split into support / query.
    support_min: int = Field(2, ge=0, description="Smallest k trained for; k=2 is a real use.")
    support_max: int = Field(16, ge=0, description="Largest k; beyond ~16 adaptation saturates.")
    query_max: int | None = Field(64, ge=1, description="Caps query rows per user (cost).")

    # Outer loop.
    tasks_per_batch: int = Field(16, ge=1, description="Users per meta-step; RPO needs several.")
    outer_lr: float = Field(
        1e-2,
        gt=0,
        description="Paper: 1e-3 at 2 users/step. 16 bases start from one shared reward and must "
        "move apart; 3e-3 was still improving at 100 epochs, 1e-2 had higher validation-user "
        "accuracy on all three real datasets (epoch selection guards the overshoot).",
    )
    weight_decay: float = Field(0.0, ge=0, description="Heads are small; no decay needed.")
    grad_clip: float = Field(1.0, gt=0, description="Grad-norm clip of the released code.")
    epochs: int = Field(100, ge=1, description="Passes over seen users; cosine-decayed lr.")
    seed: int = Field(0, description="Seeds init and episode sampling: runs are reproducible.")

    # Model selection.
    val_support: int = Field(8, ge=0, description="k for validation users: mid support range.")

    @model_validator(mode="after")
    def _check(self) -> MetaLearningConfig:
        if self.support_min > self.support_max:
            raise ValueError("support_min must be <= support_max")
        return self


class MRMConfig(MetaLearningConfig):
    """MRM: the loop above, over K base reward functions of its own."""

    num_bases: int = Field(
        16,
        ge=1,
        description="K. The paper's runs use 2, but then a user can only move along a segment; "
        "on jester (held-out split) K=16 gave +13-15 points at k=8 over K=2; on llmfao and "
        "global_dialogues K made no measurable difference.",
    )
    head: Literal["linear", "mlp"] = Field(
        "linear", description="Linear heads as in the paper; mlp for nonlinear bases."
    )
    hidden: int = Field(64, ge=1, description="MLP hidden width per base; small, data is small.")
    init: Literal["global", "random"] = Field(
        "global",
        description="Linear heads start at the global BT reward plus noise, so w0's mixture is "
        "the well-regularised global model and meta-training learns only how users deviate "
        "from it (with K=2 on llmfao, random heads were 5 points below global BT on seen "
        "users; at K=16 the init mattered little); 'random' is the paper's init and the one "
        "MLP heads always use.",
    )
    init_noise: float = Field(
        0.3,
        ge=0,
        description="Each head's offset from the global reward, relative to its norm: enough to "
        "break the symmetry between heads, small enough that the start is the global model.",
    )


# Named ablations: a variant is a config override, never a code fork. Each differs from the one
# above it in one thing: mrm_no_rpo is MRM without RPO (plain MAML), and mrm_no_meta is plain
# MAML without the meta-learning (multi-task training); RPO stays off there too, so that the
# ablation measures meta-learning alone.
VARIANTS: dict[str, dict[str, Any]] = {
    "mrm": {},
    "mrm_no_rpo": {"rpo": False},
    "mrm_no_meta": {"meta": False, "rpo": False},
}

# `mrm_paper`, not an ablation but the authors' recipe on our features: K=2 bases, each a
# one-hidden-layer MLP from a random init, their outer lr (1e-3) at 2 users per meta-step;
# inner loop, RPO and epochs as in MRMConfig.
PAPER_RECIPE: dict[str, Any] = {
    "num_bases": 2,
    "head": "mlp",
    "init": "random",
    "outer_lr": 1e-3,
    "tasks_per_batch": 2,
}


# ---------------------------------------------------------------------------------------------
# Network


class MRMNet(nn.Module):
    """The meta-parameters: K base reward heads on frozen features and the initial logits w0.

    A user's adapted logits are not stored here: they are plain tensors passed to the pure
    functions below (`inner_loop`, `mixture_margins`), so the module is read-only while users
    adapt.
    """

    def __init__(self, dim: int, config: MRMConfig) -> None:
        super().__init__()
        self.dim, self.num_bases, self.head = dim, config.num_bases, config.head
        k, h = config.num_bases, config.hidden
        g = torch.Generator().manual_seed(config.seed)
        # Biases cancel in every pairwise margin, so the heads have none.
        if config.head == "linear":
            self.weight = nn.Parameter(torch.randn(k, dim, generator=g) / math.sqrt(dim))
        else:
            self.w1 = nn.Parameter(torch.randn(k, h, dim, generator=g) / math.sqrt(dim))
            self.b1 = nn.Parameter(torch.zeros(k, h))
            self.w2 = nn.Parameter(torch.randn(k, h, generator=g) / math.sqrt(h))
        # Uniform mixture to start; random heads already break the symmetry.
        self.w0 = nn.Parameter(torch.zeros(k))
        # Scalar input scale (like the paper's fixed 0.01), set from data so that any embedding
        # model's features reach the heads at unit per-coordinate RMS.
        self.register_buffer("feature_scale", torch.ones(()))

    def bases(self, x: Tensor) -> Tensor:
        """(n, d) features -> (n, K) base rewards b_k(x)."""
        x = x * self.feature_scale
        if self.head == "linear":
            return x @ self.weight.T
        hidden = F.gelu(torch.einsum("nd,khd->nkh", x, self.w1) + self.b1)
        return torch.einsum("nkh,kh->nk", hidden, self.w2)


def build_net(train: PairSet, config: MRMConfig) -> MRMNet:
    """A fresh net whose input scale is set from the training features (RMS -> 1).

    With `init="global"` (linear heads) every head starts at the global Bradley-Terry reward
    of `train`, plus a random offset of relative size `init_noise`: the cold-start mixture is
    then the cross-validated global model, the baseline MRM has to beat, not a random one.
    """
    net = MRMNet(train.dim, config)
    feats = np.concatenate([train.chosen, train.rejected]).astype(np.float64)
    net.feature_scale.fill_(1.0 / max(float(np.sqrt(np.mean(feats**2))), 1e-12))
    if config.init == "global" and config.head == "linear":
        theta = torch.as_tensor(fit_global_theta(train, BaselineConfig(seed=config.seed)))
        theta = theta / net.feature_scale.double()  # the heads see scaled features
        g = torch.Generator().manual_seed(config.seed)
        noise = torch.randn(config.num_bases, train.dim, generator=g, dtype=torch.float64)
        heads = theta + config.init_noise * theta.norm() * noise / math.sqrt(train.dim)
        with torch.no_grad():
            net.weight.copy_(heads.to(net.weight.dtype))
    return net


def base_margins(net: MRMNet, chosen: Tensor, rejected: Tensor) -> Tensor:
    """(n, K) b_k(chosen) - b_k(rejected): all that the mixture logits see of a comparison."""
    return net.bases(chosen) - net.bases(rejected)


def mixture_margins(logits: Tensor, margins: Tensor, user: Tensor) -> Tensor:
    """Margin r_u(chosen) - r_u(rejected) of row i under its user's mixture, (n,).

    `logits` (B, K) holds one row per user, `margins` (n, K) are base margins and `user` (n,)
    maps each row to its user.
    """
    return (torch.softmax(logits, dim=-1)[user] * margins).sum(-1)


# ---------------------------------------------------------------------------------------------
# Losses


def per_user_bt_loss(margins: Tensor, user: Tensor, num_users: int) -> Tensor:
    """Mean Bradley-Terry loss -log sigma(margin) of each user's rows, (B,); 0 for no rows."""
    rows = F.softplus(-margins)
    total = margins.new_zeros(num_users).index_add(0, user, rows)
    count = torch.bincount(user, minlength=num_users).clamp(min=1)
    return total / count


def rpo_weights(losses: Tensor, rho: float, gamma: float, *, normalize: bool = True) -> Tensor:
    """RPO user weights: emphasize the hardest rho fraction of users in a meta-batch.

    tau is the (1 - rho) quantile of the losses. gamma <= 0: hard mask L >= tau (with linear
    quantile interpolation this keeps exactly rho*B users whenever rho*B is an integer).
    gamma > 0: soft weights sigma((L - tau) / gamma), monotone in L and 1/2 at tau, so users
    just below the cut still get some gradient. Weights are normalized to sum to one, which
    keeps the outer step size independent of rho and B.
    """
    losses = losses.detach()
    tau = torch.quantile(losses, 1.0 - rho)
    hard = gamma <= 0
    w = (losses >= tau).to(losses.dtype) if hard else torch.sigmoid((losses - tau) / gamma)
    return w / w.sum() if normalize else w


def user_weights(losses: Tensor, config: MRMConfig) -> Tensor:
    """Each user's weight in the outer objective of a meta-batch, (B,), summing to one: RPO's,
    or uniform (plain MAML). Always of the whole meta-batch, never of a worker's share."""
    if config.rpo:
        return rpo_weights(losses, config.rpo_rho, config.rpo_gamma)
    return torch.full_like(losses.detach(), 1.0 / len(losses))


# ---------------------------------------------------------------------------------------------
# Episodes: a user's comparisons, split into support (adapt on) and query (judge on)


@dataclass(frozen=True)
class Task:
    """All training comparisons of one seen user. `index`, the user's dense row in
    [0, users), seeds the user's episodes (so an episode never depends on which worker or
    meta-batch position draws it) and is the user's row of the no-meta ablation's logits."""

    user: str
    index: int
    chosen: np.ndarray
    rejected: np.ndarray

    def __len__(self) -> int:
        return len(self.chosen)

    def to_row(self, dtype: str = "float32") -> dict[str, Any]:
        """A flat row (Parquet, Ray Data): features as raw bytes, (n, dim) in `dtype`."""
        return {
            "user": self.user,
            "index": self.index,
            "dim": self.chosen.shape[1],
            "dtype": dtype,
            "chosen": self.chosen.astype(dtype).tobytes(),
            "rejected": self.rejected.astype(dtype).tobytes(),
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Task:
        dim, dtype = int(row["dim"]), str(row["dtype"])

        def features(raw: bytes) -> np.ndarray:
            return np.frombuffer(raw, dtype=dtype).reshape(-1, dim).astype(np.float32)

        return cls(
            str(row["user"]), int(row["index"]), *map(features, (row["chosen"], row["rejected"]))
        )


@dataclass(frozen=True)
class Episode:
    support_chosen: np.ndarray
    support_rejected: np.ndarray
    query_chosen: np.ndarray
    query_rejected: np.ndarray


def training_tasks(pairs: PairSet, config: MRMConfig) -> list[Task]:
    """One task per user with enough rows to train on (a support / query split needs two,
    multi-task training one), indexed in user-id order so that no index depends on row order."""
    min_rows = 2 if config.meta else 1
    by_user = sorted((u, r) for u, r in pairs.rows_by_user().items() if len(r) >= min_rows)
    if not by_user:
        raise ValueError("no user has enough comparisons to train on")
    return [Task(u, i, pairs.chosen[r], pairs.rejected[r]) for i, (u, r) in enumerate(by_user)]


def tasks_pairs(tasks: Sequence[Task]) -> PairSet:
    """The comparisons of `tasks` as one PairSet (a sample of a task dataset, to build a net)."""
    users = np.concatenate([np.full(len(t), t.user, dtype=object) for t in tasks])
    return PairSet(
        users,
        np.concatenate([t.chosen for t in tasks]),
        np.concatenate([t.rejected for t in tasks]),
    )


class TaskStream(Protocol):
    """What `meta_train` reads: each epoch, `steps` meta-batches of this process's users.

    A global meta-batch has `batch_size` slots; this process fills `len(batch)` of them from
    `offset` (0 in one process; rank * local batch in a data-parallel worker). `users` counts
    the users of the whole run, on every worker."""

    users: int
    steps: int
    batch_size: int
    offset: int

    def epoch(self, epoch: int) -> Iterable[Sequence[Task]]: ...


@dataclass(frozen=True)
class InMemoryTasks:
    """Every user in this process: each epoch is one permutation seeded by (seed, epoch), cut
    into meta-batches of `tasks_per_batch` users, the last one topped up from the start."""

    tasks: Sequence[Task]
    seed: int
    batch_size: int
    offset: int = 0

    @classmethod
    def of(cls, tasks: Sequence[Task], config: MRMConfig) -> InMemoryTasks:
        return cls(tasks, config.seed, config.tasks_per_batch)

    @property
    def users(self) -> int:
        return len(self.tasks)

    @property
    def steps(self) -> int:
        return math.ceil(len(self.tasks) / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[list[Task]]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.tasks))
        order = np.resize(order, self.steps * self.batch_size)
        for start in range(0, len(order), self.batch_size):
            yield [self.tasks[i] for i in order[start : start + self.batch_size]]


def sample_episode(task: Task, rng: np.random.Generator, config: MRMConfig) -> Episode:
    """Random split with k ~ U{support_min..support_max}, leaving at least one query row."""
    order = rng.permutation(len(task))
    k = min(int(rng.integers(config.support_min, config.support_max + 1)), len(task) - 1)
    sup, qry = order[:k], order[k:]
    if config.query_max is not None:
        qry = qry[: config.query_max]
    return Episode(task.chosen[sup], task.rejected[sup], task.chosen[qry], task.rejected[qry])


def _stack(
    parts: Sequence[tuple[np.ndarray, np.ndarray]], like: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Concatenate per-user (chosen, rejected) arrays into tensors plus a row->user index, on
    the dtype and device of `like`."""
    user = np.concatenate([np.full(len(c), i) for i, (c, _) in enumerate(parts)])
    chosen, rejected = (
        torch.as_tensor(np.concatenate(arrays), dtype=like.dtype, device=like.device)
        for arrays in zip(*parts, strict=True)
    )
    return chosen, rejected, torch.as_tensor(user, dtype=torch.long, device=like.device)


# ---------------------------------------------------------------------------------------------
# Per-user objectives: MRM's (inner loop, then query loss) and the no-meta ablation's


def inner_loop(
    w0: Tensor,
    margins: Tensor,
    user: Tensor,
    num_users: int,
    config: MRMConfig,
    *,
    create_graph: bool,
) -> Tensor:
    """Adapt every user's logits from w0 with `inner_steps` SGD steps on their support rows.

    `margins` (n, K) are the support rows' base margins, computed once: they do not depend on
    the logits. All users of a batch adapt at once: the support losses are summed, and since
    user u's loss depends only on row u of the logits, each row receives exactly its own
    user's gradient. With `create_graph` the steps stay differentiable, in w0 and, through
    `margins`, in the bases (second-order MAML); without it the step directions are
    constants, which is first-order MAML. A pure function: returns (B, K) logits.
    """
    with torch.enable_grad():  # adaptation needs gradients even when called under no_grad
        logits = w0.expand(num_users, -1)
        if not logits.requires_grad:  # w0 frozen (serving): adapt a detached copy
            logits = logits.detach().requires_grad_()
        for _ in range(config.inner_steps):
            margins_u = mixture_margins(logits, margins, user)
            loss = per_user_bt_loss(margins_u, user, num_users).sum()
            (grad,) = torch.autograd.grad(loss, logits, create_graph=create_graph)
            logits = logits - config.inner_lr * grad
    return logits


def maml_losses(net: MRMNet, episodes: Sequence[Episode], config: MRMConfig) -> Tensor:
    """MRM's per-user outer loss, (B,): the BT loss on each user's query rows after adapting
    w0 on their support rows."""
    num_users = len(episodes)
    sc, sr, su = _stack([(e.support_chosen, e.support_rejected) for e in episodes], net.w0)
    support = base_margins(net, sc, sr)
    second_order = not config.first_order
    if not second_order:  # first-order MAML: no gradient flows through the adaptation
        support = support.detach()
    logits = inner_loop(net.w0, support, su, num_users, config, create_graph=second_order)
    qc, qr, qu = _stack([(e.query_chosen, e.query_rejected) for e in episodes], net.w0)
    query = mixture_margins(logits, base_margins(net, qc, qr), qu)
    return per_user_bt_loss(query, qu, num_users)


def multitask_losses(net: MRMNet, logits: Tensor, tasks: Sequence[Task]) -> Tensor:
    """The no-meta ablation's per-user loss, (B,): the BT loss on all of each user's rows
    under their own free logits (B, K), fitted jointly with the heads. No inner loop and
    nothing held out: that is what meta-learning adds."""
    chosen, rejected, user = _stack([(t.chosen, t.rejected) for t in tasks], net.w0)
    margins = mixture_margins(logits, base_margins(net, chosen, rejected), user)
    return per_user_bt_loss(margins, user, len(tasks))


def meta_batch_loss(
    net: MRMNet, episodes: Sequence[Episode], config: MRMConfig
) -> tuple[Tensor, Tensor]:
    """MRM's outer objective of one meta-batch, sum_u w_u L_u with RPO (or uniform) weights
    w_u, and each user's (detached) query loss L_u. `meta_train` computes the same objective
    with the meta-batch spread over workers."""
    losses = maml_losses(net, episodes, config)
    return (user_weights(losses, config) * losses).sum(), losses.detach()


# ---------------------------------------------------------------------------------------------
# Outer loop


def make_optimizer(
    net: MRMNet, config: MRMConfig, user_logits: nn.Parameter | None = None
) -> torch.optim.Adam:
    """Adam over the meta-parameters (plus the per-user table in the no-meta ablation)."""
    params = list(net.parameters())
    if user_logits is not None:
        params.append(user_logits)
    return torch.optim.Adam(params, lr=config.outer_lr, weight_decay=config.weight_decay)


def cosine_lr(step: int, total: int, base_lr: float) -> float:
    """Cosine decay from base_lr to 0 over `total` steps."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def meta_train(
    net: MRMNet,
    tasks: TaskStream,
    config: MRMConfig,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    user_logits: nn.Parameter | None = None,
    start_epoch: int = 0,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    all_reduce: Callable[[list[Tensor]], None] | None = None,
) -> torch.optim.Optimizer:
    """Meta-train `net` on the seen users of `tasks` for epochs [start_epoch, config.epochs).

    Each epoch is `tasks.steps` meta-batches; a user's episode is seeded by (seed, epoch,
    user index). Each step: per-user losses L_u, outer objective sum_u w_u L_u
    (`user_weights` of the meta-batch), an Adam step on the clipped gradient, with the lr
    cosine-decayed as a pure function of the step.

    Data parallel: each worker streams its own users (`TaskStream.offset` places them in the
    global meta-batch) and passes an `all_reduce` that sums tensors over workers in place. The
    meta-batch's (B,) losses are summed over workers, so every worker weights the whole
    meta-batch (RPO's quantile is global) and its objective is its share of the global one;
    then the gradients are summed. A step is therefore the one a single process would take on
    the same meta-batch, up to float rounding.

    Resume: pass the restored `optimizer` (and `user_logits`) and `start_epoch` = last finished
    epoch + 1; the resumed run repeats the original exactly. `on_epoch(epoch, metrics)` is
    called after each (0-based) epoch, for reporting, checkpointing or model selection.

    No-meta ablation (`config.meta` False): `user_logits` (users, K), one row per user index,
    created if not given, are trained jointly with the heads, and w0 is kept at their mean (the
    cold-start user). Returns the optimizer (its state is what a checkpoint needs besides
    `net` and `user_logits`).
    """
    if not config.meta and user_logits is None:
        user_logits = nn.Parameter(net.w0.new_zeros(tasks.users, config.num_bases))
    if config.meta and user_logits is not None:
        raise ValueError("user_logits belong to the no-meta ablation (config.meta False)")
    optimizer = optimizer or make_optimizer(net, config, user_logits)
    params = [*net.parameters(), *([] if user_logits is None else [user_logits])]
    total = config.epochs * tasks.steps
    device = net.w0.device

    def user_losses(epoch: int, batch: Sequence[Task]) -> Tensor:
        """The per-user objective of these users: MRM's, or the multi-task ablation's."""
        if not batch:  # this worker's shard ran out before the others'
            return net.w0.new_zeros(0)
        if config.meta:
            episodes = [
                sample_episode(t, np.random.default_rng([config.seed, epoch, t.index]), config)
                for t in batch
            ]
            return maml_losses(net, episodes, config)
        assert user_logits is not None
        rows = torch.as_tensor([t.index for t in batch], device=device)
        return multitask_losses(net, user_logits[rows], batch)

    net.train()
    for epoch in range(start_epoch, config.epochs):
        sums = {"loss": 0.0, "objective": 0.0, "grad_norm": 0.0}
        stream = iter(tasks.epoch(epoch))
        for step in range(tasks.steps):
            lr = cosine_lr(epoch * tasks.steps + step, total, config.outer_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            losses = user_losses(epoch, next(stream, []))
            # The global meta-batch's losses, each slot filled in by the worker that holds it.
            slots = torch.arange(len(losses), device=device) + tasks.offset
            batch = losses.new_zeros(tasks.batch_size).index_copy(0, slots, losses.detach())
            filled = losses.new_zeros(tasks.batch_size).index_fill(0, slots, 1.0)
            if all_reduce is not None:
                all_reduce([batch, filled])
            present = filled > 0
            weights = torch.zeros_like(batch).masked_scatter(
                present, user_weights(batch[present], config)
            )
            objective = (weights[slots] * losses).sum()
            optimizer.zero_grad(set_to_none=True)
            if objective.requires_grad:
                objective.backward()
            if all_reduce is not None:  # every worker joins with every tensor, in order
                grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
                all_reduce(grads)
                for param, grad in zip(params, grads, strict=True):
                    param.grad = grad
            grad_norm = nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
            optimizer.step()
            if user_logits is not None:  # no-meta: w0 is the mean user, for cold start
                with torch.no_grad():
                    net.w0.copy_(user_logits.mean(0))
            sums["loss"] += float(batch[present].mean())
            sums["objective"] += float((weights * batch).sum())
            sums["grad_norm"] += float(grad_norm)
        if next(stream, None) is not None:
            raise RuntimeError(
                f"epoch {epoch} has more than the {tasks.steps} planned meta-batches"
            )
        if on_epoch is not None:
            metrics = {key: value / tasks.steps for key, value in sums.items()}
            on_epoch(epoch, {**metrics, "lr": lr, "steps": tasks.steps})
    net.eval()
    return optimizer


# ---------------------------------------------------------------------------------------------
# Fast adaptation (the serving path)


@dataclass(frozen=True)
class UserWeights:
    """A user's adapted logits w_u (K,); the whole per-user state MRM needs to keep."""

    logits: np.ndarray

    @property
    def mixture(self) -> np.ndarray:
        z = np.exp(self.logits - self.logits.max())
        return z / z.sum()


def adapt_many(
    net: MRMNet,
    support: PairSet,
    users: Sequence[str],
    config: MRMConfig,
) -> dict[str, UserWeights]:
    """Adapt each of `users` on their rows of `support` in one batched inner loop.

    Users without rows keep w0 (their support loss is 0, so its gradient is too). Safe to call
    under `no_grad` / `inference_mode`: the few gradient steps on K logits need autograd. Safe
    to call from several threads at once: it only reads `net`.
    """
    users = list(dict.fromkeys(users))
    if not users:
        return {}
    index = {u: i for i, u in enumerate(users)}
    rows = np.flatnonzero(np.isin(support.user_ids, users))
    with torch.inference_mode(False):
        w0 = net.w0.detach()
        chosen, rejected = (
            torch.as_tensor(x[rows], dtype=w0.dtype, device=w0.device)
            for x in (support.chosen, support.rejected)
        )
        user = [index[str(u)] for u in support.user_ids[rows]]
        user = torch.as_tensor(user, dtype=torch.long, device=w0.device)
        with torch.no_grad():  # the bases stay fixed while users adapt
            margins = base_margins(net, chosen, rejected)
        logits = inner_loop(w0, margins, user, len(users), config, create_graph=False)
    logits = logits.detach().cpu().numpy().astype(np.float32)
    return {u: UserWeights(logits[i]) for u, i in index.items()}


def adapt(
    net: MRMNet, support_chosen: np.ndarray, support_rejected: np.ndarray, config: MRMConfig
) -> UserWeights:
    """One user's weights from k >= 0 support comparisons (k = 0 returns w0)."""
    n = len(support_chosen)
    chosen, rejected = support_chosen.reshape(n, net.dim), support_rejected.reshape(n, net.dim)
    support = PairSet(np.full(n, "u", dtype=object), chosen, rejected)
    return adapt_many(net, support, ["u"], config)["u"]


@dataclass(frozen=True)
class MixtureReward:
    """Nonlinear (MLP) user reward: sum_k mixture_k * b_k(x), scored through torch."""

    net: MRMNet
    mixture: np.ndarray

    def score(self, features: np.ndarray) -> np.ndarray:
        """(..., d) features -> (...,) rewards (the bases take rows: leading axes flattened)."""
        w0 = self.net.w0
        with torch.no_grad():
            x = torch.as_tensor(features, dtype=w0.dtype, device=w0.device)
            mixture = torch.as_tensor(self.mixture, dtype=w0.dtype, device=w0.device)
            rows = self.net.bases(x.reshape(-1, x.shape[-1])) @ mixture
            return rows.reshape(x.shape[:-1]).cpu().numpy()


def user_reward(net: MRMNet, weights: UserWeights) -> UserReward:
    """Linear heads collapse to one vector theta = scale * sum_k mix_k h_k (a numpy matmul)."""
    if net.head == "linear":
        with torch.no_grad():
            heads = (net.weight * net.feature_scale).double().cpu().numpy()
        return LinearReward((weights.mixture.astype(np.float64) @ heads).astype(np.float32))
    return MixtureReward(net, weights.mixture)


def user_accuracy(
    net: MRMNet, support: PairSet, query: PairSet, config: MRMConfig
) -> dict[str, float]:
    """Pairwise accuracy on each query user's rows after adapting on their support."""
    weights = adapt_many(net, support, query.users(), config)
    out = {}
    for u, rows in query.rows_by_user().items():
        r = user_reward(net, weights[u])
        out[u] = float(np.mean(r.score(query.chosen[rows]) > r.score(query.rejected[rows])))
    return out


def split_support(pairs: PairSet, k: int, seed: int) -> tuple[PairSet, PairSet]:
    """Per user: k random rows as support (at most all but one), the rest as query."""
    rng = np.random.default_rng(seed)
    sup, qry = [], []
    for _, rows in sorted(pairs.rows_by_user().items()):
        rows = rng.permutation(rows)
        cut = min(k, len(rows) - 1)
        sup.append(rows[:cut])
        qry.append(rows[cut:])
    return pairs.take(np.concatenate(sup)), pairs.take(np.concatenate(qry))


def meta_train_selected(
    net: MRMNet, train: PairSet, config: MRMConfig, validation: PairSet | None
) -> list[dict[str, float]]:
    """`meta_train` on `train`'s users, keeping the epoch whose validation users (adapted on
    `config.val_support` of their rows, scored on the rest; never test users) are most
    accurate. Leaves `net` in eval mode; returns the per-epoch log."""
    val_split = None
    if validation is not None and len(validation):
        val_split = split_support(validation, config.val_support, config.seed)
    best: tuple[float, dict[str, Tensor]] | None = None
    log: list[dict[str, float]] = []

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        nonlocal best
        if val_split is not None:
            net.eval()
            acc = float(np.mean(list(user_accuracy(net, *val_split, config).values())))
            net.train()
            metrics = {**metrics, "val_acc": acc}
            if best is None or acc > best[0]:
                best = (acc, copy.deepcopy(net.state_dict()))
        log.append({"epoch": epoch, **metrics})

    meta_train(
        net, InMemoryTasks.of(training_tasks(train, config), config), config, on_epoch=on_epoch
    )
    if best is not None:
        net.load_state_dict(best[1])
    net.eval()
    return log


# ---------------------------------------------------------------------------------------------
# The RewardModel


class MetaRewardModel:
    """MRM behind the `RewardModel` protocol: fit = meta-train, personalize = inner loop."""

    def __init__(self, config: MRMConfig | None = None, name: str | None = None) -> None:
        self.config = config or MRMConfig()
        default = {
            (True, True): "mrm",
            (True, False): "mrm_no_rpo",
            (False, False): "mrm_no_meta",
            (False, True): "mrm_no_meta_rpo",
        }
        self.name = name or default[self.config.meta, self.config.rpo]
        self.net: MRMNet | None = None
        self.history: list[dict[str, float]] = []

    @classmethod
    def variant(cls, name: str, **overrides: Any) -> MetaRewardModel:
        """A named ablation from `VARIANTS`, e.g. `variant("mrm_no_rpo", epochs=20)`."""
        return cls(MRMConfig(**{**VARIANTS[name], **overrides}), name=name)

    def fit(self, train: PairSet, validation: PairSet | None = None) -> None:
        """Meta-train on the seen users of `train`.

        With `validation` (held-out users, never test users), each epoch adapts every such user
        on `config.val_support` of their rows and scores the rest; the epoch with the best
        user-averaged accuracy is kept.
        """
        net = build_net(train, self.config)
        self.history = meta_train_selected(net, train, self.config, validation)
        self.net = net

    def adapt_users(self, support: PairSet, users: Sequence[str]) -> dict[str, UserWeights]:
        if self.net is None:
            raise RuntimeError("fit or load the model first")
        return adapt_many(self.net, support, users, self.config)

    def personalize(self, support: PairSet, users: Sequence[str]) -> Mapping[str, UserReward]:
        """Adapt each requested user on their support rows; users with none get w0."""
        weights = self.adapt_users(support, users)
        assert self.net is not None
        return {u: user_reward(self.net, w) for u, w in weights.items()}

    def save(self, path: str | Path) -> None:
        if self.net is None:
            raise RuntimeError("nothing to save: fit first")
        save_model(self.net, self.config, path, name=self.name)

    @classmethod
    def load(cls, path: str | Path) -> MetaRewardModel:
        net, config, name = load_model(path)
        model = cls(config, name=name)
        model.net = net
        return model


# ---------------------------------------------------------------------------------------------
# Save / load


MODEL_FORMAT = Format("personal-rm/mrm", 1)


def save_model(net: MRMNet, config: MRMConfig, path: str | Path, name: str = "mrm") -> None:
    """Directory with `model.safetensors` (the state_dict, on CPU wherever it trained) and
    `model.json` (format version, config, input dim, name): data only, nothing to execute."""
    meta = {"name": name, "dim": net.dim, "config": config.model_dump()}
    save_tensors(Path(path) / "model", net.state_dict(), meta, MODEL_FORMAT)


def load_model(path: str | Path) -> tuple[MRMNet, MRMConfig, str]:
    tensors, meta = load_tensors(Path(path) / "model", MODEL_FORMAT)
    config = MRMConfig(**meta["config"])
    net = MRMNet(meta["dim"], config)
    net.load_state_dict(tensors)
    return net.eval(), config, meta["name"]
