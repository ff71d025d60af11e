"""Shared test set-up: graph mode, a fresh default graph per test, where the repository and the shared ISBI data
are, and the `tiny_config` factory.

Test files import the paths (`from conftest import REPO`) and request `tiny_config` as a fixture; pytest.ini
registers the `slow` marker.
"""
import os

import pytest

from unet_perf import compat
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


@pytest.fixture
def tiny_config():
    """The factory make_tiny_config(*bases, **overrides) -> Config of a tiny U-Net."""
    return make_tiny_config


@pytest.fixture(autouse=True)
def fresh_graph():
    """Every test builds into its own default graph, so graphs and variable names never leak between tests."""
    with compat.v1.Graph().as_default() as graph:
        yield graph
