"""Synthetic users with a known ground-truth reward, for tests and benchmarks.

Each user's reward is a mixture of shared base directions, r_u(x) = (Σ_k w_uk b_k) · x with
w_u ~ Dirichlet(concentration): the generative story both MRM and LoRe assume, so a method
that is right must recover it, and one that ignores users must plateau.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from personal_rm.features import PairSet


@dataclass(frozen=True)
class SyntheticUsers:
    pairs: PairSet
    weights: np.ndarray  # (users, bases) true mixture weights, rows on the simplex
    bases: np.ndarray  # (bases, dim) true base reward directions
    user_names: list[str]

    def theta(self, user_index: int) -> np.ndarray:
        return self.weights[user_index] @ self.bases


def mixture_users(
    n_users: int,
    pairs_per_user: int,
    *,
    dim: int = 16,
    n_bases: int = 2,
    concentration: float = 0.3,
    scale: float = 8.0,
    seed: int = 0,
) -> SyntheticUsers:
    """Pairs labelled by sampling Bradley-Terry with the user's true reward times `scale`."""
    rng = np.random.default_rng(seed)
    bases = rng.normal(size=(n_bases, dim))
    bases /= np.linalg.norm(bases, axis=1, keepdims=True)
    weights = rng.dirichlet([concentration] * n_bases, size=n_users)
    names = [f"user{i:04d}" for i in range(n_users)]
    user_index = np.repeat(np.arange(n_users), pairs_per_user)
    a = rng.normal(size=(len(user_index), dim)) / np.sqrt(dim)
    b = rng.normal(size=(len(user_index), dim)) / np.sqrt(dim)
    theta = (weights @ bases)[user_index]
    p_a = 1.0 / (1.0 + np.exp(-scale * ((a - b) * theta).sum(1)))
    a_wins = (rng.random(len(user_index)) < p_a)[:, None]
    chosen = np.where(a_wins, a, b).astype(np.float32)
    rejected = np.where(a_wins, b, a).astype(np.float32)
    users = np.array(names, dtype=object)[user_index]
    return SyntheticUsers(PairSet(users, chosen, rejected), weights, bases, names)


def taste_vectors(
    ids: np.ndarray, dim: int, clusters: int, spread: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(cluster, unit vector) of the users numbered `ids`: a random taste of `clusters` plus
    noise of norm ~`spread`. Seeded by the first id, so any block of users is generated
    alone, the same every time (a Ray Data `map_batches` over `ray.data.range`)."""
    tastes = np.random.default_rng(seed).standard_normal((clusters, dim)).astype(np.float32)
    tastes /= np.linalg.norm(tastes, axis=1, keepdims=True)
    rng = np.random.default_rng([seed, int(ids[0])])
    cluster = rng.integers(0, clusters, len(ids))
    vectors = rng.standard_normal((len(ids), dim), dtype=np.float32)
    vectors *= spread / np.sqrt(dim)  # in place: stays float32
    vectors += tastes[cluster]
    return cluster, vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
