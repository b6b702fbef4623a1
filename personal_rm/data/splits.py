"""Deterministic splits of the user protocol (MRM, LoRe): users are split into seen /
validation / unseen; every user's comparisons are split into a train part and a test part; an
unseen user adapts on a k-shot support set drawn from its train part and is scored on its
test part.

Everything works on the `user_ids` column alone, so it serves `Comparison` lists and
`PairSet`s alike. Per-user randomness is seeded by (seed, user id), so one user's support
set does not change when other users are added, and the k=4 support is the first half of
the k=8 one: curves over k compare nested sets, not fresh draws.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

KShot = int | Literal["all"]


def user_rng(seed: int, user: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(user.encode())])


def rows_by_user(user_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Row indices of each user, in row order."""
    if len(user_ids) == 0:
        return {}
    order = np.argsort(user_ids, kind="stable")
    ids, starts = np.unique(user_ids[order], return_index=True)
    return {str(u): rows for u, rows in zip(ids, np.split(order, starts[1:]), strict=True)}


@dataclass(frozen=True)
class Split:
    """Row indices of a split. `train` and `test` cover every user of every group."""

    seen_users: tuple[str, ...]
    validation_users: tuple[str, ...]
    unseen_users: tuple[str, ...]
    train: np.ndarray
    test: np.ndarray

    def rows_of(self, rows: np.ndarray, users: Sequence[str], user_ids: np.ndarray) -> np.ndarray:
        """The subset of `rows` that belongs to `users`."""
        return rows[np.isin(user_ids[rows], np.asarray(users, dtype=object))]

    def capped_test(self, user_ids: np.ndarray, per_user: int, seed: int = 0) -> Split:
        """The split with at most `per_user` test rows per user, a seeded draw of each user's:
        what an expensive judge can afford, and every method is then scored on the same rows.
        Train rows, and so supports, stay as they are."""
        by_user = rows_by_user(user_ids[self.test])
        kept = [
            self.test[user_rng(seed + 2, user).permutation(rows)[:per_user]]
            for user, rows in by_user.items()
        ]
        return replace(self, test=np.sort(np.concatenate(kept)) if kept else self.test)


def user_protocol_split(
    user_ids: np.ndarray,
    *,
    unseen_fraction: float = 0.4,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.5,
    min_comparisons: int = 2,
    seed: int = 0,
) -> Split:
    """Protocol (a). Users with fewer than `min_comparisons` rows are left out entirely."""
    by_user = {u: r for u, r in rows_by_user(user_ids).items() if len(r) >= min_comparisons}
    users = sorted(by_user)
    order = np.random.default_rng(seed).permutation(len(users))
    n_unseen = round(unseen_fraction * len(users))
    n_val = round(validation_fraction * len(users))
    unseen = sorted(users[i] for i in order[:n_unseen])
    validation = sorted(users[i] for i in order[n_unseen : n_unseen + n_val])
    seen = sorted(users[i] for i in order[n_unseen + n_val :])
    train, test = [], []
    for user in users:
        rows = user_rng(seed, user).permutation(by_user[user])
        n_test = min(max(1, round(test_fraction * len(rows))), len(rows) - 1)
        test.append(rows[:n_test])
        train.append(rows[n_test:])
    return Split(
        tuple(seen),
        tuple(validation),
        tuple(unseen),
        np.sort(np.concatenate(train)),
        np.sort(np.concatenate(test)),
    )


def k_shot(
    user_ids: np.ndarray, pool: np.ndarray, users: Sequence[str], k: KShot, seed: int = 0
) -> tuple[np.ndarray, list[str]]:
    """Support rows: the first k of a per-user seeded shuffle of each user's `pool` rows.

    Returns the rows and the users that have at least k rows in the pool (k='all' takes the
    whole pool, k=0 takes nothing and keeps every user: the cold-start case).
    """
    by_user = rows_by_user(user_ids[pool])
    support, eligible = [], []
    for user in users:
        rows = pool[by_user[user]] if user in by_user else np.array([], np.int64)
        if k != "all" and len(rows) < k:
            continue
        rows = user_rng(seed + 1, user).permutation(rows)
        support.append(rows if k == "all" else rows[:k])
        eligible.append(user)
    rows = np.sort(np.concatenate(support)) if support else np.array([], np.int64)
    return rows.astype(np.int64), eligible
