"""The baselines' regularisation is tuned on validation users, as `mrm_shrunk`'s lam is, and
`mrm_paper` is the authors' recipe."""

import numpy as np

from personal_rm.baselines import BaselineConfig, LowRankBT, PerUserBT
from personal_rm.data.splits import user_protocol_split
from personal_rm.methods import build_method
from personal_rm.mrm import MRMConfig

from synthetic_users import mixture_users


def split_of(data):
    ids = data.pairs.user_ids
    split = user_protocol_split(ids, unseen_fraction=0.3, validation_fraction=0.3, seed=0)
    train = data.pairs.take(split.rows_of(split.train, split.seen_users, ids))
    validation = split.rows_of(np.arange(len(ids)), split.validation_users, ids)
    return split, train, data.pairs.take(validation)


def tuned_l2(data) -> dict[int, float]:
    _, train, validation = split_of(data)
    model = PerUserBT()
    model.fit(train, validation)
    return model.l2_by_bucket


def test_bt_user_prior_is_weaker_where_users_differ(one_thread):
    shared = tuned_l2(mixture_users(60, 40, n_bases=1, seed=5))
    differing = tuned_l2(mixture_users(60, 40, n_bases=3, concentration=0.1, seed=4))
    assert differing[16] < shared[16]
    assert differing[8] <= 1.0 <= shared[8]


def test_without_validation_users_the_fixed_values_hold(one_thread):
    _, train, _ = split_of(mixture_users(30, 20, n_bases=2, seed=1))
    model = PerUserBT(BaselineConfig(user_l2=3.0))
    model.fit(train)
    assert model.l2_by_bucket == {0: 3.0}
    lowrank = LowRankBT(BaselineConfig(rank=2, max_iter=20))
    lowrank.fit(train)
    assert lowrank.basis.shape[0] == 2


def test_lowrank_rank_comes_from_the_grid(one_thread):
    _, train, validation = split_of(mixture_users(40, 30, n_bases=3, seed=2))
    model = LowRankBT(BaselineConfig(rank_grid=[1, 3], max_iter=30))
    model.fit(train, validation)
    assert model.rank in (1, 3) and model.basis.shape[0] == model.rank


def test_mrm_paper_is_the_authors_recipe():
    class Jobish:
        mrm = MRMConfig()

    model = build_method("mrm_paper", Jobish())
    c = model.config
    assert model.name == "mrm_paper"
    assert (c.num_bases, c.head, c.init, c.outer_lr, c.tasks_per_batch) == (
        2,
        "mlp",
        "random",
        1e-3,
        2,
    )
