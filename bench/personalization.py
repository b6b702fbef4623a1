"""Does personalization earn its keep? The default personalized method (`mrm_shrunk`), MRM,
the authors' recipe (`mrm_paper`) and RPO against global BT, paired, over many user splits.

    python -m bench.personalization --data llmfao --seeds 0,1,2,3,4
    python -m bench.personalization --data jester --max_users 1500 --seeds 0,1,2,3,4

Per seed (a fresh user split): fit `bt_global`; the rest of the field (`--field`), each tuned
on the validation users with the same budget (`bt_user`, `lowrank`, `rubric`, `rubric_tts`);
`mrm_shrunk` (whose fitted MRM is scored as `mrm` too: one meta-training for both),
`mrm_paper`, `mrm_no_rpo`, and MRM with RPO's rho and gamma chosen on validation users (worst-10%
validation accuracy at k=8; the default pair's fit is the one `mrm_shrunk` holds). Writes
bench/results/personalization_<data>.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from jobs.evaluate import EvaluateConfig
from personal_rm.baselines import validation_episodes
from personal_rm.methods import build_method
from personal_rm.metrics import worst_fraction_mean
from personal_rm.mrm import PAPER_RECIPE, MetaRewardModel, MRMConfig
from personal_rm.multiseed import (
    aggregate,
    diff_table,
    paired,
    plot_seeds,
    user_accuracies,
    worst_paired,
)
from personal_rm.prepare import DataConfig, SplitConfig, prepare
from personal_rm.reward import margins
from personal_rm.shrinkage import ShrunkMRM

RPO_GRID = [(0.5, 0.5), (0.25, 0.5), (0.5, 0.1)]  # (rho, gamma); the first is the default
FIELD = "bt_user,lowrank,rubric,rubric_tts"  # the rest of the field, tuned on validation users


def validation_worst10(model: MetaRewardModel, validation, k: int = 8, draws: int = 5) -> float:
    """Mean over draws of the worst-10% validation users' accuracy, adapted on k rows."""
    values = []
    for support, query in validation_episodes(validation, [k], draws)[k]:
        rewards = model.personalize(support, query.users())
        correct = margins(rewards, query) > 0
        per_user = [correct[r].mean() for r in query.rows_by_user().values()]
        values.append(worst_fraction_mean(np.array(per_user)))
    return float(np.mean(values))


def run_seed(args: argparse.Namespace, seed: int) -> tuple[dict, dict]:
    data = DataConfig(data=args.data, max_users=args.max_users, cache_dir=args.cache_dir, seed=seed)
    prepared = prepare(data, SplitConfig())
    train, validation = prepared.seen_train(), prepared.validation()
    pairs, split = prepared.pairs, prepared.split

    def score(model):
        return user_accuracies(model, pairs, split, args.k, seed)

    run, info, seconds = {}, {"seed": seed}, {}
    field = EvaluateConfig(data=args.data, cache_dir=args.cache_dir, seed=seed)
    for name in ("bt_global", *args.field):
        started = time.perf_counter()
        model = build_method(name, field)
        model.fit(train, validation)
        run[name] = score(model)
        seconds[name] = time.perf_counter() - started

    started = time.perf_counter()
    shrunk = ShrunkMRM()
    shrunk.fit(train, validation)
    seconds["mrm_shrunk"] = time.perf_counter() - started
    run["mrm_shrunk"], run["mrm"] = score(shrunk), score(shrunk.mrm)
    info["lams"], info["taus"], info["scale"] = shrunk.lams, shrunk.l2s, shrunk.scale

    started = time.perf_counter()
    paper = MetaRewardModel(MRMConfig(**PAPER_RECIPE), name="mrm_paper")
    paper.fit(train, validation)
    seconds["mrm_paper"] = time.perf_counter() - started
    run["mrm_paper"] = score(paper)

    started = time.perf_counter()
    no_rpo = MetaRewardModel.variant("mrm_no_rpo")
    no_rpo.fit(train, validation)
    run["mrm_no_rpo"] = score(no_rpo)
    # RPO with (rho, gamma) chosen on validation users' worst 10%.
    candidates = {RPO_GRID[0]: shrunk.mrm}
    for rho, gamma in RPO_GRID[1:]:
        model = MetaRewardModel(MRMConfig(rpo_rho=rho, rpo_gamma=gamma), name="mrm")
        model.fit(train, validation)
        candidates[rho, gamma] = model
    val = {c: validation_worst10(m, validation) for c, m in candidates.items()}
    best = max(val, key=val.get)
    run["mrm_rpo_val"] = score(candidates[best])
    seconds["rpo"] = time.perf_counter() - started
    info["rpo_choice"] = {"rho": best[0], "gamma": best[1]}
    info["rpo_val_worst10"] = {f"{r},{g}": v for (r, g), v in val.items()}
    info["no_rpo_val_worst10"] = validation_worst10(no_rpo, validation)
    info["seconds"] = seconds
    return run, info


def rpo_table(runs: list[dict], cells: list) -> tuple[str, list[dict]]:
    """Worst-10% users' accuracy, RPO (rho, gamma chosen on validation) minus no RPO, per seed."""
    lines = [
        "| cell | mean worst-10% diff (points) | per seed | mean diff (points) |",
        "|---|---|---|---|",
    ]
    out = []
    for cell in cells:
        worst = [worst_paired(r["mrm_rpo_val"][cell], r["mrm_no_rpo"][cell]) for r in runs]
        mean = [float(paired(r["mrm_rpo_val"][cell], r["mrm_no_rpo"][cell]).mean()) for r in runs]
        name = "seen" if cell[0] == "seen" else f"unseen k={cell[1]}"
        se = np.std(worst, ddof=1) / np.sqrt(len(worst)) if len(worst) > 1 else float("nan")
        lines.append(
            f"| {name} | {100 * np.mean(worst):+.1f} ± {200 * se:.1f} | "
            + ", ".join(f"{100 * w:+.1f}" for w in worst)
            + f" | {100 * np.mean(mean):+.1f} |"
        )
        out.append({"cell": list(cell), "worst10_diff_per_seed": worst, "mean_diff_per_seed": mean})
    return "\n".join(lines), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="llmfao")
    parser.add_argument("--max_users", type=int, default=None)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--k", default="0,2,4,8,16")
    parser.add_argument(
        "--field",
        default=FIELD,
        help="The rest of the field, each tuned on validation users (rubric_tts costs about "
        "10 min a seed on jester's 1500 users)",
    )
    parser.add_argument("--cache_dir", default="/tmp/embcache")
    parser.add_argument("--n_boot", type=int, default=2000)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    args.k = [int(k) for k in args.k.split(",")]
    args.field = args.field.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.perf_counter()
    runs, infos = [], []
    for seed in seeds:
        run, info = run_seed(args, seed)
        runs.append(run)
        infos.append(info)
        print(f"seed {seed}: {json.dumps(info)}", flush=True)
    wall = time.perf_counter() - started
    rows = aggregate(runs, "bt_global", n_boot=args.n_boot)
    paper_rows = aggregate([{m: r[m] for m in ("mrm", "mrm_paper")} for r in runs], "mrm")
    against_field = {
        rival: aggregate([{m: r[m] for m in ("mrm_shrunk", rival)} for r in runs], rival)
        for rival in args.field
    }
    cells = list(runs[0]["bt_global"])
    rpo_text, rpo_rows = rpo_table(runs, cells)
    name = Path(args.data).name
    head = f"{name}" + (f" (max_users {args.max_users})" if args.max_users else "")
    text = (
        f"# Personalization vs global BT on {head}, seeds {args.seeds}\n\n"
        f"`python -m bench.personalization --data {args.data}"
        + (f" --max_users {args.max_users}" if args.max_users else "")
        + (f" --field {','.join(args.field)}" if args.field != FIELD.split(",") else "")
        + f" --seeds {args.seeds}`; wall time {wall:.0f} s "
        "(one process, OMP_NUM_THREADS=1, on a 2-core machine).\n\n"
        "Mean over seeds of user-level test accuracy; intervals: 95% two-stage bootstrap "
        "(seeds, then users within a seed); differences paired on the same users.\n\n"
        "## mrm_shrunk (the default) - bt_global\n\n"
        f"{diff_table(rows, 'mrm_shrunk', 'bt_global')}\n\n"
        + "".join(
            f"## mrm_shrunk - {rival} (paired)\n\n"
            f"{diff_table(against_field[rival], 'mrm_shrunk', rival)}\n\n"
            for rival in args.field
        )
        + "".join(
            f"## {method} - bt_global\n\n{diff_table(rows, method, 'bt_global')}\n\n"
            for method in (*args.field, "mrm")
        )
        + "## mrm_paper - mrm (paired)\n\n"
        f"{diff_table(paper_rows, 'mrm_paper', 'mrm')}\n\n"
        "## RPO (rho, gamma chosen on validation users) - no RPO: worst-10% of users\n\n"
        "Each seed: worst-10% mean of mrm_rpo_val minus that of mrm_no_rpo on the same users; "
        "± is 2 standard errors over seeds.\n\n"
        f"{rpo_text}\n\n"
        "RPO choices per seed: "
        + ", ".join(
            f"{i['seed']}: rho={i['rpo_choice']['rho']} gamma={i['rpo_choice']['gamma']}"
            for i in infos
        )
        + "\n\n(lam, tau) per support size (validation-chosen; tau None: no own correction) "
        "per seed: "
        + "; ".join(
            f"{i['seed']}: " + str({k: (lam, i["taus"].get(k)) for k, lam in i["lams"].items()})
            for i in infos
        )
        + "\n"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"personalization_{name}"
    result = {
        "dataset": args.data,
        "max_users": args.max_users,
        "seeds": seeds,
        "wall_seconds": wall,
        "rows": rows,
        "mrm_paper_vs_mrm": paper_rows,
        "mrm_shrunk_vs_field": against_field,
        "rpo": rpo_rows,
        "per_seed": infos,
    }
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))
    stem.with_suffix(".md").write_text(text)
    plot_seeds(rows, stem.with_suffix(".png"), "bt_global", title=f"{head}, seeds {args.seeds}")
    print(text)


if __name__ == "__main__":
    main()
