"""What a personalized reward model is, to the evaluation harness and to the server.

A `RewardModel` is fitted on seen users' comparisons, then `personalize`d: given a support
set (the comparisons we have for some users, possibly none) it returns one `UserReward` per
requested user. Seen users, few-shot unseen users and cold-start users all go through this
one call, which is exactly the shape of the online path (history in, scorer out).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from personal_rm.features import PairSet


class UserReward(Protocol):
    def score(self, features: np.ndarray) -> np.ndarray:
        """Reward of each response of a request, (R, d) features -> (R,), or of a batch of
        requests, (..., R, d) -> (..., R). A reward may read the whole request: a cold-start
        user is placed by the request itself."""
        ...


class RewardModel(Protocol):
    name: str

    def fit(self, train: PairSet, validation: PairSet | None = None) -> None:
        """Learn from the seen users' training comparisons; `validation` holds held-out users
        for model selection (never test users) and may be ignored."""
        ...

    def personalize(self, support: PairSet, users: Sequence[str]) -> Mapping[str, UserReward]:
        """A reward for each of `users`; `support` holds whatever comparisons they have."""
        ...


@dataclass(frozen=True)
class LinearReward:
    """r(x) = theta . x; every linear baseline (and linear MRM, collapsed) is one of these."""

    theta: np.ndarray

    def score(self, features: np.ndarray) -> np.ndarray:
        return features @ self.theta


def margins(rewards: Mapping[str, UserReward], pairs: PairSet) -> np.ndarray:
    """r_u(chosen) - r_u(rejected) for every row; > 0 means the model agrees with the user."""
    out = np.empty(len(pairs), dtype=np.float64)
    for user, rows in pairs.rows_by_user().items():
        scores = rewards[user].score(np.stack([pairs.chosen[rows], pairs.rejected[rows]], 1))
        out[rows] = scores[:, 0] - scores[:, 1]
    return out
