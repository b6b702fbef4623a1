"""Dual-granularity scaling: the mixing arithmetic, batching, and real effects on synthetic
users drawn from a few tastes (so a user's prototype knows what their 2 comparisons can't)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import pytest

from personal_rm.features import PairSet
from personal_rm.mrm import split_support
from personal_rm.pgenrm.chain import Criterion, EvaluationChain, Persona, ResponseScore
from personal_rm.pgenrm.prototypes import PrototypeConfig
from personal_rm.pgenrm.rubric import (
    LibraryCriterion,
    RubricConfig,
    RubricJudge,
    RubricTrainingConfig,
)
from personal_rm.pgenrm.scaling import ScaledRewardModel, TTSConfig, dual_granularity, scale
from personal_rm.reward import margins

from synthetic_users import mixture_users

pytestmark = pytest.mark.usefixtures("one_thread")

DIM, TASTES = 16, 4


def chain(finals: Sequence[float]) -> EvaluationChain:
    """A one-criterion chain whose final scores are `finals`."""
    return EvaluationChain(
        persona=Persona(style="-", content_and_structure="-", core_values="-"),
        rubric=[Criterion(name="all", weight=1.0)],
        scores=[ResponseScore(response=i, scores={"all": s}) for i, s in enumerate(finals)],
        verdict=int(np.argmax(finals)),
    )


def test_levels_are_aggregated_then_mixed_over_the_valid_parts() -> None:
    own = [chain([6, 4]), None, chain([8, 2])]
    near = [chain([2, 9]), None]
    half = TTSConfig(alpha=0.5)
    mixed = dual_granularity(own, near, history_size=3, config=half, neighbours=["a", "b"])
    np.testing.assert_allclose(mixed.scores, [4.5, 6.0])  # 0.5 * (7, 3) + 0.5 * (2, 9)
    assert mixed.verdict == 1 and mixed.parts == ("individual", "prototype")
    assert mixed.neighbours == ("a", "b") and len(mixed.individual) == 3

    alone = dual_granularity(own, [None], 3, half)  # no valid neighbour: renormalised
    np.testing.assert_allclose(alone.scores, [7.0, 3.0])
    assert alone.alpha == 1.0 and alone.parts == ("individual",)
    assert dual_granularity([None], [], 0, half).verdict is None

    votes = dual_granularity([*own, chain([3, 5])], [], 3, TTSConfig(aggregate="vote"))
    np.testing.assert_allclose(votes.scores, [2 / 3, 1 / 3])

    adaptive = TTSConfig(alpha="adaptive", half=4)
    np.testing.assert_allclose(dual_granularity(own, near, 0, adaptive).scores, [2, 9])
    assert dual_granularity(own, near, 4, adaptive).alpha == 0.5
    assert dual_granularity(own, near, 400, adaptive).alpha > 0.99


class CountingJudge:
    """Returns a fixed chain; records every call, so batching is visible."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def sample_chains(self, histories, request, n, seed):
        self.calls.append((len(histories), n))
        return [[chain(request) for _ in range(n)] for _ in histories]


def test_scale_makes_one_batched_call_per_level() -> None:
    judge = CountingJudge()
    config = TTSConfig(n=8, m=3)
    out = scale(judge, [1.0, 2.0], "me", 5, {u: u for u in "abcde"}, config)
    assert judge.calls == [(1, 8), (3, 1)]
    assert len(out.individual) == 8 and out.neighbours == ("a", "b", "c")


class HashEncoder:
    model_id, dim = "hash", DIM

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        rngs = [np.random.default_rng(zlib.crc32(t.encode())) for t in texts]
        return np.stack([r.normal(size=DIM) for r in rngs]).astype(np.float32)


@pytest.fixture(scope="module")
def world() -> dict:
    data = mixture_users(240, 40, dim=DIM, n_bases=TASTES, concentration=0.05, scale=20, seed=2)
    users, pairs = data.user_names, data.pairs
    train = pairs.take(np.flatnonzero(np.isin(pairs.user_ids, users[:160])))
    test = pairs.take(np.flatnonzero(np.isin(pairs.user_ids, users[160:])))
    criteria = [LibraryCriterion(f"c{i}", "style", f"criterion {i}") for i in range(8)]
    training = RubricTrainingConfig(epochs=20, outer_lr=3e-2, inner_lr=10.0)
    judge = RubricJudge(RubricConfig(training=training), HashEncoder(), criteria)
    model = ScaledRewardModel(
        judge, PrototypeConfig(representation="preference", k=TASTES), TTSConfig(n=8, m=8)
    )
    model.fit(train)
    return {"model": model, "train": train, "test": test}


def accuracy(model: ScaledRewardModel, support: PairSet, query: PairSet, **scaling) -> float:
    model.scaling = TTSConfig(**scaling)
    m = margins(model.personalize(support, query.users()), query)
    return float(np.mean([np.mean(m[rows] > 0) for rows in query.rows_by_user().values()]))


def test_the_prototype_level_alone_carries_the_users_taste(world) -> None:
    """Scoring with only the neighbours' rubrics (alpha = 0) beats the cold-start prior by far:
    two comparisons find the right neighbours, whose own histories then do the judging."""
    model, test = world["model"], world["test"]
    support, query = split_support(test, 2, seed=3)
    cold = accuracy(model, PairSet.empty(DIM), query, n=1, m=0)
    neighbours_only = accuracy(model, support, query, n=8, m=8, alpha=0.0)
    assert neighbours_only > cold + 0.05, (cold, neighbours_only)


def test_adaptive_mixing_trusts_a_long_history(world) -> None:
    model, test = world["model"], world["test"]
    support, query = split_support(test, 24, seed=3)
    alone = accuracy(model, support, query, n=8, m=0)
    fixed = accuracy(model, support, query, n=8, m=8, alpha=0.5)
    adaptive = accuracy(model, support, query, n=8, m=8, alpha="adaptive", half=4)
    assert adaptive > alone - 0.01 and adaptive > fixed, (alone, fixed, adaptive)


def test_more_individual_samples_beat_one(world) -> None:
    support, query = split_support(world["test"], 4, seed=4)
    one = accuracy(world["model"], support, query, n=1, m=0)
    many = accuracy(world["model"], support, query, n=16, m=0)
    assert many > one + 0.01, (one, many)


def test_personalize_is_the_verdict_of_the_real_chains(world) -> None:
    model, test = world["model"], world["test"]
    model.scaling = TTSConfig(n=4, m=3)
    support, query = split_support(test, 4, seed=5)
    users = query.users()[:6]
    rewards = model.personalize(support, users)
    for user in users:
        history, rows = support.for_user(user), query.for_user(user)
        for chosen, rejected in list(zip(rows.chosen, rows.rejected, strict=True))[:5]:
            out = model.score(user, history, np.stack([chosen, rejected]))
            assert out.parts == ("individual", "prototype") and len(out.prototype) == 3
            reward = rewards[user].score(np.stack([chosen, rejected]))
            assert out.verdict == int(np.argmax(reward))
    # A cold user: no vector from history; the preference representation has no prototype.
    cold = model.score("new", PairSet.empty(DIM), np.stack([rows.chosen[0], rows.rejected[0]]))
    assert cold.parts == ("individual",) and cold.alpha == 1.0
