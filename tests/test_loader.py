import numpy as np
import pytest

from gpt2kit.data.loader import TokenWindows, WindowLoader, eval_indices
from gpt2kit.data.shards import ShardError
from tests.conftest import prepare_generated

CONTEXT = 16


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, tiny_tokenizer):
    # Several small shards, so windows come from different files.
    root = tmp_path_factory.mktemp("loader")
    return prepare_generated(root, tiny_tokenizer, files=30, words=40, shard_tokens=1500, batch_bytes=800)


def test_windows_cover_each_shard_without_overlap(data_dir):
    windows = TokenWindows(data_dir, "train", CONTEXT)
    assert len(windows.shards) > 2
    assert len(windows) == sum((len(s) - 1) // CONTEXT for s in windows.shards)
    first, second = windows.window(0), windows.window(1)
    assert len(first) == CONTEXT + 1 and first[-1] == second[0]  # the last target is the next window's first input
    x, y = windows.batch([0, 5])
    assert x.shape == y.shape == (2, CONTEXT) and x.dtype.is_floating_point is False
    assert np.array_equal(y[0].numpy(), first[1:].astype(np.int64))
    with pytest.raises(IndexError):
        windows.window(len(windows))


def test_an_epoch_visits_every_window_once_then_reshuffles(data_dir):
    windows = TokenWindows(data_dir, "train", CONTEXT)
    per_step = 4
    loader = WindowLoader(windows, per_step, seed=7)
    steps = len(windows) // per_step
    seen = np.concatenate([loader.next_indices() for _ in range(steps)])
    assert len(set(seen.tolist())) == len(seen) == steps * per_step  # without replacement
    assert loader.epoch == 0
    second_epoch = loader.next_indices()
    assert loader.epoch == 1 and loader.cursor == per_step
    assert not np.array_equal(second_epoch, seen[:per_step])
    other_seed = WindowLoader(windows, per_step, seed=8)
    assert not np.array_equal(other_seed.next_indices(), seen[:per_step])


def test_ranks_get_disjoint_windows_whose_union_is_the_single_rank_step(data_dir):
    windows = TokenWindows(data_dir, "train", CONTEXT)
    single = WindowLoader(windows, 8, seed=3)
    ranks = [WindowLoader(windows, 8, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):
        whole = single.next_indices()
        parts = [loader.next_indices() for loader in ranks]
        assert not set(parts[0]) & set(parts[1])
        assert np.array_equal(np.concatenate(parts), whole)
    with pytest.raises(ShardError, match="cannot be split over 3 ranks"):
        WindowLoader(windows, 8, seed=3, world_size=3)


def test_state_round_trip_continues_the_same_sequence(data_dir):
    windows = TokenWindows(data_dir, "train", CONTEXT)
    loader = WindowLoader(windows, 6, seed=11)
    for _ in range(len(windows) // 6 - 1):  # stop just before an epoch boundary
        loader.next_indices()
    state = loader.state_dict()
    expected = [loader.next_indices() for _ in range(4)]
    restored = WindowLoader(windows, 6, seed=11)
    restored.load_state_dict(state)
    assert all(np.array_equal(a, b) for a, b in zip(expected, (restored.next_indices() for _ in range(4)), strict=True))
    assert restored.epoch == 1
    with pytest.raises(ShardError, match="windows_per_step was 6, now 4"):
        WindowLoader(windows, 4, seed=11).load_state_dict(state)


def test_too_little_data_and_eval_indices(data_dir):
    windows = TokenWindows(data_dir, "val", CONTEXT)
    with pytest.raises(ShardError, match="the val split has .* windows .* one step needs"):
        WindowLoader(windows, len(windows) + 1, seed=0)
    assert eval_indices(10, 5).tolist() == [0, 2, 4, 6, 8]  # spread over the whole split
    assert eval_indices(10, 4, rank=1, world_size=2).tolist() == [2, 7]
    assert eval_indices(3, 6).tolist() == [0, 1, 2]
    assert eval_indices(10, 5, rank=0, world_size=2).tolist() == [0, 5]  # equal counts on every rank
