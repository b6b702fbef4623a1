"""The generative judge at work: comparisons in, chains out, and honest accuracy.

A `JudgeTask` is one comparison with the history the judge sees (up to h of the same user's
other comparisons: leave-one-out when the comparison is itself in the pool) and the shuffled
order of its two responses. `judge_tasks` prompts a backend for n chains per task in one call,
parses them and maps them back to (chosen, rejected) order. A comparison's margin is the mean
over its parsed chains of final(chosen) - final(rejected), with final scores recomputed from
the rubric; with no parsed chain it is NaN. `judge_report` counts NaN and ties as wrong (and
also gives ties as 0.5, and the drop-the-failures number that public code reports).
`LLMJudge` is the same judge online: `scaling.Judge` over texts, what the server's samplers run.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from personal_rm.backends import GenerationBackend, SamplingConfig
from personal_rm.data import Comparison, by_user
from personal_rm.data.splits import user_rng
from personal_rm.metrics import summarize
from personal_rm.pgenrm.chain import EvaluationChain, Samples
from personal_rm.pgenrm.parser import ParseFailure, ParseResult, parse_chain
from personal_rm.pgenrm.prompt import JudgeRequest, PromptBudget, shuffle_order, unshuffle


def comparison_id(c: Comparison) -> str:
    """Stable id of a comparison: what resumable outputs are keyed by."""
    text = "\x1f".join((c.user_id, c.prompt, c.chosen, c.rejected))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class JudgeTask:
    comparison: Comparison
    history: tuple[Comparison, ...]
    order: tuple[int, ...]  # order[j]: index into (chosen, rejected) shown at position j

    @property
    def id(self) -> str:
        return comparison_id(self.comparison)

    def request(self) -> JudgeRequest:
        pair = (self.comparison.chosen, self.comparison.rejected)
        return judge_request(self.history, self.comparison.prompt, pair, self.order)


def judge_request(
    history: Sequence[Comparison], prompt: str, responses: Sequence[str], order: Sequence[int]
) -> JudgeRequest:
    """What the judge is shown: the history as the user chose, the responses in `order`."""
    return JudgeRequest(
        tuple((h.prompt, h.chosen, h.rejected) for h in history),
        prompt,
        tuple(responses[i] for i in order),
    )


def make_tasks(
    targets: Sequence[Comparison], pool: Sequence[Comparison], history_size: int, seed: int = 0
) -> list[JudgeTask]:
    """A task per target: history from the same user's `pool` rows, never the target itself."""
    pools = by_user(pool)
    tasks = []
    for target in targets:
        rng = user_rng(seed, comparison_id(target))
        others = [c for c in pools.get(target.user_id, []) if c != target]
        picked = rng.permutation(len(others))[:history_size]
        history = tuple(others[i] for i in sorted(picked))
        tasks.append(JudgeTask(target, history, tuple(shuffle_order(2, rng))))
    return tasks


def agrees(chain: EvaluationChain) -> bool:
    """The chain (in request order) prefers the chosen response, in verdict and in scores."""
    finals = chain.final_scores()
    return chain.verdict == 0 and finals[0] > max(finals[1:])


@dataclass(frozen=True)
class Judged:
    task: JudgeTask
    texts: list[str]  # the raw samples, chains written about the shown order
    results: list[ParseResult]  # parsed, chains mapped back to (chosen, rejected) order

    def chains(self) -> list[EvaluationChain]:
        return [r for r in self.results if isinstance(r, EvaluationChain)]

    def margin(self) -> float:
        finals = [c.final_scores() for c in self.chains()]
        return float(np.mean([f[0] - f[1] for f in finals])) if finals else math.nan


JudgeFn = Callable[[Sequence[JudgeTask]], list[Judged]]  # a judge over tasks, a batch at a time


def parse_shown(text: str, order: Sequence[int]) -> ParseResult:
    """A chain written about the responses in the shown `order`, in the request's order."""
    result = parse_chain(text, len(order))
    return result if isinstance(result, ParseFailure) else unshuffle(result, order)


def judge_tasks(
    backend: GenerationBackend,
    tasks: Sequence[JudgeTask],
    *,
    n: int,
    sampling: SamplingConfig,
    budget: PromptBudget | None = None,
) -> list[Judged]:
    """n chains per task; `budget` sizes the prompts (default: full texts, every example)."""
    budget = budget or PromptBudget()
    prompts = [budget.render(t.request()) for t in tasks]
    samples = backend.generate(prompts, n, sampling)
    return [
        Judged(task, texts, [parse_shown(text, task.order) for text in texts])
        for task, texts in zip(tasks, samples, strict=True)
    ]


def judge_in_batches(
    backend: GenerationBackend,
    tasks: Sequence[JudgeTask],
    *,
    n: int,
    sampling: SamplingConfig,
    budget: PromptBudget,
    batch_size: int,
    desc: str = "judging",
) -> list[Judged]:
    """`judge_tasks` a batch at a time, behind a progress bar: an LLM on CPU takes minutes."""
    from tqdm.auto import tqdm

    judged: list[Judged] = []
    for start in tqdm(range(0, len(tasks), batch_size), desc=desc, unit="batch"):
        batch = tasks[start : start + batch_size]
        judged += judge_tasks(backend, batch, n=n, sampling=sampling, budget=budget)
    return judged


def judge_report(judged: Sequence[Judged], *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Parse-failure rates by cause and accuracy three ways (see the module docstring)."""
    results = [r for j in judged for r in j.results]
    chains = [r for r in results if isinstance(r, EvaluationChain)]
    failures = Counter(r.kind.value for r in results if isinstance(r, ParseFailure))
    users = np.array([j.task.comparison.user_id for j in judged], dtype=object)
    margins = np.array([j.margin() for j in judged])
    parsed = ~np.isnan(margins)
    return {
        "n_comparisons": len(judged),
        "n_samples": len(results),
        "parse_failure_rate": sum(failures.values()) / max(1, len(results)),
        "failures": dict(failures),
        "totals_disagree_rate": float(np.mean([c.totals_disagree() for c in chains]))
        if chains
        else math.nan,
        "verdict_contradicts_scores_rate": float(
            np.mean([not c.verdict_follows_scores() for c in chains])
        )
        if chains
        else math.nan,
        "unscored_rate": float(1 - parsed.mean()) if len(judged) else math.nan,
        "tie_rate": float(np.mean(margins == 0)) if len(judged) else math.nan,
        "accuracy": summarize(users, margins, n_boot=n_boot, seed=seed).to_dict(),
        "accuracy_ties_half_sample": float(np.mean((margins > 0) + 0.5 * (margins == 0)))
        if len(judged)
        else math.nan,
        "accuracy_parsed_only": summarize(
            users[parsed], margins[parsed], n_boot=n_boot, seed=seed
        ).to_dict(),
    }


@dataclass(frozen=True)
class TextRequest:
    """What the LLM judge reads of a request to score: the prompt and its responses."""

    prompt: str
    responses: tuple[str, ...]


class LLMJudge:
    """The generative judge behind `scaling.Judge`: a history is a user's comparisons (the
    last `history_size` are candidates, as many of those as fit in `history_tokens` of
    `tokenizer`'s tokens are shown), the request is texts. Every history's n chains come from
    one backend call; each history sees the responses in its own seeded shuffle."""

    def __init__(
        self,
        backend: GenerationBackend,
        sampling: SamplingConfig,
        history_size: int = 4,
        max_text_chars: int | None = 400,
        history_tokens: int | None = None,
        tokenizer: str | None = None,
        history_text_chars: int | None = None,
    ) -> None:
        self.backend, self.sampling, self.history_size = backend, sampling, history_size
        self.budget = PromptBudget(max_text_chars, history_tokens, tokenizer, history_text_chars)

    def sample(
        self,
        histories: Sequence[Sequence[Comparison]],
        request: TextRequest,
        n: int,
        seed: int,
        chains: bool = False,
    ) -> Samples:
        """`sample_chains` as scaling reads it: final scores, NaN where a chain failed."""
        found = self.sample_chains(histories, request, n, seed)
        return Samples.of_chains(found, len(request.responses), keep=chains)

    def sample_chains(
        self, histories: Sequence[Sequence[Comparison]], request: TextRequest, n: int, seed: int
    ) -> list[list[EvaluationChain | None]]:
        rng = np.random.default_rng(seed)
        orders = [shuffle_order(len(request.responses), rng) for _ in histories]
        prompts = [
            self.budget.render(
                judge_request(
                    history[max(0, len(history) - self.history_size) :],
                    request.prompt,
                    request.responses,
                    order,
                )
            )
            for history, order in zip(histories, orders, strict=True)
        ]
        samples = self.backend.generate(prompts, n, self.sampling.model_copy(update={"seed": seed}))
        return [
            [
                chain if isinstance(chain := parse_shown(t, order), EvaluationChain) else None
                for t in texts
            ]
            for texts, order in zip(samples, orders, strict=True)
        ]
