"""Tune the served MRM method (K, N, M, alpha; MRM's inner loop, bases and RPO) on Ray Tune.

    python -m jobs.sweep --config configs/sweep.yaml --out results/sweep
    python -m jobs.sweep --data jester --max_users 800 --tune.num_samples 8 --out results/sweep
    python -m jobs.serve --config results/sweep/sweep_best.yaml     # serve the winner

Seeded random search with ASHA early stopping on each epoch's validation accuracy; every trial
meta-trains MRM on Ray Train (one worker) and is judged on the validation users only (see
personal_rm/tuning.py and actors/tuner.py). The winner is then evaluated once on the test
users through the evaluation harness. Writes to --out: sweep.md (trials and test tables),
sweep.json, sweep_k.png (accuracy vs K), sweep_budget.png (accuracy vs the N+M budget and its
split), sweep_best.yaml (a `jobs.serve` config) and sweep_config.yaml. Interrupted (Ctrl-C, a
lost node)? Run the same command again: it resumes the experiment (`Tuner.restore`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, field_validator, model_validator

from actors.tuner import SweepSettings
from personal_rm.config import dump_config, parse_config
from personal_rm.data.splits import KShot
from personal_rm.methods import MethodsConfig
from personal_rm.mrm import MRMConfig
from personal_rm.pgenrm.prototypes import PrototypeConfig
from personal_rm.prepare import DataConfig, Prepared, SplitConfig
from personal_rm.tuning import DEFAULT_SPACE, SearchSpace, check_space, plain

BUDGET_LABELS = {0.0: "M = 0 (individual only)", 0.25: "M = (N+M) / 4", 0.5: "M = (N+M) / 2"}
# 30 epochs keep a trial to minutes on CPU. Prototypes from preferences: the one representation
# that a trial and the server compute identically (the server's chain representation embeds
# the rubric judge's chains; a trial would embed MRM's).
BASE_STATE = MethodsConfig(
    mrm=MRMConfig(epochs=30), prototypes=PrototypeConfig(representation="preference")
)


class SweepConfig(DataConfig):
    out: Path = Field(Path("results"), description="Folder for the sweep_* outputs.")
    address: str | None = Field(
        None,
        description="Ray cluster to join; default: the one `ray job submit` names in "
        "RAY_ADDRESS, else a new private local Ray.",
    )
    k: list[KShot] = Field(
        [0, 4, 8, 16], description="Support sizes of the winner's one evaluation on test users."
    )
    n_boot: int = Field(1000, description="Bootstrap resamples for the test table's 95% CIs.")
    slice_k: list[int] = Field(
        [1, 2, 4, 8, 16, 32], description="Prototype counts K of the accuracy-vs-K plot."
    )
    slice_budgets: list[int] = Field(
        [2, 4, 8, 16, 32], description="N+M chain budgets of the accuracy-vs-budget plot."
    )
    split: SplitConfig = SplitConfig()
    state: MethodsConfig = Field(
        BASE_STATE,
        description="The base config: trial 0, and whatever the search space leaves fixed.",
    )
    tune: SweepSettings = SweepSettings()
    search_space: SearchSpace = Field(
        DEFAULT_SPACE,
        description="Dotted state keys, each with one of choice/grid/uniform/loguniform/randint "
        "(YAML, or a YAML string on the command line).",
    )

    @field_validator("search_space", mode="before")
    @classmethod
    def _from_yaml_text(cls, value: Any) -> Any:
        return yaml.safe_load(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        check_space(self.search_space, self.state)
        if self.state.prototypes.representation != "preference" or any(
            key.startswith("prototypes.representation") for key in self.search_space
        ):
            raise ValueError("the sweep needs prototypes.representation: preference (BASE_STATE)")
        if self.split.validation_fraction <= 0:
            raise ValueError("the sweep selects on validation users: validation_fraction > 0")
        return self


def trial_row(result: Any, space: SearchSpace) -> dict[str, Any]:
    """One trial of a Tune `ResultGrid`: its parameters, how far it got, what it scored."""
    history = result.metrics_dataframe
    epochs = history["epoch"].dropna() if history is not None and "epoch" in history else []
    last = result.metrics or {}
    status = "error" if result.error else "completed" if "val_acc_tts" in last else "stopped"
    return {
        "trial": Path(result.path).name,
        "status": status,
        "params": {key: plain(result.config.get(key)) for key in space},
        "epochs": int(max(epochs)) + 1 if len(epochs) else 0,
        "val_acc": float(history["val_acc"].max()) if len(epochs) else None,
        "val_acc_k": {k[9:]: v for k, v in last.items() if k.startswith("val_acc_k")},
        "val_acc_tts": last.get("val_acc_tts"),
        "model_path": last.get("model_path"),
    }


def trials_table(trials: Sequence[dict[str, Any]], space: SearchSpace) -> str:
    """Best objective first; stopped and failed trials after, by MRM's own accuracy."""
    ks = list(dict.fromkeys(k for t in trials for k in t["val_acc_k"]))

    def cell(value: Any, spec: str = ".3f") -> str:
        if value is None:
            return "-"
        return format(value, spec) if isinstance(value, float) else str(value)

    header = ["trial", "status", "epochs", *space, "MRM val acc (best epoch)"]
    header += [f"val acc k={k}" for k in ks] + ["objective (mean over k)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = sorted(
        trials,
        key=lambda t: (t["val_acc_tts"] is None, -(t["val_acc_tts"] or 0), -(t["val_acc"] or 0)),
    )
    for t in order:
        cells = [t["trial"], t["status"], str(t["epochs"])]
        cells += [cell(t["params"][key], ".3g") for key in space]
        cells += [cell(t["val_acc"])] + [cell(t["val_acc_k"].get(k)) for k in ks]
        cells.append(cell(t["val_acc_tts"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_slices(
    lines: dict[str, list[dict]], state: MethodsConfig, best: float, out: Path, name: str
) -> None:
    """sweep_k.png and sweep_budget.png: validation accuracy along each slice; a star marks
    the best trial (`state`, scoring `best`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def panel(points, x, line: str, label, star: float, x_label: str, path: Path) -> None:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for value in dict.fromkeys(p[line] for p in points):
            mine = [p for p in points if p[line] == value]
            ax.plot(
                [x(p) for p in mine], [p["val_acc_tts"] for p in mine], "o-", label=label(value)
            )
        ax.plot([star], [best], "k*", markersize=12, label="best trial")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(x_label)
        ax.set_ylabel("validation users' accuracy (mean over k)")
        ax.set_title(f"{name}: one knob at a time through the best trial", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    scaling = state.scaling
    n_and_m = f"N + M = {scaling.n + scaling.m}"
    panel(
        lines["k"],
        lambda p: p["k"],
        "m",
        lambda m: f"M = {m}, {n_and_m}",
        state.prototypes.k,
        "prototype count K",
        out / "sweep_k.png",
    )
    panel(
        lines["budget"],
        lambda p: p["n"] + p["m"],
        "share",
        BUDGET_LABELS.get,
        scaling.n + scaling.m,
        f"chain budget N + M (prototype count K = {state.prototypes.k})",
        out / "sweep_budget.png",
    )


def serve_config(config: SweepConfig, state: MethodsConfig) -> Any:
    """The winner as a `jobs.serve` config: same data and split, and its own state folder (a
    stale state from another config is never served); requests default to its N and M."""
    from serve_app.deploy import ServeJobConfig

    data = config.model_dump(include=set(DataConfig.model_fields))
    app = {
        "state_dir": config.out / "sweep_state",
        "store_path": config.out / "sweep_feedback.sqlite3",
        "cache_dir": config.cache_dir,
    }
    return ServeJobConfig(**data, split=config.split, state=state, app=app)


def sweep(
    config: SweepConfig, prepared: Prepared, callbacks: Sequence[Any] = ()
) -> dict[str, Any] | None:
    """Run or resume the sweep on a connected Ray; write the outputs, or return None if the
    experiment was interrupted (`callbacks`: Tune callbacks)."""
    from actors.tuner import expected_trials, tune_sweep
    from personal_rm.evaluation import evaluate_method
    from personal_rm.mrm import MetaRewardModel
    from personal_rm.report import markdown_table
    from personal_rm.tuning import SweepData, apply_params, scaled_mrm, slices

    data = SweepData.from_prepared(prepared)
    space = config.search_space
    results = tune_sweep(
        data, config.state, space, config.tune, seed=config.seed, callbacks=callbacks
    )
    done = results.num_terminated + results.num_errors
    expected = expected_trials(space, config.tune)
    if done < len(results) or len(results) < expected:
        print(f"sweep interrupted with {done} of {expected} trials done: rerun to resume it")
        return None
    trials = [trial_row(result, space) for result in results]
    finished = [t for t in trials if t["status"] == "completed"]
    if not finished:
        raise RuntimeError(
            "no trial finished; see the errors in the trials table:\n" + trials_table(trials, space)
        )
    best = max(finished, key=lambda t: t["val_acc_tts"])
    state = apply_params(config.state, best["params"])
    mrm = MetaRewardModel.load(best["model_path"])
    test = evaluate_method(
        scaled_mrm(mrm, state, data.train),
        prepared.pairs,
        prepared.split,
        config.k,
        seed=config.seed,
        n_boot=config.n_boot,
        fitted=True,
    )
    lines = slices(
        mrm, state, data, config.tune.val_k, config.seed, config.slice_k, config.slice_budgets
    )

    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    dump_config(config, out / "sweep_config.yaml")
    dump_config(serve_config(config, state), out / "sweep_best.yaml")
    summary = {
        "dataset": config.data,
        "path": str(prepared.source),
        "seed": config.seed,
        "experiment": str(config.tune.storage_path.resolve() / config.tune.name),
        "search": "random (Ray Tune BasicVariantGenerator, seeded), base config first",
        "scheduler": {
            "name": "ASHA",
            "metric": "best_val_acc",
            "time_attr": "epoch",
            "grace_period": config.tune.grace_period,
            "reduction_factor": config.tune.reduction_factor,
        },
        "objective": "val_acc_tts: validation users' user-level accuracy, mean over "
        f"k in {config.tune.val_k}",
        "trials": trials,
        "best": best,
        "slices": lines,
        "test": test,
    }
    (out / "sweep.json").write_text(json.dumps(summary, indent=2))
    name = Path(config.data).name
    stopped = sum(t["status"] == "stopped" for t in trials)
    text = (
        f"## {name}: sweep trials ({len(trials)}, {stopped} stopped early by ASHA), "
        "validation users\n\n"
        "Random search (seeded), trial 0 = the base config; ASHA on MRM's best validation "
        f"accuracy so far, rungs from epoch {config.tune.grace_period} to mid-training "
        f"(reduction factor {config.tune.reduction_factor}); objective = the validation "
        "users' user-level accuracy of MRM + prototypes + dual-granularity scaling, mean over "
        f"k in {config.tune.val_k}.\n\n"
        f"{trials_table(trials, space)}\n\n"
        f"## {name}: the best trial ({best['trial']}) on the test users, user-level accuracy "
        "[95% CI]\n\n"
        f"{markdown_table(test, 'user')}\n"
    )
    (out / "sweep.md").write_text(text)
    plot_slices(lines, state, best["val_acc_tts"], out, name)
    print(text)
    print(f"wrote {out}/sweep.md, sweep.json, sweep_k.png, sweep_budget.png, sweep_best.yaml")
    return summary


def run(config: SweepConfig) -> dict[str, Any] | None:
    import ray

    from actors.local_ray import connect
    from personal_rm.prepare import prepare

    prepared = prepare(config, config.split)
    owns_ray = connect(config.address)
    try:
        return sweep(config, prepared)
    finally:
        if owns_ray:
            ray.shutdown()


def main(argv: list[str] | None = None) -> None:
    run(parse_config(SweepConfig, argv, description=__doc__))


if __name__ == "__main__":
    main(sys.argv[1:])
