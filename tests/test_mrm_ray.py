"""MRM meta-training on a real local Ray Train run: 2 CPU workers, checkpoints, resume, failure."""

import numpy as np
import pytest

from actors.mrm_trainer import RayTrainConfig, fit_distributed
from personal_rm.mrm import MRMConfig
from personal_rm.synthetic import mixture_users

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def users():
    data = mixture_users(48, 24, dim=16, n_bases=2, concentration=0.3, seed=5)
    names = np.array(data.user_names, dtype=object)
    train = data.pairs.take(np.flatnonzero(np.isin(data.pairs.user_ids, names[:40])))
    validation = data.pairs.take(np.flatnonzero(np.isin(data.pairs.user_ids, names[40:])))
    return train, validation


def reported_epochs(result):
    return sorted(int(e) for e in result.metrics_dataframe["epoch"])


def test_two_workers_checkpoint_then_resume(ray_session, users, tmp_path):
    train, validation = users
    config = MRMConfig(epochs=2, tasks_per_batch=8)
    distributed = RayTrainConfig(num_workers=2, storage_path=tmp_path, name="run")
    model, first = fit_distributed(train, config, distributed, validation=validation)
    assert first.checkpoint is not None
    assert reported_epochs(first) == [0, 1]
    assert first.metrics["epoch"] == 1
    assert set(first.metrics) >= {"loss", "val_acc", "epoch"}
    rewards = model.personalize(validation, validation.users())
    assert len(rewards) == 8

    longer = config.model_copy(update={"epochs": 4})
    _, resumed = fit_distributed(train, longer, distributed, validation=validation)
    assert resumed.metrics["epoch"] == 3
    assert resumed.metrics["start_epoch"] == 2  # continued from the first run's checkpoint
    assert reported_epochs(resumed) == [0, 1, 2, 3]  # one history across both runs


def test_worker_failure_is_survived(ray_session, users, tmp_path):
    train, _ = users
    distributed = RayTrainConfig(
        num_workers=2,
        max_failures=1,
        inject_failure_at_epoch=1,
        storage_path=tmp_path,
        name="flaky",
    )
    model, result = fit_distributed(train, MRMConfig(epochs=3, tasks_per_batch=8), distributed)
    assert (tmp_path / ".flaky.failure-injected").exists()  # the worker really died
    assert result.error is None
    assert int(result.metrics["epoch"]) == 2
    assert result.metrics["start_epoch"] == 1  # the restarted group resumed, not restarted
    assert model.net is not None
