"""TokenData.windows: the consecutive windows `livelm eval` reads cover every validation token once."""
import numpy as np
import pytest

from livelm.data.shards import TokenData


@pytest.mark.parametrize("block", [7, 64])
def test_windows_cover_every_token_once(char_data, block):
    data = TokenData(char_data)
    arrays = data.splits["val"]
    windows = list(data.windows("val", block))
    assert all(x.shape == y.shape and x.shape[0] == 1 and 1 <= x.shape[1] <= block for x, y in windows)
    # each window's targets are its inputs shifted by one
    assert all(np.array_equal(x[0, 1:].numpy(), y[0, :-1].numpy()) for x, y in windows)
    # concatenated per shard, the targets are the shard's tokens after the first: each predicted once
    targets = np.concatenate([y[0].numpy() for _, y in windows])
    expected = np.concatenate([np.asarray(a[1:], dtype=np.int64) for a in arrays])
    assert np.array_equal(targets, expected)
    assert len(windows) == sum(-(-(a.size - 1) // block) for a in arrays)
