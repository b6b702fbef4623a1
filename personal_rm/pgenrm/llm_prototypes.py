"""User prototypes from the LLM judge's own chains, and its dual-granularity scores (P-GenRM).

The rubric judge's prototypes (`scaling.ScaledRewardModel`) embed chains that the rubric judge
writes. The paper clusters the chains of the generative judge itself, so this module does it
for any `judge` over `JudgeTask`s (an LLM through any backend):

- members: each seen user's chains on `per_user` of their own comparisons (the history drawn
  from their other ones), each chain's `chain_text` (persona and criteria by weight) embedded,
  a user's vector their mean: K-means over those is the `PrototypeIndex`;
- placement: a scored user's vector is the same mean over the chains written for them on the
  request itself. Those chains read the user's history, so their persona is the LLM's reading
  of the user (the paper embeds chains on the history instead; this costs no extra chains, and
  a cold user is placed by the LLM's default reading of the request);
- prototype level: each of the user's M nearest members writes one chain on the request, with
  the member's history in the prompt and the request's own response order;
- `scaling.dual_granularity` mixes the two levels' mean final scores, alpha to the individual.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from personal_rm.data import Comparison, by_user
from personal_rm.data.splits import user_rng
from personal_rm.embed import TextEncoder
from personal_rm.pgenrm.chain import EvaluationChain, Samples
from personal_rm.pgenrm.llm_judge import Judged, JudgeFn, JudgeTask, make_tasks
from personal_rm.pgenrm.parser import ParseResult
from personal_rm.pgenrm.prototypes import PrototypeConfig, PrototypeIndex, chain_text, text_vectors
from personal_rm.pgenrm.scaling import TTSConfig, dual_granularity


def chain_vectors(
    judged: Sequence[Judged], encoder: TextEncoder, key: Callable[[Judged], str]
) -> dict[str, np.ndarray]:
    """Per key (a user, a comparison), the unit mean embedding of the texts of its parsed
    chains, every text in one encoder call; a key with no parsed chain gets no vector."""
    texts: dict[str, list[str]] = {}
    for j in judged:
        texts.setdefault(key(j), []).extend(map(chain_text, j.chains()))
    return text_vectors(texts, encoder)


def fit_llm_prototypes(
    judge: JudgeFn,
    members: Sequence[Comparison],
    encoder: TextEncoder,
    config: PrototypeConfig,
    *,
    per_user: int,
    history_size: int,
    seed: int = 0,
) -> tuple[PrototypeIndex, dict]:
    """The index of the users of `members` (their training comparisons) from the judge's
    chains (`judge`: one per task) on `per_user` of each one's comparisons, a seeded draw;
    users none of whose chains parse are left out. Returns the index and report counts."""
    pools = by_user(members)
    targets = [
        pool[i]
        for user, pool in sorted(pools.items())
        for i in sorted(user_rng(seed, user).permutation(len(pool))[:per_user])
    ]
    judged = judge(make_tasks(targets, members, history_size, seed))
    vectors = chain_vectors(judged, encoder, key=lambda j: j.task.comparison.user_id)
    if not vectors:
        raise ValueError("no member chain parsed: the judge cannot build prototypes")
    users = sorted(vectors)
    index = PrototypeIndex.fit(users, np.stack([vectors[u] for u in users]), config)
    chains = [r for j in judged for r in j.results]
    report = {
        "member_users": len(users),
        "users_without_a_parsed_chain": len(pools) - len(users),
        "member_chains": len(chains),
        "member_parse_rate": sum(map(len, (j.chains() for j in judged))) / max(1, len(chains)),
        "prototype_sizes": np.diff(index.offsets).tolist(),
    }
    return index, report


@dataclass(frozen=True)
class DualJudged:
    """A comparison's chains at both levels: its own (N) and its neighbours' (one each)."""

    individual: Judged
    neighbours: tuple[str, ...]
    prototype: tuple[Judged, ...]

    def margin(self, config: TTSConfig) -> float:
        """chosen - rejected of the mixed scores (an adaptive alpha reads the history the judge
        was shown); NaN when neither level parsed."""
        own = final_scores([self.individual.results])[0]
        near = (
            final_scores([j.results[:1] for j in self.prototype])[:, 0] if self.prototype else None
        )
        shown = len(self.individual.task.history)
        mixed = dual_granularity(own, near, shown, config).scores
        return float(mixed[0] - mixed[1])


def final_scores(results: Sequence[Sequence[ParseResult]]) -> np.ndarray:
    """(rows, n, 2) final scores in (chosen, rejected) order; NaN where a chain failed."""
    chains = [[r if isinstance(r, EvaluationChain) else None for r in row] for row in results]
    return Samples.of_chains(chains, 2, keep=False).scores


def prototype_level(
    judge: JudgeFn,
    judged: Sequence[Judged],
    index: PrototypeIndex,
    members: Sequence[Comparison],
    encoder: TextEncoder,
    *,
    m: int,
    history_size: int,
    seed: int = 0,
) -> list[DualJudged]:
    """Place each judged comparison's user by its own chains, then one chain per neighbour
    (their history, the same response order), all neighbours' chains in one judge call:
    `judge` writes one chain per task."""
    pools = by_user(members)
    placed = chain_vectors(judged, encoder, key=lambda j: j.task.id)  # per comparison
    near: list[tuple[str, ...]] = []
    tasks: list[JudgeTask] = []
    for j in judged:
        user, vector = j.task.comparison.user_id, placed.get(j.task.id)
        names = () if vector is None else tuple(index.neighbours(vector, m, exclude=user))
        near.append(names)
        for name in names:
            pool = pools[name]
            shown = user_rng(seed, f"{j.task.id}:{name}").permutation(len(pool))[:history_size]
            history = tuple(pool[i] for i in sorted(shown))
            tasks.append(JudgeTask(j.task.comparison, history, j.task.order))
    written = iter(judge(tasks) if tasks else [])
    return [
        DualJudged(j, names, tuple(next(written) for _ in names))
        for j, names in zip(judged, near, strict=True)
    ]
