"""The NPU backend against a recording stand-in npu_bridge (tests/npu_stub), on CPU in TF graph mode.

The stand-in is put on sys.path only inside the `npu` fixture and every npu_bridge module is dropped from the
import cache afterwards, so no other test can import it.
"""
import ast
import inspect
import json
import os
import re
import sys

import numpy as np
import pytest

from unet_perf.backends.base import FETCH_KEYS
from unet_perf.compat import npu_bridge_available, v1
from unet_perf.config import Config
from unet_perf.errors import UserError

HERE = os.path.dirname(os.path.abspath(__file__))
STUB_DIR = os.path.join(HERE, "npu_stub")
NPU_PY = os.path.join(HERE, "..", "unet_perf", "backends", "npu.py")
API_LISTING = os.path.join(HERE, "..", "..", "shared", "compat", "npu_bridge_api.txt")


def _drop_npu_bridge_modules():
    for name in list(sys.modules):
        if name == "npu_bridge" or name.startswith("npu_bridge."):
            del sys.modules[name]


@pytest.fixture
def npu(monkeypatch):
    """The stand-in npu_bridge on sys.path; yields its call log; removes every trace afterwards."""
    if npu_bridge_available():
        pytest.skip("a real npu_bridge is installed; these tests use the stand-in")
    monkeypatch.delenv("RANK_SIZE", raising=False)
    _drop_npu_bridge_modules()
    sys.path.insert(0, STUB_DIR)
    try:
        from npu_bridge import stub_log
        from npu_bridge.estimator.npu import npu_plugin
        del stub_log.CALLS[:]
        npu_plugin.INF_NAN_MODE = False
        yield stub_log
    finally:
        sys.path.remove(STUB_DIR)
        _drop_npu_bridge_modules()


def _cfg(**overrides):
    values = dict(max_steps=8, iterations_per_loop=1, save_checkpoints_steps=8, learning_rate=0.05,
                  loss_scale="auto", precision_mode="allow_mix_precision")
    values.update(overrides)
    return Config(**values)


def _backend():
    from unet_perf.backends.npu import NpuBackend
    return NpuBackend()


def _require_optimizer_factory():
    try:
        from unet_perf.optim import make_optimizer  # noqa: F401
    except ImportError as err:  # written by another helper
        pytest.fail("unet_perf.optim.make_optimizer is missing ({}); the NPU backend builds its optimizer "
                    "with it".format(err))


def _tiny_problem(seed=0):
    """A fixed batch and a 2-layer conv net: (next_batch, loss_fn, nan_factor placeholder)."""
    rng = np.random.RandomState(seed)
    images = rng.rand(2, 8, 8, 1).astype(np.float32)
    masks = (images > 0.5).astype(np.float32)
    nan_factor = v1.placeholder_with_default(1.0, [], name="nan_factor")  # feed NaN to inject an overflow

    def next_batch():
        return v1.constant(images), v1.constant(masks)

    def loss_fn(batch, step):
        assert step.dtype == v1.int64
        image, mask = batch
        with v1.variable_scope("tiny", reuse=v1.AUTO_REUSE):
            init = v1.variance_scaling_initializer(2.0, "fan_in", "truncated_normal", seed=1)
            w1 = v1.get_variable("w1", [3, 3, 1, 4], initializer=init)
            w2 = v1.get_variable("w2", [3, 3, 4, 1], initializer=init)
        hidden = v1.nn.relu(v1.nn.conv2d(image, w1, [1, 1, 1, 1], "SAME"))
        logits = v1.nn.conv2d(hidden, w2, [1, 1, 1, 1], "SAME")
        loss = v1.reduce_mean(v1.nn.sigmoid_cross_entropy_with_logits(labels=mask, logits=logits))
        return loss * nan_factor

    return next_batch, loss_fn, nan_factor


def _build(cfg):
    _require_optimizer_factory()
    backend = _backend()
    config = backend.session_config(cfg)
    next_batch, loss_fn, nan_factor = _tiny_problem()
    global_step = v1.train.get_or_create_global_step()
    fetches = backend.build_train_loop(cfg, next_batch, loss_fn, global_step)
    sess = v1.Session(config=config)
    sess.run(v1.global_variables_initializer())
    fetches = backend.prepare_session(sess, fetches)
    return sess, fetches, nan_factor


def _weights(sess):
    return [sess.run(var) for var in v1.trainable_variables()]


# --- session config (real TF protos) ----------------------------------------------------------------------------

def test_session_config_has_the_npu_optimizer_and_rewriter_settings(npu):
    from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig
    from unet_perf.backends.npu import profiling_options
    cfg = _cfg(iterations_per_loop=4, precision_mode="allow_fp32_to_fp16")
    config = _backend().session_config(cfg)
    assert isinstance(config, v1.ConfigProto)
    rewrite = config.graph_options.rewrite_options
    assert [op.name for op in rewrite.custom_optimizers] == ["NpuOptimizer"]
    params = rewrite.custom_optimizers[0].parameter_map
    assert params["use_off_line"].b is True
    assert params["enable_data_pre_proc"].b is True
    assert params["iterations_per_loop"].i == 4
    assert params["precision_mode"].s == b"allow_fp32_to_fp16"
    assert "profiling_mode" not in params and "profiling_options" not in params
    assert rewrite.remapping == RewriterConfig.OFF
    assert rewrite.memory_optimization == RewriterConfig.OFF
    assert rewrite.constant_folding == RewriterConfig.DEFAULT  # the other passes stay on

    options = profiling_options("/tmp/prof", fp_point="fp", bp_point="")
    profiled = _backend().session_config(cfg, profiling_options=options)
    params = profiled.graph_options.rewrite_options.custom_optimizers[0].parameter_map
    assert params["profiling_mode"].b is True
    assert json.loads(params["profiling_options"].s.decode()) == {
        "output": "/tmp/prof", "training_trace": "on", "task_trace": "on", "aicpu": "on",
        "fp_point": "fp", "bp_point": "", "aic_metrics": "PipeUtilization"}
    # The proto survives a round trip, as the real Session serialises it.
    assert v1.ConfigProto.FromString(profiled.SerializeToString()) == profiled


# --- arguments passed to npu_bridge -----------------------------------------------------------------------------

def test_dynamic_loss_scaling_arguments_and_fetches(npu):
    cfg = _cfg(loss_scale_init=1024.0, loss_scale_growth_interval=7)
    sess, fetches, _ = _build(cfg)
    managers = npu.calls_named("ExponentialUpdateLossScaleManager")
    assert managers == [dict(init_loss_scale=1024.0, incr_every_n_steps=7, decr_every_n_nan_or_inf=2,
                             incr_ratio=2, decr_ratio=0.5)]
    (optimizer,) = npu.calls_named("NPULossScaleOptimizer")
    assert optimizer["is_distributed"] is False
    assert isinstance(optimizer["opt"], v1.train.AdamOptimizer)
    assert npu.calls_named("set_iteration_per_loop") == []  # K = 1: the plain loop
    assert set(fetches) == set(FETCH_KEYS)
    values = sess.run(fetches)
    assert values["loss_scale"] == 1024.0 and values["global_step"] == 1
    assert not values["overflow"]
    assert values["skipped_steps"] == 0 and values["scale_changes"] == 0
    dtypes = {key: fetches[key].dtype for key in FETCH_KEYS}
    assert dtypes == {"loss": v1.float32, "mean_loss": v1.float32, "global_step": v1.int64,
                      "loss_scale": v1.float32, "overflow": v1.bool, "skipped_steps": v1.int64,
                      "scale_changes": v1.int64}
    assert all(fetches[key].shape.ndims == 0 for key in FETCH_KEYS)


def test_fixed_and_no_loss_scaling(npu):
    sess, fetches, _ = _build(_cfg(loss_scale="128"))
    assert npu.calls_named("FixedLossScaleManager") == [dict(loss_scale=128.0, enable_overflow_check=True)]
    assert sess.run(fetches["loss_scale"]) == 128.0

    del npu.CALLS[:]
    with v1.Graph().as_default():
        sess, fetches, nan_factor = _build(_cfg(precision_mode="force_fp32"))  # auto: fp32 needs no scaling
        assert npu.calls_named("NPULossScaleOptimizer") == []
        assert npu.calls_named("FixedLossScaleManager") == [] == npu.calls_named("ExponentialUpdateLossScaleManager")
        values = sess.run(fetches)
        assert values["loss_scale"] == 1.0 and not values["overflow"] and values["global_step"] == 1


def test_auto_loss_scale_follows_precision_mode(npu):
    from unet_perf.backends.npu import npu_loss_scale_kind
    assert npu_loss_scale_kind(_cfg(precision_mode="allow_mix_precision")) == ("dynamic", None)
    assert npu_loss_scale_kind(_cfg(precision_mode="allow_fp32_to_fp16")) == ("dynamic", None)
    assert npu_loss_scale_kind(_cfg(precision_mode="force_fp32")) == ("none", None)
    assert npu_loss_scale_kind(_cfg(precision_mode="allow_mix_precision_bf16")) == ("none", None)
    assert npu_loss_scale_kind(_cfg(precision_mode="must_keep_origin_dtype")) == ("none", None)
    assert npu_loss_scale_kind(_cfg(precision_mode="must_keep_origin_dtype", precision="fp16")) == ("dynamic", None)
    assert npu_loss_scale_kind(_cfg(precision_mode="force_fp32", loss_scale="dynamic")) == ("dynamic", None)
    assert npu_loss_scale_kind(_cfg(loss_scale="none")) == ("none", None)


def test_sink_mode_wraps_the_train_op_and_loads_k(npu):
    cfg = _cfg(iterations_per_loop=2, max_steps=8, save_checkpoints_steps=4)
    backend_config_k = _backend().session_config(cfg).graph_options.rewrite_options.custom_optimizers[0]
    sess, fetches, _ = _build(cfg)
    (call,) = npu.calls_named("set_iteration_per_loop")
    assert call["sess"] is sess
    assert isinstance(call["train_op"], v1.Operation) and call["train_op"].name.endswith("npu_train_step")
    assert call["iterations_per_loop"] == 2 == backend_config_k.parameter_map["iterations_per_loop"].i
    (loop_var,) = v1.get_collection("npu_runconfig_iterations_per_loop")
    assert sess.run(loop_var) == 1  # K - 1
    assert set(fetches) == set(FETCH_KEYS)
    for key in FETCH_KEYS:  # every fetch runs through IterationOp, the op the device loops on
        assert [op.name for op in fetches[key].op.control_inputs] == ["IterationOp"]
    # The stand-in runs the graph once per Session.run; mean_loss averages since the last multiple of K.
    first = sess.run(fetches)
    second = sess.run(fetches)
    assert (first["global_step"], second["global_step"]) == (1, 2)
    assert first["mean_loss"] == pytest.approx(first["loss"])
    assert second["mean_loss"] == pytest.approx((first["loss"] + second["loss"]) / 2)
    third = sess.run(fetches)
    assert third["mean_loss"] == pytest.approx(third["loss"])


def test_session_and_loop_must_agree_on_k(npu):
    _require_optimizer_factory()
    backend = _backend()
    backend.session_config(_cfg(iterations_per_loop=2))
    next_batch, loss_fn, _ = _tiny_problem()
    fetches = backend.build_train_loop(_cfg(iterations_per_loop=4), next_batch, loss_fn,
                                       v1.train.get_or_create_global_step())
    with v1.Session() as sess:
        with pytest.raises(ValueError, match="iterations_per_loop=2"):
            backend.prepare_session(sess, fetches)


# --- training through the stand-in ----------------------------------------------------------------------------

def test_steps_train_the_tiny_model(npu):
    sess, fetches, _ = _build(_cfg(iterations_per_loop=2))
    before = _weights(sess)
    losses = [sess.run(fetches)["loss"] for _ in range(6)]
    after = _weights(sess)
    assert all(not np.array_equal(b, a) for b, a in zip(before, after))
    assert losses[-1] < losses[0]
    assert sess.run(fetches["global_step"]) == 7


def test_gradients_reach_the_optimizer_unscaled(npu):
    """Momentum SGD's first step is w - lr*grad: the loss scale must cancel out exactly (up to float error)."""
    cfg = _cfg(optimizer="momentum", learning_rate=0.1, loss_scale="dynamic", loss_scale_init=4096.0)
    sess, fetches, _ = _build(cfg)
    variables = v1.trainable_variables()
    next_batch, loss_fn, _ = _tiny_problem()
    plain_grads = v1.gradients(loss_fn(next_batch(), v1.constant(0, v1.int64)), variables)
    before, grads = sess.run([variables, plain_grads])
    sess.run(fetches)
    after = _weights(sess)
    for b, g, a in zip(before, grads, after):
        np.testing.assert_allclose(a, b - 0.1 * g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("inf_nan_mode", [False, True], ids=["overflow_status_tensor", "derived_from_grads"])
def test_overflow_skips_the_update_and_counts(npu, inf_nan_mode):
    from npu_bridge.estimator.npu import npu_plugin
    npu_plugin.INF_NAN_MODE = inf_nan_mode
    cfg = _cfg(loss_scale="dynamic", loss_scale_init=256.0, loss_scale_growth_interval=2)
    sess, fetches, nan_factor = _build(cfg)
    names = [op.name for op in v1.get_default_graph().get_operations()]
    assert any(name.endswith("overflow_status_reduce_all") for name in names) is not inf_nan_mode

    before = _weights(sess)
    first = sess.run(fetches, {nan_factor: float("nan")})
    assert bool(first["overflow"]) and first["skipped_steps"] == 1
    assert all(np.array_equal(b, a) for b, a in zip(before, _weights(sess)))  # bit-identical: skipped
    assert first["loss_scale"] == 256.0 and first["scale_changes"] == 0  # decr after 2 consecutive overflows
    assert first["global_step"] == 1  # the step counts even when skipped

    second = sess.run(fetches, {nan_factor: float("nan")})
    assert second["skipped_steps"] == 2 and second["loss_scale"] == 128.0 and second["scale_changes"] == 1

    finite = [sess.run(fetches) for _ in range(2)]
    assert [bool(v["overflow"]) for v in finite] == [False, False]
    assert finite[-1]["loss_scale"] == 256.0 and finite[-1]["scale_changes"] == 2  # grew after 2 finite steps
    assert finite[-1]["skipped_steps"] == 2 and finite[-1]["global_step"] == 4
    assert not all(np.array_equal(b, a) for b, a in zip(before, _weights(sess)))


# --- device selection, validation, missing npu_bridge ---------------------------------------------------------

def test_auto_device_picks_npu_when_npu_bridge_imports(npu):
    try:
        from unet_perf.backends import get_backend
    except ImportError as err:
        pytest.fail("unet_perf.backends.get_backend is missing ({})".format(err))
    backend = get_backend(_cfg(device="auto"))
    assert backend.name == "npu"
    assert get_backend(_cfg(device="npu")).name == "npu"


def test_step_counts_must_be_multiples_of_k(npu):
    from unet_perf.backends.npu import check_npu_steps
    assert check_npu_steps(_cfg(iterations_per_loop=4, max_steps=8, save_checkpoints_steps=4)) == 4
    with pytest.raises(UserError, match="multiple of --iterations_per_loop"):
        check_npu_steps(_cfg(iterations_per_loop=4, max_steps=10, save_checkpoints_steps=4))
    with pytest.raises(UserError, match="save_checkpoints_steps"):
        check_npu_steps(_cfg(iterations_per_loop=4, max_steps=8, save_checkpoints_steps=6))
    with pytest.raises(UserError, match="val_every"):
        check_npu_steps(_cfg(iterations_per_loop=4, max_steps=8, save_checkpoints_steps=4, val_every=2))
    _require_optimizer_factory()
    next_batch, loss_fn, _ = _tiny_problem()
    with pytest.raises(UserError):  # the loop refuses to build, too
        _backend().build_train_loop(_cfg(iterations_per_loop=3), next_batch, loss_fn,
                                    v1.train.get_or_create_global_step())


def test_multi_device_rank_size_is_refused(npu, monkeypatch):
    monkeypatch.setenv("RANK_SIZE", "8")
    with pytest.raises(UserError, match="RANK_SIZE"):
        _backend()


def test_missing_npu_bridge_gives_a_user_error():
    if npu_bridge_available():
        pytest.skip("a real npu_bridge is installed")
    assert "npu_bridge" not in sys.modules  # the stand-in never leaks out of the fixture
    import unet_perf.backends.npu as npu_module  # importing works without npu_bridge
    with pytest.raises(UserError) as info:
        npu_module.NpuBackend()
    message = str(info.value)
    assert "npu_bridge" in message and "--device host" in message and "\n" not in message


# --- the stand-in and npu.py follow the listed npu_bridge API --------------------------------------------------

def _listed_signatures():
    """{dotted name: [parameter names]} from npu_bridge_api.txt (calls only, not the re-export lines)."""
    listed = {}
    with open(API_LISTING) as handle:
        for line in handle:
            match = re.match(r"^(npu_bridge[\w.]*)\((.*)\)\s*$", line.strip())
            if not match:
                continue
            params = []
            for part in match.group(2).split(","):
                name = part.strip().split("=")[0].strip().lstrip("*")
                if name:
                    params.append(name)
            listed[match.group(1)] = params
    return listed


def _npu_bridge_imports():
    """(module, name) of every `from npu_bridge... import name` in unet_perf/backends/npu.py."""
    with open(NPU_PY) as handle:
        tree = ast.parse(handle.read())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not any(alias.name.startswith("npu_bridge") for alias in node.names), "use from-imports"
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("npu_bridge"):
            for alias in node.names:
                assert alias.name != "*", "star imports of npu_bridge are not allowed"
                found.append((node.module, alias.name))
    return found


def _parameter_names(func):
    return [name for name in inspect.signature(func).parameters if name != "self"]


@pytest.mark.skipif(not os.path.exists(API_LISTING), reason="../shared/compat/npu_bridge_api.txt not present")
def test_stand_in_and_backend_match_the_listed_api(npu):
    import importlib
    listed = _listed_signatures()
    imports = _npu_bridge_imports()
    assert ("npu_bridge.estimator.npu", "util") in imports
    checked = 0
    for module_name, name in imports:
        dotted = "{}.{}".format(module_name, name)
        obj = getattr(importlib.import_module(module_name), name, None)
        if obj is None or inspect.ismodule(obj):  # a submodule (util): it must be listed and import
            assert any(key.startswith(dotted + ".") for key in listed), dotted
            importlib.import_module(dotted)
            continue
        assert dotted in listed, "{} is not in npu_bridge_api.txt".format(dotted)
        assert _parameter_names(obj) == listed[dotted], dotted
        checked += 1
    # The functions and methods npu.py and the optimizer call on those objects.
    from npu_bridge.estimator.npu import npu_loss_scale_manager, npu_loss_scale_optimizer, util
    for dotted, func in [
            ("npu_bridge.estimator.npu.util.set_iteration_per_loop", util.set_iteration_per_loop),
            ("npu_bridge.estimator.npu.npu_loss_scale_optimizer.NPULossScaleOptimizer.apply_gradients",
             npu_loss_scale_optimizer.NPULossScaleOptimizer.apply_gradients),
            ("npu_bridge.estimator.npu.npu_loss_scale_manager.ExponentialUpdateLossScaleManager.update_loss_scale",
             npu_loss_scale_manager.ExponentialUpdateLossScaleManager.update_loss_scale),
            ("npu_bridge.estimator.npu.npu_loss_scale_manager.FixedLossScaleManager.get_enable_overflow_check",
             npu_loss_scale_manager.FixedLossScaleManager.get_enable_overflow_check)]:
        assert _parameter_names(func) == listed[dotted], dotted
        checked += 1
    assert checked >= 7
    # The keywords npu.py passes to npu_bridge classes are listed parameters of the callee.
    with open(NPU_PY) as handle:
        tree = ast.parse(handle.read())
    imported = dict((name, "{}.{}".format(module, name)) for module, name in imports)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in imported:
            dotted = imported[node.func.id]
            for keyword in node.keywords:
                assert keyword.arg in listed[dotted], "{}({}=...)".format(dotted, keyword.arg)
                checked += 1
    assert checked >= 13
