"""Exponential moving average (EMA) of the trainable weights, and reading it back for inference.

Training: `WeightAverage(decay)` keeps one shadow variable per trainable variable, named like TensorFlow's own
ExponentialMovingAverage (`<variable>/ExponentialMovingAverage`), and `update(variables)` returns the op that moves
every shadow towards its variable. optim.EmaOptimizer runs that op right after each applied update, so it lives
inside the step (host K-step loop, NPU device loop) and a skipped overflow step skips it too. The effective decay is
min(decay, (1 + step) / (10 + step)): early shadows follow the weights instead of remembering the random init.

Inference:
- `reading_average(cfg)`: a variable scope under which the U-Net built in a training graph reads the shadows (the
  trainer's validator and probe, so validation and best/ judge the averaged weights);
- `restore_map(variables, prefix, weights)`: a Saver var_list that loads a checkpoint's shadows into the model's
  variables of an inference graph (predict, evaluate, export).
"""
import contextlib

import tensorflow as tf

from unet_perf.compat import v1
from unet_perf.config import WEIGHT_CHOICES
from unet_perf.errors import UserError

SUFFIX = "/ExponentialMovingAverage"


def shadow_name(variable_name):
    """Checkpoint / graph name of the shadow of the variable named `variable_name` (no ':0')."""
    return variable_name + SUFFIX


class WeightAverage(object):
    """Shadow variables and their in-step update; create it outside loops, call update() inside the step."""

    def __init__(self, decay):
        if not 0.0 < decay < 1.0:
            raise ValueError("EMA decay must be in (0, 1), got {}".format(decay))
        self.decay = float(decay)
        self.shadows = {}

    def _shadow(self, variable):
        if variable not in self.shadows:
            # Model variables are created inside the training loop body; their shadows must live outside it.
            with v1.init_scope():
                self.shadows[variable] = v1.get_variable(
                    shadow_name(variable.op.name), variable.shape, variable.dtype.base_dtype,
                    initializer=_copy_of(variable), trainable=False, use_resource=True)
        return self.shadows[variable]

    def update(self, variables, step):
        """One op: shadow <- shadow - (1 - d) * (shadow - variable) for every variable; d from `step` (int)."""
        variables = list(variables)
        shadows = [self._shadow(variable) for variable in variables]
        step = tf.cast(step, tf.float32)
        decay = tf.minimum(self.decay, (1.0 + step) / (10.0 + step))
        rate = 1.0 - decay
        updates = []
        for variable, shadow in zip(variables, shadows):
            value = _read(variable)
            updates.append(v1.assign_sub(shadow, (shadow.read_value() - value) * rate))
        return tf.group(*updates, name="ema_update")


def _copy_of(variable):
    def initial_value(*unused_args, **unused_kwargs):
        return variable.initial_value
    return initial_value


def _read(variable):
    # Resource variables order their reads by control dependencies; a ref variable needs an explicit identity.
    return variable.read_value() if hasattr(variable, "read_value") else v1.identity(variable)


def use_average(cfg):
    """True when inference in the training graph should read the shadows (--ema > 0 and --weights ema)."""
    return cfg.ema > 0 and cfg.weights == "ema"


@contextlib.contextmanager
def reading_average(cfg):
    """Variable scope under which get_variable returns the shadow of an existing trainable variable.

    A no-op unless use_average(cfg). Build the inference graph inside it, after the training step exists.
    """
    if not use_average(cfg):
        yield
        return
    by_name = dict((var.op.name, var) for var in v1.global_variables())

    def getter(getter, *args, **kwargs):  # TensorFlow passes the next getter as the keyword `getter`
        variable = getter(*args, **kwargs)
        name = kwargs["name"] if "name" in kwargs else args[0]
        if kwargs.get("trainable") is False:
            return variable  # batch-norm moving statistics are averages already
        shadow = by_name.get(shadow_name(name))
        if shadow is None:
            raise ValueError("--ema is on but {} has no shadow variable; build the training step first".format(
                name))
        return shadow

    with v1.variable_scope(v1.get_variable_scope(), custom_getter=getter):
        yield


def restore_map(variables, prefix, weights="ema", names=None):
    """(var_list for v1.train.Saver, used_ema): what to restore `variables` (an inference graph's) from.

    weights "ema": a trainable variable is loaded from its shadow when the checkpoint has shadows (used_ema True),
    else from itself; "raw": every variable from itself. A checkpoint with some shadows missing is a UserError.
    names: the checkpoint's variable names when the caller has read them already (else read from `prefix`).
    """
    if weights not in WEIGHT_CHOICES:
        raise UserError("--weights must be ema or raw, got {!r}".format(weights))
    if names is None:
        names = set(name for name, _ in v1.train.list_variables(prefix))
    has_average = any(name.endswith(SUFFIX) for name in names)
    trainable = set(var.op.name for var in v1.trainable_variables())
    var_list = {}
    for variable in variables:
        name = variable.op.name
        if weights == "ema" and has_average and name in trainable:
            if shadow_name(name) not in names:
                raise UserError("checkpoint {} has EMA weights but none for {}; pass --weights raw".format(
                    prefix, name))
            var_list[shadow_name(name)] = variable
        else:
            var_list[name] = variable
    return var_list, weights == "ema" and has_average
