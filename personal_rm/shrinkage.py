"""`mrm_shrunk`: MRM shrunk toward the global reward, plus each user's own correction, each by
as much as validation users earn.

Both rewards are linear on the same features, so a user's reward is one vector,

    base_u  = (1 - lam_k) * theta_global + lam_k * c * theta_mrm_u,
    theta_u = the MAP Bradley-Terry reward on u's own rows under the prior N(base_u, 1/tau_k),

where `c` puts MRM in the global reward's units (each is scaled to its validation-optimal
Bradley-Terry temperature first) and lam_k is chosen per support size k on validation users
only: each is adapted on k of their rows (several random draws) and scored on the rest. lam=0
*is* `bt_global`, and a lam is chosen only if the lower end of its paired gain over lam=0 on
validation users (mean - z standard errors, over users, z such that the bounds of the whole
grid hold together at level `alpha`) is the largest, so on data where
users do not differ (or MRM does not help) the method falls back to global BT, and where they
do (Jester) it keeps MRM's gain. The correction is `bt_user` centred on base_u: MRM's few
shared bases cap what a user can express, the correction is full-dimensional and as strong as
the user's rows warrant. At each k>0 the candidates (lam_k, tau) and (0, tau) (bt_user itself)
join (lam_k, no correction), judged by the same rule against global BT, every candidate
counted in the simultaneous bound. A user with n support rows takes the lam and tau of the
largest bucket k <= n; a bucket with too few validation users to judge inherits the one below.

    python -m jobs.evaluate --methods bt_global,mrm,mrm_shrunk --k 0,2,4,8,16
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Literal, NamedTuple

import numpy as np
from pydantic import Field

from personal_rm.artefacts import Artefact, join, part
from personal_rm.baselines import (
    BaselineConfig,
    at_bucket,
    fit_global_theta,
    map_thetas,
    validation_episodes,
)
from personal_rm.config import Config
from personal_rm.embed import TextEncoder
from personal_rm.features import PairSet
from personal_rm.mrm import MetaRewardModel, MRMConfig
from personal_rm.pgenrm.chain import Samples
from personal_rm.pgenrm.rubric import LibraryCriterion, RubricJudge, resamples
from personal_rm.reward import LinearReward


class ShrinkageConfig(Config):
    grid: list[float] = Field(
        [i / 10 for i in range(11)],
        description="Candidate lam in [0, 1]; 0 (global BT) must be in it, it is the fallback.",
    )
    buckets: list[int] = Field(
        [0, 2, 4, 8, 16], description="Support sizes lam is chosen at (the evaluated k)."
    )
    draws: int = Field(
        5, ge=1, description="Support/query redraws per validation user: smooths a small set."
    )
    alpha: float = Field(
        0.025,
        gt=0,
        lt=0.5,
        description="One-sided error rate of the rule that moves off global BT: a lam is taken "
        "only if its validation gain's lower bound, mean - z standard errors, beats global, with "
        "z set so the bounds hold *simultaneously* over the grid's nonzero lams (Bonferroni: "
        "z=2.81 for 10). Taking the best of 10 bounds at z=2 moved llmfao's seed-1 split to "
        "lam=0.7 at k<=2 on 12 validation users; on its test users it lost at k=8.",
    )
    user_l2_grid: list[float] = Field(
        [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0],
        description="Candidate precisions tau of each user's own correction, centred on the "
        "shrunk reward or on global BT (bt_user's prior); empty: no correction. Each "
        "(centre, tau) counts in the simultaneous bound.",
    )
    min_users: int = Field(
        5, ge=1, description="Fewer validation users at a bucket: take the bucket below's lam."
    )
    seen_lam: Literal["validation", "train"] = Field(
        "validation",
        description="Seen users' lam: the validation users' (by support size), or chosen on "
        "episodes of the seen users' own training rows (in-sample for both rewards).",
    )
    seed: int = 0

    @property
    def z(self) -> float:
        """Standard errors in a lower bound: `alpha` split over every candidate that can move
        off global BT (the nonzero lams and the corrections' precisions)."""
        trials = max(1, sum(lam != 0 for lam in self.grid) + 2 * len(self.user_l2_grid))
        return NormalDist().inv_cdf(1 - self.alpha / trials)


def bt_temperature(margins: np.ndarray) -> float:
    """The scale t > 0 minimising the Bradley-Terry loss of t * margins (a 1-D convex fit)."""
    import torch

    if not len(margins) or not np.any(margins):
        return 1.0
    m = torch.as_tensor(margins, dtype=torch.float64)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.softplus(-log_t.exp() * m).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def lower_bound(gain: np.ndarray, z: float) -> float:
    """mean - z standard errors of per-user gains (-inf with fewer than two users)."""
    se = gain.std(ddof=1) / np.sqrt(len(gain)) if len(gain) > 1 else np.inf
    return float(gain.mean() - z * se)


def choose_lam(
    gain_by_lam: Mapping[float, np.ndarray], z: float
) -> tuple[float, dict[float, float]]:
    """The lam whose per-user gain over lam=0 has the largest lower bound mean - z * SE (lam=0
    scores exactly 0, so it wins unless another beats global on validation users)."""
    bounds = {lam: 0.0 if lam == 0 else lower_bound(g, z) for lam, g in gain_by_lam.items()}
    best = max(sorted(bounds), key=lambda lam: (bounds[lam], -lam))
    return best, bounds


def l2_at(l2s: Mapping[int, float | None], n_rows: int) -> float | None:
    """The correction's precision for a user with n_rows (None: no correction)."""
    return at_bucket(l2s, n_rows) if l2s and n_rows else None


def corrected(
    support: PairSet,
    users: Sequence[str],
    bases: np.ndarray,
    precisions: Sequence[float | None],
    max_iter: int,
) -> np.ndarray:
    """(U, d): each user's MAP reward on their `support` rows around their base (U, d), where
    their precision is not None; the others keep their base."""
    users = list(users)
    fit = [i for i, tau in enumerate(precisions) if tau is not None]
    if not fit or not len(support):
        return bases
    chosen = [users[i] for i in fit]
    rows = support.take(np.flatnonzero(np.isin(support.user_ids, chosen)))
    out = bases.copy()
    tau = np.asarray([precisions[i] for i in fit], dtype=np.float64)
    out[fit] = map_thetas(rows, chosen, bases[fit], tau, max_iter)
    return out


class Episode(NamedTuple):
    """One validation (support, query) draw, with what every candidate's score needs."""

    support: PairSet
    users: list[str]  # the query users (each has support rows when k > 0)
    query_users: np.ndarray  # (n,) row -> user
    diff: np.ndarray  # (n, d) query chosen - rejected
    global_margin: np.ndarray  # (n,)
    mrm_thetas: np.ndarray  # (U, d) in `users` order
    row_user: np.ndarray  # (n,) row -> index into `users`


class ShrunkMRM:
    """The `RewardModel`: fit = global BT + MRM + lam_k and tau_k on validation users."""

    name = "mrm_shrunk"

    def __init__(
        self,
        mrm: MRMConfig | None = None,
        config: ShrinkageConfig | None = None,
        baselines: BaselineConfig | None = None,
        name: str | None = None,
    ) -> None:
        self.config = config or ShrinkageConfig()
        self.baselines = baselines or BaselineConfig()
        self.mrm = MetaRewardModel(mrm or MRMConfig(), name="mrm")
        self.name = name or self.name
        self.lams: dict[int, float] = {}
        self.l2s: dict[int, float | None] = {}
        self.report: dict[str, object] = {}

    def fit(self, train: PairSet, validation: PairSet | None = None) -> None:
        self.mrm.fit(train, validation)
        self.theta_global = fit_global_theta(train, self.baselines)
        self.select(validation, train)

    @classmethod
    def around(
        cls,
        mrm: MetaRewardModel,
        train: PairSet,
        validation: PairSet | None,
        config: ShrinkageConfig | None = None,
        baselines: BaselineConfig | None = None,
    ) -> ShrunkMRM:
        """Shrinkage around an MRM already meta-trained on `train` (e.g. on Ray Train)."""
        model = cls(mrm.config, config, baselines)
        model.mrm = mrm
        model.theta_global = fit_global_theta(train, model.baselines)
        model.select(validation, train)
        return model

    def select(self, validation: PairSet | None, train: PairSet | None = None) -> None:
        """Scale, lam_k and tau_k from validation users (callable again on a fitted MRM); with
        `seen_lam="train"`, seen users' own from episodes of their training rows."""
        buckets = sorted(set(self.config.buckets) | {0})
        self.lams, self.l2s, self.scale = dict.fromkeys(buckets, 0.0), {}, 1.0
        self.seen_lams, self.seen_l2s, self.seen_users = self.lams, self.l2s, frozenset()
        self.report = {}
        if validation is None or not len(validation):
            return
        self.scale, self.lams, self.l2s, self.report["validation"] = self._choose_on(
            validation, None
        )
        self.report["scale"] = self.scale
        self.seen_lams, self.seen_l2s = self.lams, self.l2s
        if train is not None and self.config.seen_lam == "train":
            _, self.seen_lams, self.seen_l2s, self.report["seen"] = self._choose_on(
                train, self.scale
            )
            self.seen_users = frozenset(train.users())

    def _episodes(self, pairs: PairSet) -> dict[int, list[Episode]]:
        buckets = sorted(set(self.config.buckets) | {0})
        episodes = validation_episodes(pairs, buckets, self.config.draws, self.config.seed)
        out = {}
        for k, draws in episodes.items():
            out[k] = []
            for support, query in draws:
                users = query.users()
                rewards = self.mrm.personalize(support, users)
                diff = (query.chosen - query.rejected).astype(np.float64)
                position = {u: i for i, u in enumerate(users)}
                out[k].append(
                    Episode(
                        support,
                        users,
                        query.user_ids,
                        diff,
                        diff @ self.theta_global,
                        np.stack([np.asarray(rewards[u].theta, np.float64) for u in users]),
                        np.array([position[u] for u in query.user_ids], dtype=np.int64),
                    )
                )
        return out

    def _choose_on(
        self, pairs: PairSet, scale: float | None
    ) -> tuple[float, dict[int, float], dict[int, float | None], dict[int, dict]]:
        """lam_k and tau_k per bucket from (support, query) episodes of `pairs`' users; `scale`
        None: fit it here (each reward at its BT temperature on these queries)."""
        buckets = sorted(set(self.config.buckets) | {0})
        per_bucket = self._episodes(pairs)
        if scale is None:
            every = [e for episodes in per_bucket.values() for e in episodes]
            t_global = bt_temperature(np.concatenate([e.global_margin for e in every]))
            personal = [np.einsum("nd,nd->n", e.diff, e.mrm_thetas[e.row_user]) for e in every]
            scale = bt_temperature(np.concatenate(personal)) / t_global
        self.scale = scale
        z = self.config.z
        lams, l2s, chosen, previous = {}, {}, {}, (0.0, None)
        for k in buckets:
            episodes = per_bucket.get(k, [])
            users = np.unique(np.concatenate([e.query_users for e in episodes])) if episodes else []
            if len(users) < self.config.min_users:
                chosen[k] = {"lam": previous[0], "tau": previous[1], "inherited": True}
                lams[k], l2s[k] = previous
                continue
            gain = {lam: self._user_gain(episodes, lam, None, users) for lam in self.config.grid}
            lam, bounds = choose_lam(gain, z)
            # The correction around the chosen shrinkage, or around global BT (bt_user's own
            # model): the users' rows may say more than MRM's bases can hold.
            options: dict[tuple[float, float | None], float] = {(lam, None): bounds[lam]}
            for tau in self.config.user_l2_grid if k > 0 else []:  # k=0: no rows to fit
                for centre in sorted({0.0, lam}):
                    gain = self._user_gain(episodes, centre, tau, users)
                    options[centre, tau] = lower_bound(gain, z)
            # ties: no correction, then the least MRM, then the strongest prior
            best = max(options, key=lambda o: (options[o], o[1] is None, -o[0], o[1] or 0.0))
            if options[best] <= 0:
                best = (0.0, None)
            chosen[k] = {"lam": best[0], "tau": best[1], "users": len(users)}
            chosen[k]["lower_bounds"] = {f"{c},{t}": b for (c, t), b in options.items()}
            chosen[k]["lam_lower_bounds"] = bounds
            lams[k], l2s[k] = previous = best
        return scale, lams, l2s, chosen

    def _bases(self, lam: float | np.ndarray, mrm_thetas: np.ndarray) -> np.ndarray:
        """(U, d) shrunk rewards (1 - lam) * global + lam * c * MRM's, lam one or one per user
        (U,): lam = 0 gives global BT exactly (1 * global + 0)."""
        lam = np.asarray(lam, dtype=np.float64)[..., None]
        return (1 - lam) * self.theta_global + lam * self.scale * mrm_thetas

    def _user_gain(
        self, episodes: list[Episode], lam: float, tau: float | None, users: np.ndarray
    ) -> np.ndarray:
        """Per validation user: accuracy at (lam, tau) minus accuracy of global BT, over draws."""
        ids, personal, global_m = [], [], []
        for e in episodes:
            thetas = self._bases(lam, e.mrm_thetas)
            if tau is not None:
                precisions = [tau] * len(e.users)
                thetas = corrected(e.support, e.users, thetas, precisions, self.baselines.max_iter)
            personal.append(np.einsum("nd,nd->n", e.diff, thetas[e.row_user]))
            ids.append(e.query_users)
            global_m.append(e.global_margin)
        ids, mixed, global_m = map(np.concatenate, (ids, personal, global_m))
        index = np.searchsorted(users, ids)
        gain = np.bincount(index, (mixed > 0).astype(float) - (global_m > 0), len(users))
        return gain / np.bincount(index, minlength=len(users))

    def lam_for(self, n_rows: int, seen: bool = False) -> float:
        return at_bucket(self.seen_lams if seen else self.lams, n_rows)

    def personalize(self, support: PairSet, users: Sequence[str]) -> Mapping[str, LinearReward]:
        users = list(users)
        if not users:
            return {}
        counts = {u: len(r) for u, r in support.rows_by_user().items()}
        rewards = self.mrm.personalize(support, users)
        mrm = np.stack([np.asarray(rewards[u].theta, np.float64) for u in users])
        lams, precisions = np.zeros(len(users)), []
        for i, user in enumerate(users):
            seen, n_rows = user in self.seen_users, counts.get(user, 0)
            lams[i] = self.lam_for(n_rows, seen)
            precisions.append(l2_at(self.seen_l2s if seen else self.l2s, n_rows))
        bases = self._bases(lams, mrm)
        thetas = corrected(support, users, bases, precisions, self.baselines.max_iter)
        return {u: LinearReward(thetas[i]) for i, u in enumerate(users)}


GLOBAL_CRITERION = LibraryCriterion(
    "global reward", "core_values", "What users prefer on the whole (global Bradley-Terry)."
)
OWN_CRITERION = LibraryCriterion(
    "own record",
    "core_values",
    "What this user's own past choices say beyond the other criteria (their MAP correction).",
)


class ShrunkJudge(RubricJudge):
    """`mrm_shrunk` as the server's chain-writing judge. Criteria: MRM's bases, the global
    reward and the user's "own record", weighted lam_k * c * w_u, 1 - lam_k and 1 (0 where no
    correction is taken), normalised to sum to one: a positive factor, so responses are ordered
    as by `ShrunkMRM`. The own record's head is the user's correction, fitted at request time on
    the history the chain is drawn from. A chain thus says how much of a user's reward is
    shared, theirs by prototype basis, and theirs alone."""

    kind = "shrunk"
    theta_global: np.ndarray  # (d,) the global BT reward, on raw features
    scale: float  # c: MRM in the global reward's units
    lams: dict[int, float]  # lam_k per support-size bucket, chosen on validation users
    l2s: dict[int, float | None]  # tau_k: the own correction's precision (None: none)
    max_iter: int  # L-BFGS iterations of the correction

    @classmethod
    def from_model(cls, model: ShrunkMRM) -> ShrunkJudge:
        judge = cls.from_mrm(model.mrm)
        judge.criteria = (*judge.criteria, GLOBAL_CRITERION, OWN_CRITERION)
        judge.theta_global = np.asarray(model.theta_global, np.float64)
        judge.scale, judge.lams, judge.l2s = float(model.scale), dict(model.lams), dict(model.l2s)
        judge.max_iter = model.baselines.max_iter
        return judge

    @property
    def heads(self) -> np.ndarray:
        """The shared heads; the own record's is zero here (it is per user: `own_heads`)."""
        zero = np.zeros_like(self.theta_global)
        return np.vstack([super().heads, self.theta_global[None], zero[None]])

    def rubrics(self, support: PairSet, users: Sequence[str]) -> dict[str, np.ndarray]:
        """The shared part's weights (the own record's is 0): see `own_heads`."""
        counts = {u: len(rows) for u, rows in support.rows_by_user().items()}
        out = {}
        for user, w in super().rubrics(support, users).items():
            lam = at_bucket(self.lams, counts.get(user, 0))
            mixed = np.append(lam * self.scale * w, [1.0 - lam, 0.0])
            out[user] = mixed / mixed.sum()
        return out

    def own_heads(
        self, support: PairSet, users: Sequence[str], rubrics: np.ndarray, n_rows: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(weights (U, K), heads (U, K, d)) with each user's own record in: their correction,
        fitted on their `support` rows around the shared part of `rubrics` (U, K), with the
        precision of a user with `n_rows`. The shared part is lam*c*w + (1 - lam)*global, whose
        weights sum to s = 1 - lam + lam*c; the own record weighs 1 beside it."""
        heads = np.repeat(self.heads[None], len(users), axis=0)
        lams = np.array([at_bucket(self.lams, n) for n in n_rows])
        s = 1 - lams + lams * self.scale
        bases = s[:, None] * (rubrics @ self.heads)
        taus = [l2_at(self.l2s, n) for n in n_rows]
        heads[:, -1] = corrected(support, users, bases, taus, self.max_iter) - bases
        own = np.array([tau is not None for tau in taus], dtype=np.float64)
        weights = np.concatenate([s[:, None] * rubrics[:, :-1], own[:, None]], axis=1)
        return weights / weights.sum(1, keepdims=True), heads

    def personalize(self, support: PairSet, users: Sequence[str]) -> Mapping[str, LinearReward]:
        users = list(users)
        if not users:
            return {}
        counts = {u: len(rows) for u, rows in support.rows_by_user().items()}
        rubrics = self.rubrics(support, users)
        n_rows = [counts.get(u, 0) for u in users]
        weights, heads = self.own_heads(
            support, users, np.stack([rubrics[u] for u in users]), n_rows
        )
        thetas = np.einsum("uk,ukd->ud", weights, heads)
        return {u: LinearReward(thetas[i]) for i, u in enumerate(users)}

    def sample(
        self,
        histories: Sequence[PairSet],
        request: np.ndarray,
        n: int,
        seed: int,
        chains: bool = False,
    ) -> Samples:
        """n chains for each history on one request (R, d): each draw's shared rubric and own
        record both fitted on the same bootstrap resample of the history."""
        parts = resamples(histories, n, seed)
        draws = np.stack(self.resampled_rubrics(histories, parts, n))  # (H, n, K)
        weights, heads = draws, np.broadcast_to(self.heads, (*draws.shape, request.shape[-1]))
        if parts:
            merged = PairSet.concat(parts)
            pseudo = merged.users()  # "i:j": draw j of history i
            index = [tuple(map(int, u.split(":"))) for u in pseudo]
            rows = np.array([draws[i, j] for i, j in index])
            n_rows = [len(histories[i]) for i, _ in index]
            own_weights, own = self.own_heads(merged, pseudo, rows, n_rows)
            weights, heads = draws.copy(), heads.copy()
            for (i, j), w, h in zip(index, own_weights, own, strict=True):
                weights[i, j], heads[i, j] = w, h
        scores = np.einsum("hnrk,hnk->hnr", self.criterion_scores(request, heads), weights)
        rendered = None
        if chains:
            rendered = [
                [self.chain(w, request, heads=h) for w, h in zip(ws, hs, strict=True)]
                for ws, hs in zip(weights, heads, strict=True)
            ]
        return Samples(scores, rendered)

    def to_artefact(self) -> Artefact:
        meta = {
            "scale": self.scale,
            "lams": {str(k): lam for k, lam in self.lams.items()},
            "l2s": {str(k): tau for k, tau in self.l2s.items()},
            "max_iter": self.max_iter,
        }
        shrinkage = Artefact({"theta_global": self.theta_global}, meta)
        return join({"judge": super().to_artefact(), "shrinkage": shrinkage})

    @classmethod
    def from_artefact(cls, artefact: Artefact, encoder: TextEncoder | None = None) -> ShrunkJudge:
        judge = super().from_artefact(part(artefact, "judge"), encoder)
        shrinkage = part(artefact, "shrinkage")
        judge.theta_global = shrinkage.arrays["theta_global"]
        judge.scale = shrinkage.meta["scale"]
        judge.lams = {int(k): lam for k, lam in shrinkage.meta["lams"].items()}
        judge.l2s = {int(k): tau for k, tau in shrinkage.meta["l2s"].items()}
        judge.max_iter = shrinkage.meta["max_iter"]
        return judge
