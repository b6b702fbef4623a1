"""`PairSet`: comparisons turned into feature arrays, the form every reward model consumes.

Row i says that user `user_ids[i]` preferred the response with features `chosen[i]` over the
one with `rejected[i]`. Keeping users as a column (not a dict of arrays) lets models batch
across users and lets splits be plain index arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from personal_rm.data.splits import rows_by_user


@dataclass(frozen=True)
class PairSet:
    user_ids: np.ndarray  # (n,) str
    chosen: np.ndarray  # (n, d) float32
    rejected: np.ndarray  # (n, d) float32

    def __post_init__(self) -> None:
        n = len(self.user_ids)
        if self.chosen.shape != self.rejected.shape or self.chosen.shape[0] != n:
            raise ValueError(
                f"shape mismatch: {n} users, chosen {self.chosen.shape}, "
                f"rejected {self.rejected.shape}"
            )

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def dim(self) -> int:
        return self.chosen.shape[1]

    @classmethod
    def empty(cls, dim: int) -> PairSet:
        blank = np.zeros((0, dim), dtype=np.float32)
        return cls(np.array([], dtype=object), blank, blank.copy())

    def take(self, index: np.ndarray | Sequence[int]) -> PairSet:
        index = np.asarray(index, dtype=np.int64)
        return PairSet(self.user_ids[index], self.chosen[index], self.rejected[index])

    def users(self) -> list[str]:
        """Distinct users in order of first appearance."""
        _, first = np.unique(self.user_ids, return_index=True)
        return [str(self.user_ids[i]) for i in np.sort(first)]

    def rows_by_user(self) -> dict[str, np.ndarray]:
        """Row indices of each user, in row order."""
        return rows_by_user(self.user_ids)

    def for_user(self, user_id: str) -> PairSet:
        return self.take(np.flatnonzero(self.user_ids == user_id))

    @staticmethod
    def concat(parts: Sequence[PairSet]) -> PairSet:
        return PairSet(
            np.concatenate([p.user_ids for p in parts]),
            np.concatenate([p.chosen for p in parts]),
            np.concatenate([p.rejected for p in parts]),
        )
