"""Learning-rate schedules: the graph follows the Python reference, and a scheduled K-step loop equals K single
steps (each step of the in-graph loop reads its own rate)."""
import numpy as np
import pytest

from unet_perf.model import schedule
from unet_perf.compat import v1
from unet_perf.config import Config
from unet_perf.errors import UserError
from unet_perf.model.optim import make_optimizer

from support import HOST_LOOP, HostRun, assert_same_weights, make_tiny_config


@pytest.mark.parametrize("kind", schedule.SCHEDULES)
@pytest.mark.parametrize("warmup", [0, 5])
def test_graph_rate_matches_reference(kind, warmup):
    total = 40
    steps = list(range(0, total + 1, 3))
    step = v1.placeholder(v1.int64, [])
    rate = schedule.scheduled_rate(step, 0.1, kind, warmup, total)
    with v1.Session() as sess:
        got = [sess.run(rate, {step: s}) for s in steps]
    expected = [schedule.rate_at(s, 0.1, kind, warmup, total) for s in steps]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_reference_shapes():
    assert schedule.rate_at(0, 1.0, "constant", 4, 100) == pytest.approx(0.25)
    assert schedule.rate_at(3, 1.0, "cosine", 4, 100) == pytest.approx(1.0, rel=1e-3)
    assert schedule.rate_at(52, 1.0, "cosine", 4, 100) == pytest.approx(0.5)
    assert schedule.rate_at(100, 1.0, "cosine", 0, 100) == pytest.approx(0.0, abs=1e-12)
    assert schedule.rate_at(50, 1.0, "poly", 0, 100) == pytest.approx(0.5 ** schedule.POLY_POWER)
    rates = [schedule.rate_at(s, 1.0, "cosine", 10, 100) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_constant_without_warmup_keeps_the_plain_float():
    assert schedule.learning_rate(Config(learning_rate=3e-4)) == 3e-4
    assert callable(schedule.learning_rate(Config(learning_rate=3e-4, warmup_steps=10)))


def test_optimizer_reads_the_global_step():
    cfg = Config(learning_rate=0.5, lr_schedule="cosine", max_steps=10)
    step = v1.train.get_or_create_global_step()
    optimizer = make_optimizer(cfg)
    assert isinstance(optimizer, v1.train.AdamOptimizer)
    rate = optimizer._call_if_callable(optimizer._lr)  # what Adam evaluates when it applies gradients
    with v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        for value in (0, 5, 9):
            sess.run(step.assign(value))
            assert sess.run(rate) == pytest.approx(schedule.rate_at(value, 0.5, "cosine", 0, 10), rel=1e-5)


@pytest.mark.parametrize("kind", ["cosine", "poly"])
def test_scheduled_k_step_loop_equals_k_single_steps(kind):
    # A large rate with a short schedule: a loop reading a stale step would end with visibly different weights.
    k = 4
    settings = dict(learning_rate=0.05, lr_schedule=kind, warmup_steps=2, max_steps=8, optimizer="momentum")
    looped = HostRun(make_tiny_config(HOST_LOOP, iterations_per_loop=k, **settings))
    single = HostRun(make_tiny_config(HOST_LOOP, iterations_per_loop=1, **settings))
    constant = HostRun(make_tiny_config(HOST_LOOP, iterations_per_loop=k, learning_rate=0.05, max_steps=8,
                                     optimizer="momentum"))
    for _ in range(2):
        out = looped.run()
        for _ in range(k):
            single.run()
        constant.run()
    assert out["global_step"] == 2 * k
    assert_same_weights(looped.weights(), single.weights())
    kernel = "unet/down0/conv1/kernel:0"
    assert not np.allclose(looped.weights()[kernel], constant.weights()[kernel], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("flags, message", [
    (dict(warmup_steps=-1), "--warmup_steps"),
    (dict(warmup_steps=20, max_steps=10), "--warmup_steps 20 exceeds"),
])
def test_bad_schedule_flags(flags, message):
    with pytest.raises(UserError, match=message):
        Config(**flags).validate()
