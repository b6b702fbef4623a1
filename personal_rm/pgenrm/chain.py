"""The evaluation chain: what a P-GenRM judge writes for one user and one request.

A chain is an inferred *persona* (how this user judges), a *rubric* of weighted criteria that
fit the scenario, per-response per-criterion scores (1-10) and a verdict. Final scores are
always recomputed as Σ weight · score, so a verdict is an arithmetic consequence of the
rubric, never a free-floating claim; a chain whose stated totals disagree is flagged.
Every judge (the LLM judge, the CPU rubric judge) emits these same objects, and hands them to
test-time scaling as `Samples`: the chains' final scores as one array.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

WEIGHT_TOLERANCE = 1e-3
TOTAL_TOLERANCE = 0.05


class Persona(BaseModel):
    """How the user judges, inferred from their history: the P-GenRM persona dimensions."""

    model_config = ConfigDict(extra="forbid")

    style: str = Field(description="Preferred tone and register.")
    content_and_structure: str = Field(description="What the user wants covered, and how laid out.")
    core_values: str = Field(description="What the user cares about underneath.")


class Criterion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    weight: float = Field(ge=0.0, le=1.0)


class ResponseScore(BaseModel):
    """One response's score on every criterion, and the total the judge stated (if any)."""

    model_config = ConfigDict(extra="forbid")

    response: int = Field(ge=0, description="Index of the response in the request's order.")
    scores: dict[str, float] = Field(description="Criterion name -> score in [1, 10].")
    stated_total: float | None = None

    @model_validator(mode="after")
    def _in_range(self) -> ResponseScore:
        bad = {name: s for name, s in self.scores.items() if not 1.0 <= s <= 10.0}
        if bad:
            raise ValueError(f"criterion scores must lie in [1, 10]: {bad}")
        return self


class EvaluationChain(BaseModel):
    model_config = ConfigDict(extra="forbid")

    analysis: str = Field("", description="The judge's free-text reasoning before the JSON.")
    persona: Persona
    rubric: list[Criterion] = Field(min_length=1)
    scores: list[ResponseScore] = Field(min_length=2)
    verdict: int = Field(ge=0, description="Index of the preferred response.")

    @model_validator(mode="after")
    def _consistent(self) -> EvaluationChain:
        total = sum(c.weight for c in self.rubric)
        if abs(total - 1.0) > WEIGHT_TOLERANCE:
            raise ValueError(f"rubric weights must sum to 1, got {total:.4f}")
        names = {c.name for c in self.rubric}
        for score in self.scores:
            if set(score.scores) != names:
                raise ValueError(
                    f"response {score.response} is scored on {sorted(score.scores)}, "
                    f"the rubric has {sorted(names)}"
                )
        if sorted(s.response for s in self.scores) != list(range(len(self.scores))):
            raise ValueError("every response must be scored exactly once")
        if self.verdict >= len(self.scores):
            raise ValueError(f"verdict {self.verdict} names no response")
        return self

    def final_scores(self) -> list[float]:
        """Σ weight · score per response, in response order, recomputed from the rubric."""
        weight = {c.name: c.weight for c in self.rubric}
        by_response = sorted(self.scores, key=lambda s: s.response)
        return [sum(weight[n] * v for n, v in s.scores.items()) for s in by_response]

    def totals_disagree(self) -> bool:
        """True when a stated total differs from weights * scores: a judge that can't add."""
        return any(
            s.stated_total is not None and abs(s.stated_total - final) > TOTAL_TOLERANCE
            for s, final in zip(
                sorted(self.scores, key=lambda s: s.response), self.final_scores(), strict=True
            )
        )

    def verdict_follows_scores(self) -> bool:
        finals = self.final_scores()
        return finals[self.verdict] == max(finals)


def in_cents(weights: dict[str, float]) -> dict[str, float]:
    """Weights ∝ `weights`, rounded to cents that sum to exactly 1 (the remainder goes to the
    largest): what a small judge can write and still pass the sum check."""
    total = sum(weights.values())
    cents = {name: round(100 * v / total) for name, v in weights.items()}
    largest = max(cents, key=cents.get)
    cents[largest] += 100 - sum(cents.values())
    return {name: c / 100 for name, c in cents.items()}


def rounded(chain: EvaluationChain) -> EvaluationChain:
    """`chain` as a small student writes it: weights in cents, whole-number scores, no
    criterion descriptions, totals recomputed from those. The verdict stays: where rounding
    ties or flips a close call, the totals no longer follow it, and a teacher's filter
    (`chain_data.accepted_index`) rejects the chain rather than teach a contradiction."""
    weights = in_cents({c.name: c.weight for c in chain.rubric})
    scores = [
        ResponseScore(
            response=s.response,
            scores={n: float(round(v)) for n, v in s.scores.items()},
            stated_total=round(sum(weights[n] * round(v) for n, v in s.scores.items()), 2),
        )
        for s in chain.scores
    ]
    rubric = [Criterion(name=n, weight=w) for n, w in weights.items()]
    return chain.model_copy(update={"rubric": rubric, "scores": scores})


@dataclass(frozen=True)
class Samples:
    """A judge's chains for several histories on one request (or, for a feature judge, on a
    leading batch of requests), as what scaling needs: the final scores, NaN where a chain
    failed to parse. The chains themselves travel only when asked (a server's return_chains):
    the rubric judge's scores are one matmul, its chains a Python loop."""

    scores: np.ndarray  # (..., histories, n, R)
    chains: list[list[EvaluationChain | None]] | None = None  # (histories, n)

    @classmethod
    def of_chains(
        cls, chains: Sequence[Sequence[EvaluationChain | None]], n_responses: int, keep: bool
    ) -> Samples:
        scores = np.full((len(chains), max(map(len, chains), default=0), n_responses), np.nan)
        for h, row in enumerate(chains):
            for j, chain in enumerate(row):
                if chain is not None:
                    scores[h, j] = chain.final_scores()
        return cls(scores, [list(row) for row in chains] if keep else None)

    def __repr__(self) -> str:
        # Shapes, not values: asyncio (CPython 3.11) reprs a finished task's result on every
        # `asyncio.run`, and printing the arrays cost a millisecond per scaled request.
        return f"Samples(scores={self.scores.shape}, chains={self.chains is not None})"
