"""How fast and how well does a new user get a personal reward at k=16?

    python -m bench.mrm_adaptation --data jester --max_users 1500

For every unseen user with at least k train comparisons, in the same run on the same support
sets: MRM's inner loop (`adapt`, the serving path), per-user Bradley-Terry fitted from scratch
(scikit-learn logistic regression, the "individual RM" of the papers) and per-user BT with the
global prior (our `bt_user`). Reports median latency per user, the ratio to MRM, and
user-level accuracy on the users' test comparisons. Writes `bench/results/mrm_adaptation.json`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pydantic import Field

from personal_rm.baselines import BaselineConfig
from personal_rm.config import parse_config
from personal_rm.mrm import MRMConfig
from personal_rm.prepare import DataConfig, SplitConfig


class AdaptationBenchConfig(DataConfig):
    k: int = Field(16, description="Support comparisons per new user.")
    max_eval_users: int = Field(200, description="Unseen users timed (all eligible if fewer).")
    out: Path = Field(Path("bench/results/mrm_adaptation.json"), description="Result JSON.")
    split: SplitConfig = SplitConfig()
    mrm: MRMConfig = MRMConfig()
    baselines: BaselineConfig = BaselineConfig()


def run(config: AdaptationBenchConfig) -> dict:
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression

    from personal_rm.baselines import PerUserBT
    from personal_rm.data.splits import k_shot
    from personal_rm.mrm import MetaRewardModel, adapt, user_reward
    from personal_rm.prepare import prepare
    from personal_rm.reward import LinearReward

    torch.set_num_threads(1)  # per-user latency, as one serving replica sees it
    prepared = prepare(config, config.split)
    pairs, split = prepared.pairs, prepared.split
    support_rows, users = k_shot(
        pairs.user_ids, split.train, split.unseen_users, config.k, seed=config.seed
    )
    users = users[: config.max_eval_users]
    support, test = pairs.take(support_rows), pairs.take(split.test)
    support_of, test_of = support.rows_by_user(), test.rows_by_user()

    mrm = MetaRewardModel(config.mrm)
    mrm.fit(prepared.seen_train(), prepared.validation())
    bt_user = PerUserBT(config.baselines)
    bt_user.fit(prepared.seen_train())

    def from_scratch(chosen: np.ndarray, rejected: np.ndarray) -> LinearReward:
        diff = chosen - rejected
        x, y = np.concatenate([diff, -diff]), np.r_[np.ones(len(diff)), np.zeros(len(diff))]
        return LinearReward(LogisticRegression(fit_intercept=False).fit(x, y).coef_[0])

    methods = {
        "mrm_adapt": lambda s: user_reward(
            mrm.net, adapt(mrm.net, s.chosen, s.rejected, mrm.config)
        ),
        "bt_scratch": lambda s: from_scratch(s.chosen, s.rejected),
        "bt_user_prior": lambda s: bt_user.personalize(s, [s.user_ids[0]])[s.user_ids[0]],
    }
    results = {}
    for name, fit_user in methods.items():
        seconds, accuracy = [], []
        for user in users:
            user_support = support.take(support_of[user])
            started = time.perf_counter()
            reward = fit_user(user_support)
            seconds.append(time.perf_counter() - started)
            rows = test_of[user]
            margin = reward.score(test.chosen[rows]) - reward.score(test.rejected[rows])
            accuracy.append(float((margin > 0).mean()))
        results[name] = {
            "median_ms": 1000 * float(np.median(seconds)),
            "p90_ms": 1000 * float(np.percentile(seconds, 90)),
            "acc_user": float(np.mean(accuracy)),
        }
    base = results["mrm_adapt"]["median_ms"]
    for row in results.values():
        row["time_vs_mrm"] = row["median_ms"] / base
    report = {"dataset": config.data, "k": config.k, "n_users": len(users), "results": results}
    lines = [
        f"adapting a new user at k={config.k} ({len(users)} unseen users, {config.data})",
        "| method | median ms/user | p90 ms | time / mrm_adapt | user-level acc |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | {r['time_vs_mrm']:.2f}x "
        f"| {r['acc_user']:.3f} |"
        for name, r in results.items()
    ]
    print("\n".join(lines))
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> None:
    run(parse_config(AdaptationBenchConfig, argv, description=__doc__))


if __name__ == "__main__":
    main(sys.argv[1:])
