"""Compute-dtype policy and in-graph loss scaling for the host backend.

The loss scaler keeps its state in non-trainable variables (so it checkpoints and resumes) and is built from plain
ops plus one cond, so a step built with it can run inside the host K-step while_loop:

    scaler = LossScaler.from_config(cfg)                # outside any loop: creates the state variables
    train_op, overflow = scaler.minimize(optimizer, loss, var_list, global_step)   # inside the step

Dynamic scaling: scale starts at `init`, doubles after `growth_interval` consecutive finite steps and halves (floor
1) on a step whose gradients are not all finite; such a step skips the optimizer update entirely (weights and
optimizer slots untouched). Fixed scaling also skips non-finite steps but never changes the scale. With kind
"none" there is no check and no skip (the trainer stops on a non-finite fp32 loss). The global step advances on
every step, skipped or not, so step counts, checkpoints and K-step loops stay aligned with the data.
"""
import tensorflow as tf

from unet_perf.compat import v1
from unet_perf.errors import UserError

_DTYPES = {"fp32": tf.float32, "fp16": tf.float16, "bf16": tf.bfloat16}
# Doubling forever would reach float32 infinity (2^128); no float16 gradient survives a scale anywhere near this.
MAX_LOSS_SCALE = 2.0 ** 64


def compute_dtype(precision):
    """tf.float32 / tf.float16 / tf.bfloat16 for "fp32" / "fp16" / "bf16"."""
    try:
        return _DTYPES[precision]
    except KeyError:
        raise UserError("--precision must be one of {}, got {!r}".format("|".join(sorted(_DTYPES)), precision))


def all_finite(grads):
    """Scalar bool: every element of every gradient is finite (one reduction per gradient, then one add)."""
    sums = [tf.reduce_sum(tf.cast(g, tf.float32)) for g in grads if g is not None]
    return tf.math.is_finite(tf.add_n(sums))  # inf + -inf and anything + nan stay non-finite


class LossScaler(object):
    """In-graph loss scaling; kind in ("none", "fixed", "dynamic"). Create outside loops, call minimize inside."""

    def __init__(self, kind="none", init=2.0 ** 15, growth_interval=2000, scope="loss_scale"):
        if kind not in ("none", "fixed", "dynamic"):
            raise ValueError("loss scale kind must be none, fixed or dynamic, got {!r}".format(kind))
        self.kind = kind
        self.growth_interval = int(growth_interval)
        init = 1.0 if kind == "none" else float(init)
        with v1.variable_scope(scope, reuse=v1.AUTO_REUSE):
            self.scale_var = _state("loss_scale", tf.float32, init)
            self.good_steps_var = _state("good_steps", tf.int64, 0)
            self.skipped_steps_var = _state("skipped_steps", tf.int64, 0)
            self.scale_changes_var = _state("scale_changes", tf.int64, 0)

    @classmethod
    def from_config(cls, cfg):
        kind, fixed_value = cfg.loss_scale_kind()
        init = fixed_value if kind == "fixed" else cfg.loss_scale_init
        return cls(kind, init, cfg.loss_scale_growth_interval)

    def state(self):
        """Current values (read now): loss_scale float32, skipped_steps int64, scale_changes int64."""
        return {"loss_scale": self.scale_var.read_value(),
                "skipped_steps": self.skipped_steps_var.read_value(),
                "scale_changes": self.scale_changes_var.read_value()}

    def minimize(self, optimizer, loss, var_list, global_step, reduce_gradients=None):
        """(train_op, overflow) for one step: scaled gradients, finite check, conditional update, state update.

        `global_step` is advanced by one on every step (also on skipped ones). `overflow` is a bool scalar, True when
        the update was skipped. `reduce_gradients` (list -> list, e.g. the mean over workers) is applied to the
        unscaled gradients before the finite check: one worker's inf or nan reaches every worker's reduced
        gradients, so all workers skip the same step and move the scale identically.
        """
        loss = tf.cast(loss, tf.float32)
        reduce_gradients = reduce_gradients or (lambda grads: grads)
        if self.kind == "none":
            grads = reduce_gradients(v1.gradients(loss, var_list))
            apply_op = optimizer.apply_gradients(_pairs(grads, var_list))
            with tf.control_dependencies([apply_op]):
                step_op = global_step.assign_add(1)
            return tf.group(apply_op, step_op), tf.constant(False)

        scale = self.scale_var.read_value()
        scaled_grads = v1.gradients(loss * scale, var_list)
        inverse = 1.0 / scale
        grads = reduce_gradients([None if g is None else g * tf.cast(inverse, g.dtype) for g in scaled_grads])
        finite = all_finite(grads)

        def apply_update():
            with tf.control_dependencies([optimizer.apply_gradients(_pairs(grads, var_list))]):
                return tf.constant(True)

        applied = v1.cond(finite, apply_update, lambda: tf.constant(False))
        state_ops = self._update_state(scale, finite)
        with tf.control_dependencies([applied] + state_ops):
            step_op = global_step.assign_add(1)
        return tf.group(applied, step_op, *state_ops), tf.logical_not(finite)

    def _update_state(self, scale, finite):
        skipped = tf.cast(tf.logical_not(finite), tf.int64)
        if self.kind == "fixed":
            return [self.skipped_steps_var.assign_add(skipped)]
        good = self.good_steps_var.read_value()
        good_after = v1.where(finite, good + 1, tf.zeros_like(good))
        grow = tf.logical_and(finite, good_after >= self.growth_interval)
        grown = tf.minimum(scale * 2.0, MAX_LOSS_SCALE)
        shrunk = tf.maximum(scale * 0.5, 1.0)
        new_scale = v1.where(grow, grown, v1.where(finite, scale, shrunk))
        changed = tf.cast(tf.not_equal(new_scale, scale), tf.int64)
        return [
            self.scale_var.assign(new_scale),
            self.good_steps_var.assign(v1.where(grow, tf.zeros_like(good_after), good_after)),
            self.skipped_steps_var.assign_add(skipped),
            self.scale_changes_var.assign_add(changed),
        ]


def _state(name, dtype, value):
    return v1.get_variable(name, [], dtype, v1.constant_initializer(value), trainable=False, use_resource=True)


def _pairs(grads, var_list):
    return [(g, v) for g, v in zip(grads, var_list) if g is not None]
