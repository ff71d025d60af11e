"""Host backend: per step, the K-step while_loop executes the same kernels as the plain K = 1 step (issue 22).

A fusion, cast or layout rewrite that Grappler or the device's rewrite passes (oneDNN on AVX-512/AMX CPUs) apply to
the plain step but not inside the while frame would make K > 1 slower than K = 1. Compared relatively on whatever
machine runs the tests: no kernel names, no timings.
"""
import collections

import pytest

from loop_overhead import executed_compute_ops  # benchmarks/ is on sys.path through pytest.ini
from unet_perf.backends.host import HostBackend
from unet_perf.training import assembly

LOOP_STEPS = 3


def executed_per_run(cfg, backend=None):
    training = assembly.build(cfg, assembly.cached_batch_source(cfg), backend=backend)
    sess, fetches = assembly.open_session(training, cfg)
    with sess:
        sess.run(fetches)  # the first run optimises the graph
        return executed_compute_ops(sess, fetches)


def first_loss_and_loop_ops(cfg, backend):
    """The loss of the first Session.run and the while-loop op types of the graph."""
    training = assembly.build(cfg, assembly.cached_batch_source(cfg), backend=backend)
    sess, fetches = assembly.open_session(training, cfg)
    loop_ops = {op.type for op in sess.graph.get_operations()} & {"While", "StatelessWhile", "Enter", "NextIteration"}
    with sess:
        return float(sess.run(fetches)["loss"]), loop_ops


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_loop_body_executes_the_compute_ops_of_the_single_step(precision, tiny_config):
    single = executed_per_run(tiny_config(precision=precision, iterations_per_loop=1, max_steps=LOOP_STEPS))
    looped = executed_per_run(tiny_config(precision=precision, iterations_per_loop=LOOP_STEPS,
                                          max_steps=LOOP_STEPS, save_checkpoints_steps=LOOP_STEPS))
    assert sum(single.values()) > 50  # the forward and backward pass of the U-Net were seen
    assert looped == collections.Counter({op: LOOP_STEPS * count for op, count in single.items()})


def test_one_step_in_a_while_frame_is_the_plain_step(tiny_config):
    """loop_overhead.py's "frame" variant (K = 1 as a one-iteration loop) isolates the frame's cost only if it is
    the same step: same kernels, same loss, and a while loop really in the graph."""
    cfg = tiny_config(iterations_per_loop=1, max_steps=1)
    plain_loss, plain_loop_ops = first_loss_and_loop_ops(cfg, HostBackend())
    framed_loss, framed_loop_ops = first_loss_and_loop_ops(cfg, HostBackend(plain_single_step=False))
    assert not plain_loop_ops and framed_loop_ops
    assert framed_loss == pytest.approx(plain_loss, rel=1e-6)
    assert executed_per_run(cfg, HostBackend(plain_single_step=False)) == executed_per_run(cfg, HostBackend())
