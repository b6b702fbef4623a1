"""Toy preference data and a tiny judge model for the generative-judge tests.

Half of the toy users always prefer the longer answer, half the shorter one: a personalised
rule that the judge can only apply by reading the user's history.
"""

from __future__ import annotations

import numpy as np

from personal_rm.data import Comparison

TOPICS = ["cats", "rain", "tea", "maps", "bread", "clocks", "rivers", "chess"]
WORDS = "it is good and kind of nice to see how the small things work each day".split()


def toy_comparisons(n_users: int = 8, per_user: int = 6, seed: int = 0) -> list[Comparison]:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        wants_long = u % 2 == 0
        for _ in range(per_user):
            topic = TOPICS[rng.integers(len(TOPICS))]
            short = f"{topic.capitalize()} are fine."
            extra = " ".join(rng.choice(WORDS, size=int(rng.integers(6, 12))))
            long = f"{topic.capitalize()} are fine: {extra}."
            chosen, rejected = (long, short) if wants_long else (short, long)
            rows.append(Comparison(f"u{u}", f"Tell me about {topic}.", chosen, rejected))
    return rows
