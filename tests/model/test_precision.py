"""In-graph loss scaling: skip on non-finite gradients, halve/double the scale, counters, fixed and none kinds."""
import numpy as np
import pytest
import tensorflow as tf

from unet_perf.compat import v1
from unet_perf.config import Config
from unet_perf.errors import UserError
from unet_perf.model.optim import make_optimizer
from unet_perf.model.precision import LossScaler, compute_dtype


class _Problem(object):
    """A small least-squares model whose loss is multiplied by a fed factor (inf or nan injects an overflow)."""

    def __init__(self, kind, init=8.0, interval=3, optimizer="adam"):
        self.factor = v1.placeholder_with_default(tf.constant(1.0), [])
        self.weights = v1.get_variable("w", [4, 1], tf.float32, v1.ones_initializer(), use_resource=True)
        x = tf.constant(np.arange(12, dtype=np.float32).reshape(3, 4) / 10.0)
        self.loss = tf.reduce_mean(tf.square(tf.matmul(x, self.weights) - 1.0)) * self.factor
        self.global_step = v1.train.get_or_create_global_step()
        self.scaler = LossScaler(kind, init, interval)
        self.train_op, self.overflow = self.scaler.minimize(
            make_optimizer(Config(optimizer=optimizer, learning_rate=0.1, momentum=0.9)), self.loss, [self.weights],
            self.global_step)
        self.state = self.scaler.state()
        self.sess = v1.Session()
        self.sess.run(v1.global_variables_initializer())

    def step(self, factor=1.0):
        _, overflow = self.sess.run([self.train_op, self.overflow], {self.factor: factor})
        return bool(overflow)

    def values(self):
        return self.sess.run([v1.global_variables(), self.state, self.global_step])


def test_compute_dtype():
    assert compute_dtype("fp32") == tf.float32
    assert compute_dtype("fp16") == tf.float16
    assert compute_dtype("bf16") == tf.bfloat16
    with pytest.raises(UserError, match="--precision"):
        compute_dtype("fp8")


@pytest.mark.parametrize("poison", [np.inf, np.nan])
def test_non_finite_gradient_skips_update_and_halves_scale(poison):
    problem = _Problem("dynamic", init=8.0)
    assert not problem.step()
    variables_before, state_before, _ = problem.values()
    assert problem.step(poison)
    variables_after, state, step = problem.values()
    # Every variable but the global step and the scaler state is bit-identical: weights and Adam slots.
    names = [v.name for v in v1.global_variables()]
    for name, before, after in zip(names, variables_before, variables_after):
        if not name.startswith(("global_step", "loss_scale/")):
            assert np.array_equal(before, after), name
    assert state_before["loss_scale"] == 8.0
    assert state["loss_scale"] == 4.0
    assert state["skipped_steps"] == 1
    assert state["scale_changes"] == 1
    assert step == 2  # the global step advances on skipped steps too
    assert not problem.step()
    assert not np.array_equal(problem.values()[0][names.index("w:0")], variables_after[names.index("w:0")])


def test_scale_doubles_after_growth_interval_and_overflow_resets_the_count():
    problem = _Problem("dynamic", init=8.0, interval=3)
    for _ in range(2):
        problem.step()
    assert problem.values()[1]["loss_scale"] == 8.0
    problem.step()
    assert problem.values()[1]["loss_scale"] == 16.0
    problem.step()
    problem.step()
    problem.step(np.inf)  # 16 -> 8, and the two good steps before it no longer count
    problem.step()
    problem.step()
    state = problem.values()[1]
    assert state["loss_scale"] == 8.0
    problem.step()
    state = problem.values()[1]
    assert state["loss_scale"] == 16.0
    assert state["scale_changes"] == 3
    assert state["skipped_steps"] == 1


def test_scale_never_drops_below_one():
    problem = _Problem("dynamic", init=1.0)
    assert problem.step(np.inf)
    state = problem.values()[1]
    assert state["loss_scale"] == 1.0
    assert state["scale_changes"] == 0
    assert state["skipped_steps"] == 1


def test_fixed_scale_skips_but_never_changes():
    problem = _Problem("fixed", init=128.0, interval=1)
    problem.step()
    problem.step()
    assert problem.step(np.nan)
    state = problem.values()[1]
    assert state["loss_scale"] == 128.0
    assert state["scale_changes"] == 0
    assert state["skipped_steps"] == 1


def test_none_applies_plain_gradients():
    problem = _Problem("none")
    before = problem.sess.run(problem.weights)
    assert not problem.step()
    state = problem.values()[1]
    assert state["loss_scale"] == 1.0
    assert not np.array_equal(before, problem.sess.run(problem.weights))


# Momentum SGD moves the weights in proportion to the gradient: it fails if the scaled gradients are not unscaled.
# Adam divides the gradient by its own running magnitude, so it would pass even then.
@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
@pytest.mark.parametrize("kind", ["dynamic", "fixed"])
def test_scaled_update_equals_unscaled_update(optimizer, kind):
    results = []
    for scaling in ("none", kind):
        with v1.Graph().as_default():
            problem = _Problem(scaling, init=2.0 ** 15, interval=1000, optimizer=optimizer)
            start = problem.sess.run(problem.weights)
            for _ in range(3):
                assert not problem.step()
            results.append(problem.sess.run(problem.weights))
    assert not np.allclose(results[0], start)  # the weights moved
    np.testing.assert_allclose(results[1], results[0], rtol=1e-6)


def test_state_variables_are_checkpointed_and_not_trained():
    LossScaler.from_config(Config(precision="fp16", loss_scale_init=1024.0))
    names = set(v.name for v in v1.global_variables())
    assert {"loss_scale/loss_scale:0", "loss_scale/good_steps:0", "loss_scale/skipped_steps:0",
            "loss_scale/scale_changes:0"} <= names
    assert not v1.trainable_variables()
    with v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        assert sess.run(v1.global_variables()[0]) == 1024.0
