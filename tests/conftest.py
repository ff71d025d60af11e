"""Fixtures for every test: graph mode, a fresh default graph per test, no leaked op determinism, the `tiny_config`
factory and the `npu` stand-in npu_bridge. Helpers shared by several test files are in support.py (`from support
import ...`; pytest.ini puts tests/ on sys.path); test files never import each other or this file.

Layout: the folders mirror the package's layers, so a module's tests sit where a reader looks for the module.
  data/ input/ model/ backends/    the tests of unet_perf/<layer>/. backends/ also holds the two-rank tests
  training/ inference/             (test_distributed, test_npu_distributed): all-reduce, the overflow vote and the
                                   chief's broadcast are the backends' collectives. No storage/ folder: the run
                                   files are tested through what keeps them (training/: resume, best score).
  top level                        the foundation modules (cluster, progress), the CLIs as a user runs them
                                   (train_cli, user_paths, cli_traps, launch), and rules over the whole package
                                   (import_rules, python37_syntax): they belong to no one layer.
  tools/                           the repository's scripts in tools/ and benchmarks/ (TF 1.15 checker, ModelZoo
                                   and profile scripts, throughput and accuracy benchmarks).
  npu_stub/                        the stand-in npu_bridge (see the `npu` fixture), not tests.
No folder has an __init__.py (pytest's default "prepend" import mode), so every test file's basename is unique.
A test file run as a script (the rank processes) finds `support` through support.rank_python_path.
"""
import os
import sys

import pytest

from unet_perf import compat

from support import NPU_STUB, forget_stand_in, make_tiny_config

compat.enable_graph_mode()


@pytest.fixture
def tiny_config():
    """The factory make_tiny_config(*bases, **overrides) -> Config of a tiny U-Net (support.make_tiny_config)."""
    return make_tiny_config


@pytest.fixture
def npu(monkeypatch):
    """The stand-in npu_bridge (tests/npu_stub) on sys.path; yields its call log; removes every trace afterwards,
    so no other test can import it."""
    if compat.npu_bridge_available():
        pytest.skip("a real npu_bridge is installed; these tests use the stand-in")
    monkeypatch.delenv("RANK_SIZE", raising=False)
    forget_stand_in()
    sys.path.insert(0, NPU_STUB)
    try:
        from npu_bridge import ge_plugin, stub_log
        from npu_bridge.estimator.npu import npu_plugin
        del stub_log.CALLS[:]
        ge_plugin.reset()
        npu_plugin.INF_NAN_MODE = False
        yield stub_log
    finally:
        sys.path.remove(NPU_STUB)
        forget_stand_in()


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


# The modules that take longest (each over ~20 s on an idle 2-core machine, `--durations`), longest first. The two
# test processes (pytest.ini: pytest-xdist, one module per process at a time) take modules in collection order, so
# these go first: the short modules then fill in at the end instead of one long module running alone.
LONG_MODULES = ("test_distributed_faults.py", "test_user_paths.py", "test_resume.py", "test_determinism.py",
                "test_modelzoo_scripts.py", "test_train_cli.py", "test_accuracy_bench.py", "test_throughput_json.py",
                "test_distributed.py", "test_cli_traps.py", "test_npu_distributed.py", "test_accuracy_folds.py",
                "test_profile.py", "test_multiclass_training.py", "test_predict_launch.py")


def pytest_collection_modifyitems(items):
    rank = {name: index for index, name in enumerate(LONG_MODULES)}
    items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(LONG_MODULES)))  # stable sort
