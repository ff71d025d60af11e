"""pytest-benchmark: the fused augmentation op per batch size (512x512 in and out, full augmentation).

Run with `pytest -n 0 --dist no benchmarks --benchmark-only` (not part of the default `pytest tests` run).
"""
import dataclasses

import numpy as np
import pytest

from unet_perf import compat
from unet_perf.compat import v1
from unet_perf.config import Config
from unet_perf.data.synthetic import membranes

compat.enable_graph_mode()
SIZE = 512


@pytest.fixture(scope="module")
def slices():
    pairs = membranes(8, size=SIZE, seed=0)
    return pairs.images, pairs.masks


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_augment_batch(benchmark, slices, batch_size):
    from unet_perf.input.augment import augment_batch
    cfg = dataclasses.replace(Config(), crop_size=SIZE, input_scale=1.0, batch_size=batch_size)
    graph = v1.Graph()
    with graph.as_default():
        images = v1.placeholder(np.uint8, [batch_size, SIZE, SIZE])
        masks = v1.placeholder(np.uint8, [batch_size, SIZE, SIZE])
        seed = v1.placeholder(np.int64, [2])  # fed per call: nothing random can be constant-folded
        out_images, out_masks, _ = augment_batch(images, masks, None, cfg, (SIZE, SIZE), seed)
    counter = [0]
    with v1.Session(graph=graph) as sess:
        def run():
            counter[0] += 1
            return sess.run([out_images, out_masks], {images: slices[0][:batch_size],
                                                      masks: slices[1][:batch_size], seed: [0, counter[0]]})
        image_values, mask_values = benchmark.pedantic(run, rounds=5, warmup_rounds=2, iterations=1)
    benchmark.extra_info["batch_size"] = batch_size
    benchmark.extra_info["pairs_per_sec_median"] = batch_size / benchmark.stats.stats.median
    assert image_values.shape == (batch_size, SIZE, SIZE, 1)
    assert 0.0 <= image_values.min() and image_values.max() <= 1.0
    assert set(np.unique(mask_values)) <= {0.0, 1.0}
