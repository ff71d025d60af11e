"""Stand-in for npu_bridge.estimator.npu.npu_loss_scale_manager (tf.contrib's managers with the NPU overrides)."""
import tensorflow as tf

from npu_bridge.stub_log import record

v1 = tf.compat.v1

_FLOAT32_MAX = 3.4e38


class FixedLossScaleManager(object):
    """A constant scale; with enable_overflow_check the optimizer still skips non-finite updates."""

    def __init__(self, loss_scale, enable_overflow_check=True):
        record("FixedLossScaleManager", loss_scale=loss_scale, enable_overflow_check=enable_overflow_check)
        if loss_scale < 1:
            raise ValueError("loss scale must be at least 1.")
        self._loss_scale = float(loss_scale)
        self._enable_overflow_check = enable_overflow_check

    def get_enable_overflow_check(self):
        return self._enable_overflow_check

    def get_loss_scale(self):
        return tf.constant(self._loss_scale, dtype=tf.float32)

    def update_loss_scale(self, finite_grads):
        del finite_grads
        return tf.no_op()


class ExponentialUpdateLossScaleManager(object):
    """Scale x incr_ratio after incr_every_n_steps finite steps, x decr_ratio (floor 1) after
    decr_every_n_nan_or_inf consecutive overflows; state in the variables loss_scale/good_steps/bad_steps."""

    def __init__(self, init_loss_scale, incr_every_n_steps, decr_every_n_nan_or_inf=2, incr_ratio=2,
                 decr_ratio=0.8):
        record("ExponentialUpdateLossScaleManager", init_loss_scale=init_loss_scale,
               incr_every_n_steps=incr_every_n_steps, decr_every_n_nan_or_inf=decr_every_n_nan_or_inf,
               incr_ratio=incr_ratio, decr_ratio=decr_ratio)
        self._incr_every_n_steps = incr_every_n_steps
        self._decr_every_n_nan_or_inf = decr_every_n_nan_or_inf
        self._incr_ratio = float(incr_ratio)
        self._decr_ratio = float(decr_ratio)
        self._loss_scale = v1.Variable(float(init_loss_scale), name="loss_scale", dtype=tf.float32,
                                       trainable=False, use_resource=True)
        self._good_steps = v1.Variable(0, name="good_steps", dtype=tf.int32, trainable=False, use_resource=True)
        self._bad_steps = v1.Variable(0, name="bad_steps", dtype=tf.int32, trainable=False, use_resource=True)

    def get_loss_scale(self):
        return self._loss_scale

    def update_loss_scale(self, finite_grads):
        scale = self._loss_scale.read_value()
        good = tf.where(finite_grads, self._good_steps.read_value() + 1, 0)
        bad = tf.where(finite_grads, 0, self._bad_steps.read_value() + 1)
        grow = tf.logical_and(finite_grads, good >= self._incr_every_n_steps)
        shrink = tf.logical_and(tf.logical_not(finite_grads), bad >= self._decr_every_n_nan_or_inf)
        grown = tf.minimum(scale * self._incr_ratio, _FLOAT32_MAX / self._incr_ratio)  # NPU cap, no is_finite
        shrunk = tf.maximum(1.0, scale * self._decr_ratio)
        new_scale = tf.where(grow, grown, tf.where(shrink, shrunk, scale))
        return tf.group(self._loss_scale.assign(new_scale),
                        self._good_steps.assign(tf.where(grow, 0, good)),
                        self._bad_steps.assign(tf.where(shrink, 0, bad)))
