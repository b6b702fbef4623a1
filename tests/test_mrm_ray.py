"""MRM meta-training on a real local Ray Train run: 2 CPU workers streaming their users from
Ray Data, checkpoints, resume, failure, and 2 workers taking exactly the steps of 1."""

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from actors.mrm_trainer import RayTrainConfig, fit_distributed, train_loop_per_worker
from personal_rm.mrm import VARIANTS, MRMConfig, build_net

from synthetic_users import mixture_users

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


@pytest.mark.parametrize("variant", ["mrm", "mrm_no_meta"])
def test_two_workers_take_the_same_steps_as_one(ray_session, users, tmp_path, variant):
    """Each meta-batch is split over the workers, RPO weights the whole batch and gradients are
    summed. With one meta-batch of all 40 users per epoch, which worker streams which user
    does not matter: 2 workers end where 1 does (3 meta-steps from the same init)."""
    train, _ = users
    config = MRMConfig(**VARIANTS[variant], epochs=3, tasks_per_batch=40)
    nets = {}
    for workers in (1, 2):
        distributed = RayTrainConfig(num_workers=workers, storage_path=tmp_path, name=f"w{workers}")
        model, _ = fit_distributed(train, config, distributed)
        nets[workers] = model.net.state_dict()
    init = dict(build_net(train, config).named_parameters())
    for name, value in nets[1].items():
        if name in init:
            assert not torch.allclose(value, init[name]), name  # training moved it
        torch.testing.assert_close(nets[2][name], value, rtol=0, atol=1e-6)


def test_worker_failure_is_survived(ray_session, users, tmp_path):
    train, _ = users
    marker = tmp_path / "worker-died"

    def flaky_loop(loop):
        """The real loop, but the last worker dies once, while reporting epoch 1."""
        import ray.train

        report = ray.train.report
        context = ray.train.get_context()
        last = context.get_world_rank() == context.get_world_size() - 1

        def dying_report(metrics, checkpoint=None):
            if metrics["epoch"] == 1 and last and not Path(marker).exists():
                # The controller collects reports when it polls the workers (every 2 s);
                # dying sooner would also lose the previous epoch's checkpoint.
                Path(marker).touch()
                time.sleep(5)
                os._exit(1)
            report(metrics, checkpoint=checkpoint)

        ray.train.report = dying_report  # this worker process only; it is not reused
        train_loop_per_worker(loop)

    distributed = RayTrainConfig(num_workers=2, max_failures=1, storage_path=tmp_path, name="flaky")
    config = MRMConfig(epochs=3, tasks_per_batch=8)
    model, result = fit_distributed(train, config, distributed, train_loop=flaky_loop)
    assert marker.exists()  # the worker really died
    assert result.error is None
    assert int(result.metrics["epoch"]) == 2
    assert result.metrics["start_epoch"] == 1  # the restarted group resumed, not restarted
    assert model.net is not None
