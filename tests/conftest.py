"""Shared test set-up: graph mode, a fresh default graph per test, where the repository and the shared ISBI data
are, the `tiny_config` factory and `take_batches`.

Test files import the paths and helpers (`from conftest import REPO`) and request `tiny_config` as a fixture; pytest.ini
registers the `slow` marker.
"""
import os

import pytest

from unet_perf import compat
from unet_perf.input import pipeline
from unet_perf.config import Config

compat.enable_graph_mode()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(REPO, "..", "shared", "data", "isbi2012")
# The smallest U-Net the tests train or run: two levels of 4 and 8 filters on 32x32 tiles, batch 2, no rescale.
TINY = dict(depth=2, base_filters=4, crop_size=32, batch_size=2, input_scale=1.0)


def make_tiny_config(*bases, **overrides):
    """A Config of TINY, updated by each dict in `bases` in turn, then by `overrides`."""
    values = dict(TINY)
    for base in bases:
        values.update(base)
    values.update(overrides)
    return Config(**values)


def take_batches(dataset, count):
    """The first `count` batches of `dataset` through the pipeline's initializable iterator, in the default graph."""
    iterator = pipeline.make_iterator(dataset)
    batch = iterator.get_next()
    with compat.v1.Session() as sess:
        sess.run(iterator.initializer)
        return [sess.run(batch) for _ in range(count)]


@pytest.fixture
def tiny_config():
    """The factory make_tiny_config(*bases, **overrides) -> Config of a tiny U-Net."""
    return make_tiny_config


@pytest.fixture(autouse=True)
def fresh_graph():
    """Every test builds into its own default graph, so graphs and variable names never leak between tests."""
    with compat.v1.Graph().as_default() as graph:
        yield graph


@pytest.fixture(autouse=True)
def no_leaked_op_determinism():
    """`--deterministic true` turns on TensorFlow's op determinism for the whole process (train() in a test or a
    module fixture does that): switch it off after every test, so each test starts from TensorFlow's default,
    whatever order the tests run in."""
    from tensorflow.python.framework import config as tf_config  # test-only: the public API has no "disable"

    yield
    # TF 1.15 and TF < 2.8 have no op-determinism switch to reset.
    enabled = getattr(tf_config, "is_op_determinism_enabled", None)
    if enabled is not None and enabled():
        tf_config.disable_op_determinism()
    os.environ.pop("TF_DETERMINISTIC_OPS", None)
