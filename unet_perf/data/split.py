"""Train/validation split of whole slices from the --val_split flag (slices are never mixed between sides)."""
import re

import numpy as np

from unet_perf.errors import UserError

_FOLD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def split_indices(n, val_split, seed=0):
    """(train_idx, val_idx) as sorted int64 arrays over range(n).

    val_split: "" -> every slice trains, val is empty; "20,21,22,23", "20-23" or "0,5-7" -> those slices are held
    out; "k/i" -> fold i of k: a permutation of range(n) seeded by `seed`, cut into k near-equal contiguous chunks,
    chunk i held out (each slice is in exactly one fold's validation set).
    """
    text = (val_split or "").strip()
    everything = np.arange(n, dtype=np.int64)
    if not text:
        return everything, np.zeros((0,), np.int64)
    fold = _FOLD.match(text)
    held_out = _fold(n, int(fold.group(1)), int(fold.group(2)), seed) if fold else _explicit(n, text)
    if len(held_out) >= n:
        raise UserError("--val_split {} holds out all {} slices; leave some for training".format(val_split, n))
    train = np.setdiff1d(everything, held_out)
    return train, np.sort(held_out).astype(np.int64)


def _fold(n, k, i, seed):
    if not 0 <= i < k:
        raise UserError("--val_split {}/{}: the fold index must be in 0..{}".format(k, i, k - 1))
    if k < 2 or k > n:
        raise UserError("--val_split {}/{}: the fold count must be in 2..{} (the number of slices)".format(k, i, n))
    order = np.random.RandomState(seed).permutation(n)
    return np.array_split(order, k)[i].astype(np.int64)


def _explicit(n, text):
    chosen = []
    for token in text.split(","):
        token = token.strip()
        match = _RANGE.match(token)
        if not match:
            raise UserError("--val_split {!r}: cannot read {!r}; use indices '20,21', ranges '20-23' or a fold "
                            "'k/i'".format(text, token))
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise UserError("--val_split {!r}: range {} goes backwards; write {}-{}".format(text, token, last, first))
        chosen.extend(range(first, last + 1))
    outside = [index for index in chosen if index >= n]
    if outside:
        raise UserError("--val_split {!r}: slice {} is out of range; there are {} slices (0..{})".format(
            text, outside[0], n, n - 1))
    if len(set(chosen)) != len(chosen):
        repeated = sorted(index for index in set(chosen) if chosen.count(index) > 1)
        raise UserError("--val_split {!r}: slice {} is listed twice; list each slice once".format(text, repeated[0]))
    return np.array(chosen, np.int64)
