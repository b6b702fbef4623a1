r"""Meta-train MRM on Ray Train and save the selected model.

    python -m jobs.meta_train_mrm --train.num_workers 2 --out results/mrm
    ray job submit --working-dir . -- \
        python -m jobs.meta_train_mrm --train.num_workers 4 --train.use_gpu true

Seen users are streamed to `--train.num_workers` workers by Ray Data, each reading only its
shard; every meta-step takes one global batch of `--mrm.tasks_per_batch` users, split over the
workers. The epoch with the best accuracy on the validation users (adapted on
`--mrm.val_support` of their comparisons) is kept. At scale, `--tasks` trains on the Parquet
task rows of `jobs.build_tasks` instead of `--data` (no validation users: the last epoch is
kept), and no process reads them whole:

    ray job submit --working-dir . -- python -m jobs.meta_train_mrm \
        --tasks s3://bucket/mrm_tasks --train.num_workers 16 --train.use_gpu true
Rerunning with the same `--train.name` and `--train.storage_path` resumes from the last
checkpoint. Writes `model/` (load with `MetaRewardModel.load`), `training.json`,
`training.png` and `config.yaml` to `--out`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import Field

from actors.mrm_trainer import RayTrainConfig
from personal_rm.config import dump_config, parse_config
from personal_rm.mrm import MRMConfig
from personal_rm.prepare import DataConfig, SplitConfig


class MetaTrainConfig(DataConfig):
    out: Path = Field(Path("results/mrm"), description="Folder for the model and training curves.")
    address: str | None = Field(
        None, description="Ray cluster address; default: the cluster of `ray job submit`, or local."
    )
    tasks: str | None = Field(
        None,
        description="Task rows of jobs.build_tasks (a Parquet folder, glob or URI) to train on "
        "instead of --data's seen users.",
    )
    split: SplitConfig = SplitConfig()
    mrm: MRMConfig = MRMConfig()
    train: RayTrainConfig = RayTrainConfig()


def plot_training(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, loss_ax = plt.subplots(figsize=(7, 4))
    loss_ax.plot(epochs, [h["loss"] for h in history], color="C0", label="query BT loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("meta-train query loss", color="C0")
    if all("val_acc" in h for h in history):
        acc_ax = loss_ax.twinx()
        acc_ax.plot(epochs, [h["val_acc"] for h in history], color="C1")
        acc_ax.set_ylabel("validation-user accuracy", color="C1")
    fig.suptitle("MRM meta-training")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(config: MetaTrainConfig) -> Path:
    from actors.local_ray import connect
    from actors.mrm_trainer import fit_distributed
    from personal_rm.prepare import prepare

    connect(config.address)
    if config.tasks is not None:
        import ray.data

        train, validation = ray.data.read_parquet(config.tasks), None
    else:
        prepared = prepare(config, config.split)
        train, validation = prepared.seen_train(), prepared.validation()
    model, result = fit_distributed(
        train,
        config.mrm,
        config.train,
        validation=validation if validation is not None and len(validation) else None,
    )
    config.out.mkdir(parents=True, exist_ok=True)
    model.save(config.out / "model")
    history = sorted(result.metrics_dataframe.to_dict("records"), key=lambda h: h["epoch"])
    (config.out / "training.json").write_text(json.dumps(history, indent=2, default=float))
    plot_training(history, config.out / "training.png")
    dump_config(config, config.out / "config.yaml")
    best = max(history, key=lambda h: h.get("val_acc", h["epoch"]))
    print(
        f"selected epoch {int(best['epoch'])}: "
        + ", ".join(f"{key}={best[key]:.4f}" for key in ("loss", "val_acc") if key in best)
    )
    print(f"wrote {config.out}/model, training.json, training.png")
    return config.out / "model"


def main(argv: list[str] | None = None) -> None:
    run(parse_config(MetaTrainConfig, argv, description=__doc__))


if __name__ == "__main__":
    main(sys.argv[1:])
