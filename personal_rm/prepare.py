"""From a data argument to embedded, split comparisons: the first stage of every job."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from personal_rm.config import Config
from personal_rm.data.comparison import Comparison
from personal_rm.data.splits import Split
from personal_rm.embed import DEFAULT_CACHE
from personal_rm.features import PairSet


class DataConfig(Config):
    """What to read and how; jobs extend it, so these are top-level flags of every job."""

    data: str = Field(
        "llmfao", description="A file in the normalized schema, or a dataset name (llmfao ships)."
    )
    format: str = Field(
        "normalized",
        description="Input format: normalized, personal_reward_bench, prism, summarize_feedback.",
    )
    on_error: Literal["raise", "skip"] = Field(
        "raise", description="Stop at the first malformed row, or skip and count them."
    )
    max_users: int | None = Field(
        None, description="Keep only this many users (a seeded sample), for quick runs."
    )
    cache_dir: Path = Field(DEFAULT_CACHE, description="Embedding cache folder.")
    seed: int = Field(0, description="Seed of the user sample, the split and every draw after it.")


class SplitConfig(Config):
    unseen_fraction: float = Field(0.4, description="Share of users held out as unseen.")
    validation_fraction: float = Field(
        0.1, description="Share of users kept for model selection, never scored."
    )
    test_fraction: float = Field(
        0.5, description="Share of each user's comparisons held out for scoring."
    )
    min_comparisons: int = Field(
        2, description="Users with fewer comparisons are left out (one train, one test)."
    )


@dataclass(frozen=True)
class Prepared:
    pairs: PairSet
    split: Split
    source: Path
    comparisons: Sequence[Comparison] = ()  # row i of `pairs` is comparisons[i]: what LLMs read

    def seen_train(self) -> PairSet:
        s = self.split
        return self.pairs.take(s.rows_of(s.train, s.seen_users, self.pairs.user_ids))

    def validation(self) -> PairSet:
        """Every row of the validation users: for model selection, never for scoring."""
        s = self.split
        rows = s.rows_of(s.train, s.validation_users, self.pairs.user_ids)
        rows = sorted([*rows, *s.rows_of(s.test, s.validation_users, self.pairs.user_ids)])
        return self.pairs.take(rows)


def prepare(data: DataConfig, split: SplitConfig) -> Prepared:
    """Load (with row-level errors), subsample users, embed (cached), split by users."""
    import numpy as np

    from personal_rm.data import resolve_dataset
    from personal_rm.data.formats import load_any
    from personal_rm.data.splits import user_protocol_split
    from personal_rm.embed import CachedEncoder, MiniLMEncoder, embed_comparisons

    source = resolve_dataset(data.data)
    loaded = load_any(source, data.format, on_error=data.on_error)
    if loaded.skipped:
        print(f"skipped {len(loaded.skipped)} malformed rows; first: {loaded.skipped[0]}")
    comparisons = loaded.comparisons
    if data.max_users is not None:
        users = sorted({c.user_id for c in comparisons})
        keep = set(np.random.default_rng(data.seed).permutation(users)[: data.max_users])
        comparisons = [c for c in comparisons if c.user_id in keep]
    n_users = len({c.user_id for c in comparisons})
    print(f"{source}: {len(comparisons)} comparisons, {n_users} users")
    encoder = CachedEncoder(MiniLMEncoder(), data.cache_dir)
    pairs = embed_comparisons(comparisons, encoder, progress=True)
    user_split = user_protocol_split(pairs.user_ids, seed=data.seed, **split.model_dump())
    print(
        f"users: {len(user_split.seen_users)} seen, {len(user_split.validation_users)} "
        f"validation, {len(user_split.unseen_users)} unseen"
    )
    return Prepared(pairs, user_split, source, comparisons)
