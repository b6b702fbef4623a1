"""The Ray-free half of the hyperparameter sweep: search spaces, the objective, and slices.

    python -m jobs.sweep --config configs/sweep.yaml      # the Ray half is actors/tuner.py

A sweep trial is the served `mrm` method: MRM meta-trained on the seen users, then used as the
chain judge of dual-granularity scaling (K prototypes, N individual chains, M neighbours,
mixing alpha). Its objective is the user-level accuracy on the *validation* users, each
personalised on a k-shot support drawn from their train rows and scored on their test rows,
averaged over k: the evaluation harness's unseen-user protocol on users who are never test
users, so the test users are scored once, by the winner.

A search space is YAML: dotted keys of `MethodsConfig` (the server's model config), each with one
distribution, e.g. `mrm.inner_lr: {loguniform: [0.1, 10]}` or `scaling.alpha: {choice: [0.5,
adaptive]}`. Every value a distribution can take is validated against `MethodsConfig` up front,
so a typo fails before any trial starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from personal_rm.config import override
from personal_rm.data.splits import KShot, k_shot
from personal_rm.evaluation import score_users
from personal_rm.features import PairSet
from personal_rm.methods import MethodsConfig
from personal_rm.metrics import per_user_counts
from personal_rm.mrm import MetaRewardModel
from personal_rm.pgenrm.rubric import RubricJudge
from personal_rm.pgenrm.scaling import ScaledRewardModel
from personal_rm.prepare import Prepared
from personal_rm.reward import RewardModel

Distribution = Literal["choice", "grid", "uniform", "loguniform", "randint"]
SearchSpace = dict[str, dict[Distribution, list[Any]]]

# The knobs, over ranges that cost about the same per trial (N+M <= 24 chains).
DEFAULT_SPACE: SearchSpace = {
    "prototypes.k": {"choice": [2, 4, 8, 16]},
    "scaling.n": {"choice": [4, 8, 16]},
    "scaling.m": {"choice": [0, 2, 4, 8]},
    "scaling.alpha": {"choice": [0.25, 0.5, 0.75, "adaptive"]},
    "mrm.inner_lr": {"loguniform": [0.3, 30.0]},
    "mrm.inner_steps": {"choice": [1, 3, 5, 10]},
    "mrm.num_bases": {"choice": [2, 4, 8, 16]},
    "mrm.rpo_rho": {"uniform": [0.2, 1.0]},
    "mrm.rpo_gamma": {"choice": [0.0, 0.25, 0.5, 1.0]},
}

# Prototype shares of an N+M chain budget in the slices: individual only, 1:3 and 1:1.
SHARES = (0.0, 0.25, 0.5)


def plain(value: Any) -> Any:
    """A sampled value as plain Python: Tune hands out numpy scalars for some distributions."""
    return value.item() if isinstance(value, np.generic) else value


def apply_params(base: MethodsConfig, params: Mapping[str, Any]) -> MethodsConfig:
    """`base` with dotted overrides (`{"mrm.inner_lr": 0.3}`), validated like a config file."""
    unknown = [key for key in params if key.split(".")[0] not in type(base).model_fields]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a key of the server's state config")
    return override(base, {key: plain(value) for key, value in params.items()})


def check_space(space: SearchSpace, base: MethodsConfig) -> None:
    """Raise ValueError unless every distribution is well formed and every value it can take
    (each option; each end of a range) makes a valid `MethodsConfig`."""
    for key, spec in space.items():
        if len(spec) != 1:
            raise ValueError(f"{key}: give exactly one distribution, got {sorted(spec)}")
        ((kind, args),) = spec.items()
        if kind in ("choice", "grid"):
            if not args:
                raise ValueError(f"{key}: {kind} needs at least one value")
            values = args
        else:
            if len(args) != 2 or not args[0] < args[1]:
                raise ValueError(f"{key}: {kind} needs [low, high] with low < high, got {args}")
            if kind == "loguniform" and args[0] <= 0:
                raise ValueError(f"{key}: loguniform needs a positive low end, got {args[0]}")
            values = [args[0], args[1] - 1] if kind == "randint" else args  # high is exclusive
        for value in values:
            try:
                apply_params(base, {key: value})
            except ValueError as exc:  # pydantic's ValidationError is a ValueError
                raise ValueError(f"{key}: {value!r} is not a valid value: {exc}") from exc


@dataclass(frozen=True)
class SweepData:
    """Everything a trial may read: the seen users' train rows, and the validation users'
    rows with the positions of their train part (k-shot supports come from it) and their test
    part (it is scored). The unseen (test) users are not in it."""

    train: PairSet
    validation: PairSet
    val_train: np.ndarray
    val_test: np.ndarray

    @classmethod
    def from_prepared(cls, prepared: Prepared) -> SweepData:
        split, ids = prepared.split, prepared.pairs.user_ids
        if not split.validation_users:
            raise ValueError("the sweep selects on validation users: set validation_fraction > 0")
        train_rows = split.rows_of(split.train, split.validation_users, ids)
        rows = np.sort(
            np.concatenate([train_rows, split.rows_of(split.test, split.validation_users, ids)])
        )
        is_train = np.isin(rows, train_rows)  # rows in the order of `Prepared.validation()`
        return cls(
            prepared.seen_train(),
            prepared.pairs.take(rows),
            np.flatnonzero(is_train),
            np.flatnonzero(~is_train),
        )


def scaled_mrm(mrm: MetaRewardModel, state: MethodsConfig, train: PairSet) -> ScaledRewardModel:
    """A fitted MRM as the chain judge of dual-granularity scaling (the server's `mrm` method),
    its prototypes built over the users of `train` from their preferences (no encoder)."""
    model = ScaledRewardModel(
        RubricJudge.from_mrm(mrm), state.prototypes, state.scaling, name="mrm_tts"
    )
    model.build_index(train)
    return model


def validation_accuracy(
    model: RewardModel, data: SweepData, ks: Sequence[KShot], seed: int
) -> dict[str, float]:
    """User-level accuracy of the validation users at each k (`val_acc_k<k>`) and its mean over
    the ks that have eligible users (`val_acc_tts`, the sweep's objective)."""
    v = data.validation
    users = sorted(v.users())
    scores = {}
    for k in ks:
        support, eligible = k_shot(v.user_ids, data.val_train, users, k, seed=seed)
        test = data.val_test[np.isin(v.user_ids[data.val_test], eligible)]
        if len(test):
            user_ids, margins = score_users(model, v, support, eligible, test)
            correct, total = per_user_counts(user_ids, margins)
            scores[f"val_acc_k{k}"] = float(np.mean(correct / total))
    if not scores:
        raise ValueError("no validation user has a test row: nothing to select on")
    scores["val_acc_tts"] = float(np.mean(list(scores.values())))
    return scores


def slices(
    mrm: MetaRewardModel,
    state: MethodsConfig,
    data: SweepData,
    ks: Sequence[KShot],
    seed: int,
    k_values: Sequence[int],
    budgets: Sequence[int],
) -> dict[str, list[dict[str, Any]]]:
    """Validation accuracy along two lines through `state`, with its trained MRM (no training):
    - "k": each prototype count K at the state's own N and M, and at M = half its N+M budget
      (with M = 0, K does not matter);
    - "budget": each N+M budget at each prototype share (individual only, 1:3, 1:1): N against
      M at equal cost, as every chain is one judge sample."""

    def point(k: int, n: int, m: int) -> dict[str, Any]:
        params = {"prototypes.k": k, "scaling.n": n, "scaling.m": m}
        model = scaled_mrm(mrm, apply_params(state, params), data.train)
        accuracy = validation_accuracy(model, data, ks, seed)["val_acc_tts"]
        return {"k": k, "n": n, "m": m, "val_acc_tts": accuracy}

    own = state.scaling
    budget = own.n + own.m
    return {
        "k": [
            point(k, budget - m, m) for m in sorted({own.m, budget // 2} - {0}) for k in k_values
        ],
        "budget": [
            {**point(state.prototypes.k, b - round(share * b), round(share * b)), "share": share}
            for share in SHARES
            for b in budgets
        ],
    }
