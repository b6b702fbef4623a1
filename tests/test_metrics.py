import numpy as np
import pytest

from personal_rm.metrics import summarize


def test_user_and_sample_means_differ_as_they_should():
    users = np.array(["heavy"] * 8 + ["light"] * 2, dtype=object)
    margins = np.array([1.0] * 8 + [-1.0, 1.0])
    summary = summarize(users, margins, n_boot=200)
    assert summary.acc_sample == pytest.approx(0.9)
    assert summary.acc_user == pytest.approx(0.75)
    assert summary.worst10_user == pytest.approx(0.5)
    assert summary.n_users == 2 and summary.n_pairs == 10


def test_ties_and_nan_count_as_wrong_never_dropped():
    users = np.array(["u"] * 4, dtype=object)
    summary = summarize(users, np.array([1.0, 0.0, np.nan, 2.0]), n_boot=10)
    assert summary.acc_sample == pytest.approx(0.5)
    assert summary.n_pairs == 4


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_users():
    rng = np.random.default_rng(0)

    def interval_width(n_users):
        users = np.repeat([f"u{i}" for i in range(n_users)], 10).astype(object)
        margins = rng.normal(0.3, 1.0, len(users))
        s = summarize(users, margins, n_boot=500)
        assert s.ci_user[0] <= s.acc_user <= s.ci_user[1]
        return s.ci_user[1] - s.ci_user[0]

    assert interval_width(400) < interval_width(20)
