"""Many user splits: per-user accuracies of each method on each seed's split, and their
aggregate over seeds, alone and as a paired difference against a baseline on the same users.

The interval is a two-stage bootstrap: draw the seeds with replacement (the split-to-split
spread), then within each drawn seed its users with replacement (the user bootstrap), and take
the mean over the drawn seeds of the mean over their users. A paired difference resamples the
same users for both methods, so it is much tighter than two overlapping intervals suggest.

    python -m jobs.evaluate --methods bt_global,mrm_shrunk --seeds 0,1,2,3,4
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from personal_rm.data.splits import KShot, Split
from personal_rm.evaluation import protocol, score_users
from personal_rm.features import PairSet
from personal_rm.metrics import per_user_accuracy, worst_fraction_mean
from personal_rm.reward import RewardModel

Cell = tuple[str, KShot]  # (split, k): ("seen", "all") or ("unseen", 8)
UserAcc = dict[str, float]


def user_accuracies(
    model: RewardModel, pairs: PairSet, split: Split, ks: Sequence[KShot], seed: int
) -> dict[Cell, UserAcc]:
    """Each user's test accuracy per cell of the harness's protocol, for a fitted model (the
    same support sets and test rows as `evaluate_method` with this seed)."""
    ids = pairs.user_ids
    out = {}
    for group, k, users, support in protocol(split, ids, ks, seed):
        test = split.rows_of(split.test, users, ids)
        out[group, k] = per_user_accuracy(*score_users(model, pairs, support, users, test))
    return out


def two_stage_bootstrap(
    per_seed: Sequence[np.ndarray], n_boot: int = 2000, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """Mean over seeds of the mean over users, and its 95% two-stage bootstrap interval."""
    per_seed = [np.asarray(v, float) for v in per_seed if len(v)]
    if not per_seed:
        return float("nan"), (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = np.array([v.mean() for v in per_seed])
    boot = np.empty(n_boot)
    picks = rng.integers(0, len(per_seed), (n_boot, len(per_seed)))
    for b in range(n_boot):
        boot[b] = np.mean([rng.choice(per_seed[s], len(per_seed[s])).mean() for s in picks[b]])
    low, high = np.percentile(boot, [2.5, 97.5])
    return float(means.mean()), (float(low), float(high))


def aggregate(
    runs: Sequence[Mapping[str, Mapping[Cell, UserAcc]]],
    baseline: str | None = "bt_global",
    n_boot: int = 2000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """`runs[s][method][cell]` = {user: accuracy} for seed s -> one row per method and cell:
    mean over seeds, its interval, per-seed means, worst-10% mean over seeds, and (when the
    baseline ran) the paired difference against it on the users both scored."""
    rows = []
    methods = list(dict.fromkeys(m for run in runs for m in run))
    cells = list(dict.fromkeys(c for run in runs for m in run for c in run[m]))
    for method in methods:
        for cell in cells:
            per_seed = [np.array(list(run[method][cell].values())) for run in runs if method in run]
            if not any(len(v) for v in per_seed):
                continue
            mean, ci = two_stage_bootstrap(per_seed, n_boot, seed)
            row: dict[str, Any] = {
                "method": method,
                "split": cell[0],
                "k": cell[1],
                "seeds": len(per_seed),
                "n_users": round(float(np.mean([len(v) for v in per_seed]))),
                "n_users_per_seed": [len(v) for v in per_seed],
                "acc_user": mean,
                "ci_user": ci,
                "acc_user_per_seed": [float(v.mean()) for v in per_seed],
                "worst10_user": float(np.mean([worst_fraction_mean(v) for v in per_seed])),
            }
            if baseline and method != baseline:
                diffs = [paired(run[method][cell], run[baseline][cell]) for run in runs]
                row[f"diff_vs_{baseline}"], row[f"ci_diff_vs_{baseline}"] = two_stage_bootstrap(
                    diffs, n_boot, seed
                )
            rows.append(row)
    return rows


def paired(a: UserAcc, b: UserAcc) -> np.ndarray:
    users = sorted(set(a) & set(b))
    return np.array([a[u] - b[u] for u in users])


def worst_paired(a: UserAcc, b: UserAcc, fraction: float = 0.1) -> float:
    """Worst-10% mean of `a` minus that of `b`, each over its own worst users (RPO's target)."""
    users = sorted(set(a) & set(b))
    return worst_fraction_mean(np.array([a[u] for u in users]), fraction) - worst_fraction_mean(
        np.array([b[u] for u in users]), fraction
    )


def diff_table(rows: Sequence[Mapping[str, Any]], method: str, baseline: str) -> str:
    """Markdown: one line per (split, k), `method - baseline` in points with its interval."""
    key = f"diff_vs_{baseline}"
    lines = [
        f"| cell | {method} | {baseline} | {method} - {baseline} (points) [95% CI] | users/seed |",
        "|---|---|---|---|---|",
    ]
    base = {(r["split"], r["k"]): r for r in rows if r["method"] == baseline}
    for r in rows:
        if r["method"] != method or key not in r:
            continue
        b = base[(r["split"], r["k"])]
        low, high = r[f"ci_{key}"]
        cell = "seen" if r["split"] == "seen" else f"unseen k={r['k']}"
        lines.append(
            f"| {cell} | {r['acc_user']:.3f} | {b['acc_user']:.3f} | "
            f"{100 * r[key]:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] | "
            f"{r['n_users']} |"
        )
    return "\n".join(lines)


def plot_seeds(
    rows: Sequence[Mapping[str, Any]], path: Any, baseline: str | None, title: str = ""
) -> None:
    """Left: accuracy per cell (seen, unseen k...), mean over seeds with its interval. Right:
    each method minus the baseline, paired, with its interval; the dashed line is -0.5 points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, diff_ax) = plt.subplots(1, 2, figsize=(12, 4.2))
    cells = list(dict.fromkeys((r["split"], r["k"]) for r in rows))
    labels = ["seen" if s == "seen" else f"k={k}" for s, k in cells]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    key = f"diff_vs_{baseline}"
    for i, method in enumerate(methods):
        by_cell = {(r["split"], r["k"]): r for r in rows if r["method"] == method}
        x = [j + 0.08 * (i - len(methods) / 2) for j, c in enumerate(cells) if c in by_cell]
        mine = [by_cell[c] for c in cells if c in by_cell]
        for ax, name, ci_name in ((acc_ax, "acc_user", "ci_user"), (diff_ax, key, f"ci_{key}")):
            if not all(name in r for r in mine):
                continue
            scale = 100 if ax is diff_ax else 1
            y = np.array([r[name] for r in mine]) * scale
            ci = np.array([r[ci_name] for r in mine]) * scale
            err = [y - ci[:, 0], ci[:, 1] - y]
            ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, color=f"C{i}", label=method)
    for ax in (acc_ax, diff_ax):
        ax.set_xticks(range(len(cells)), labels)
        ax.grid(alpha=0.3)
    acc_ax.set_ylabel("user-level accuracy (mean over seeds, 95% CI)")
    diff_ax.set_ylabel(f"minus {baseline}, paired (points)")
    diff_ax.axhline(0, color="grey", lw=0.8)
    diff_ax.axhline(-0.5, color="red", lw=0.8, ls="--")
    acc_ax.legend(fontsize=7)
    diff_ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
