"""The three baselines every personalized method must beat, on the same features.

- `GlobalBT`: one Bradley-Terry reward for everybody (logistic regression on feature
  differences), its strength chosen by cross-validation grouped by user.
- `PerUserBT`: each user's own Bradley-Terry reward, a MAP estimate whose Gaussian prior is
  centred on the global reward: with no data a user *is* the global model, and every
  comparison moves it away by as much as the evidence warrants.
- `LowRankBT` (LoRe): a shared basis of `rank` reward directions learned on seen users; a
  user is a point on the simplex over them, so a new user fits only `rank` numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

import numpy as np
import torch
from pydantic import Field
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import GroupKFold

from personal_rm.config import Config
from personal_rm.data.splits import user_rng
from personal_rm.features import PairSet
from personal_rm.reward import LinearReward

T = TypeVar("T")


class BaselineConfig(Config):
    global_cs: int = Field(
        8, description="Grid size of inverse regularisation strengths for global BT CV."
    )
    user_l2: float = Field(
        2.0,
        description="Precision of the per-user prior around the global reward: how much "
        "evidence it takes to move a user away from it.",
    )
    rank: int = Field(4, description="Number of LoRe basis directions; the papers use a handful.")
    basis_l2: float = Field(
        1e-3, description="Weight decay on the LoRe basis, which is otherwise unbounded."
    )
    weight_l2: float = Field(
        0.1, description="Pull of a new user's simplex logits towards the seen users' mean."
    )
    max_iter: int = Field(200, description="L-BFGS iterations for the per-user and low-rank fits.")
    # Validation tuning, the same budget mrm_shrunk gets (a grid per support size, judged on
    # validation users' support/query redraws, never on test users).
    tune: bool = Field(
        True,
        description="Given validation users, choose user_l2 per support size and rank from "
        "the grids below; the fixed values above are used only without validation users.",
    )
    user_l2_grid: list[float] = Field(
        [0.03, 0.1, 0.3, 1.0, 2.0, 4.0, 10.0, 30.0],
        description="Candidate prior precisions for bt_user (2 was too strong on jester).",
    )
    rank_grid: list[int] = Field([1, 2, 4, 8], description="Candidate LoRe ranks.")
    tune_buckets: list[int] = Field([2, 4, 8, 16], description="Support sizes tuned at.")
    tune_draws: int = Field(5, ge=1, description="Support/query redraws per validation user.")
    seed: int = 0


def bucket_of(n_rows: int, buckets: Sequence[int]) -> int:
    """The largest support size in `buckets` (sorted, starting at 0) that n_rows reaches."""
    return max(b for b in buckets if b <= n_rows)


def at_bucket(table: Mapping[int, T], n_rows: int) -> T:
    """What `table` (support size -> choice, with 0 in it) holds for a user with n_rows."""
    return table[bucket_of(n_rows, sorted(table))]


def validation_episodes(
    validation: PairSet, buckets: Sequence[int], draws: int, seed: int = 0
) -> dict[int, list[tuple[PairSet, PairSet]]]:
    """Per support size k: `draws` random (support, query) splits of the validation users,
    each user with more than k rows giving k support rows and the rest as query. Model
    selection at k is judged on these, never on test users."""
    by_user = sorted(validation.rows_by_user().items())
    out: dict[int, list[tuple[PairSet, PairSet]]] = {}
    for k in buckets:
        out[k] = []
        for draw in range(draws):
            support, query = [], []
            for user, rows in by_user:
                if len(rows) <= k:
                    continue
                rows = user_rng(seed * 1000 + draw, user).permutation(rows)
                support.append(rows[:k])
                query.append(rows[k:])
            if query:
                sup = np.concatenate(support).astype(np.int64)
                out[k].append((validation.take(sup), validation.take(np.concatenate(query))))
    return out


def validation_accuracy(personalize, episodes: list[tuple[PairSet, PairSet]]) -> float:
    """User-level accuracy over `episodes` of one support size: each user's mean over draws."""
    from personal_rm.reward import margins

    correct: dict[str, list[float]] = {}
    for support, query in episodes:
        ok = margins(personalize(support, query.users()), query) > 0
        for user, rows in query.rows_by_user().items():
            correct.setdefault(user, []).append(float(ok[rows].mean()))
    return float(np.mean([np.mean(v) for v in correct.values()])) if correct else float("nan")


def differences(pairs: PairSet) -> np.ndarray:
    return (pairs.chosen - pairs.rejected).astype(np.float64)


def fit_global_theta(pairs: PairSet, config: BaselineConfig) -> np.ndarray:
    """Logistic regression on +/- differences (no intercept: BT is symmetric)."""
    diff = differences(pairs)
    x = np.concatenate([diff, -diff])
    y = np.concatenate([np.ones(len(diff)), np.zeros(len(diff))])
    groups = np.concatenate([pairs.user_ids, pairs.user_ids])
    folds = min(5, len(np.unique(groups)))
    cv = list(GroupKFold(folds).split(x, y, groups)) if folds >= 2 else 3
    model = LogisticRegressionCV(
        Cs=config.global_cs,
        cv=cv,
        fit_intercept=False,
        max_iter=2000,
        scoring="neg_log_loss",
        l1_ratios=(0.0,),
        use_legacy_attributes=False,
    )
    return model.fit(x, y).coef_[0]


def lbfgs(params: list[torch.Tensor], loss_fn, max_iter: int) -> None:
    optimizer = torch.optim.LBFGS(params, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    optimizer.step(closure)


def user_index(pairs: PairSet, users: Sequence[str]) -> torch.Tensor:
    position = {u: i for i, u in enumerate(users)}
    return torch.as_tensor([position[u] for u in pairs.user_ids], dtype=torch.long)


class GlobalBT:
    name = "bt_global"

    def __init__(self, config: BaselineConfig | None = None):
        self.config = config or BaselineConfig()

    def fit(self, train: PairSet, validation: PairSet | None = None) -> None:
        self.reward = LinearReward(fit_global_theta(train, self.config))

    def personalize(self, support: PairSet, users: Sequence[str]) -> Mapping[str, LinearReward]:
        return dict.fromkeys(users, self.reward)


class PerUserBT:
    name = "bt_user"

    def __init__(self, config: BaselineConfig | None = None):
        self.config = config or BaselineConfig()

    def fit(self, train: PairSet, validation: PairSet | None = None) -> None:
        """The global reward as prior; with validation users, user_l2 per support size."""
        self.prior = fit_global_theta(train, self.config)
        self.l2_by_bucket = {0: self.config.user_l2}
        if not (self.config.tune and validation is not None and len(validation)):
            return
        buckets = sorted(self.config.tune_buckets)
        episodes = validation_episodes(validation, buckets, self.config.tune_draws)
        for k in buckets:
            if len(episodes[k]) and len(episodes[k][0][1].users()) >= 5:
                score = {
                    l2: validation_accuracy(lambda s, u, l2=l2: self._fit(s, u, l2), episodes[k])
                    for l2 in self.config.user_l2_grid
                }
                self.l2_by_bucket[k] = max(score, key=score.get)
            else:  # too few validation users with k rows: keep the choice below
                self.l2_by_bucket[k] = self.l2_by_bucket[max(self.l2_by_bucket)]

    def personalize(self, support: PairSet, users: Sequence[str]) -> Mapping[str, LinearReward]:
        counts = {u: len(r) for u, r in support.rows_by_user().items()}
        l2 = {u: at_bucket(self.l2_by_bucket, counts.get(u, 0)) for u in users}
        return self._fit(support, users, l2)

    def _fit(
        self, support: PairSet, users: Sequence[str], l2: float | Mapping[str, float]
    ) -> dict[str, LinearReward]:
        users = list(users)
        precision = np.asarray([l2[u] if isinstance(l2, Mapping) else l2 for u in users])
        thetas = map_thetas(support, users, self.prior, precision, self.config.max_iter)
        return {user: LinearReward(thetas[i]) for i, user in enumerate(users)}


def map_thetas(
    support: PairSet,
    users: Sequence[str],
    prior: np.ndarray,
    precision: np.ndarray,
    max_iter: int,
) -> np.ndarray:
    """(U, d) MAP Bradley-Terry rewards of `users` on their `support` rows, user u's Gaussian
    prior centred on `prior` ((d,) for all, or (U, d) one each) with precision `precision[u]`.
    All users in one L-BFGS run: the objective is a sum of independent per-user problems."""
    users = list(users)
    centre = torch.as_tensor(np.broadcast_to(prior, (len(users), prior.shape[-1])).copy())
    precision_t = torch.as_tensor(np.asarray(precision, dtype=np.float64))
    diff = torch.as_tensor(differences(support))
    index = user_index(support, users)
    delta = torch.zeros_like(centre, dtype=torch.float64, requires_grad=True)

    def loss() -> torch.Tensor:
        margin = (diff * (centre + delta)[index]).sum(1)
        penalty = 0.5 * (precision_t[:, None] * delta.square()).sum()
        return torch.nn.functional.softplus(-margin).sum() + penalty

    if len(support):
        lbfgs([delta], loss, max_iter)
    return (centre + delta).detach().numpy()


class LowRankBT:
    name = "lowrank"

    def __init__(self, config: BaselineConfig | None = None):
        self.config = config or BaselineConfig()

    def fit(self, train: PairSet, validation: PairSet | None = None) -> None:
        """With validation users, the rank of the grid whose validation accuracy (mean over the
        tuned support sizes) is highest; without, `config.rank`."""
        self.rank = self.config.rank
        if self.config.tune and validation is not None and len(validation):
            episodes = validation_episodes(
                validation, self.config.tune_buckets, self.config.tune_draws
            )
            score = {}
            for rank in self.config.rank_grid:
                self.fit_rank(train, rank)
                score[rank] = np.nanmean(
                    [validation_accuracy(self.personalize, e) for e in episodes.values() if e]
                )
            self.rank = max(score, key=score.get)
        self.fit_rank(train, self.rank)

    def fit_rank(self, train: PairSet, rank: int) -> None:
        """Basis and seen users' weights jointly; the basis starts near the global reward."""
        generator = torch.Generator().manual_seed(self.config.seed)
        users = train.users()
        diff = torch.as_tensor(differences(train))
        index = user_index(train, users)
        start = torch.as_tensor(fit_global_theta(train, self.config))
        noise = torch.randn(rank, diff.shape[1], generator=generator, dtype=torch.float64)
        basis = (start + noise * start.norm() / diff.shape[1] ** 0.5).requires_grad_(True)
        logits = torch.zeros(len(users), rank, dtype=torch.float64, requires_grad=True)

        def loss() -> torch.Tensor:
            user_theta = torch.softmax(logits, -1) @ basis
            margin = (diff * user_theta[index]).sum(1)
            penalty = 0.5 * self.config.basis_l2 * basis.square().sum() * len(users)
            return torch.nn.functional.softplus(-margin).sum() + penalty

        lbfgs([basis, logits], loss, self.config.max_iter)
        self.basis = basis.detach()
        self.prior_logits = logits.detach().mean(0)

    def personalize(self, support: PairSet, users: Sequence[str]) -> Mapping[str, LinearReward]:
        """Only the simplex weights move; the basis is frozen."""
        users = list(users)
        diff = torch.as_tensor(differences(support))
        index = user_index(support, users)
        logits = self.prior_logits.repeat(len(users), 1).requires_grad_(True)

        def loss() -> torch.Tensor:
            margin = (diff * (torch.softmax(logits, -1) @ self.basis)[index]).sum(1)
            penalty = 0.5 * self.config.weight_l2 * (logits - self.prior_logits).square().sum()
            return torch.nn.functional.softplus(-margin).sum() + penalty

        if len(support):
            lbfgs([logits], loss, self.config.max_iter)
        thetas = (torch.softmax(logits.detach(), -1) @ self.basis).numpy()
        return {user: LinearReward(thetas[i]) for i, user in enumerate(users)}
