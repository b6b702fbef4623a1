"""`mrm_shrunk`: lam=0 is global BT exactly; lam is chosen on validation users only, moves off
global where users differ and stays there where they do not; multi-seed aggregation math."""

import numpy as np
import pytest

from personal_rm.baselines import GlobalBT
from personal_rm.data.splits import user_protocol_split
from personal_rm.features import PairSet
from personal_rm.mrm import MRMConfig
from personal_rm.multiseed import aggregate, paired, two_stage_bootstrap, user_accuracies
from personal_rm.shrinkage import ShrinkageConfig, ShrunkJudge, ShrunkMRM, choose_lam

from synthetic_users import mixture_users

FAST = MRMConfig(num_bases=3, epochs=20, outer_lr=3e-2)


def split_of(data, seed=0):
    ids = data.pairs.user_ids
    split = user_protocol_split(ids, unseen_fraction=0.3, validation_fraction=0.3, seed=seed)
    train = data.pairs.take(split.rows_of(split.train, split.seen_users, ids))
    val_rows = split.rows_of(np.arange(len(ids)), split.validation_users, ids)
    return split, train, data.pairs.take(val_rows)


def fitted(data):
    """(data, split, train, validation, mrm_shrunk fitted on them)."""
    split, train, validation = split_of(data)
    model = ShrunkMRM(FAST)
    model.fit(train, validation)
    return data, split, train, validation, model


@pytest.fixture(scope="module")
def differing(one_thread):
    """Users near one of three taste directions: personalization must pay. 150 users: with
    90 (27 validation users) the simultaneous lower bound earned only lam=0.4 at k=8."""
    return fitted(mixture_users(150, 40, n_bases=3, concentration=0.1, seed=4))


def test_lam_zero_is_global_bt_exactly(one_thread):
    data = mixture_users(40, 30, n_bases=2, seed=2)
    split, train, validation = split_of(data)
    model = ShrunkMRM(FAST, ShrinkageConfig(grid=[0.0]))
    model.fit(train, validation)
    baseline = GlobalBT()
    baseline.fit(train, validation)
    support = data.pairs.take(split.train)
    for reward in model.personalize(support, data.pairs.users()).values():
        np.testing.assert_array_equal(reward.theta, baseline.reward.theta)


def test_the_served_judge_orders_responses_as_the_shrunk_model(differing):
    """The server's `mrm_shrunk` chains: MRM's criteria, "global reward" and "own record",
    whose weights and heads give each user the shrunk model's reward up to a positive factor
    (same preferences)."""
    data, split, _, _, model = differing
    judge = ShrunkJudge.from_model(model)
    support, users = data.pairs.take(split.train), data.pairs.users()
    expected, served = model.personalize(support, users), judge.personalize(support, users)
    rubrics = judge.rubrics(support, users)
    assert [c.name for c in judge.criteria[-2:]] == ["global reward", "own record"]
    assert min(w[-2] for w in rubrics.values()) < 1  # someone is personalized...
    for user, weights in rubrics.items():
        assert weights.min() >= 0 and weights.sum() == pytest.approx(1) and weights[-1] == 0
        ours, theirs = served[user].theta, np.asarray(expected[user].theta, np.float64)
        np.testing.assert_allclose(
            ours / np.linalg.norm(ours), theirs / np.linalg.norm(theirs), atol=1e-5
        )
    assert model.personalize(support, []) == judge.personalize(support, []) == {}
    cold = judge.rubrics(PairSet.empty(data.pairs.dim), ["new"])["new"]
    lam = model.lams[0]
    assert cold[-2] == pytest.approx((1 - lam) / (1 + lam * (model.scale - 1)))


def test_the_served_chains_carry_the_users_own_record(bases_fall_short):
    """Each sampled chain weighs the own record where the model corrects, and its verdict and
    totals are its criteria's weighted scores: the own record's head is fitted per draw."""
    data, split, _, _, model = bases_fall_short
    judge = ShrunkJudge.from_model(model)
    user = split.unseen_users[0]
    history = data.pairs.take(split.train).for_user(user).take(range(16))
    request = data.pairs.for_user(user).chosen[:3]
    samples = judge.sample([history, PairSet.empty(data.pairs.dim)], request, 4, 0, True)
    assert samples.scores.shape == (2, 4, 3)
    for chain, scores in zip(samples.chains[0], samples.scores[0], strict=True):
        own = {c.name: c.weight for c in chain.rubric}
        assert own.get("own record", 0) > 0.05
        assert chain.verdict == int(np.argmax(scores))
        totals = [s.stated_total for s in chain.scores]
        np.testing.assert_allclose(totals, scores)
    cold = samples.chains[1][0]  # no history: no correction to weigh
    assert "own record" not in [c.name for c in cold.rubric if c.weight > 0]


@pytest.fixture(scope="module")
def bases_fall_short(one_thread):
    """Users near one of 12 taste directions, MRM with 3 bases: only a per-user correction can
    reach most of them."""
    return fitted(mixture_users(150, 40, n_bases=12, concentration=0.05, seed=6))


def test_the_own_correction_is_taken_where_the_bases_fall_short(bases_fall_short):
    data, split, train, validation, model = bases_fall_short
    assert model.l2s[16] is not None
    without = ShrunkMRM(FAST, ShrinkageConfig(user_l2_grid=[]))
    without.fit(train, validation)
    ours = user_accuracies(model, data.pairs, split, [16], seed=0)[("unseen", 16)]
    theirs = user_accuracies(without, data.pairs, split, [16], seed=0)[("unseen", 16)]
    assert paired(ours, theirs).mean() > 0.03


def test_shrinks_off_global_where_users_differ_and_beats_it(differing):
    data, split, train, _, model = differing
    assert model.lams[8] >= 0.5 and model.lams[16] >= 0.5
    baseline = GlobalBT()
    baseline.fit(train)
    ours = user_accuracies(model, data.pairs, split, [8], seed=0)[("unseen", 8)]
    theirs = user_accuracies(baseline, data.pairs, split, [8], seed=0)[("unseen", 8)]
    assert paired(ours, theirs).mean() > 0.03


def test_stays_global_where_users_share_one_taste(one_thread):
    data = mixture_users(60, 30, n_bases=1, seed=5)
    _, train, validation = split_of(data)
    model = ShrunkMRM(FAST)
    model.fit(train, validation)
    assert max(model.lams.values()) <= 0.3


def test_lam_depends_on_validation_users_only(differing):
    """Scrambling the test (unseen) users' labels, or what is passed at personalize time,
    cannot change lam: fit sees seen-train and validation rows only."""
    data, split, train, validation, model = differing
    lams = dict(model.lams)
    flipped = data.pairs
    unseen = np.isin(flipped.user_ids, split.unseen_users)
    chosen = np.where(unseen[:, None], flipped.rejected, flipped.chosen)
    rejected = np.where(unseen[:, None], flipped.chosen, flipped.rejected)
    scrambled = PairSet(flipped.user_ids, chosen, rejected)
    model.personalize(scrambled.take(split.train), list(split.unseen_users))
    assert model.lams == lams
    again = ShrunkMRM(FAST)
    again.fit(train, validation)  # same seen/validation rows, whatever the test users hold
    assert again.lams == lams
    # ...while a different validation set does move the choice
    again.select(validation.take(np.arange(0)))
    assert set(again.lams.values()) == {0.0}


def test_choose_lam_needs_a_lower_bound_above_global():
    noisy = {0.0: np.zeros(10), 0.5: np.array([0.1, -0.1] * 5)}
    assert choose_lam(noisy, z=2.0)[0] == 0.0
    clear = {0.0: np.zeros(10), 0.5: np.full(10, 0.1) + np.linspace(-0.01, 0.01, 10)}
    assert choose_lam(clear, z=2.0)[0] == 0.5


def test_the_lower_bounds_hold_together_over_the_grid():
    # One nonzero lam: the plain one-sided 97.5% bound; ten lams and 8 precisions, each
    # around two centres: Bonferroni over the 26.
    assert ShrinkageConfig(grid=[0.0, 1.0], user_l2_grid=[]).z == pytest.approx(1.96, abs=1e-3)
    assert ShrinkageConfig().z == pytest.approx(3.102, abs=1e-3)
    # A gain that clears z=2 but not the simultaneous bound stays at global BT.
    gain = np.full(12, 0.05) + np.linspace(-0.11, 0.11, 12)  # mean/SE 2.4
    assert choose_lam({0.0: np.zeros(12), 0.5: gain}, z=2.0)[0] == 0.5
    assert choose_lam({0.0: np.zeros(12), 0.5: gain}, z=ShrinkageConfig().z)[0] == 0.0


def test_two_stage_bootstrap_on_a_toy():
    # Two seeds; within each, every user has the same accuracy: only seed spread is left.
    mean, (low, high) = two_stage_bootstrap([np.full(5, 0.6), np.full(3, 0.8)], n_boot=500)
    assert mean == pytest.approx(0.7)  # mean of per-seed means, not of pooled users
    assert low == pytest.approx(0.6) and high == pytest.approx(0.8)
    # One seed: the interval is the plain user bootstrap of the mean.
    users = np.array([0.0, 1.0] * 50)
    _, (low, high) = two_stage_bootstrap([users], n_boot=2000)
    assert low == pytest.approx(0.4, abs=0.03) and high == pytest.approx(0.6, abs=0.03)


def test_aggregate_pairs_users_within_seeds():
    cell = ("unseen", 4)
    base = [{"a": 0.5, "b": 0.7}, {"c": 0.2}]
    mine = [{"a": 0.6, "b": 0.8}, {"c": 0.3}]
    runs = [{"bt_global": {cell: b}, "m": {cell: m}} for b, m in zip(base, mine, strict=True)]
    rows = {r["method"]: r for r in aggregate(runs, "bt_global", n_boot=200)}
    assert rows["m"]["acc_user"] == pytest.approx(np.mean([0.7, 0.3]))
    # every user gains exactly 0.1, so the paired difference and its interval are 0.1
    assert rows["m"]["diff_vs_bt_global"] == pytest.approx(0.1)
    assert rows["m"]["ci_diff_vs_bt_global"] == pytest.approx((0.1, 0.1))
    assert rows["m"]["n_users_per_seed"] == [2, 1]
