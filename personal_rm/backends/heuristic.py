"""A CPU stand-in teacher: writes valid evaluation chains by rule. Not a language model.

Chain data is made by a teacher LLM whose chains are kept when their verdict matches the
user's choice. A random-weight tiny model writes garbage, so rejection sampling would keep
nothing; on CPU this writer plays the teacher instead, behind the same `generate` interface
(it reads the request back out of the prompt with `read_request`). It is a real, if crude,
personalised judge: for three text features it counts how often the user chose the response
with more of it, weights the criteria by how consistent the user is, scores each response by
its feature relative to the other responses, and adds noise scaled by the temperature so the
n samples differ. On a GPU the teacher is an LLM by config (`kind: vllm` or `openai`).
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from personal_rm.backends import SamplingConfig
from personal_rm.pgenrm.chain import (
    Criterion,
    EvaluationChain,
    Persona,
    ResponseScore,
    in_cents,
)
from personal_rm.pgenrm.prompt import (
    JudgeRequest,
    Message,
    read_request,
    render_chain,
    shown_length,
)

_WORD = re.compile(r"[a-z0-9]{4,}")


def _detail(prompt: str, text: str) -> float:
    return math.log1p(shown_length(text))  # a clipped text's length is on its clip mark


def _structure(prompt: str, text: str) -> float:
    return math.log1p(sum(1 for line in text.splitlines() if line.strip()))


def _relevance(prompt: str, text: str) -> float:
    asked = set(_WORD.findall(prompt.lower()))
    return len(asked & set(_WORD.findall(text.lower()))) / max(1, len(asked))


# name -> (feature, persona phrase when the user wants more, ... when less). No criterion
# descriptions: the names say it, and a small student learns a short chain faster.
CRITERIA: dict[str, tuple[Callable[[str, str], float], str, str]] = {
    "detail": (_detail, "thorough, detailed", "short, to the point"),
    "structure": (_structure, "lists and steps", "one flowing block"),
    "relevance": (_relevance, "on-topic answers", "broad answers"),
}


def _history_agreement(history: Sequence[tuple[str, str, str]]) -> dict[str, float]:
    """Per criterion, mean sign of f(chosen) - f(rejected): +1 always more, -1 always less."""
    return {
        name: float(np.mean([np.sign(f(p, c) - f(p, r)) for p, c, r in history]))
        if history
        else 0.0
        for name, (f, *_) in CRITERIA.items()
    }


def _weights(agreement: dict[str, float]) -> dict[str, float]:
    """Weights ∝ 0.2 + |agreement|, in cents."""
    return in_cents({name: 0.2 + abs(a) for name, a in agreement.items()})


def write_chain(
    request: JudgeRequest, rng: np.random.Generator, temperature: float
) -> EvaluationChain:
    """A valid chain for `request` (indices in the shown order); noise grows with temperature."""
    agreement = _history_agreement(request.history)
    weights = _weights(agreement)
    scores: dict[str, list[float]] = {}
    for name, (feature, *_) in CRITERIA.items():
        values = np.array([feature(request.prompt, r) for r in request.responses])
        spread = values.max() - values.min()
        direction = 1.0 if agreement[name] >= 0 else -1.0
        relative = direction * (values - values.mean()) / spread if spread > 0 else 0 * values
        noisy = 5.5 + 8.0 * relative + rng.normal(0.0, 1.5 * temperature, len(values))
        scores[name] = np.clip(np.round(noisy), 1, 10).tolist()
    response_scores = [
        ResponseScore(
            response=i,
            scores={name: scores[name][i] for name in CRITERIA},
            stated_total=round(sum(weights[n] * scores[n][i] for n in CRITERIA), 2),
        )
        for i in range(len(request.responses))
    ]
    totals = [s.stated_total for s in response_scores]
    wants = {n: CRITERIA[n][1 if agreement[n] >= 0 else 2] for n in CRITERIA}
    analysis = (
        f"{len(request.history)} past choices: "
        + ", ".join(f"{n} {agreement[n]:+.1f}" for n in CRITERIA)
        + f". {max(weights, key=weights.get).capitalize()} matters most."
    )
    return EvaluationChain(
        analysis=analysis,
        persona=Persona(
            style=f"prefers {wants['structure']}",
            content_and_structure=f"wants {wants['detail']}",
            core_values=f"values {wants['relevance']}",
        ),
        rubric=[Criterion(name=n, weight=weights[n]) for n in CRITERIA],
        scores=response_scores,
        verdict=int(np.argmax(totals)),
    )


class HeuristicTeacher:
    """`GenerationBackend` that writes `write_chain`'s text; samples are seeded by the prompt."""

    def generate(
        self, prompts: Sequence[Sequence[Message]], n: int, sampling: SamplingConfig
    ) -> list[list[str]]:
        results = []
        for messages in prompts:
            request = read_request(messages)
            if request is None:  # not a judge prompt: say so, as a model would, unparseably
                results.append(["I can only judge prompts in the judge's format."] * n)
                continue
            key = zlib.crc32(messages[-1]["content"].encode())
            rng = np.random.default_rng([sampling.seed or 0, key])
            results.append(
                [render_chain(write_chain(request, rng, sampling.temperature)) for _ in range(n)]
            )
        return results
