"""Toy preference data and a tiny judge model for the generative-judge tests.

Half of the toy users always prefer the longer answer, half the shorter one: a personalised
rule that the judge can only apply by reading the user's history.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from personal_rm.data import Comparison

TOPICS = ["cats", "rain", "tea", "maps", "bread", "clocks", "rivers", "chess"]
WORDS = [
    "it",
    "is",
    "good",
    "and",
    "kind",
    "of",
    "nice",
    "to",
    "see",
    "how",
    "the",
    "small",
    "things",
    "work",
    "each",
    "day",
]


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


def toy_corpus(comparisons: list[Comparison]) -> list[str]:
    """Judge prompts and heuristic chains for toy data: what the tiny tokenizer is fit to."""
    from personal_rm.backends import SamplingConfig
    from personal_rm.backends.heuristic import HeuristicTeacher
    from personal_rm.pgenrm.llm_judge import make_tasks
    from personal_rm.pgenrm.prompt import render_messages

    prompts = [render_messages(t.request()) for t in make_tasks(comparisons, comparisons, 2)]
    chains = HeuristicTeacher().generate(prompts, 1, SamplingConfig())
    return [m["content"] for p in prompts for m in p] + [c[0] for c in chains]


def tiny_judge(directory: Path) -> Path:
    """The tiny judge model (built once per test session: callers share `directory`)."""
    from tiny_lm import build_tiny_lm

    if not (directory / "model.safetensors").exists():  # written last
        corpus = toy_corpus(toy_comparisons(16, 8, seed=0))
        build_tiny_lm(directory, corpus)
    return directory
