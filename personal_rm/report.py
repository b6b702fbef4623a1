"""Results people read: Markdown tables and an accuracy-vs-k plot, from `accuracy.json` rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def _columns(rows: Sequence[Row]) -> list[tuple[str, Any]]:
    columns = [("seen", "all")] if any(r["split"] == "seen" for r in rows) else []
    return columns + list(dict.fromkeys(("unseen", r["k"]) for r in rows if r["split"] == "unseen"))


def _table(rows: Sequence[Row], cell: Callable[[Row], str]) -> str:
    """One line per method; a column for seen users and one per unseen k; `cell` writes a
    row's figure, "-" where a method has no users there."""
    columns = _columns(rows)
    by_cell = {(r["method"], r["split"], r["k"]): r for r in rows}
    users = {
        c: max((r["n_users"] for r in rows if (r["split"], r["k"]) == c), default=0)
        for c in columns
    }
    header = ["method"] + [
        f"seen (n={users[c]})" if c[0] == "seen" else f"unseen k={c[1]} (n={users[c]})"
        for c in columns
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in dict.fromkeys(r["method"] for r in rows):
        found = [by_cell.get((method, group, k)) for group, k in columns]
        cells = [cell(r) if r is not None and r["n_users"] else "-" for r in found]
        lines.append("| " + " | ".join([method, *cells]) + " |")
    return "\n".join(lines)


def markdown_table(rows: Sequence[Row], metric: str = "user") -> str:
    """Mean accuracy (`metric`: user or sample level) with its 95% CI, per method and column."""

    def cell(r: Row) -> str:
        low, high = r[f"ci_{metric}"]
        return f"{r[f'acc_{metric}']:.3f} [{low:.3f}, {high:.3f}]"

    return _table(rows, cell)


def worst10_table(rows: Sequence[Row]) -> str:
    """The worst-10%-of-users mean accuracy, per method and column."""
    return _table(rows, lambda r: f"{r['worst10_user']:.3f}")


def plot_accuracy(rows: Sequence[Row], path: str | Path, title: str = "") -> None:
    """Two panels: seen users (one bar per method) and unseen users (accuracy vs k)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (seen_ax, unseen_ax) = plt.subplots(1, 2, figsize=(11, 4), width_ratios=[1, 2])
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for i, method in enumerate(methods):
        seen = [r for r in rows if r["method"] == method and r["split"] == "seen"]
        for r in seen:
            low, high = r["ci_user"]
            err = [[r["acc_user"] - low], [high - r["acc_user"]]]
            seen_ax.bar(i, r["acc_user"], yerr=err, capsize=4, label=method)
        unseen = [r for r in rows if r["method"] == method and r["split"] == "unseen"]
        labels = [str(r["k"]) for r in unseen]
        accuracy = [r["acc_user"] for r in unseen]
        lows = [r["ci_user"][0] for r in unseen]
        highs = [r["ci_user"][1] for r in unseen]
        unseen_ax.plot(labels, accuracy, marker="o", label=method)
        unseen_ax.fill_between(labels, lows, highs, alpha=0.12)
    seen_ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    seen_ax.set_title("seen users")
    seen_ax.set_ylabel("user-level pairwise accuracy")
    unseen_ax.set_title("unseen users (k-shot support)")
    unseen_ax.set_xlabel("k")
    unseen_ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    unseen_ax.legend(fontsize=8)
    low = min(min(r["ci_user"][0] for r in rows if r["n_users"]), 0.5) - 0.02
    for ax in (seen_ax, unseen_ax):
        ax.set_ylim(low, 1.0)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


SECTIONS: dict[str, tuple[str, Callable[[Sequence[Row]], str]]] = {
    "user": (
        "user-level accuracy (mean over users) [95% CI]",
        lambda rows: markdown_table(rows, "user"),
    ),
    "sample": (
        "sample-level accuracy (mean over comparisons) [95% CI]",
        lambda rows: markdown_table(rows, "sample"),
    ),
    "worst10": ("worst-10%-of-users accuracy (mean over each column's worst tenth)", worst10_table),
}


def tables(
    rows: Sequence[Row], dataset: str, sections: Sequence[str] = ("user", "sample", "worst10")
) -> str:
    """The chosen `SECTIONS` as Markdown, each a heading and its table."""
    parts = [f"## {dataset}: {SECTIONS[s][0]}\n{SECTIONS[s][1](rows)}\n" for s in sections]
    return "\n".join(parts)
