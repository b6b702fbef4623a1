"""The sweep: search spaces from YAML, the validation-only objective, and a real tiny Ray Tune
run (trials train on Ray Train, ASHA stops the weak one, an interrupted sweep resumes) whose
winner is written as a config that `jobs.serve` accepts.

The users are synthetic (a known mixture of two base rewards) rather than a slice of real
text: embedding real text takes minutes on a CPU box; the real sweep is a job run.
"""

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from ray import tune

from jobs.sweep import SweepConfig, sweep
from personal_rm.config import load_config, parse_config
from personal_rm.data.splits import user_protocol_split
from personal_rm.methods import MethodsConfig
from personal_rm.mrm import MetaRewardModel, MRMConfig
from personal_rm.prepare import Prepared
from personal_rm.tuning import SweepData, apply_params, scaled_mrm, validation_accuracy
from serve_app.deploy import ServeJobConfig

from synthetic_users import mixture_users

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def prepared() -> Prepared:
    users = mixture_users(60, 24, dim=16, n_bases=2, concentration=0.3, seed=5)
    split = user_protocol_split(
        users.pairs.user_ids, unseen_fraction=0.3, validation_fraction=0.2, seed=0
    )
    return Prepared(users.pairs, split, Path("synthetic"))


def test_shipped_yaml_is_the_default_sweep():
    assert load_config(SweepConfig, CONFIGS / "sweep.yaml") == SweepConfig()


@pytest.mark.parametrize(
    ("space", "complaint"),
    [
        ({"mrm.inner_lr": {"logunifrom": [0.1, 1.0]}}, "logunifrom"),
        ({"mrm.inner_rl": {"choice": [1.0]}}, "inner_rl"),
        ({"scaling.alpha": {"choice": [0.5, "adaptiv"]}}, "adaptiv"),
        ({"prototypes.k": {"randint": [8, 2]}}, "low < high"),
        ({"prototypes.k": {"choice": [2], "grid": [4]}}, "exactly one"),
    ],
)
def test_a_bad_search_space_fails_before_any_trial(space, complaint):
    with pytest.raises(ValidationError, match=complaint):
        SweepConfig(search_space=space)


def test_search_space_from_the_command_line():
    config = parse_config(SweepConfig, ["--search_space", "{scaling.m: {grid: [0, 4]}}"])
    assert config.search_space == {"scaling.m": {"grid": [0, 4]}}
    assert apply_params(MethodsConfig(), {"scaling.m": np.int64(4)}).scaling.m == 4


def test_the_objective_reads_validation_users_only_and_tells_models_apart(one_thread, prepared):
    split = prepared.split
    data = SweepData.from_prepared(prepared)
    assert set(data.validation.users()) == set(split.validation_users)
    assert set(data.train.users()) == set(split.seen_users)  # no unseen (test) user anywhere
    assert len(data.val_train) + len(data.val_test) == len(data.validation)

    state = apply_params(MethodsConfig(), {"prototypes.representation": "preference"})

    def objective(config: MRMConfig) -> dict[str, float]:
        mrm = MetaRewardModel(config)
        mrm.fit(data.train, data.validation)
        return validation_accuracy(scaled_mrm(mrm, state, data.train), data, [0, 8], seed=0)

    # Pinned (not the defaults, which get retuned): two bases, the paper's step sizes.
    small = {"num_bases": 2, "outer_lr": 3e-3, "tasks_per_batch": 8}
    trained = objective(MRMConfig(epochs=6, **small))
    assert trained["val_acc_tts"] == pytest.approx(
        (trained["val_acc_k0"] + trained["val_acc_k8"]) / 2
    )
    untrained = objective(MRMConfig(epochs=1, init="random", **small))  # random heads: chance
    assert trained["val_acc_tts"] > untrained["val_acc_tts"] + 0.1


class InterruptOnce(tune.Callback):
    """Ctrl-C halfway through the first trial, once: the marker outlives `Tuner.restore`, which
    unpickles this callback along with the experiment."""

    def __init__(self, marker: Path):
        self.marker = marker

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("epoch") == 1 and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.ray
def test_sweep_stops_the_weak_trial_resumes_and_writes_a_servable_winner(
    ray_session, one_thread, prepared, tmp_path
):
    config = SweepConfig(
        out=tmp_path / "out",
        k=[0, 4],
        n_boot=50,
        slice_k=[1, 2],
        slice_budgets=[2, 4],
        state={
            "mrm": {"epochs": 6, "num_bases": 2, "outer_lr": 3e-3, "tasks_per_batch": 8},
            "prototypes": {"k": 2},
        },
        tune={
            "name": "tiny",
            "storage_path": tmp_path / "ray",
            "num_samples": 1,
            "max_concurrent_trials": 1,  # in order: ASHA has seen the good trial's epochs
            "grace_period": 1,
            "include_base": False,
            "val_k": [0, 4],
        },
        # Random heads start at chance; heads started at the global reward do not.
        search_space={"mrm.init": {"grid": ["global", "random"]}, "scaling.m": {"choice": [2, 4]}},
    )
    marker = tmp_path / "interrupted"
    assert sweep(config, prepared, callbacks=[InterruptOnce(marker)]) is None
    assert marker.exists()

    summary = sweep(config, prepared)  # the same name: Tuner.restore picks the experiment up
    trials = {t["params"]["mrm.init"]: t for t in summary["trials"]}
    good, weak = trials["global"], trials["random"]
    assert good["status"] == "completed" and good["epochs"] == 6
    assert weak["status"] == "stopped" and weak["epochs"] < 6 and weak["val_acc_tts"] is None
    assert weak["val_acc"] < good["val_acc"]
    # The interrupted trial's Ray Train run went on from its last epoch checkpoint.
    lines = (tmp_path / "ray" / "tiny" / good["trial"] / "result.json").read_text().splitlines()
    starts = {json.loads(line).get("start_epoch") for line in lines} - {None}
    assert 0 in starts and max(starts) > 0

    assert summary["best"]["trial"] == good["trial"]
    assert {(r["split"], r["k"]) for r in summary["test"]} == {
        ("seen", "all"),
        ("unseen", 0),
        ("unseen", 4),
    }
    assert all(r["method"] == "mrm_tts" and r["n_users"] > 0 for r in summary["test"])
    assert len(summary["slices"]["k"]) == 4 and len(summary["slices"]["budget"]) == 6

    out = config.out
    served = parse_config(ServeJobConfig, ["--config", str(out / "sweep_best.yaml")])
    assert served.state.mrm.init == "global" and served.state.mrm.epochs == 6
    assert served.state.scaling.m == good["params"]["scaling.m"]  # the served requests' default
    assert served.app.state_dir == out / "sweep_state"
    assert json.loads((out / "sweep.json").read_text())["best"]["trial"] == good["trial"]
    table = (out / "sweep.md").read_text()
    assert "| stopped |" in table and "| mrm_tts |" in table
    assert min((out / f).stat().st_size for f in ("sweep_k.png", "sweep_budget.png")) > 10_000
