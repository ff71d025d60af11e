"""Learning-rate schedules evaluated inside the training step.

`learning_rate(cfg)` returns the float cfg.learning_rate for the plain constant schedule (the ModelZoo graph stays
unchanged) and otherwise a callable the v1 optimizers evaluate when they apply gradients. The callable reads the
global step, so inside the host K-step while_loop (and the NPU device loop) each step sees its own rate and K steps
per Session.run still equal K single steps.

    constant:  lr
    cosine:    lr * 0.5 * (1 + cos(pi * p))          p = progress after warm-up, 0 -> 1 at --max_steps
    poly:      lr * (1 - p) ** POLY_POWER
    warm-up (any schedule): the rate above times min(1, (step + 1) / warmup_steps)
"""
import math

import tensorflow as tf

from unet_perf.compat import v1

SCHEDULES = ("constant", "cosine", "poly")
POLY_POWER = 0.9  # the DeepLab "poly" policy


def rate_at(step, base_rate, schedule, warmup_steps, total_steps):
    """The schedule's learning rate at `step` as a Python float (the reference the graph version follows)."""
    warmup = min(1.0, (step + 1.0) / warmup_steps) if warmup_steps > 0 else 1.0
    progress = min(1.0, max(0.0, (step - warmup_steps) / float(max(1, total_steps - warmup_steps))))
    if schedule == "constant":
        decay = 1.0
    elif schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "poly":
        decay = (1.0 - progress) ** POLY_POWER
    else:
        raise ValueError("unknown schedule {!r}; expected one of {}".format(schedule, SCHEDULES))
    return base_rate * warmup * decay


def scheduled_rate(step, base_rate, schedule, warmup_steps, total_steps):
    """float32 tensor: rate_at() of an integer step tensor, built from ops that exist in TF 1.15 and 2.x."""
    step = tf.cast(step, tf.float32)
    rate = tf.constant(base_rate, tf.float32)
    if warmup_steps > 0:
        rate = rate * tf.minimum(1.0, (step + 1.0) / float(warmup_steps))
    if schedule == "constant":
        return rate
    progress = tf.clip_by_value((step - float(warmup_steps)) / float(max(1, total_steps - warmup_steps)), 0.0, 1.0)
    if schedule == "cosine":
        return rate * 0.5 * (1.0 + v1.math.cos(math.pi * progress))
    if schedule == "poly":
        return rate * tf.pow(1.0 - progress, POLY_POWER)
    raise ValueError("unknown schedule {!r}; expected one of {}".format(schedule, SCHEDULES))


def learning_rate(cfg):
    """cfg.learning_rate (constant, no warm-up) or a callable reading the graph's global step at apply time."""
    if cfg.lr_schedule == "constant" and cfg.warmup_steps == 0:
        return cfg.learning_rate

    def rate():
        step = v1.train.get_or_create_global_step().read_value()
        return scheduled_rate(step, cfg.learning_rate, cfg.lr_schedule, cfg.warmup_steps, cfg.total_steps)
    return rate
