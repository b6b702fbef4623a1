"""Pairwise accuracy the way both papers report it, plus what they leave out.

MRM reports the user-level mean (each user counts once); P-GenRM reports the sample-level
mean (heavy users count more). We report both, with bootstrap intervals over users (the unit
that was sampled), and the mean over the worst 10% of users, which is what RPO targets.
A tie or an unscorable (NaN) margin counts as wrong: dropping them overstates accuracy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class AccuracySummary:
    n_users: int
    n_pairs: int
    acc_user: float
    acc_sample: float
    ci_user: tuple[float, float]
    ci_sample: tuple[float, float]
    worst10_user: float

    def to_dict(self) -> dict:
        return asdict(self)


def per_user_counts(user_ids: np.ndarray, margins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(correct, total) per distinct user, users in sorted order."""
    correct = np.nan_to_num(margins, nan=0.0) > 0
    _, inverse = np.unique(user_ids, return_inverse=True)
    return np.bincount(inverse, weights=correct), np.bincount(inverse).astype(float)


def per_user_accuracy(user_ids: np.ndarray, margins: np.ndarray) -> dict[str, float]:
    """Each user's accuracy of `margins`, keyed by user id: what paired comparisons pair."""
    correct, total = per_user_counts(user_ids, margins)
    return dict(zip(map(str, np.unique(user_ids)), correct / total, strict=True))


def worst_fraction_mean(per_user: np.ndarray, fraction: float = 0.1) -> float:
    count = max(1, int(np.ceil(fraction * len(per_user))))
    return float(np.sort(per_user)[:count].mean())


def summarize(
    user_ids: np.ndarray, margins: np.ndarray, *, n_boot: int = 1000, seed: int = 0
) -> AccuracySummary:
    """Accuracy of `margins` (r(chosen) - r(rejected)), with 95% bootstrap intervals."""
    if len(margins) == 0:
        nan = float("nan")
        return AccuracySummary(0, 0, nan, nan, (nan, nan), (nan, nan), nan)
    correct, total = per_user_counts(user_ids, margins)
    per_user = correct / total
    draws = np.random.default_rng(seed).integers(0, len(per_user), (n_boot, len(per_user)))
    boot_user = per_user[draws].mean(axis=1)
    boot_sample = correct[draws].sum(axis=1) / total[draws].sum(axis=1)

    def interval(values: np.ndarray) -> tuple[float, float]:
        low, high = np.percentile(values, [2.5, 97.5])
        return float(low), float(high)

    return AccuracySummary(
        n_users=len(per_user),
        n_pairs=int(total.sum()),
        acc_user=float(per_user.mean()),
        acc_sample=float(correct.sum() / total.sum()),
        ci_user=interval(boot_user),
        ci_sample=interval(boot_sample),
        worst10_user=worst_fraction_mean(per_user),
    )
