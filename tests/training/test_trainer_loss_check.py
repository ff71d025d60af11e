"""The trainer asks the backend, not the config, whether a non-finite loss is fatal.

On the NPU, precision_mode=allow_mix_precision means dynamic loss scaling even with --precision fp32: the NPU
optimizer skips an overflowing step, so training must go on. Without loss scaling the weights are broken: stop.
"""
import pytest

from unet_perf.backends.host import HostBackend
from unet_perf.config import Config
from unet_perf.errors import UserError
from unet_perf.training.run import LossGuard

from support import npu_backend

NAN_VALUES = {"loss": float("nan"), "mean_loss": float("nan")}


def _check(backend, cfg, values, step):
    LossGuard(backend, cfg).check(values, step, last_good=lambda: "the last good checkpoint is none")


def test_npu_mixed_precision_skips_a_non_finite_step_instead_of_stopping(npu):
    cfg = Config(precision="fp32", precision_mode="allow_mix_precision", loss_scale="auto")
    # The host rule would call this "no loss scaling" (fp32) and stop; the NPU backend knows better.
    assert cfg.loss_scale_kind()[0] == "none"
    _check(npu_backend(), cfg, NAN_VALUES, step=10)


@pytest.mark.parametrize("overrides", [
    {"precision_mode": "force_fp32", "loss_scale": "auto"},
    {"precision_mode": "allow_mix_precision", "loss_scale": "none"},
])
def test_npu_without_loss_scaling_stops_on_a_non_finite_loss(npu, overrides):
    cfg = Config(precision="fp32", **overrides)
    with pytest.raises(UserError, match="the loss became nan by step 10"):
        _check(npu_backend(), cfg, NAN_VALUES, step=10)


def test_host_follows_precision():
    fp32 = Config(precision="fp32", loss_scale="auto")
    with pytest.raises(UserError, match="no loss scaling"):
        _check(HostBackend(), fp32, NAN_VALUES, step=3)
    _check(HostBackend(), Config(precision="fp16", loss_scale="auto"), NAN_VALUES, step=3)
    _check(HostBackend(), fp32, {"loss": 0.5, "mean_loss": 0.4}, step=3)
