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


class LegacyFixedLossScaleManager(object):
    """FixedLossScaleManager as adapters before mid-2021 define it: no enable_overflow_check parameter and no
    get_enable_overflow_check (the optimizer always checks). Tests swap it in for FixedLossScaleManager."""

    def __init__(self, loss_scale):
        record("FixedLossScaleManager", loss_scale=loss_scale)
        if loss_scale < 1:
            raise ValueError("loss scale must be at least 1.")
        self._loss_scale = float(loss_scale)

    def get_loss_scale(self):
        return tf.constant(self._loss_scale, dtype=tf.float32)

    def update_loss_scale(self, finite_grads):
        del finite_grads
        return tf.no_op()


class ExponentialUpdateLossScaleManager(object):
    """TF 1.15 contrib semantics with the NPU cap; state in the variables loss_scale/good_steps/bad_steps.

    - a finite step adds one to good_steps (bad_steps is kept); an overflowing step adds one to bad_steps and
      zeroes good_steps. So overflows are counted since the last scale change, not consecutively.
    - when good_steps would reach incr_every_n_steps the scale grows by incr_ratio, unless that would pass
      3.4e38 (then it stays as it is); when bad_steps would reach decr_every_n_nan_or_inf it becomes
      max(1, scale * decr_ratio). Either event zeroes both counters, also when the value could not move.
    """

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
        good = self._good_steps.read_value()
        bad = self._bad_steps.read_value()
        overflow = tf.logical_not(finite_grads)
        grow_due = tf.logical_and(finite_grads, good + 1 >= self._incr_every_n_steps)
        shrink_due = tf.logical_and(overflow, bad + 1 >= self._decr_every_n_nan_or_inf)
        can_grow = scale < _FLOAT32_MAX / self._incr_ratio  # the NPU override: no is_finite check
        grown = tf.where(can_grow, scale * self._incr_ratio, scale)
        shrunk = tf.maximum(1.0, scale * self._decr_ratio)
        new_scale = tf.where(grow_due, grown, tf.where(shrink_due, shrunk, scale))
        changed_event = tf.logical_or(grow_due, shrink_due)
        zero = tf.constant(0, tf.int32)
        new_good = tf.where(tf.logical_or(changed_event, overflow), zero, good + 1)
        new_bad = tf.where(changed_event, zero, tf.where(overflow, bad + 1, bad))
        return tf.group(self._loss_scale.assign(new_scale), self._good_steps.assign(new_good),
                        self._bad_steps.assign(new_bad))
