"""Dual-granularity test-time user-based scaling (P-GenRM), for any judge that writes chains.

    python -m jobs.evaluate --methods rubric,rubric_tts --scaling.n 16 --scaling.m 8
    python -m bench.scaling_real --data llmfao          # the N / M / K / alpha tables and plots

- Individual level: N chains (scoring schemes) for the user in one batched judge call; the
  valid ones are aggregated (mean final score, or majority vote).
- Prototype level: one chain from each of the M nearest members of the user's prototype on the
  same request, judged with *their* histories (one batched call), aggregated the same way.
- Mix: alpha * individual + (1 - alpha) * prototype, renormalised over whichever parts produced
  valid chains. alpha is fixed (the paper: 0.5) or adaptive, h / (h + half), for a user with h
  comparisons: new users lean on their prototype, established users on themselves.

A judge only needs `sample_chains(histories, request, n, seed) -> [[chain | None] * n] per
history`; the history and request are whatever it reads (features for the rubric judge and MRM,
texts for an LLM judge). `ScaledRewardModel` wires the rubric judge (or MRM, via
`RubricJudge.from_mrm`) and a `PrototypeIndex` into the `RewardModel` protocol; with mean
aggregation its per-user reward is exactly the mixed chains' verdict, because a rubric chain's
final score is linear in its criterion weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from personal_rm.embed import TextEncoder
from personal_rm.features import PairSet
from personal_rm.pgenrm.chain import EvaluationChain
from personal_rm.pgenrm.prototypes import (
    PrototypeConfig,
    PrototypeIndex,
    chain_text,
    preference_vectors,
    text_vectors,
)
from personal_rm.pgenrm.rubric import RubricJudge
from personal_rm.reward import LinearReward

Aggregate = Literal["mean", "vote"]


class TTSConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(8, ge=1, description="Individual-level chains N (one batched judge call).")
    m: int = Field(4, ge=0, description="Prototype-level neighbours M; 0 turns that level off.")
    alpha: float | Literal["adaptive"] = Field(
        0.5,
        description="Weight of the individual level: a number in [0, 1] (paper: 0.5), or "
        "'adaptive' = h / (h + half) for a user with h comparisons.",
    )
    half: float = Field(
        8.0, gt=0, description="Adaptive alpha: the history size at which both levels weigh 1/2."
    )
    aggregate: Aggregate = Field("mean", description="Mean final score, or majority vote.")
    seed: int = Field(0, description="Seeds the chains sampled for the user and neighbours.")


class Judge(Protocol):
    def sample_chains(
        self, histories: Sequence[Any], request: Any, n: int, seed: int
    ) -> list[list[EvaluationChain | None]]:
        """n chains per history on one request, batched; None where a chain failed to parse."""
        ...


@dataclass(frozen=True)
class ScaledScores:
    scores: np.ndarray | None  # (R,) mixed score per response; None if no chain was valid
    alpha: float  # weight the individual level actually got (after renormalisation)
    parts: tuple[str, ...]  # levels that produced valid chains: "individual", "prototype"
    individual: list[EvaluationChain | None]
    prototype: list[EvaluationChain | None]
    neighbours: tuple[str, ...] = ()

    @property
    def verdict(self) -> int | None:
        return None if self.scores is None else int(np.argmax(self.scores))


def mixing_weight(config: TTSConfig, history_size: int) -> float:
    if config.alpha == "adaptive":
        return history_size / (history_size + config.half)
    return float(config.alpha)


def aggregate(scores: np.ndarray, how: Aggregate) -> np.ndarray:
    """(..., n, R) final scores of n chains -> (..., R): their mean, or each response's share of
    the chains' verdicts."""
    if how == "mean":
        return scores.mean(-2)
    winners = scores.argmax(-1)[..., None] == np.arange(scores.shape[-1])
    return winners.mean(-2)


def mix(
    individual: np.ndarray | None, prototype: np.ndarray | None, alpha: float
) -> tuple[np.ndarray | None, float]:
    """alpha-mix of the two levels' aggregates, renormalised over the parts that exist."""
    if prototype is None:
        return individual, 1.0
    if individual is None:
        return prototype, 0.0
    return alpha * individual + (1.0 - alpha) * prototype, alpha


def dual_granularity(
    individual: Sequence[EvaluationChain | None],
    prototype: Sequence[EvaluationChain | None],
    history_size: int,
    config: TTSConfig,
    neighbours: Sequence[str] = (),
) -> ScaledScores:
    """Aggregate each level's valid chains and mix them (see the module docstring)."""

    def level(chains: Sequence[EvaluationChain | None]) -> np.ndarray | None:
        valid = [c.final_scores() for c in chains if c is not None]
        return aggregate(np.asarray(valid), config.aggregate) if valid else None

    ind, proto = level(individual), level(prototype)
    scores, alpha = mix(ind, proto, mixing_weight(config, history_size))
    parts = tuple(name for name, s in (("individual", ind), ("prototype", proto)) if s is not None)
    return ScaledScores(scores, alpha, parts, list(individual), list(prototype), tuple(neighbours))


def scale(
    judge: Judge,
    request: Any,
    history: Any,
    history_size: int,
    neighbour_histories: Mapping[str, Any],
    config: TTSConfig,
) -> ScaledScores:
    """Both levels for one request: N chains on the user's history, one per neighbour's."""
    individual = judge.sample_chains([history], request, config.n, config.seed)[0]
    names = list(neighbour_histories)[: config.m]
    prototype = []
    if names:
        histories = [neighbour_histories[u] for u in names]
        prototype = [c[0] for c in judge.sample_chains(histories, request, 1, config.seed)]
    return dual_granularity(individual, prototype, history_size, config, names)


class ScaledRewardModel:
    """The rubric judge with prototypes and dual-granularity scaling, as a `RewardModel`.

    fit: the judge on the seen users, then their vectors, the prototype index, and one cached
    posterior draw of each member's rubric (the chain a neighbour contributes). personalize:
    the user's N draws, their neighbours' draws, mixed; mean aggregation only, since a vote is
    a per-request quantity (`score` gives it, through real chains).
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
        self.member_rubrics: dict[str, np.ndarray] = {}

    def fit(self, train: PairSet, validation: PairSet | None = None) -> None:
        self.judge.fit(train, validation)
        self.build_index(train)

    def build_index(
        self, members: PairSet, vectors: Mapping[str, np.ndarray] | None = None
    ) -> None:
        """Prototypes over the users of `members` (a fitted judge's seen users), and one
        cached rubric draw per member: the chain that member contributes as a neighbour."""
        vectors = self.user_vectors(members) if vectors is None else vectors
        users = sorted(vectors)
        matrix = np.stack([vectors[u] for u in users])
        self.index = PrototypeIndex.fit(users, matrix, self.prototypes, members)
        users = list(self.index.users)
        histories = [self.index.history(u) for u in users]
        draws = self.judge.sample_rubrics(histories, 1, self.scaling.seed)
        self.member_rubrics = {u: d[0] for u, d in zip(users, draws, strict=True)}

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

    def neighbours(self, vector: np.ndarray | None, exclude: str | None = None) -> list[str]:
        if vector is None or self.scaling.m == 0 or self.index is None:
            return []
        return self.index.neighbours(vector, self.scaling.m, exclude=exclude)

    def rubric_weights(self, support: PairSet, users: Sequence[str]) -> dict[str, np.ndarray]:
        """Each user's mixed criterion weights: alpha * mean(own N draws) + (1 - alpha) *
        mean(neighbours' draws). Mean aggregation of rubric chains is exactly this."""
        if self.scaling.aggregate != "mean":
            raise ValueError("a vote is per request: use `score`, or the bench's array path")
        by_user = support.rows_by_user() if len(support) else {}
        histories = [support.take(by_user.get(u, np.array([], np.int64))) for u in users]
        draws = self.judge.sample_rubrics(histories, self.scaling.n, self.scaling.seed)
        vectors = self.user_vectors(support)
        out = {}
        for user, history, own in zip(users, histories, draws, strict=True):
            near = self.neighbours(vectors.get(user), exclude=user)
            proto = np.mean([self.member_rubrics[u] for u in near], 0) if near else None
            alpha = mixing_weight(self.scaling, len(history))
            out[user] = mix(own.mean(0), proto, alpha)[0]
        return out

    def personalize(self, support: PairSet, users: Sequence[str]) -> Mapping[str, LinearReward]:
        heads = self.judge.heads
        weights = self.rubric_weights(support, users)
        return {u: LinearReward(w @ heads) for u, w in weights.items()}

    def score(self, user: str, history: PairSet, request: np.ndarray) -> ScaledScores:
        """The serving path for one request, (R, d) response features, through real chains.

        The user's vector comes from their history; with none, from this request's chain
        under the prior rubric (request-level assignment, chain representation only).
        """
        vector = self.user_vectors(history).get(user) if len(history) else None
        if vector is None and self.prototypes.representation == "chain" and self.encoder:
            prior = self.judge.sample_chains([history], request, 1, self.scaling.seed)[0][0]
            vector = self.encoder.encode([chain_text(prior)])[0]
        assert self.index is not None, "fit first"
        near = {u: self.index.history(u) for u in self.neighbours(vector, exclude=user)}
        return scale(self.judge, request, history, len(history), near, self.scaling)
