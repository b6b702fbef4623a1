"""Dual-granularity test-time user-based scaling (P-GenRM), for any judge that writes chains.

    python -m jobs.evaluate --methods rubric,rubric_tts --k 0,2,4,8
    python -m bench.scaling_real --data llmfao          # the N / M / K / alpha tables and plots

- Individual level: N chains (scoring schemes) for the user in one batched judge call; the
  valid ones are aggregated (mean final score, or majority vote).
- Prototype level: one chain from each of the M nearest members of the user's prototype on the
  same request, judged with *their* histories (one batched call), aggregated the same way.
- Mix: alpha * individual + (1 - alpha) * prototype, renormalised over whichever levels produced
  valid chains. alpha is fixed (the paper: 0.5) or adaptive, h / (h + half), for a user with h
  comparisons: new users lean on their prototype, established users on themselves.
- Cold start: a user with no history is placed as if their only comparison were this request,
  labelled by the prior (w0) judge's verdict (its preferred response over its least preferred),
  through the same `user_vectors` that places users with history, so in the centroids' space.
  The pseudo-label only places the user; their own level is still the prior's chains.

`scale` is the one implementation: the evaluator (`ScaledRewardModel`), the Serve shard and the
benchmark all call it, each with its own async `Sampler` (a judge in process, memoised draws, or
the shard's retrying fan-out to sampler replicas). A sampler returns `Samples`, the chains'
final scores as an array, so the rubric judge's scores are one matmul over a whole batch of
requests and mean aggregation of its chains is exactly weight-space mixing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import Field

from personal_rm.artefacts import Artefact, join, part
from personal_rm.config import Config
from personal_rm.embed import TextEncoder
from personal_rm.features import PairSet
from personal_rm.metrics import per_user_counts
from personal_rm.mrm import split_support
from personal_rm.pgenrm.chain import EvaluationChain, Samples
from personal_rm.pgenrm.prototypes import (
    PrototypeConfig,
    PrototypeIndex,
    chain_text,
    preference_vectors,
    text_vectors,
)
from personal_rm.pgenrm.rubric import RubricJudge
from personal_rm.reward import margins

Aggregate = Literal["mean", "vote"]


class TTSConfig(Config):
    """Defaults: the setting chosen on llmfao's validation users (the shipped dataset) in
    bench/results/scaling_llmfao.md, among N=16 with M in {4, 8}, alpha in {0.5, adaptive with
    half 2/4/8/16}, K in {4, 8, 16, 32}, chain or preference vectors, refined or not."""

    n: int = Field(
        16, ge=1, description="Individual-level chains N (one batched judge call); validated: 16."
    )
    m: int = Field(
        4, ge=0, description="Prototype-level neighbours M; 0 turns that level off. Validated: 4."
    )
    alpha: float | Literal["adaptive"] = Field(
        "adaptive",
        description="Weight of the individual level: a number in [0, 1] (paper: 0.5), or "
        "'adaptive' = h / (h + half) for a user with h comparisons (validated).",
    )
    half: float | Literal["validation"] = Field(
        "validation",
        description="Adaptive alpha: the history size at which both levels weigh 1/2, or "
        "'validation': the value of `half_grid` with the best accuracy on the validation users "
        "(k-shot supports of `validation_k`), chosen when the model is fitted. It is data-"
        "dependent: 16 on llmfao's validation users, 2 on jester's (bench/results/scaling_*).",
    )
    half_grid: list[float] = Field([2.0, 4.0, 8.0, 16.0], description="Candidates for `half`.")
    validation_k: list[int] = Field(
        [2, 4, 8], description="Support sizes the validation users are scored at for `half`."
    )
    fallback_half: float = Field(
        16.0,
        gt=0,
        description="`half` where none was chosen: no validation users, or a model that was "
        "not fitted here (a sweep trial's MRM judge).",
    )
    aggregate: Aggregate = Field("mean", description="Mean final score, or majority vote.")
    seed: int = Field(0, description="Seeds the chains sampled for the user and neighbours.")


class Judge(Protocol):
    """What a sampler replica runs: n chains per history on one request, in one batch."""

    def sample(
        self, histories: Sequence[Any], request: Any, n: int, seed: int, chains: bool = False
    ) -> Samples: ...


class Sampler(Protocol):
    """A judge as `scale` calls it: awaitable, so a server can fan the two levels out."""

    def __call__(
        self, histories: Sequence[Any], request: Any, n: int, seed: int, chains: bool
    ) -> Awaitable[Samples]: ...


def sampler_of(judge: Judge) -> Sampler:
    """A judge in this process as a `Sampler` (its call completes before it is awaited)."""

    async def sample(
        histories: Sequence[Any], request: Any, n: int, seed: int, chains: bool
    ) -> Samples:
        return judge.sample(histories, request, n, seed, chains)

    return sample


@dataclass(frozen=True)
class ScaledScores:
    """Mixed scores of a request (R,), or of a batch of requests (..., R)."""

    scores: np.ndarray  # (..., R) per response; NaN where neither level had a valid chain
    alpha: np.ndarray  # (...,) the weight the individual level got, after renormalisation
    counts: dict[str, np.ndarray]  # level -> (...,) valid chains: "individual", "prototype"
    individual: list[EvaluationChain | None] = field(default_factory=list)  # when asked
    prototype: list[EvaluationChain | None] = field(default_factory=list)  # one per neighbour

    @property
    def verdict(self) -> int | None:
        """The preferred response of an unbatched request; None if no chain was valid."""
        return None if np.isnan(self.scores).any() else int(np.argmax(self.scores))

    def __repr__(self) -> str:  # shapes, not values: see `Samples.__repr__`
        return f"ScaledScores(scores={self.scores.shape}, chains={len(self.individual)})"


def mixing_weight(config: TTSConfig, history_size: int) -> float:
    if config.alpha == "adaptive":
        half = config.fallback_half if config.half == "validation" else config.half
        return history_size / (history_size + half)
    return float(config.alpha)


def valid(scores: np.ndarray) -> np.ndarray:
    """(..., n, R) chain scores -> (..., n): the chains that parsed."""
    return ~np.isnan(scores).any(-1)


def aggregate(scores: np.ndarray, how: Aggregate) -> np.ndarray:
    """(..., n, R) final scores of n chains -> (..., R): the valid chains' mean, or each
    response's share of their verdicts; NaN where no chain is valid."""
    ok = valid(scores)[..., None]
    if how == "mean":
        votes = np.where(ok, scores, 0.0)
    else:
        best = np.where(ok, scores, -np.inf).argmax(-1)[..., None]
        votes = ok & (best == np.arange(scores.shape[-1]))
    count = ok.sum(-2)
    return votes.sum(-2) / np.where(count > 0, count, np.nan)


def mix(
    individual: np.ndarray, prototype: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """alpha-mix of the levels' (..., R) aggregates, renormalised over the levels that have
    one (NaN: none); returns the scores and the alpha each request actually got."""
    own, near = ~np.isnan(individual).any(-1), ~np.isnan(prototype).any(-1)
    weight = np.where(near, np.where(own, alpha, 0.0), 1.0)
    w = weight[..., None]
    mixed = w * np.nan_to_num(individual) + (1.0 - w) * np.nan_to_num(prototype)
    return np.where((own | near)[..., None], mixed, np.nan), weight


def dual_granularity(
    individual: np.ndarray, prototype: np.ndarray | None, history_size: int, config: TTSConfig
) -> ScaledScores:
    """(..., N, R) and (..., M, R) chain scores (NaN rows: failed, or not this request's
    neighbour) -> each level aggregated, then mixed (see the module docstring)."""
    if prototype is None:
        prototype = np.full_like(individual[..., :1, :], np.nan)
    scores, alpha = mix(
        aggregate(individual, config.aggregate),
        aggregate(prototype, config.aggregate),
        mixing_weight(config, history_size),
    )
    counts = {"individual": valid(individual).sum(-1), "prototype": valid(prototype).sum(-1)}
    return ScaledScores(scores, alpha, counts)


async def scale(
    sample: Sampler,
    request: Any,
    history: Any,
    neighbours: Sequence[Sequence[str]],
    histories: Mapping[str, Any],
    config: TTSConfig,
    chains: bool = False,
) -> ScaledScores:
    """Both levels for a request, or for a leading batch of feature requests (the evaluator's
    test rows). `neighbours` holds one list (the user's) or one per request (a cold user is
    placed per request); the first M of each are used, their `histories` read once for all.
    Two sampler calls, gathered concurrently."""
    near = [list(names)[: config.m] for names in neighbours]
    union = list(dict.fromkeys(u for names in near for u in names))
    calls = [sample([history], request, config.n, config.seed, chains)]
    if union:
        calls.append(sample([histories[u] for u in union], request, 1, config.seed, chains))
    own, *members = await asyncio.gather(*calls)
    prototype = None
    if members:
        mine = np.array([[u in names for u in union] for names in near])
        mine = mine[0] if len(near) == 1 else mine  # one list: the same for every request
        prototype = np.where(mine[..., None], members[0].scores[..., 0, :], np.nan)
    result = dual_granularity(own.scores[..., 0, :, :], prototype, len(history), config)
    if not chains:
        return result
    proto = [row[0] for row in members[0].chains] if members else []
    return replace(result, individual=own.chains[0], prototype=proto)


class MemoSampler:
    """The rubric judge as a `Sampler` that memoises each history's posterior draws. A draw
    depends only on the seed and the history (`RubricJudge.sample_rubrics`), and N draws are
    the first N of any larger N, so scoring many requests, or a benchmark's many variants,
    adapts each history once; fit-time members' draws are computed in one batch."""

    def __init__(self, judge: RubricJudge) -> None:
        self.judge = judge
        self.memo: dict[tuple, np.ndarray] = {}

    @staticmethod
    def key(history: PairSet, seed: int) -> tuple:
        """The history's user and its rows' first feature, in order: cheap (a member's history
        is looked up on every request), and two real histories never share both."""
        user = str(history.user_ids[0]) if len(history) else ""
        column = np.concatenate([history.chosen[:, 0], history.rejected[:, 0]])
        return seed, user, column.tobytes()

    def draws(self, histories: Sequence[PairSet], n: int, seed: int) -> np.ndarray:
        """(H, n, K) draws; the missing ones in one batched judge call."""
        keys = [self.key(h, seed) for h in histories]
        todo = {k: h for k, h in zip(keys, histories, strict=True) if len(self.memo.get(k, ())) < n}
        if todo:
            fresh = self.judge.sample_rubrics(list(todo.values()), n, seed)
            self.memo.update(zip(todo, fresh, strict=True))
        return np.stack([self.memo[k][:n] for k in keys])

    async def __call__(
        self, histories: Sequence[PairSet], request: np.ndarray, n: int, seed: int, chains: bool
    ) -> Samples:
        return self.judge.score_draws(self.draws(histories, n, seed), request, chains)


class ScaledRewardModel:
    """The rubric judge with prototypes and dual-granularity scaling, as a `RewardModel`.

    fit: the judge on the seen users, then their vectors, the prototype index, and one
    posterior draw of each member's rubric (the chain a neighbour contributes, memoised).
    personalize: a `ScaledReward` per user, which runs `scale` on the requests it is given.
    """

    def __init__(
        self,
        judge: RubricJudge,
        prototypes: PrototypeConfig | None = None,
        scaling: TTSConfig | None = None,
        encoder: TextEncoder | None = None,
        name: str = "rubric_tts",
    ) -> None:
        self.judge, self.name = judge, name
        self.prototypes = prototypes or PrototypeConfig()
        self.scaling = scaling or TTSConfig()
        self.encoder = encoder or judge.encoder
        self.index: PrototypeIndex | None = None
        self.sampler = MemoSampler(judge)

    def fit(self, train: PairSet, validation: PairSet | None = None) -> None:
        self.judge.fit(train, validation)
        self.build_index(train)
        if self.scaling.alpha == "adaptive" and self.scaling.half == "validation":
            self.scaling = self.scaling.model_copy(update={"half": self.select_half(validation)})

    def select_half(self, validation: PairSet | None) -> float:
        """The `half_grid` value whose adaptive alpha scores the validation users best, mean
        user-level accuracy over the `validation_k` supports (never test users)."""
        config = self.scaling
        if validation is None or not len(validation):
            return config.fallback_half
        splits = [split_support(validation, k, config.seed) for k in config.validation_k]

        def accuracy(half: float) -> float:
            self.scaling = config.model_copy(update={"half": half})
            scores = []
            for support, query in splits:
                rewards = self.personalize(support, query.users())
                correct, total = per_user_counts(query.user_ids, margins(rewards, query))
                scores.append(np.mean(correct / total))
            return float(np.mean(scores))

        try:
            return max(config.half_grid, key=accuracy)
        finally:
            self.scaling = config

    def build_index(
        self, members: PairSet, vectors: Mapping[str, np.ndarray] | None = None
    ) -> None:
        """Prototypes over the users of `members` (a fitted judge's seen users), and one draw
        per member: the chain that member contributes as a neighbour."""
        vectors = self.user_vectors(members) if vectors is None else vectors
        users = sorted(vectors)
        matrix = np.stack([vectors[u] for u in users])
        self.index = PrototypeIndex.fit(users, matrix, self.prototypes, members)
        histories = [self.index.history(u) for u in self.index.users]
        self.sampler.draws(histories, 1, self.scaling.seed)

    def user_vectors(self, pairs: PairSet) -> dict[str, np.ndarray]:
        """A vector for every user with at least one comparison in `pairs`."""
        if not len(pairs):
            return {}
        if self.prototypes.representation == "preference":
            return preference_vectors(pairs)
        if self.encoder is None:
            raise ValueError("chain representations need a text encoder")
        chains = self.judge.history_chains(pairs)
        texts = {u: [chain_text(c) for c in cs] for u, cs in chains.items()}
        return text_vectors(texts, self.encoder)

    def cold_histories(self, requests: np.ndarray) -> PairSet:
        """Each (R, d) request of a batch as a one-comparison history of its own pseudo-user:
        the prior judge's preferred response over its least preferred (the cold-start rule)."""
        finals = self.judge.criterion_scores(requests) @ self.judge.prior  # (B, R)
        rows = np.arange(len(requests))
        ids = np.array([str(i) for i in rows], dtype=object)
        best, worst = requests[rows, finals.argmax(-1)], requests[rows, finals.argmin(-1)]
        return PairSet(ids, best, worst)

    def place(self, user: str, history: PairSet, requests: np.ndarray) -> np.ndarray:
        """(1, d): the user's vector, from their history; with none, (B, d): one per request of
        the (B, R, d) batch, each placed by its cold-start pseudo-history."""
        if len(history):
            return self.user_vectors(history)[user][None]
        pseudo = self.cold_histories(requests)
        vectors = self.user_vectors(pseudo)
        return np.stack([vectors[u] for u in pseudo.user_ids])

    def neighbours(
        self, user: str, history: PairSet, requests: np.ndarray, vectors: np.ndarray | None
    ) -> list[list[str]]:
        """The M nearest members of the user's prototype: one list, or one per request."""
        if self.scaling.m == 0:
            return [[]]
        assert self.index is not None, "fit first"
        if vectors is None:
            vectors = self.place(user, history, requests.reshape(-1, *requests.shape[-2:]))
        return [self.index.neighbours(v, self.scaling.m, exclude=user) for v in vectors]

    def score(
        self,
        user: str,
        history: PairSet,
        requests: np.ndarray,
        vectors: np.ndarray | None = None,
        chains: bool = False,
    ) -> ScaledScores:
        """`scale` on a request (R, d) or a batch (B, R, d) of response features; `vectors`
        (from `place`) skip the placement."""
        near = self.neighbours(user, history, requests, vectors)
        assert self.index is not None
        histories = {u: self.index.history(u) for names in near for u in names}
        return asyncio.run(
            scale(self.sampler, requests, history, near, histories, self.scaling, chains)
        )

    def personalize(self, support: PairSet, users: Sequence[str]) -> Mapping[str, ScaledReward]:
        by_user = support.rows_by_user() if len(support) else {}
        histories = {u: support.take(by_user.get(u, np.array([], np.int64))) for u in users}
        self.sampler.draws(list(histories.values()), self.scaling.n, self.scaling.seed)
        vectors = self.user_vectors(support)
        return {u: ScaledReward(self, u, histories[u], vectors.get(u)) for u in users}

    def to_artefact(self) -> Artefact:
        """Its configs and prototype index. Not the judge, which whoever holds the model saves
        (the router, which also serves it), nor the encoder: `from_artefact` is given both.
        Nor the sampler's memo: a cache of draws that the histories it needs re-create."""
        meta = {
            "name": self.name,
            "prototypes": self.prototypes.model_dump(mode="json"),
            "scaling": self.scaling.model_dump(mode="json"),
        }
        if self.index is None:
            return Artefact({}, {**meta, "index": None})
        arrays, parts = join({"index": self.index.to_artefact()})
        return Artefact(arrays, {**meta, **parts})

    @classmethod
    def from_artefact(
        cls, artefact: Artefact, judge: RubricJudge, encoder: TextEncoder | None = None
    ) -> ScaledRewardModel:
        meta = artefact.meta
        prototypes = PrototypeConfig.model_validate(meta["prototypes"])
        scaling = TTSConfig.model_validate(meta["scaling"])
        model = cls(judge, prototypes, scaling, encoder, meta["name"])
        if meta["index"] is not None:
            model.index = PrototypeIndex.from_artefact(part(artefact, "index"))
        return model


@dataclass(frozen=True)
class ScaledReward:
    """A user's reward: the scaled scores of each request it is given (`UserReward`)."""

    model: ScaledRewardModel
    user: str
    history: PairSet
    vector: np.ndarray | None  # from the history; None: each request places the user

    def score(self, requests: np.ndarray) -> np.ndarray:
        vectors = None if self.vector is None else self.vector[None]
        return self.model.score(self.user, self.history, requests, vectors).scores
