"""Fallbacks that used to be silent now say so: the augmentation path, an unreadable best score."""
import os

import pytest

from unet_perf import compat
from unet_perf.input import augment
from unet_perf.config import Config
from unet_perf.errors import UserError
from unet_perf.storage.run_dir import BEST_METRICS
from unet_perf.training.checkpointing import RunCheckpoints


class _Writer(object):
    def __init__(self, directory):
        self.directory = directory


def test_engine_description_names_the_reason_xla_is_off(monkeypatch):
    assert augment.describe_engine(Config(xla_augment="off")) == "graph"
    assert augment.describe_engine(Config(augment_engine="opencv")) == "opencv"
    monkeypatch.setattr(compat, "_XLA_JIT_STATUS", [(False, "InvalidArgumentError: no XLA kernels")])
    assert augment.describe_engine(Config(xla_augment="auto")) == \
        "opencv (XLA unavailable: InvalidArgumentError: no XLA kernels)"
    monkeypatch.setattr(compat, "_XLA_JIT_STATUS", [(True, "")])
    assert augment.describe_engine(Config(xla_augment="auto")) == "xla"


def test_xla_probe_reports_why_it_failed(monkeypatch):
    def broken(fn):
        raise RuntimeError("XLA compilation is not supported here\nsecond line")
    monkeypatch.setattr(compat, "_XLA_JIT_STATUS", [])
    monkeypatch.setattr(compat, "xla_function", broken)
    assert compat.xla_jit_status() == (False, "RuntimeError: XLA compilation is not supported here")
    assert compat.xla_jit_available() is False


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
    assert saved.best_v_rand == 0.9
    assert saved.offer_best(sess=None, step=200, metrics={"v_rand": 0.85}) is False
    assert saved.best_v_rand == 0.9
    fresh = RunCheckpoints(_Writer(str(tmp_path)), _Writer(str(tmp_path / "missing")))
    assert fresh.best_v_rand is None
