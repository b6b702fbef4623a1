r"""Individual-level test-time scaling of the LLM judge: N sampled chains against one, paired.

    python -m bench.genrm_scaling --genrm.backend.model results/smollm2/genrm/sft \
        --genrm.backend.kind vllm --genrm.backend.dtype bfloat16 \
        --genrm.backend.enforce_eager true --genrm.backend.max_model_len 2048

The harness's protocol and comparisons (`jobs.evaluate`'s split, `--test_per_user` of each
user's test comparisons; unseen users at each `--k`, and seen users with `--seen true`): each
is judged once with `--genrm.n` sampled chains, in one call per
prompt (one prefill on vLLM). The N=1 estimate is the first of those chains, so both estimates
score the same comparisons from the same samples, and their difference is paired: per user,
accuracy with N chains (the mean final-score margin of those that parse) minus accuracy with
one, with a 95% bootstrap interval over users. Strict: a comparison with no parsed chain, or a
tie, is wrong. Only the individual level is run: the prototype level (M chains from similar
users) needs prototypes clustered from the LLM's own chains, which this bench does not build.
Writes `bench/results/genrm_scaling.json` and prints a table.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from pydantic import Field

from jobs.evaluate import GenRMConfig, genrm_judge
from personal_rm.backends import SamplingConfig
from personal_rm.config import parse_config
from personal_rm.data.splits import KShot
from personal_rm.prepare import DataConfig, SplitConfig


class GenRMScalingConfig(DataConfig):
    k: list[KShot] = Field([8], description="Support sizes of the unseen users.")
    seen: bool = Field(False, description="Also score the seen users (on all their train rows).")
    test_per_user: int = Field(4, ge=1, description="Test comparisons per user (seeded).")
    n_boot: int = Field(2000, description="Bootstrap resamples of users.")
    split: SplitConfig = SplitConfig()
    genrm: GenRMConfig = GenRMConfig(
        n=8, batch_size=32, sampling=SamplingConfig(temperature=0.7, max_new_tokens=256, seed=0)
    )
    out: Path = Field(Path("bench/results/genrm_scaling.json"), description="Result JSON.")


def run(config: GenRMScalingConfig) -> dict:
    from personal_rm.evaluation import judge_protocol
    from personal_rm.metrics import per_user_accuracy
    from personal_rm.pgenrm.chain import EvaluationChain
    from personal_rm.pgenrm.llm_judge import Judged
    from personal_rm.prepare import prepare

    prepared = prepare(config, config.split)
    split = prepared.split.capped_test(prepared.pairs.user_ids, config.test_per_user, config.seed)
    if not config.seen:  # a group with no users costs no chains
        split = replace(split, seen_users=())
    rng = np.random.default_rng(config.seed)
    rows = []
    for group, k, judged, seconds in judge_protocol(
        genrm_judge(config.genrm),
        prepared.comparisons,
        split,
        config.k,
        history_size=config.genrm.history_size,
        seed=config.seed,
    ):
        if not judged:
            continue
        users = np.array([j.task.comparison.user_id for j in judged], dtype=object)
        first = np.array([Judged(j.task, j.texts[:1], j.results[:1]).margin() for j in judged])
        every = np.array([j.margin() for j in judged])
        one, many = per_user_accuracy(users, first), per_user_accuracy(users, every)
        diff = np.array([many[u] - one[u] for u in sorted(one)])
        boot = diff[rng.integers(0, len(diff), (config.n_boot, len(diff)))].mean(1)
        chains = [(j.task.order, r) for j in judged for r in j.results]
        parsed = [(order, r) for order, r in chains if isinstance(r, EvaluationChain)]
        first_shown = np.mean([order.index(r.verdict) == 0 for order, r in parsed])
        rows.append(
            {
                "split": group,
                "k": k,
                "n_users": len(diff),
                "n_pairs": len(judged),
                "acc_user_n1": float(np.mean(list(one.values()))),
                f"acc_user_n{config.genrm.n}": float(np.mean(list(many.values()))),
                "diff_points": float(100 * diff.mean()),
                "diff_ci_points": [float(100 * q) for q in np.percentile(boot, [2.5, 97.5])],
                "parse_rate": len(parsed) / len(chains),
                "verdict_first_shown": float(first_shown),  # position bias: 0.5 is none
                "seconds": round(seconds, 1),
            }
        )
        print(rows[-1])
    n = config.genrm.n
    table = [f"| users | k | comparisons | N=1 | N={n} | N={n} - N=1 (points) [95% CI] |"]
    table.append("|---|---|---|---|---|---|")
    for r in rows:
        low, high = r["diff_ci_points"]
        table.append(
            f"| {r['split']} (n={r['n_users']}) | {r['k']} | {r['n_pairs']} | "
            f"{r['acc_user_n1']:.3f} | {r[f'acc_user_n{n}']:.3f} | "
            f"{r['diff_points']:+.1f} [{low:+.1f}, {high:+.1f}] |"
        )
    print("\n".join(table))
    result = {"command": "python -m bench.genrm_scaling " + " ".join(sys.argv[1:]), "rows": rows}
    result["table"] = "\n".join(table)
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {config.out}")
    return result


if __name__ == "__main__":  # vLLM starts its engine core with spawn
    run(parse_config(GenRMScalingConfig, sys.argv[1:], description=__doc__))
