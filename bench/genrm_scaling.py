r"""Dual-granularity test-time scaling of the LLM judge: N chains (+ M prototype neighbours)
against one, paired.

    python -m bench.genrm_scaling --genrm.backend.model results/smollm2/genrm/sft \
        --genrm.backend.kind vllm --genrm.backend.dtype bfloat16 \
        --genrm.backend.enforce_eager true --genrm.backend.max_model_len 2048

The harness's protocol and comparisons (`jobs.evaluate`'s split, `--test_per_user` of each
user's test comparisons; unseen users at each `--k`, and seen users with `--seen true`): each
is judged once with `--genrm.n` sampled chains, in one call per prompt (one prefill on vLLM).
The N=1 estimate is the first of those chains, so the estimates score the same comparisons
from the same samples. With `--m` > 0, the prototype level is the paper's: prototypes are
clustered from the LLM's own chains on the seen users' comparisons (`--member_chains` each;
`pgenrm.llm_prototypes`), the user is placed by their chains on the request, and each of the
M nearest members of their prototype writes one chain with the member's history (members' and
neighbours' chains at `--one_chain_temperature`, greedy by default); the levels are mixed with
`--alpha` to the individual one. Differences are paired: per user, accuracy of
one estimate minus another's, with a 95% bootstrap interval over users. Strict: a comparison
with no parsed chain, or a tie, is wrong. Writes `--out` (JSON) and prints a table.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
from pydantic import Field

from jobs.evaluate import GenRMConfig, genrm_judge
from personal_rm.backends import SamplingConfig
from personal_rm.config import parse_config
from personal_rm.data.splits import KShot
from personal_rm.pgenrm.prototypes import PrototypeConfig
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
    m: int = Field(4, ge=0, description="Prototype-level neighbours M; 0: individual level only.")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the individual level (paper).")
    member_chains: int = Field(
        4, ge=1, description="Chains per seen user (on their own comparisons) for prototypes."
    )
    one_chain_temperature: float = Field(
        0.0,
        ge=0,
        description="Temperature of the one-chain calls: members' chains and each neighbour's "
        "(0: the judge's modal reading; sampled at 0.7, 14% of the SFT judge's parsed).",
    )
    prototypes: PrototypeConfig = PrototypeConfig()
    out: Path = Field(Path("bench/results/genrm_scaling.json"), description="Result JSON.")


def paired_points(
    users: np.ndarray, a: np.ndarray, b: np.ndarray, n_boot: int, rng: np.random.Generator
) -> tuple[float, list[float]]:
    """Mean over users of accuracy(a) - accuracy(b), in points, and its 95% bootstrap CI."""
    from personal_rm.metrics import per_user_accuracy

    first, second = per_user_accuracy(users, a), per_user_accuracy(users, b)
    diff = np.array([first[u] - second[u] for u in sorted(first)])
    boot = diff[rng.integers(0, len(diff), (n_boot, len(diff)))].mean(1)
    return float(100 * diff.mean()), [float(100 * q) for q in np.percentile(boot, [2.5, 97.5])]


def run(config: GenRMScalingConfig) -> dict:
    from personal_rm.embed import CachedEncoder, MiniLMEncoder
    from personal_rm.evaluation import judge_protocol
    from personal_rm.metrics import per_user_accuracy
    from personal_rm.pgenrm.chain import EvaluationChain
    from personal_rm.pgenrm.llm_judge import Judged
    from personal_rm.pgenrm.llm_prototypes import fit_llm_prototypes, prototype_level
    from personal_rm.pgenrm.scaling import TTSConfig
    from personal_rm.prepare import prepare

    prepared = prepare(config, config.split)
    split = prepared.split.capped_test(prepared.pairs.user_ids, config.test_per_user, config.seed)
    ids = prepared.pairs.user_ids
    members = [prepared.comparisons[i] for i in split.rows_of(split.train, split.seen_users, ids)]
    if not config.seen:  # a group with no users costs no chains
        split = replace(split, seen_users=())
    rng = np.random.default_rng(config.seed)
    judge = genrm_judge(config.genrm)
    one_chain = partial(
        judge,
        n=1,
        sampling=config.genrm.sampling.model_copy(
            update={"temperature": config.one_chain_temperature}
        ),
    )
    n, m, history_size = config.genrm.n, config.m, config.genrm.history_size
    tts = TTSConfig(n=n, m=m, alpha=config.alpha)
    encoder = CachedEncoder(MiniLMEncoder(), config.cache_dir)
    index, prototypes = None, {}
    if m:
        started = time.perf_counter()
        index, prototypes = fit_llm_prototypes(
            one_chain,
            members,
            encoder,
            config.prototypes,
            per_user=config.member_chains,
            history_size=history_size,
            seed=config.seed,
        )
        prototypes["seconds"] = round(time.perf_counter() - started, 1)
        print(f"prototypes from the LLM's chains: {prototypes}")
    rows = []
    for group, k, judged, seconds in judge_protocol(
        judge, prepared.comparisons, split, config.k, history_size=history_size, seed=config.seed
    ):
        if not judged:
            continue
        users = np.array([j.task.comparison.user_id for j in judged], dtype=object)
        margins = {
            "N=1": np.array([Judged(j.task, j.texts[:1], j.results[:1]).margin() for j in judged]),
            f"N={n}": np.array([j.margin() for j in judged]),
        }
        if index is not None:
            started = time.perf_counter()
            neighbours = prototype_level(
                one_chain,
                judged,
                index,
                members,
                encoder,
                m=m,
                history_size=history_size,
                seed=config.seed,
            )
            seconds += time.perf_counter() - started
            margins[f"N={n}+M={m}"] = np.array([d.margin(tts) for d in neighbours])
        chains = [(j.task.order, r) for j in judged for r in j.results]
        parsed = [(order, r) for order, r in chains if isinstance(r, EvaluationChain)]
        first_shown = np.mean([order.index(r.verdict) == 0 for order, r in parsed])
        dual = f"N={n}+M={m}"
        against = [(f"N={n}", "N=1")] + (
            [(dual, f"N={n}"), (dual, "N=1")] if dual in margins else []
        )
        rows.append(
            {
                "split": group,
                "k": k,
                "n_users": len(set(users)),
                "n_pairs": len(judged),
                **{
                    f"acc_user {e}": float(np.mean(list(per_user_accuracy(users, v).values())))
                    for e, v in margins.items()
                },
                **{
                    f"{a} - {b}": paired_points(users, margins[a], margins[b], config.n_boot, rng)
                    for a, b in against
                },
                "parse_rate": len(parsed) / len(chains),
                "verdict_first_shown": float(first_shown),  # position bias: 0.5 is none
                "seconds": round(seconds, 1),
            }
        )
        print(rows[-1])
    differences = [key for key in rows[0] if " - " in key] if rows else []
    estimates = [key for key in rows[0] if key.startswith("acc_user ")] if rows else []
    table = [
        "| users | k | comparisons | "
        + " | ".join(e.removeprefix("acc_user ") for e in estimates)
        + " | "
        + " | ".join(f"{d} (points) [95% CI]" for d in differences)
        + " |"
    ]
    table.append("|---" * (3 + len(estimates) + len(differences)) + "|")
    for r in rows:
        table.append(
            f"| {r['split']} (n={r['n_users']}) | {r['k']} | {r['n_pairs']} | "
            + " | ".join(f"{r[e]:.3f}" for e in estimates)
            + " | "
            + " | ".join(
                f"{r[d][0]:+.1f} [{r[d][1][0]:+.1f}, {r[d][1][1]:+.1f}]" for d in differences
            )
            + " |"
        )
    print("\n".join(table))
    result = {
        "command": "python -m bench.genrm_scaling " + " ".join(sys.argv[1:]),
        "prototypes": prototypes,
        "rows": rows,
    }
    result["table"] = "\n".join(table)
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {config.out}")
    return result


if __name__ == "__main__":  # vLLM starts its engine core with spawn
    run(parse_config(GenRMScalingConfig, sys.argv[1:], description=__doc__))
