"""The optimizer factory shared by the host and NPU backends (Adam by default, like the ModelZoo U-Net).

make_optimizer(cfg) = Adam or Momentum with cfg's learning-rate schedule (unet_perf.model.schedule), wrapped in
EmaOptimizer when --ema > 0 so the weight average is updated inside every applied step.
"""
from unet_perf.model import schedule
from unet_perf.compat import v1
from unet_perf.model.ema import WeightAverage
from unet_perf.errors import UserError


def make_optimizer(cfg):
    """A tf.compat.v1.train.Optimizer: AdamOptimizer(lr) or MomentumOptimizer(lr, momentum) from cfg.optimizer,
    lr = schedule.learning_rate(cfg) (a float, or a callable of the global step); EMA-wrapped when cfg.ema > 0."""
    rate = schedule.learning_rate(cfg)
    if cfg.optimizer == "adam":
        optimizer = v1.train.AdamOptimizer(rate)
    elif cfg.optimizer == "momentum":
        optimizer = v1.train.MomentumOptimizer(rate, cfg.momentum)
    else:
        raise UserError("--optimizer must be adam or momentum, got {!r}".format(cfg.optimizer))
    if cfg.ema > 0:
        optimizer = EmaOptimizer(optimizer, WeightAverage(cfg.ema))
    return optimizer


class EmaOptimizer(v1.train.Optimizer):
    """Wraps an optimizer: apply_gradients applies the update, then moves the EMA shadows of the updated variables.

    Wrappers that skip apply_gradients on overflow (our LossScaler, the NPU loss-scale optimizer) skip the average
    too. The EMA decay follows the global step read after the update; both backends advance it after the whole
    step, so that is the index of the step being applied.
    """

    def __init__(self, optimizer, average, name="EmaOptimizer"):
        super(EmaOptimizer, self).__init__(use_locking=False, name=name)
        self._optimizer = optimizer
        self.average = average

    def compute_gradients(self, *args, **kwargs):
        return self._optimizer.compute_gradients(*args, **kwargs)

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        grads_and_vars = list(grads_and_vars)
        apply_op = self._optimizer.apply_gradients(grads_and_vars, global_step=global_step, name=name)
        with v1.control_dependencies([apply_op]):
            step = v1.train.get_or_create_global_step().read_value()
            average_op = self.average.update([var for grad, var in grads_and_vars if grad is not None], step)
        return v1.group(apply_op, average_op)

    def get_slot(self, var, name):
        return self._optimizer.get_slot(var, name)

    def get_slot_names(self):
        return self._optimizer.get_slot_names()

    def variables(self):
        return self._optimizer.variables()
