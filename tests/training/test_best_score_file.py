"""The best validation score in best/metrics.json: kept across runs and replaced only by a better one; a damaged file
is a one-line error naming it, never a silent reset (that would let a worse checkpoint overwrite best/)."""
import os

import pytest

from unet_perf.errors import UserError
from unet_perf.storage.run_dir import BEST_METRICS
from unet_perf.training.checkpointing import RunCheckpoints


class _Writer(object):
    def __init__(self, directory):
        self.directory = directory


@pytest.mark.parametrize("content", ["{not json", '{"dice": 0.5}', '{"v_rand": "high"}'])
def test_unreadable_best_score_is_an_error_not_a_reset(tmp_path, content):
    best = tmp_path / "best"
    best.mkdir()
    (best / BEST_METRICS).write_text(content)
    with pytest.raises(UserError) as err:
        RunCheckpoints(_Writer(str(tmp_path)), _Writer(str(best)))
    message = str(err.value)
    assert os.path.join(str(best), BEST_METRICS) in message and "delete" in message and "\n" not in message


def test_best_score_survives_and_only_a_better_one_replaces_it(tmp_path):
    best = tmp_path / "best"
    best.mkdir()
    (best / BEST_METRICS).write_text('{"v_rand": 0.9, "step": 100}')
    saved = RunCheckpoints(_Writer(str(tmp_path)), _Writer(str(best)))
    assert saved.best_score == 0.9
    assert saved.offer_best(sess=None, step=200, metrics={"v_rand": 0.85}) is False
    assert saved.best_score == 0.9
    fresh = RunCheckpoints(_Writer(str(tmp_path)), _Writer(str(tmp_path / "missing")))
    assert fresh.best_score is None
