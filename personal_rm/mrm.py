"""Meta Reward Modeling (MRM, arXiv 2601.18731) on frozen text features.

A user's reward is a mixture of K shared base reward functions,

    r_u(x) = sum_k softmax(w_u)_k * b_k(x),

and personalizing to a user means adapting only the K logits w_u. MRM meta-learns the base
functions b_k and the initial logits w_0 so that a few SGD steps on a handful of a user's
comparisons (the inner loop) give a good reward on that user's other comparisons (the outer
loop, MAML). The Robust Personalization Objective (RPO) reweights the outer loss towards the
hardest users of each meta-batch so the model is not tuned for the easy majority only.

Layout, top to bottom: config -> network -> losses (BT, RPO) -> inner loop -> meta-batch loss
-> training loop -> fast adaptation -> `MetaRewardModel` (the `RewardModel` protocol) -> I/O.
The training loop is single-process; a Ray Train worker reuses it through `grad_sync`.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn
from torch.func import functional_call

from personal_rm.baselines import BaselineConfig, fit_global_theta
from personal_rm.features import PairSet
from personal_rm.reward import LinearReward, UserReward

# ---------------------------------------------------------------------------------------------
# Config


class MRMConfig(BaseModel):
    """Every knob of MRM and its ablations; defaults follow the paper's released runs except
    where a description says why not (tuned on validation users of a held-out split)."""

    model_config = ConfigDict(extra="forbid")

    # Base reward functions.
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

    # Ablations (same code path, different switches).
    meta: bool = Field(True, description="False = mrm_no_meta: multi-task joint training.")
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
    def _check(self) -> MRMConfig:
        if self.support_min > self.support_max:
            raise ValueError("support_min must be <= support_max")
        return self


# Named ablations: a variant is a config override, never a code fork.
VARIANTS: dict[str, dict[str, Any]] = {
    "mrm": {},
    "mrm_no_rpo": {"rpo": False},
    "mrm_no_meta": {"meta": False},
}


# ---------------------------------------------------------------------------------------------
# Network


class MRMNet(nn.Module):
    """The meta-parameters: K base reward heads on frozen features and the initial logits w0.

    `forward` returns pairwise margins under the logits stored in `w0`. To evaluate users, swap
    `w0` for a (B, K) table of per-user logits with `functional_call` (see `user_margins`); row i
    then uses the logits of user `user[i]`. That is MAML's functional view: adapted parameters
    are the same slot filled with different values.
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

    def forward(self, chosen: Tensor, rejected: Tensor, user: Tensor | None = None) -> Tensor:
        """Margin r(chosen) - r(rejected) per row, (n,)."""
        mix = torch.softmax(self.w0, dim=-1)
        if mix.dim() == 2:  # per-user logits swapped in
            mix = mix[user]
        return ((self.bases(chosen) - self.bases(rejected)) * mix).sum(-1)


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


def user_margins(
    net: MRMNet, logits: Tensor, chosen: Tensor, rejected: Tensor, user: Tensor
) -> Tensor:
    """Margins of each row under its user's logits: the net with `w0 := logits` (B, K)."""
    return functional_call(net, {"w0": logits}, (chosen, rejected, user))


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


# ---------------------------------------------------------------------------------------------
# Episodes: a user's comparisons, split into support (adapt on) and query (judge on)


@dataclass(frozen=True)
class Task:
    """All training comparisons of one seen user."""

    user: str
    chosen: np.ndarray
    rejected: np.ndarray

    def __len__(self) -> int:
        return len(self.chosen)


@dataclass(frozen=True)
class Episode:
    support_chosen: np.ndarray
    support_rejected: np.ndarray
    query_chosen: np.ndarray
    query_rejected: np.ndarray


def tasks_from_pairs(pairs: PairSet) -> list[Task]:
    """One task per user, sorted by user id so task order never depends on row order."""
    by_user = pairs.rows_by_user()
    return [Task(u, pairs.chosen[r], pairs.rejected[r]) for u, r in sorted(by_user.items())]


def sample_episode(task: Task, rng: np.random.Generator, config: MRMConfig) -> Episode:
    """Random split with k ~ U{support_min..support_max}, leaving at least one query row."""
    order = rng.permutation(len(task))
    k = min(int(rng.integers(config.support_min, config.support_max + 1)), len(task) - 1)
    sup, qry = order[:k], order[k:]
    if config.query_max is not None:
        qry = qry[: config.query_max]
    return Episode(task.chosen[sup], task.rejected[sup], task.chosen[qry], task.rejected[qry])


def _stack(
    parts: Sequence[tuple[np.ndarray, np.ndarray]], dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """Concatenate per-user (chosen, rejected) arrays into tensors plus a row->user index."""
    user = np.concatenate([np.full(len(c), i) for i, (c, _) in enumerate(parts)])
    chosen = torch.as_tensor(np.concatenate([c for c, _ in parts]), dtype=dtype)
    rejected = torch.as_tensor(np.concatenate([r for _, r in parts]), dtype=dtype)
    return chosen, rejected, torch.as_tensor(user, dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# Inner loop and meta-batch loss


def inner_loop(
    net: MRMNet,
    chosen: Tensor,
    rejected: Tensor,
    user: Tensor,
    num_users: int,
    config: MRMConfig,
    *,
    create_graph: bool,
) -> Tensor:
    """Adapt every user's logits from w0 with `inner_steps` SGD steps on their support rows.

    All users of a batch adapt at once: the support losses are summed, and since user u's loss
    depends only on row u of the logits, each row receives exactly its own user's gradient.
    With `create_graph` the steps stay differentiable (second-order MAML); without it the
    step directions are constants, which is first-order MAML. Returns (B, K) logits.
    """
    with torch.enable_grad():  # adaptation needs gradients even when called under no_grad
        logits = net.w0.expand(num_users, -1)
        if not logits.requires_grad:  # w0 frozen (serving): adapt a detached copy
            logits = logits.detach().requires_grad_()
        for _ in range(config.inner_steps):
            margins = user_margins(net, logits, chosen, rejected, user)
            loss = per_user_bt_loss(margins, user, num_users).sum()
            (grad,) = torch.autograd.grad(loss, logits, create_graph=create_graph)
            logits = logits - config.inner_lr * grad
    return logits


def meta_batch_loss(
    net: MRMNet,
    episodes: Sequence[Episode],
    config: MRMConfig,
    user_logits: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Outer objective of one meta-batch, and each user's (detached) query loss.

    MRM: adapt each user on their support, score their query, combine with RPO weights.
    No-meta ablation (`config.meta` False): the users' logits are free parameters
    `user_logits` (B, K) and the query is all of their rows; no inner loop.
    """
    dtype, num_users = net.w0.dtype, len(episodes)
    if config.meta:
        sup = _stack([(e.support_chosen, e.support_rejected) for e in episodes], dtype)
        logits = inner_loop(net, *sup, num_users, config, create_graph=not config.first_order)
    else:
        assert user_logits is not None, "meta=False trains per-user logits: pass user_logits"
        logits = user_logits
    qc, qr, qu = _stack([(e.query_chosen, e.query_rejected) for e in episodes], dtype)
    losses = per_user_bt_loss(user_margins(net, logits, qc, qr, qu), qu, num_users)
    if config.rpo:
        weights = rpo_weights(losses, config.rpo_rho, config.rpo_gamma)
    else:
        weights = torch.full_like(losses, 1.0 / num_users)
    return (weights * losses).sum(), losses.detach()


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
    tasks: Sequence[Task],
    config: MRMConfig,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    user_logits: nn.Parameter | None = None,
    start_epoch: int = 0,
    steps_per_epoch: int | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    grad_sync: Callable[[MRMNet], None] | None = None,
) -> torch.optim.Optimizer:
    """Meta-train `net` on `tasks` (seen users) for epochs [start_epoch, config.epochs).

    Distributed use: give each worker a shard of the users, the same `steps_per_epoch` (so
    workers stay in lockstep; a short shard cycles through its users) and a `grad_sync` that
    all-reduces (averages) the gradients of `net`. It runs after backward and before clipping
    and the optimizer step, so every worker clips and applies the same gradient. RPO's
    quantile is then taken per worker batch, an approximation of the global batch quantile.

    Resume: pass the restored `optimizer` and `start_epoch` = last finished epoch + 1. Episodes
    are drawn from a generator seeded by (seed, epoch) and the lr is a pure function of the
    step, so a resumed run repeats the original exactly. `on_epoch(epoch, metrics)` is called
    after each (0-based) epoch, for reporting, checkpointing or model selection.

    No-meta ablation: `user_logits` (len(tasks), K) are trained jointly with the heads (created
    if not given; pass it, with the optimizer built over it, to resume); w0 is kept at their
    mean. They are local to a worker, so a distributed wrapper should average w0 at the end.
    Returns the optimizer (its state is what a checkpoint needs besides `net`).
    """
    tasks = [t for t in tasks if len(t) >= (2 if config.meta else 1)]  # a split needs 2 rows
    if not tasks:
        raise ValueError("no user has enough comparisons to train on")
    if not config.meta and user_logits is None:
        user_logits = nn.Parameter(torch.zeros(len(tasks), config.num_bases, dtype=net.w0.dtype))
    optimizer = optimizer or make_optimizer(net, config, user_logits)
    steps = steps_per_epoch or math.ceil(len(tasks) / config.tasks_per_batch)
    total = config.epochs * steps
    net.train()
    for epoch in range(start_epoch, config.epochs):
        rng = np.random.default_rng([config.seed, epoch])
        order = rng.permutation(len(tasks))
        order = np.resize(order, max(len(order), steps * config.tasks_per_batch))
        sums = {"loss": 0.0, "objective": 0.0, "grad_norm": 0.0}
        for step in range(steps):
            batch = order[step * config.tasks_per_batch : (step + 1) * config.tasks_per_batch]
            picked = [tasks[i] for i in batch]
            if config.meta:
                episodes = [sample_episode(t, rng, config) for t in picked]
                table = None
            else:  # every row is "query": heads and user weights are fitted jointly
                episodes = [
                    Episode(t.chosen[:0], t.rejected[:0], t.chosen, t.rejected) for t in picked
                ]
                table = user_logits[torch.as_tensor(batch)]
            lr = cosine_lr(epoch * steps + step, total, config.outer_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            objective, losses = meta_batch_loss(net, episodes, config, table)
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            if grad_sync is not None:
                grad_sync(net)
            grad_norm = nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
            optimizer.step()
            if not config.meta:
                with torch.no_grad():
                    net.w0.copy_(user_logits.mean(0))
            sums["loss"] += float(losses.mean())
            sums["objective"] += float(objective.detach())
            sums["grad_norm"] += float(grad_norm)
        if on_epoch is not None:
            metrics = {key: value / steps for key, value in sums.items()}
            on_epoch(epoch, {**metrics, "lr": lr})
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
    under `no_grad` / `inference_mode`: the few gradient steps on K logits need autograd.
    """
    users = list(dict.fromkeys(users))
    if not users:
        return {}
    index = {u: i for i, u in enumerate(users)}
    rows = np.flatnonzero(np.isin(support.user_ids, users))
    with torch.inference_mode(False):
        dtype = net.w0.dtype
        chosen = torch.as_tensor(support.chosen[rows], dtype=dtype)
        rejected = torch.as_tensor(support.rejected[rows], dtype=dtype)
        user = torch.as_tensor([index[str(u)] for u in support.user_ids[rows]], dtype=torch.long)
        logits = inner_loop(net, chosen, rejected, user, len(users), config, create_graph=False)
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
        with torch.no_grad():
            x = torch.as_tensor(features, dtype=self.net.w0.dtype)
            return (self.net.bases(x) @ torch.as_tensor(self.mixture, dtype=x.dtype)).numpy()


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

    meta_train(net, tasks_from_pairs(train), config, on_epoch=on_epoch)
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
        suffix = ("" if self.config.meta else "_no_meta") + ("" if self.config.rpo else "_no_rpo")
        self.name = name or "mrm" + suffix
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


def save_model(net: MRMNet, config: MRMConfig, path: str | Path, name: str = "mrm") -> None:
    """Directory with `model.pt` (state_dict) and `config.json` (config, input dim, name)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path / "model.pt")
    meta = {"name": name, "dim": net.dim, "config": config.model_dump()}
    (path / "config.json").write_text(json.dumps(meta, indent=2))


def load_model(path: str | Path) -> tuple[MRMNet, MRMConfig, str]:
    path = Path(path)
    meta = json.loads((path / "config.json").read_text())
    config = MRMConfig(**meta["config"])
    net = MRMNet(meta["dim"], config)
    net.load_state_dict(torch.load(path / "model.pt", weights_only=True))
    return net.eval(), config, meta["name"]


def save_user_weights(weights: Mapping[str, UserWeights], path: str | Path) -> None:
    """JSON {user: logits}: K floats per user, readable and diff-able."""
    data = {u: [float(v) for v in w.logits] for u, w in weights.items()}
    Path(path).write_text(json.dumps(data))


def load_user_weights(path: str | Path) -> dict[str, UserWeights]:
    data = json.loads(Path(path).read_text())
    return {u: UserWeights(np.asarray(v, dtype=np.float32)) for u, v in data.items()}
