"""The optimizer factory shared by the host and NPU backends (Adam by default, like the seed's code)."""
from unet_perf.compat import v1
from unet_perf.errors import UserError


def make_optimizer(cfg):
    """tf.compat.v1.train.AdamOptimizer(lr) or MomentumOptimizer(lr, momentum) from cfg.optimizer."""
    if cfg.optimizer == "adam":
        return v1.train.AdamOptimizer(cfg.learning_rate)
    if cfg.optimizer == "momentum":
        return v1.train.MomentumOptimizer(cfg.learning_rate, cfg.momentum)
    raise UserError("--optimizer must be adam or momentum, got {!r}".format(cfg.optimizer))
