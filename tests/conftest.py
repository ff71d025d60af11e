"""Shared test set-up: graph mode, a fresh default graph per test, and the path to the shared ISBI data."""
import os

import pytest

from unet_perf import compat

compat.enable_graph_mode()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(REPO, "..", "shared", "data", "isbi2012")


@pytest.fixture(autouse=True)
def fresh_graph():
    """Every test builds into its own default graph, so graphs and variable names never leak between tests."""
    with compat.v1.Graph().as_default() as graph:
        yield graph


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than about 20 s (deselect with -m 'not slow')")
