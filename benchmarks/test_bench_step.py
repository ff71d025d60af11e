"""pytest-benchmark: one training step (K = 1, model mode: cached synthetic batch) per precision.

Run with `pytest -n 0 --dist no benchmarks --benchmark-only` (not part of the default `pytest tests` run).
Config: depth 4, base 16, 128x128 tiles, batch 2, Adam; fp16 uses dynamic loss scaling (slow on CPUs, which lack
fp16 convolutions).
"""
import dataclasses
import math

import pytest

from unet_perf import compat
from unet_perf.training import assembly
from unet_perf.config import Config
from unet_perf.model.network import unet_flops

compat.enable_graph_mode()
ROUNDS, WARMUP = 5, 2


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_step(benchmark, precision):
    cfg = dataclasses.replace(Config(), precision=precision, base_filters=16, depth=4, crop_size=128, batch_size=2,
                              iterations_per_loop=1, max_steps=ROUNDS + WARMUP, save_checkpoints_steps=1).validate()
    training = assembly.build(cfg, assembly.cached_batch_source(cfg))
    sess, fetches = assembly.open_session(training, cfg)
    try:
        values = benchmark.pedantic(lambda: sess.run(fetches), rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    finally:
        sess.close()
    median = benchmark.stats.stats.median
    benchmark.extra_info.update({
        "precision": precision, "images_per_sec_median": cfg.batch_size / median,
        "gflops_median": cfg.batch_size * unet_flops(cfg, 128, 128)["train_step"] / median / 1e9})
    assert int(values["global_step"]) == ROUNDS + WARMUP  # every timed call ran exactly one step
    assert math.isfinite(float(values["loss"]))
