import numpy as np
import pytest

from personal_rm.baselines import BaselineConfig, GlobalBT, LowRankBT, PerUserBT
from personal_rm.data.splits import k_shot, user_protocol_split
from personal_rm.evaluation import score_users
from personal_rm.metrics import summarize

from synthetic_users import mixture_users


def unseen_accuracy(model, data, k):
    ids = data.pairs.user_ids
    split = user_protocol_split(ids, unseen_fraction=0.5, validation_fraction=0.0, seed=0)
    model.fit(data.pairs.take(split.rows_of(split.train, split.seen_users, ids)))
    support, users = k_shot(ids, split.train, split.unseen_users, k)
    test = split.rows_of(split.test, users, ids)
    return summarize(*score_users(model, data.pairs, support, users, test), n_boot=10).acc_user


@pytest.fixture(scope="module")
def shared_taste():
    """Every user has the same reward: a global model is all there is to learn."""
    return mixture_users(40, 40, n_bases=1, seed=1)


def test_global_bt_recovers_a_shared_reward(shared_taste):
    model = GlobalBT()
    pairs = shared_taste.pairs
    oracle = ((pairs.chosen - pairs.rejected) @ shared_taste.bases[0] > 0).mean()
    assert unseen_accuracy(model, shared_taste, 0) > oracle - 0.03
    cosine = model.reward.theta @ shared_taste.bases[0] / np.linalg.norm(model.reward.theta)
    assert cosine > 0.9


def test_every_baseline_is_at_chance_on_random_labels():
    data = mixture_users(30, 40, n_bases=1, scale=0.0, seed=3)
    for model in (GlobalBT(), PerUserBT(), LowRankBT()):
        assert abs(unseen_accuracy(model, data, 8) - 0.5) < 0.1, model.name


def test_personalization_beats_global_when_tastes_differ():
    data = mixture_users(60, 60, dim=8, n_bases=2, concentration=0.05, seed=2)
    pairs, theta = data.pairs, data.weights @ data.bases
    user_of = np.array([data.user_names.index(u) for u in pairs.user_ids])
    oracle = (((pairs.chosen - pairs.rejected) * theta[user_of]).sum(1) > 0).mean()
    glob = unseen_accuracy(GlobalBT(), data, 16)
    assert glob < oracle - 0.1  # the data really is personal
    assert unseen_accuracy(PerUserBT(BaselineConfig(user_l2=1.0)), data, 16) > glob + 0.03
    lowrank = unseen_accuracy(LowRankBT(BaselineConfig(rank=2)), data, 4)
    assert lowrank > glob + 0.08
    assert lowrank > oracle - 0.05


def test_per_user_bt_without_data_is_the_global_model(shared_taste):
    model = PerUserBT()
    model.fit(shared_taste.pairs)
    reward = model.personalize(shared_taste.pairs.take([]), ["nobody"])["nobody"]
    np.testing.assert_allclose(reward.theta, model.prior)
