"""`actors.train_shards`: every epoch is the planned number of batches, each row once."""

import math

import pytest

from actors.train_shards import epoch_batches

pytestmark = pytest.mark.ray


@pytest.mark.parametrize("rows, batch, shuffle", [(1000, 16, 256), (1000, 7, 0), (37, 8, 256)])
def test_an_epoch_is_whole_batches_then_the_rest_each_row_once(ray_session, rows, batch, shuffle):
    shard = ray_session.data.range(rows, override_num_blocks=5).iterator()
    epochs = [
        list(epoch_batches(shard, batch, shuffle_rows=shuffle, seed=3, epoch=e)) for e in (0, 1)
    ]
    for batches in epochs:
        assert len(batches) == math.ceil(rows / batch)
        assert all(len(b) == batch for b in batches[:-1])
        assert sorted(r["id"] for b in batches for r in b) == list(range(rows))
    order = [[r["id"] for b in batches for r in b] for batches in epochs]
    assert (order[0] != order[1]) == bool(shuffle)  # a new shuffle every epoch, or shard order
