"""data.split: explicit and k-fold validation splits of whole slices, with --val_split errors."""
import numpy as np
import pytest

from unet_perf.data.split import split_indices
from unet_perf.errors import UserError


def test_empty_means_everything_trains():
    train, val = split_indices(5, "")
    np.testing.assert_array_equal(train, np.arange(5))
    assert val.shape == (0,) and val.dtype == np.int64


@pytest.mark.parametrize("text,expected", [
    ("20,21,22,23", [20, 21, 22, 23]), ("20-23", [20, 21, 22, 23]), ("0, 5-7", [0, 5, 6, 7]), ("3", [3]),
    ("7-7,1", [1, 7]),
])
def test_explicit_indices(text, expected):
    train, val = split_indices(24, text)
    assert val.tolist() == expected
    assert sorted(train.tolist() + val.tolist()) == list(range(24))


@pytest.mark.parametrize("n,k", [(24, 6), (30, 5), (10, 3), (7, 7)])
def test_folds_partition_the_slices(n, k):
    vals = [split_indices(n, "{}/{}".format(k, i), seed=3)[1] for i in range(k)]
    joined = np.concatenate(vals)
    assert sorted(joined.tolist()) == list(range(n))  # every slice in exactly one validation fold
    sizes = [len(v) for v in vals]
    assert max(sizes) - min(sizes) <= 1
    for i in range(k):
        train, val = split_indices(n, "{}/{}".format(k, i), seed=3)
        assert not set(train.tolist()) & set(val.tolist())
        assert len(train) + len(val) == n


def test_folds_are_seeded():
    assert split_indices(24, "4/1", seed=0)[1].tolist() == split_indices(24, "4/1", seed=0)[1].tolist()
    folds_a = [split_indices(24, "4/{}".format(i), seed=0)[1].tolist() for i in range(4)]
    folds_b = [split_indices(24, "4/{}".format(i), seed=1)[1].tolist() for i in range(4)]
    assert folds_a != folds_b
    assert folds_a[0] != list(range(6))  # a shuffled, not a contiguous, selection


@pytest.mark.parametrize("text,fragment", [
    ("24", "out of range"), ("20-30", "out of range"), ("1,2,2", "listed twice"), ("1-3,3", "listed twice"),
    ("0-23", "holds out all"), ("5-3", "backwards"), ("a,b", "cannot read"), ("-1", "cannot read"),
    ("1/0", "fold count"), ("25/0", "fold count"), ("4/4", "fold index"), ("1,,2", "cannot read"),
])
def test_errors_name_the_flag(text, fragment):
    with pytest.raises(UserError) as info:
        split_indices(24, text)
    assert "--val_split" in str(info.value) and fragment in str(info.value)
