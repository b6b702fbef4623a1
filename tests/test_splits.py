import numpy as np

from personal_rm.data.splits import k_shot, user_protocol_split


def users_column(counts):
    return np.array([f"u{i}" for i, n in enumerate(counts) for _ in range(n)], dtype=object)


def test_user_split_is_deterministic_and_partitions_users_and_rows():
    ids = users_column([10, 3, 1, 20, 7, 8, 9, 12, 2, 5])
    a = user_protocol_split(ids, unseen_fraction=0.4, validation_fraction=0.1, seed=3)
    b = user_protocol_split(ids, unseen_fraction=0.4, validation_fraction=0.1, seed=3)
    assert a.unseen_users == b.unseen_users and np.array_equal(a.test, b.test)
    groups = [set(a.seen_users), set(a.validation_users), set(a.unseen_users)]
    assert sum(map(len, groups)) == 9  # u2 has one comparison: no train/test split possible
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert not set(a.train) & set(a.test)
    assert len(a.train) + len(a.test) == len(ids) - 1
    for user in a.unseen_users:  # every user keeps at least one row on each side
        assert (ids[a.train] == user).any() and (ids[a.test] == user).any()
    other = user_protocol_split(ids, unseen_fraction=0.4, validation_fraction=0.1, seed=4)
    assert other.unseen_users != a.unseen_users or not np.array_equal(other.test, a.test)


def test_k_shot_supports_are_nested_and_filter_short_users():
    ids = users_column([20, 6, 12])
    pool = np.arange(len(ids))
    users = ["u0", "u1", "u2"]
    four, eligible4 = k_shot(ids, pool, users, 4, seed=0)
    eight, eligible8 = k_shot(ids, pool, users, 8, seed=0)
    assert eligible4 == users and eligible8 == ["u0", "u2"]
    assert set(four[ids[four] != "u1"]) <= set(eight)
    assert all((ids[four] == u).sum() == 4 for u in users)
    zero, eligible0 = k_shot(ids, pool, users, 0)
    assert len(zero) == 0 and eligible0 == users
    everything, _ = k_shot(ids, pool, users, "all")
    assert np.array_equal(everything, pool)


def test_a_k_with_no_eligible_user_is_an_empty_row_not_a_crash():
    from personal_rm.features import PairSet

    ids = users_column([3, 3])
    support, users = k_shot(ids, np.arange(len(ids)), ["u0", "u1"], 8)
    assert users == [] and len(support) == 0
    assert PairSet.empty(4).rows_by_user() == {}
