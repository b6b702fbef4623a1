r"""Dual-granularity test-time scaling on real users: N / M / K / alpha tables and the plot.

    python -m bench.scaling_real --data llmfao --cache_dir /tmp/embcache
    python -m bench.scaling_real --data jester --max_users 1500
    python -m bench.scaling_real --name global_dialogues \
        --data /work/shared/data/global_dialogues/pairs_pairwise.jsonl.gz

One rubric judge is fitted on the seen users of the harness's seeded split (the same split as
`jobs.evaluate`); every variant is then scored by the library's `scaling.scale`, from the same
memoised posterior draws (`MemoSampler`), a user's test comparisons as one batch, on
- test users: seen users (history = all their train rows) and unseen users at each k;
- validation users at the same k and with all their train rows. The prototype
  representation, K, M, alpha and refinement are chosen on these, never on test users.
Unseen users at k=0 have no history: each request places them by the cold-start rule
(`ScaledRewardModel.place`), as the server does. A sample of verdicts is re-computed through
real `EvaluationChain`s (and a placement of their own) to check the array path. Intervals: 95%
bootstrap over users; differences are paired (same users). Writes
bench/results/scaling_<name>.{json,md,png}.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from personal_rm.config import parse_config
from personal_rm.pgenrm.rubric import RubricConfig
from personal_rm.prepare import DataConfig, SplitConfig


class ScalingBenchConfig(DataConfig):
    k: list[int] = Field(
        [0, 2, 4, 8], description="Support sizes of unseen (and validation) users."
    )
    n_grid: list[int] = Field([1, 2, 4, 8, 16, 32], description="Individual-level chains N.")
    m_grid: list[int] = Field([4, 8], description="Prototype-level neighbours M.")
    prototype_grid: list[int] = Field([4, 8, 16, 32], description="Numbers of prototypes K.")
    halves: list[float] = Field([2, 4, 8, 16], description="Adaptive-alpha half points tried.")
    n_select: int = Field(16, description="N at which the prototype level is chosen and shown.")
    dual_points: list[str] = Field(
        ["1+1", "2+2", "4+4", "8+8", "16+8", "16+16"], description="N+M points of the plot."
    )
    n_check: int = Field(60, description="Verdicts re-computed through real chains per group.")
    n_boot: int = Field(1000, description="Bootstrap resamples of users.")
    out_dir: Path = Field(Path("bench/results"), description="Where scaling_<name>.* go.")
    name: str | None = Field(None, description="<name> of the results (default: the data's).")
    split: SplitConfig = SplitConfig()
    rubric: RubricConfig = RubricConfig()


@dataclass
class Group:
    """Users scored together: their histories, test comparisons and placements."""

    name: str
    users: list[str]
    histories: list[Any]  # PairSet per user
    query: Any  # PairSet of the users' test rows
    requests: dict[str, np.ndarray] = field(default_factory=dict)  # (P, 2, d), chosen first
    # rep -> user -> (1, d) from the history, or (P, d) one per request (no history)
    vectors: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


@dataclass(frozen=True)
class Variant:
    n: int
    m: int = 0
    alpha: float | str = 0.5
    half: float = 8.0
    aggregate: str = "mean"
    index: tuple[str, int, bool] | None = None  # (representation, K, refine)

    def label(self) -> str:
        if self.m == 0:
            return f"N={self.n} {self.aggregate}"
        rep, k, refine = self.index or ("-", 0, False)
        alpha = f"adaptive(h/(h+{self.half:g}))" if self.alpha == "adaptive" else f"{self.alpha}"
        return f"N={self.n} M={self.m} a={alpha} {rep} K={k}{' refined' if refine else ''}"


def run(config: ScalingBenchConfig) -> dict:
    import torch

    from personal_rm.data.splits import k_shot
    from personal_rm.embed import CachedEncoder, MiniLMEncoder
    from personal_rm.metrics import per_user_counts, summarize
    from personal_rm.pgenrm.chain import Samples
    from personal_rm.pgenrm.prototypes import PrototypeConfig
    from personal_rm.pgenrm.rubric import RubricJudge
    from personal_rm.pgenrm.scaling import (
        MemoSampler,
        ScaledRewardModel,
        TTSConfig,
        dual_granularity,
        scale,
    )
    from personal_rm.prepare import prepare
    from personal_rm.reward import margins

    torch.set_num_threads(1)
    started = time.perf_counter()
    prepared = prepare(config, config.split)
    pairs, split = prepared.pairs, prepared.split
    encoder = CachedEncoder(MiniLMEncoder(), config.cache_dir)
    judge = RubricJudge(config.rubric, encoder=encoder)
    seen_train = prepared.seen_train()
    judge.fit(seen_train, prepared.validation())
    print(f"judge fitted in {time.perf_counter() - started:.0f}s", flush=True)
    n_max = max(config.n_grid + [int(p.split("+")[0]) for p in config.dual_points])
    m_max = max(config.m_grid + [int(p.split("+")[1]) for p in config.dual_points])

    # -- groups: test (seen, unseen@k) and validation (val@k, val@all) ----------------------
    def group(name: str, users: list[str], support: np.ndarray) -> Group:
        sup = pairs.take(support)
        by_user = sup.rows_by_user() if len(sup) else {}
        histories = [sup.take(by_user.get(u, np.array([], np.int64))) for u in users]
        query = pairs.take(split.rows_of(split.test, users, pairs.user_ids))
        requests = {
            u: np.stack([query.chosen[rows], query.rejected[rows]], 1)
            for u, rows in query.rows_by_user().items()
        }
        return Group(name, users, histories, query, requests)

    ids = pairs.user_ids
    groups = [
        group("seen", list(split.seen_users), split.rows_of(split.train, split.seen_users, ids))
    ]
    for prefix, users in (("unseen", split.unseen_users), ("val", split.validation_users)):
        for k in config.k:
            support, eligible = k_shot(ids, split.train, users, k, seed=config.seed)
            if eligible:  # few-shot data: nobody may have k train comparisons
                groups.append(group(f"{prefix} k={k}", eligible, support))
    val_all = split.rows_of(split.train, split.validation_users, ids)
    groups.append(group("val all", list(split.validation_users), val_all))

    models: dict[tuple[str, int, bool], ScaledRewardModel] = {}  # (representation, K, refine)
    scaling = TTSConfig(seed=0)
    for rep in ("chain", "preference"):
        base = ScaledRewardModel(judge, PrototypeConfig(representation=rep), scaling, encoder)
        member_vectors = base.user_vectors(seen_train)
        for k, refine in itertools.product(config.prototype_grid, (False, True)):
            proto = PrototypeConfig(representation=rep, k=k, refine=refine, seed=config.seed)
            model = ScaledRewardModel(judge, proto, scaling, encoder)
            model.build_index(seen_train, member_vectors)
            models[(rep, k, refine)] = model
        for g in groups:
            supports = concat(g.histories, pairs.dim)
            found = member_vectors if g.name == "seen" else base.user_vectors(supports)
            g.vectors[rep] = {
                u: found[u][None] if u in found else base.place(u, history, g.requests[u])
                for u, history in zip(g.users, g.histories, strict=True)
            }
    print(f"prototypes built at {time.perf_counter() - started:.0f}s", flush=True)

    sampler = MemoSampler(judge)  # every variant reads the same draws
    members = {u: seen_train.take(rows) for u, rows in seen_train.rows_by_user().items()}
    sampler.draws(list(members.values()), 1, scaling.seed)
    for g in groups:
        sampler.draws(g.histories, n_max, scaling.seed)
    print(f"draws at {time.perf_counter() - started:.0f}s", flush=True)

    # -- scoring a variant on a group: `scale` on each user's test comparisons at once --------
    neighbour_cache: dict[tuple[str, tuple, str], list[list[str]]] = {}

    def neighbours(g: Group, key: tuple[str, int, bool], user: str) -> list[list[str]]:
        """Top-m_max neighbours of the user, or of each request (no history); `scale` reads
        the first M of each."""
        if (g.name, key, user) not in neighbour_cache:
            index = models[key].index
            near = [index.neighbours(v, m_max, exclude=user) for v in g.vectors[key[0]][user]]
            neighbour_cache[(g.name, key, user)] = near
        return neighbour_cache[(g.name, key, user)]

    runner = asyncio.Runner()  # one event loop for the many small `scale` calls

    def margins_of(g: Group, v: Variant) -> np.ndarray:
        out = np.empty(len(g.query))
        cfg = TTSConfig(n=v.n, m=v.m, alpha=v.alpha, half=v.half, aggregate=v.aggregate)
        by_user = g.query.rows_by_user()
        for u, history in zip(g.users, g.histories, strict=True):
            rows, near = by_user[u], neighbours(g, v.index, u) if v.m and v.index else [[]]
            mixed = runner.run(scale(sampler, g.requests[u], history, near, members, cfg)).scores
            out[rows] = mixed[:, 0] - mixed[:, 1]
        return out

    def point_margins(g: Group) -> np.ndarray:
        """The greedy rubric (method `rubric`): no sampling, no prototypes."""
        return margins(judge.personalize(concat(g.histories, pairs.dim), g.users), g.query)

    results: dict[tuple[str, str], dict] = {}
    per_user: dict[tuple[str, str], np.ndarray] = {}

    def score(g: Group, v: Variant | str) -> dict:
        label = v if isinstance(v, str) else v.label()
        if (g.name, label) not in results:
            m = point_margins(g) if v == "point" else margins_of(g, v)
            summary = summarize(g.query.user_ids, m, n_boot=config.n_boot, seed=config.seed)
            correct, total = per_user_counts(g.query.user_ids, m)
            per_user[(g.name, label)] = correct / total
            results[(g.name, label)] = {"group": g.name, "variant": label, **summary.to_dict()}
        return results[(g.name, label)]

    test_groups = [g for g in groups if not g.name.startswith("val")]
    val_groups = [g for g in groups if g.name.startswith("val")]

    # -- choose the prototype level on validation users --------------------------------------
    alphas = [(0.5, 8.0)] + [("adaptive", h) for h in config.halves]
    candidates = [
        Variant(config.n_select, m, a, h, "mean", (rep, k, refine))
        for (rep, k, refine), m, (a, h) in itertools.product(models, config.m_grid, alphas)
    ]
    val_score = {
        c: float(np.mean([score(g, c)["acc_user"] for g in val_groups])) for c in candidates
    }
    best = max(candidates, key=lambda c: val_score[c])
    individual_val = float(
        np.mean([score(g, Variant(config.n_select))["acc_user"] for g in val_groups])
    )
    print(
        f"chosen on validation: {best.label()} ({val_score[best]:.4f}; M=0: {individual_val:.4f})"
    )

    # -- tables on test users ------------------------------------------------------------------
    def table(title: str, variants: list[Variant | str]) -> str:
        head = "| variant | " + " | ".join(f"{g.name} (n={len(g.users)})" for g in test_groups)
        lines = [f"### {title}", "", head + " |", "|---" * (len(test_groups) + 1) + "|"]
        for v in variants:
            cells = []
            for g in test_groups:
                r = score(g, v)
                cells.append(f"{r['acc_user']:.3f} [{r['ci_user'][0]:.3f}, {r['ci_user'][1]:.3f}]")
            label = v if isinstance(v, str) else v.label()
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    rep, kk, refine = best.index
    sections = [
        table(
            "Individual level only: accuracy vs N (point = the greedy rubric, method `rubric`)",
            [
                "point",
                *[Variant(n) for n in config.n_grid],
                *[Variant(n, aggregate="vote") for n in (8, 16)],
            ],
        ),
        table(
            f"Prototype level at N={config.n_select}: M and alpha ({rep}, K={kk})",
            [Variant(config.n_select)]
            + [
                Variant(config.n_select, m, a, h, "mean", (rep, kk, refine))
                for m in config.m_grid
                for a, h in [(0.0, 8.0), (0.5, 8.0), ("adaptive", best.half)]
            ],
        ),
        table(
            f"Number of prototypes K (N={config.n_select}, M={best.m}, alpha as chosen)",
            [
                Variant(config.n_select, best.m, best.alpha, best.half, "mean", (rep, k, refine))
                for k in config.prototype_grid
            ],
        ),
        table(
            "Representation and refinement (chosen N, M, alpha, K)",
            [
                Variant(config.n_select, best.m, best.alpha, best.half, "mean", (r, kk, f))
                for r in ("chain", "preference")
                for f in (False, True)
            ],
        ),
    ]

    # -- paired differences: dual vs individual --------------------------------------------------
    def paired(a: Variant | str, b: Variant | str) -> list[str]:
        cells = []
        for g in test_groups:
            score(g, a), score(g, b)
            la, lb = (x if isinstance(x, str) else x.label() for x in (a, b))
            d = per_user[(g.name, la)] - per_user[(g.name, lb)]
            rng = np.random.default_rng(config.seed)
            boot = d[rng.integers(0, len(d), (config.n_boot, len(d)))].mean(1)
            low, high = np.percentile(boot, [2.5, 97.5])
            cells.append(f"{d.mean():+.3f} [{low:+.3f}, {high:+.3f}]")
        return cells

    dual_16_8 = Variant(16, 8, best.alpha, best.half, "mean", best.index)
    comparisons = [
        ("chosen dual - N=1", best, Variant(1)),
        (f"chosen dual - N={config.n_select} alone", best, Variant(config.n_select)),
        ("dual 16+8 - N=32 alone (paper's comparison)", dual_16_8, Variant(32)),
        ("dual 16+8 - greedy rubric", dual_16_8, "point"),
    ]
    head = "| difference (paired, user-level) | " + " | ".join(g.name for g in test_groups)
    diff_lines = [
        "### Paired differences [95% CI]",
        "",
        head + " |",
        "|---" * (len(test_groups) + 1) + "|",
    ]
    diff_lines += [f"| {name} | " + " | ".join(paired(a, b)) + " |" for name, a, b in comparisons]
    sections.append("\n".join(diff_lines))

    # -- the plot: accuracy vs total samples -------------------------------------------------
    name = config.name or Path(config.data).name.split(".")[0]
    plot_path = config.out_dir / f"scaling_{name}.png"
    duals = [tuple(int(x) for x in p.split("+")) for p in config.dual_points]
    curves = {
        g.name: {
            "individual only (N)": [(n, score(g, Variant(n))) for n in config.n_grid],
            "dual granularity (N+M)": [
                (n + m, score(g, Variant(n, m, best.alpha, best.half, "mean", best.index)))
                for n, m in duals
            ],
        }
        for g in test_groups
    }
    config.out_dir.mkdir(parents=True, exist_ok=True)
    plot(curves, plot_path, f"{config.data}: {best.label()}")

    # -- checks: the chain path agrees, and what N costs --------------------------------------
    model = models[best.index]
    model.scaling = TTSConfig(n=best.n, m=best.m, alpha=best.alpha, half=best.half)
    agree = total = 0
    for g in test_groups[:3]:
        array_margins = margins_of(g, best)
        rows = g.query.rows_by_user()
        history_of = dict(zip(g.users, g.histories, strict=True))
        todo = [(u, r) for u in g.users for r in rows[u][:2]][: config.n_check]
        for u, r in todo:
            request = np.stack([g.query.chosen[r], g.query.rejected[r]])
            out = model.score(u, history_of[u], request, chains=True)  # placed afresh, too
            own = Samples.of_chains([out.individual], 2, keep=False).scores[0]
            near = Samples.of_chains([out.prototype], 2, keep=False).scores[0]
            verdict = dual_granularity(own, near, len(history_of[u]), model.scaling).verdict
            if array_margins[r] != 0:
                agree += verdict == int(array_margins[r] < 0)
                total += 1
    check = f"{agree}/{total} verdicts through real chains match the array path"

    g = test_groups[0]
    longest = int(np.argmax([len(h) for h in g.histories]))  # a history of up to 16 rows
    u, history = g.users[longest], g.histories[longest]
    history = history.take(range(min(16, len(history))))
    request = np.stack([g.query.chosen[0], g.query.rejected[0]])
    one, eight = (
        TTSConfig(n=n, m=best.m if n > 1 else 0, alpha=best.alpha, half=best.half) for n in (1, 8)
    )

    def score_with(scaling: TTSConfig) -> None:
        """A server's work for one request: nothing memoised, every draw made afresh."""
        model.scaling, model.sampler = scaling, MemoSampler(judge)
        model.score(u, history, request)

    calls = {
        "sample_rubrics_n1": lambda: judge.sample_rubrics([history], 1, 0),
        "sample_rubrics_n8": lambda: judge.sample_rubrics([history], 8, 0),
        "sample_chains_n1": lambda: judge.sample([history], request, 1, 0, chains=True),
        "sample_chains_n8": lambda: judge.sample([history], request, 8, 0, chains=True),
        "score_n1_m0": lambda: score_with(one),
        f"score_n8_m{best.m}": lambda: score_with(eight),
    }
    wall: dict[str, list[float]] = {call: [] for call in calls}
    for _ in range(15):  # interleaved: a drifting load on the shared box hits every call alike
        for call, fn in calls.items():
            t = time.perf_counter()
            fn()
            wall[call].append(time.perf_counter() - t)
    timing = {f"{call}_ms": 1000 * float(np.median(t)) for call, t in wall.items()}
    for what in ("sample_rubrics", "sample_chains"):
        ratio = np.divide(wall[f"{what}_n8"], wall[f"{what}_n1"])
        timing[f"{what}_n8_over_n1"] = float(np.median(ratio))
    timing["history_rows"] = len(history)
    timing["load_average"] = os.getloadavg()[0]

    report = {
        "dataset": config.data,
        "seed": config.seed,
        "chosen_on_validation": best.label(),
        "validation_score": val_score[best],
        "validation_individual_only": individual_val,
        "validation_grid": {
            c.label(): s for c, s in sorted(val_score.items(), key=lambda x: -x[1])
        },
        "rows": list(results.values()),
        "chain_check": check,
        "timing": timing,
        "seconds": time.perf_counter() - started,
    }
    text = (
        f"## {config.data}: dual-granularity scaling, rubric judge (user-level acc., 95% CI)\n\n"
        f"Best prototype level on validation users: **{best.label()}** (validation mean "
        f"{val_score[best]:.4f}, vs {individual_val:.4f} with M=0: validation says "
        f"{'turn it on' if val_score[best] > individual_val else 'leave it off'}). "
        "a=0.0 rows score with the neighbours' rubrics only.\n\n" + "\n\n".join(sections) + "\n\n"
        f"Chain path check: {check}\n\nTiming: {json.dumps(timing)}\n\nPlot: {plot_path}\n"
    )
    runner.close()
    (config.out_dir / f"scaling_{name}.json").write_text(json.dumps(report, indent=2, default=str))
    (config.out_dir / f"scaling_{name}.md").write_text(text)
    print(text)
    return report


def concat(parts: list[Any], dim: int) -> Any:
    from personal_rm.features import PairSet

    parts = [p for p in parts if len(p)]
    return PairSet.concat(parts) if parts else PairSet.empty(dim)


def plot(curves: dict[str, dict[str, list[tuple[int, dict]]]], path: Path, title: str) -> None:
    """One panel per test group: accuracy vs N+M, individual-only vs dual-granularity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3.6), sharey=True)
    for ax, (name, lines) in zip(np.atleast_1d(axes), curves.items(), strict=True):
        for label, points in lines.items():
            x = [n for n, _ in points]
            acc = [r["acc_user"] for _, r in points]
            ax.plot(x, acc, marker="o", label=label)
            lo, hi = [r["ci_user"][0] for _, r in points], [r["ci_user"][1] for _, r in points]
            ax.fill_between(x, lo, hi, alpha=0.12)
        ax.set_xscale("log", base=2)
        ax.set_title(name)
        ax.set_xlabel("chains per request (N + M)")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("user-level pairwise accuracy")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    run(parse_config(ScalingBenchConfig, argv, description=__doc__))


if __name__ == "__main__":
    main(sys.argv[1:])
