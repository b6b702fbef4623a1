"""The evaluation harness every method is judged by: same data, same splits, same metrics.

A method is fitted on the seen users' train rows (validation users, if given, are only for
model selection), then scored on
- seen users: personalised on all their train rows, scored on their test rows;
- unseen users at each k: personalised on a k-shot support set drawn from their train rows,
  scored on their test rows. k=0 is the cold start. Users with fewer than k train rows are
  left out of that k's row, and `n_users` says how many remain.
Rows follow the `accuracy.json` contract: method, split, k, n_users, acc_user, acc_sample,
ci_user, worst10_user (plus n_pairs, ci_sample, fit_seconds).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from personal_rm.data import Comparison
from personal_rm.data.splits import KShot, Split, k_shot
from personal_rm.features import PairSet
from personal_rm.metrics import summarize
from personal_rm.pgenrm.llm_judge import Judged, JudgeFn, judge_report, make_tasks
from personal_rm.reward import RewardModel, margins


def score_users(
    model: RewardModel, pairs: PairSet, support: np.ndarray, users: Sequence[str], test: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Personalise `users` on the `support` rows; margins on their `test` rows."""
    rewards = model.personalize(pairs.take(support), users)
    test_pairs = pairs.take(test)
    return test_pairs.user_ids, margins(rewards, test_pairs)


def protocol(
    split: Split, user_ids: np.ndarray, ks: Sequence[KShot], seed: int
) -> Iterator[tuple[str, KShot, Sequence[str], np.ndarray]]:
    """(group, k, users, support rows) of every row of a report: seen users on all their
    train rows, then unseen users on each k-shot support."""
    seen_train = split.rows_of(split.train, split.seen_users, user_ids)
    yield "seen", "all", split.seen_users, seen_train
    for k in ks:
        support, eligible = k_shot(user_ids, split.train, split.unseen_users, k, seed=seed)
        yield "unseen", k, eligible, support


def evaluate_method(
    model: RewardModel,
    pairs: PairSet,
    split: Split,
    ks: Sequence[KShot],
    *,
    validation: PairSet | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    fitted: bool = False,
) -> list[dict[str, Any]]:
    """`fitted=True` scores a model already fitted on this split's seen users elsewhere (by
    Ray Train, say) instead of fitting it again."""
    ids = pairs.user_ids
    started = time.perf_counter()
    if not fitted:
        model.fit(pairs.take(split.rows_of(split.train, split.seen_users, ids)), validation)
    fit_seconds = time.perf_counter() - started

    def row(group: str, k: KShot, users: Sequence[str], support: np.ndarray) -> dict[str, Any]:
        test = split.rows_of(split.test, users, ids)
        user_ids, user_margins = score_users(model, pairs, support, users, test)
        summary = summarize(user_ids, user_margins, n_boot=n_boot, seed=seed)
        return {
            "method": model.name,
            "split": group,
            "k": k,
            **summary.to_dict(),
            "fit_seconds": round(fit_seconds, 3),
        }

    return [row(*group) for group in protocol(split, ids, ks, seed)]


def judge_protocol(
    judge: JudgeFn,
    comparisons: Sequence[Comparison],
    split: Split,
    ks: Sequence[KShot],
    *,
    history_size: int,
    seed: int = 0,
) -> Iterator[tuple[str, KShot, list[Judged], float]]:
    """(group, k, judged test comparisons, seconds) of a generative judge under the protocol:
    each test comparison is judged with its user's support (seen users: their train rows) as
    the history pool, h drawn from it."""
    ids = np.array([c.user_id for c in comparisons], dtype=object)
    for group, k, users, support in protocol(split, ids, ks, seed):
        test = split.rows_of(split.test, users, ids)
        pool = [comparisons[i] for i in support]
        tasks = make_tasks([comparisons[i] for i in test], pool, history_size, seed)
        started = time.perf_counter()
        judged = judge(tasks)
        yield group, k, judged, time.perf_counter() - started


def evaluate_judge(
    judge: JudgeFn,
    comparisons: Sequence[Comparison],
    split: Split,
    ks: Sequence[KShot],
    *,
    history_size: int,
    seed: int = 0,
    n_boot: int = 1000,
    name: str = "genrm",
) -> list[dict[str, Any]]:
    """`judge_protocol`'s rows in the contract, plus parse failures and seconds. A margin is
    the mean recomputed final-score difference over the chains that parse; no parse, or a
    tie, is wrong."""
    rows = []
    for group, k, judged, seconds in judge_protocol(
        judge, comparisons, split, ks, history_size=history_size, seed=seed
    ):
        report = judge_report(judged, n_boot=n_boot, seed=seed)
        rows.append(
            {
                "method": name,
                "split": group,
                "k": k,
                **report["accuracy"],
                "fit_seconds": 0.0,
                "parse_failure_rate": report["parse_failure_rate"],
                "tie_rate": report["tie_rate"],
                "score_seconds": round(seconds, 1),
            }
        )
    return rows
