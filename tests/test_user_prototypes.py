"""Prototypes at scale (`actors.user_prototypes`): a sample fit plus a Ray Data assignment pass
gives every user exactly one prototype, its nearest, with the centroids of a full fit."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.optimize import linear_sum_assignment

from actors.user_prototypes import build_member_index, load_centroids, members
from personal_rm.pgenrm.prototypes import PrototypeConfig, PrototypeIndex, nearest

from synthetic_users import taste_vectors

pytestmark = pytest.mark.ray
USERS, DIM, K, SHARD = 6000, 16, 4, 1500


@pytest.fixture
def shards(tmp_path):
    """User vectors as a user would bring them: Parquet shards of {user, vector: list<float>}."""
    folder = tmp_path / "users"
    folder.mkdir()
    everyone = []
    for start in range(0, USERS, SHARD):
        ids = np.arange(start, start + SHARD)
        _, vectors = taste_vectors(ids, DIM, K, spread=0.5)
        users = pa.array([f"u{i}" for i in ids])
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM)
        pq.write_table(pa.table({"user": users, "vector": column}), folder / f"{start}.parquet")
        everyone.append(vectors)
    return folder, np.concatenate(everyone)


def test_a_sample_fit_assigns_every_user_once_to_its_nearest_prototype(
    ray_session, shards, tmp_path
):
    folder, everyone = shards
    users = ray_session.data.read_parquet(str(folder))
    out = tmp_path / "index"
    centroids = build_member_index(users, PrototypeConfig(k=K), sample=1500, out=out)
    np.testing.assert_array_equal(load_centroids(out), centroids)

    seen = []
    for p in range(K):
        ids, vectors = members(out, p)
        assert len(ids) and (nearest(vectors, centroids) == p).all()
        np.testing.assert_array_equal(vectors, everyone[[int(u[1:]) for u in ids]])
        seen += list(ids)
    assert sorted(seen) == sorted(f"u{i}" for i in range(USERS))

    full = PrototypeIndex.fit(np.arange(USERS), everyone, PrototypeConfig(k=K)).centroids
    rows, cols = linear_sum_assignment(-(centroids @ full.T))
    assert (centroids[rows] * full[cols]).sum(1).min() > 0.99  # the same clusters
