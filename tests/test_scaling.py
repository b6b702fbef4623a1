"""Dual-granularity scaling: the mixing arithmetic, batching, the cold-start rule, one path for
the evaluator and the server, and real effects on synthetic users drawn from a few tastes (so
a user's prototype knows what their 2 comparisons can't)."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Sequence

import numpy as np
import pytest

from personal_rm.features import PairSet
from personal_rm.mrm import split_support
from personal_rm.pgenrm.chain import Samples
from personal_rm.pgenrm.prototypes import PrototypeConfig, unit
from personal_rm.pgenrm.rubric import (
    LibraryCriterion,
    RubricConfig,
    RubricJudge,
    RubricTrainingConfig,
)
from personal_rm.pgenrm.scaling import (
    ScaledRewardModel,
    TTSConfig,
    dual_granularity,
    sampler_of,
    scale,
)
from personal_rm.reward import margins
from personal_rm.serving.state import PrototypeShard, Router, shard_scores

from synthetic_users import mixture_users

pytestmark = pytest.mark.usefixtures("one_thread")

DIM, TASTES = 16, 4
NAN = [np.nan, np.nan]


def test_levels_are_aggregated_then_mixed_over_the_valid_parts() -> None:
    own = np.array([[6, 4], NAN, [8, 2]])  # the middle chain failed to parse
    near = np.array([[2, 9], NAN])
    half = TTSConfig(alpha=0.5)
    mixed = dual_granularity(own, near, history_size=3, config=half)
    np.testing.assert_allclose(mixed.scores, [4.5, 6.0])  # 0.5 * (7, 3) + 0.5 * (2, 9)
    assert mixed.verdict == 1 and mixed.counts == {"individual": 2, "prototype": 1}

    alone = dual_granularity(own, np.array([NAN]), 3, half)  # no valid neighbour: renormalised
    np.testing.assert_allclose(alone.scores, [7.0, 3.0])
    assert alone.alpha == 1.0 and alone.counts["prototype"] == 0
    assert dual_granularity(np.array([NAN]), None, 0, half).verdict is None

    votes = dual_granularity(np.vstack([own, [3, 5]]), None, 3, TTSConfig(aggregate="vote"))
    np.testing.assert_allclose(votes.scores, [2 / 3, 1 / 3])

    adaptive = TTSConfig(alpha="adaptive", half=4)
    np.testing.assert_allclose(dual_granularity(own, near, 0, adaptive).scores, [2, 9])
    assert dual_granularity(own, near, 4, adaptive).alpha == 0.5
    assert dual_granularity(own, near, 400, adaptive).alpha > 0.99


def test_a_batch_of_requests_mixes_like_each_request_alone() -> None:
    rng = np.random.default_rng(0)
    own, near = rng.normal(size=(5, 8, 3)), rng.normal(size=(5, 4, 3))
    near[2] = np.nan  # request 2 has no neighbour: its alpha renormalises to 1
    for how in ("mean", "vote"):
        config = TTSConfig(alpha=0.3, aggregate=how)
        batch = dual_granularity(own, near, 7, config)
        for b in range(5):
            one = dual_granularity(own[b], near[b], 7, config)
            np.testing.assert_allclose(batch.scores[b], one.scores)
            assert batch.alpha[b] == one.alpha == (1.0 if b == 2 else 0.3)


class CountingSampler:
    """Scores each history's chains by its name's length; records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int]] = []

    async def __call__(self, histories, request, n, seed, chains):
        self.calls.append((list(histories), n))
        lengths = np.array([len(h) for h in histories], dtype=float)
        scores = np.broadcast_to(lengths[:, None, None], (len(histories), n, 2)).copy()
        scores[..., 1] = 0.0
        return Samples(np.broadcast_to(scores, (*np.shape(request)[:-2], *scores.shape)))


def test_scale_makes_one_batched_call_per_level() -> None:
    sample = CountingSampler()
    names = {u: u for u in ("a", "bb", "ccc", "dddd")}
    config = TTSConfig(n=8, m=2, alpha=0.0)
    out = asyncio.run(scale(sample, np.zeros((2, 1)), "me", [list(names)], names, config))
    assert sample.calls == [(["me"], 8), (["a", "bb"], 1)]
    np.testing.assert_allclose(out.scores, [1.5, 0.0])  # alpha 0: the neighbours' mean

    # A batch of requests with a neighbour list each: one call over their union, and each
    # request mixes only its own neighbours.
    sample = CountingSampler()
    per_request = [["a", "bb"], ["ccc", "dddd"], []]
    out = asyncio.run(scale(sample, np.zeros((3, 2, 1)), "me", per_request, names, config))
    assert sample.calls == [(["me"], 8), (["a", "bb", "ccc", "dddd"], 1)]
    np.testing.assert_allclose(out.scores[:, 0], [1.5, 3.5, 2.0])  # the last: its own level
    np.testing.assert_allclose(out.alpha, [0.0, 0.0, 1.0])


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
    chain = ScaledRewardModel(
        judge, PrototypeConfig(representation="chain", k=TASTES), TTSConfig(n=8, m=8)
    )
    chain.build_index(train)
    return {"preference": model, "chain": chain, "train": train, "test": test}


def accuracy(model: ScaledRewardModel, support: PairSet, query: PairSet, **scaling) -> float:
    model.scaling = TTSConfig(**scaling)
    m = margins(model.personalize(support, query.users()), query)
    return float(np.mean([np.mean(m[rows] > 0) for rows in query.rows_by_user().values()]))


def test_the_prototype_level_alone_carries_the_users_taste(world) -> None:
    """Scoring with only the neighbours' rubrics (alpha = 0) beats the cold-start prior by far:
    two comparisons find the right neighbours, whose own histories then do the judging."""
    model, test = world["preference"], world["test"]
    support, query = split_support(test, 2, seed=3)
    cold = accuracy(model, PairSet.empty(DIM), query, n=1, m=0)
    neighbours_only = accuracy(model, support, query, n=8, m=8, alpha=0.0)
    assert neighbours_only > cold + 0.05, (cold, neighbours_only)


def test_adaptive_mixing_trusts_a_long_history(world) -> None:
    model, test = world["preference"], world["test"]
    support, query = split_support(test, 24, seed=3)
    alone = accuracy(model, support, query, n=8, m=0)
    fixed = accuracy(model, support, query, n=8, m=8, alpha=0.5)
    adaptive = accuracy(model, support, query, n=8, m=8, alpha="adaptive", half=4)
    assert adaptive > alone - 0.01 and adaptive > fixed, (alone, fixed, adaptive)


def test_more_individual_samples_beat_one(world) -> None:
    support, query = split_support(world["test"], 4, seed=4)
    one = accuracy(world["preference"], support, query, n=1, m=0)
    many = accuracy(world["preference"], support, query, n=16, m=0)
    assert many > one + 0.01, (one, many)


@pytest.mark.parametrize("support_size", [0, 4])
def test_the_evaluators_arrays_are_the_verdicts_of_real_chains(world, support_size) -> None:
    model, test = world["chain"], world["test"]
    model.scaling = TTSConfig(n=4, m=3, alpha=0.5)
    support, query = split_support(test, max(support_size, 1), seed=5)
    support = support if support_size else PairSet.empty(DIM)
    users = query.users()[:4]
    rewards = model.personalize(support, users)
    for user in users:
        history, rows = support.for_user(user), query.for_user(user)
        requests = np.stack([rows.chosen, rows.rejected], 1)[:5]
        batch = rewards[user].score(requests)
        for request, scores in zip(requests, batch, strict=True):
            out = model.score(user, history, request, chains=True)
            assert out.counts == {"individual": 4, "prototype": 3} and len(out.prototype) == 3
            own = Samples.of_chains([out.individual], 2, keep=False).scores[0]
            near = Samples.of_chains([out.prototype], 2, keep=False).scores[0]
            from_chains = dual_granularity(own, near, len(history), model.scaling)
            np.testing.assert_allclose(from_chains.scores, scores, rtol=1e-6)


def requests_of(test: PairSet, count: int) -> np.ndarray:
    return np.stack([test.chosen[:count], test.rejected[:count]], 1)


@pytest.mark.parametrize("representation", ["preference", "chain"])
def test_cold_requests_are_placed_by_the_prior_verdict_not_by_position(
    world, representation
) -> None:
    """The old rule gave every cold request of the chain representation one text (the prior
    rubric's), so all cold traffic went to one prototype; the preference one had none."""
    model = world[representation]
    requests = requests_of(world["test"], 60)
    vectors = model.place("new", PairSet.empty(DIM), requests)
    assert len({model.index.assign(v) for v in vectors}) > 1
    swapped = model.place("new", PairSet.empty(DIM), requests[:, ::-1])
    np.testing.assert_allclose(swapped, vectors, atol=1e-6)  # the label is never the user's
    if representation == "preference":  # in the centroids' space: preferred - least preferred
        prior = model.judge.criterion_scores(requests) @ model.judge.prior
        sign = np.where(prior[:, 0] >= prior[:, 1], 1.0, -1.0)[:, None]
        expected = unit(sign * (requests[:, 0] - requests[:, 1]))
        np.testing.assert_allclose(vectors, expected, atol=1e-6)


def shards_of(model: ScaledRewardModel, train: PairSet) -> list[PrototypeShard]:
    """The server's shards of `model`'s index, as `build_state` writes them."""
    index = model.index
    return [
        PrototypeShard(
            p,
            list(index.members(p)),
            index.vectors[index.offsets[p] : index.offsets[p + 1]],
            train.take(np.flatnonzero(np.isin(train.user_ids, index.members(p)))),
        )
        for p in range(len(index))
    ]


@pytest.mark.parametrize("representation", ["preference", "chain"])
def test_the_server_and_the_evaluator_score_a_request_alike(world, representation) -> None:
    """Router -> shard -> `scale` with a judge sampler, as Serve runs it, against the
    evaluator's `personalize`: same scores for cold users (k=0) and for a user with history."""
    model, test = world[representation], world["test"]
    model.scaling = TTSConfig(n=4, m=3)
    router, shards = Router(model, {"rubric": model.judge}), shards_of(model, world["train"])
    support, _ = split_support(test, 2, seed=6)
    for user, history in [("cold", PairSet.empty(DIM)), (support.users()[0], None)]:
        history = support.for_user(user) if history is None else history
        requests = requests_of(test, 8)
        evaluator = model.personalize(history, [user])[user].score(requests)
        for request, expected in zip(requests, evaluator, strict=True):
            vector = router.user_vector(user, history, request)
            shard = shards[router.prototype(vector)]
            served = asyncio.run(
                shard_scores(
                    shard,
                    sampler_of(model.judge),
                    user,
                    history,
                    vector,
                    request,
                    model.scaling,
                    lambda names, shard=shard: [shard.history(u) for u in names],
                )
            )
            assert served.counts["prototype"] == 3
            np.testing.assert_allclose(served.scores, expected, rtol=1e-5)


def test_adaptive_half_is_chosen_on_validation_users(world) -> None:
    """half='validation' picks the grid value that scores the validation users best, and the
    fitted model carries that number (the server serves it)."""
    model, test = world["preference"], world["test"]
    validation = test.take(np.flatnonzero(np.isin(test.user_ids, test.users()[:40])))
    model.scaling = TTSConfig(n=8, m=8, half_grid=[0.5, 64.0], validation_k=[4])
    support, query = split_support(validation, 4, seed=model.scaling.seed)
    by_half = {h: accuracy(model, support, query, n=8, m=8, half=h) for h in (0.5, 64.0)}
    model.scaling = TTSConfig(n=8, m=8, half_grid=[0.5, 64.0], validation_k=[4])
    assert model.select_half(validation) == max(by_half, key=by_half.get)
    assert model.select_half(None) == TTSConfig().fallback_half
    assert model.scaling.half == "validation"  # selection leaves the config as it was
