"""Prototypes on synthetic users drawn from a few pure tastes: the clusters are known."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from personal_rm.pgenrm.chain import Criterion, EvaluationChain, Persona, ResponseScore
from personal_rm.pgenrm.prototypes import (
    PrototypeConfig,
    PrototypeIndex,
    chain_text,
    preference_vectors,
    refine,
    text_vectors,
    unit,
)

from synthetic_users import mixture_users

pytestmark = pytest.mark.usefixtures("one_thread")

TASTES = 4


def matrix(vectors: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    users = sorted(vectors)
    return users, np.stack([vectors[u] for u in users])


@pytest.fixture(scope="module")
def world():
    """Near-pure users (Dirichlet 0.05): each user's dominant base is their true group."""
    data = mixture_users(200, 40, dim=16, n_bases=TASTES, concentration=0.05, seed=1)
    group = dict(zip(data.user_names, data.weights.argmax(1), strict=True))
    return data, group


@pytest.mark.parametrize("minibatch_above", [10_000, 50])  # exact KMeans, then MiniBatchKMeans
def test_prototypes_recover_the_taste_groups(world, minibatch_above: int) -> None:
    data, group = world
    vectors = preference_vectors(data.pairs)
    config = PrototypeConfig(k=TASTES, minibatch_above=minibatch_above)
    index = PrototypeIndex.fit(*matrix(vectors), config, data.pairs)
    labels = {u: int(index.labels[i]) for i, u in enumerate(index.users)}
    users = sorted(labels)
    ari = adjusted_rand_score([group[u] for u in users], [labels[u] for u in users])
    assert ari > 0.8, ari
    # Members are stored contiguously per prototype, and assignment agrees with the labels.
    for p in range(len(index)):
        assert all(labels[u] == p for u in index.members(p))
    assert all(index.assign(vectors[u]) == labels[u] for u in users[:50])


def test_a_new_user_with_few_comparisons_lands_with_their_group(world) -> None:
    data, group = world
    index = PrototypeIndex.fit(*matrix(preference_vectors(data.pairs)), PrototypeConfig(k=TASTES))
    majority = {
        p: np.bincount([group[u] for u in index.members(p)], minlength=TASTES).argmax()
        for p in range(len(index))
    }
    fresh = mixture_users(200, 8, dim=16, n_bases=TASTES, concentration=0.05, seed=1)
    # Same bases (same seed), new comparisons: keep only 8 of each user's for assignment.
    hits = [
        majority[index.assign(v)] == group[u] for u, v in preference_vectors(fresh.pairs).items()
    ]
    assert np.mean(hits) > 0.8, np.mean(hits)


def test_neighbours_are_the_closest_members_of_the_prototype_without_the_user(world) -> None:
    data, _ = world
    vectors = preference_vectors(data.pairs)
    index = PrototypeIndex.fit(*matrix(vectors), PrototypeConfig(k=TASTES), data.pairs)
    user = index.users[0]
    near = index.neighbours(vectors[user], m=5, exclude=user)
    assert len(near) == 5 and user not in near
    members = set(index.members(index.assign(vectors[user])))
    assert set(near) <= members
    sims = {u: float(vectors[u] @ vectors[user]) for u in members - {user}}
    assert [sims[u] for u in near] == sorted(sims.values(), reverse=True)[:5]
    history = index.history(near[0])
    assert len(history) == 40 and set(history.user_ids) == {near[0]}


def test_text_vectors_average_each_users_distinct_embeddings() -> None:
    class Counting:
        model_id, dim, seen = "count", 3, []

        def encode(self, texts):
            self.seen.extend(texts)
            return np.array([[len(t), 1.0, 0.0] for t in texts], dtype=np.float32)

    encoder = Counting()
    out = text_vectors({"a": ["x", "yy"], "b": ["yy", "yy"], "c": []}, encoder)
    assert sorted(encoder.seen) == ["x", "yy"] and set(out) == {"a", "b"}
    np.testing.assert_allclose(out["a"], unit(np.array([1.5, 1.0, 0.0])), rtol=1e-6)


def test_chain_text_holds_persona_and_criteria_by_weight_not_positions() -> None:
    chain = EvaluationChain(
        analysis="Response 1 wins on wit.",
        persona=Persona(style="Witty.", content_and_structure="Short.", core_values="Kind."),
        rubric=[Criterion(name="concise", weight=0.3), Criterion(name="witty", weight=0.7)],
        scores=[
            ResponseScore(response=0, scores={"concise": 5, "witty": 2}),
            ResponseScore(response=1, scores={"concise": 4, "witty": 9}),
        ],
        verdict=1,
    )
    assert chain_text(chain) == "Witty. Short. Kind. Criteria: witty, concise."


def test_refinement_moves_prototypes_towards_their_members_reward(world) -> None:
    """From random centroids, one epoch makes each a better BT reward for its members (and
    regroups them); from K-means centroids, which already are, it does no harm."""
    data, group = world
    vectors = preference_vectors(data.pairs)
    users = sorted(vectors)
    x = np.stack([vectors[u] for u in users])
    diff = data.pairs.chosen - data.pairs.rejected
    row_user = {u: i for i, u in enumerate(users)}
    rows = np.array([row_user[u] for u in data.pairs.user_ids])

    def member_loss(centroids: np.ndarray) -> float:
        """BT loss of every comparison under its user's nearest (unit) centroid, scaled by 5."""
        theta = unit(centroids)[np.argmax(x @ unit(centroids).T, 1)]
        return float(np.logaddexp(0.0, -5.0 * np.einsum("nd,nd->n", diff, theta[rows])).mean())

    def ari(centroids: np.ndarray) -> float:
        labels = np.argmax(x @ unit(centroids).T, 1)
        return adjusted_rand_score([group[u] for u in users], labels)

    config = PrototypeConfig(k=TASTES)
    random = np.random.default_rng(0).normal(size=(TASTES, 16))
    refined = refine(PrototypeIndex(random, users, x, data.pairs), config)
    np.testing.assert_allclose(np.linalg.norm(refined, axis=1), 1.0, rtol=1e-5)
    assert member_loss(refined) < member_loss(random) - 0.02
    assert ari(refined) > ari(random) + 0.03

    fitted = PrototypeIndex.fit(users, x, config, data.pairs)
    again = PrototypeIndex.fit(users, x, config.model_copy(update={"refine": True}), data.pairs)
    assert member_loss(again.centroids) < member_loss(fitted.centroids) + 0.01
    with pytest.raises(ValueError, match="histories"):
        PrototypeIndex.fit(users, x, config.model_copy(update={"refine": True}))
