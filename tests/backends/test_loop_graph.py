"""Host backend: per step, the K-step while_loop executes the same kernels as the plain K = 1 step (issue 22).

A fusion, cast or layout rewrite that Grappler or the device's rewrite passes (oneDNN on AVX-512/AMX CPUs) apply to
the plain step but not inside the while frame would make K > 1 slower than K = 1. Compared relatively on whatever
machine runs the tests: no kernel names, no timings.
"""
import collections

import pytest

from loop_overhead import executed_compute_ops  # benchmarks/ is on sys.path through pytest.ini
from unet_perf.training import assembly

LOOP_STEPS = 3


def executed_per_run(cfg):
    training = assembly.build(cfg, assembly.cached_batch_source(cfg))
    sess, fetches = assembly.open_session(training, cfg)
    with sess:
        sess.run(fetches)  # the first run optimises the graph
        return executed_compute_ops(sess, fetches)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_loop_body_executes_the_compute_ops_of_the_single_step(precision, tiny_config):
    single = executed_per_run(tiny_config(precision=precision, iterations_per_loop=1, max_steps=LOOP_STEPS))
    looped = executed_per_run(tiny_config(precision=precision, iterations_per_loop=LOOP_STEPS,
                                          max_steps=LOOP_STEPS, save_checkpoints_steps=LOOP_STEPS))
    assert sum(single.values()) > 50  # the forward and backward pass of the U-Net were seen
    assert looped == collections.Counter({op: LOOP_STEPS * count for op, count in single.items()})
