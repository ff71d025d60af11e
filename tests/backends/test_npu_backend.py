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

from unet_perf.backends.base import FETCH_KEYS, ITERATION_OP_KEY
from unet_perf.compat import npu_bridge_available, v1
from unet_perf.errors import UserError

from support import (NPU_BRIDGE_API, REPO, assert_same_weights, build_npu_step, npu_backend, npu_config, tiny_problem,
                     write_rank_table)

NPU_PY = os.path.join(REPO, "unet_perf", "backends", "npu.py")


def _saturation():
    return v1.get_default_graph().get_tensor_by_name("saturation:0")


def _weights(sess):
    return [sess.run(var) for var in v1.trainable_variables()]


# --- session config (real TF protos) ----------------------------------------------------------------------------

def test_session_config_has_the_npu_optimizer_and_rewriter_settings(npu):
    from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig
    from unet_perf.backends.npu import profiling_options
    cfg = npu_config(iterations_per_loop=4, precision_mode="allow_fp32_to_fp16")
    config = npu_backend().session_config(cfg)
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
    profiled = npu_backend().session_config(cfg, profiling_options=options)
    params = profiled.graph_options.rewrite_options.custom_optimizers[0].parameter_map
    assert params["profiling_mode"].b is True
    assert json.loads(params["profiling_options"].s.decode()) == {
        "output": "/tmp/prof", "training_trace": "on", "task_trace": "on", "aicpu": "on",
        "fp_point": "fp", "bp_point": "", "aic_metrics": "PipeUtilization"}
    # The proto survives a round trip, as the real Session serialises it.
    assert v1.ConfigProto.FromString(profiled.SerializeToString()) == profiled


# --- arguments passed to npu_bridge -----------------------------------------------------------------------------

def test_dynamic_loss_scaling_arguments_and_fetches(npu):
    cfg = npu_config(loss_scale_init=1024.0, loss_scale_growth_interval=7)
    sess, fetches, _ = build_npu_step(cfg)
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
    sess, fetches, _ = build_npu_step(npu_config(loss_scale="128"))
    assert npu.calls_named("FixedLossScaleManager") == [dict(loss_scale=128.0, enable_overflow_check=True)]
    assert sess.run(fetches["loss_scale"]) == 128.0

    del npu.CALLS[:]
    with v1.Graph().as_default():
        # auto: fp32 needs no scaling
        sess, fetches, nan_factor = build_npu_step(npu_config(precision_mode="force_fp32"))
        assert npu.calls_named("NPULossScaleOptimizer") == []
        assert npu.calls_named("FixedLossScaleManager") == [] == npu.calls_named("ExponentialUpdateLossScaleManager")
        values = sess.run(fetches)
        assert values["loss_scale"] == 1.0 and not values["overflow"] and values["global_step"] == 1


def test_auto_loss_scale_follows_precision_mode(npu):
    from unet_perf.backends.npu import npu_loss_scale_kind
    assert npu_loss_scale_kind(npu_config(precision_mode="allow_mix_precision")) == ("dynamic", None)
    assert npu_loss_scale_kind(npu_config(precision_mode="allow_fp32_to_fp16")) == ("dynamic", None)
    assert npu_loss_scale_kind(npu_config(precision_mode="force_fp32")) == ("none", None)
    assert npu_loss_scale_kind(npu_config(precision_mode="allow_mix_precision_bf16")) == ("none", None)
    assert npu_loss_scale_kind(npu_config(precision_mode="must_keep_origin_dtype")) == ("none", None)
    assert npu_loss_scale_kind(npu_config(precision_mode="must_keep_origin_dtype", precision="fp16")) == \
        ("dynamic", None)
    assert npu_loss_scale_kind(npu_config(precision_mode="force_fp32", loss_scale="dynamic")) == ("dynamic", None)
    assert npu_loss_scale_kind(npu_config(loss_scale="none")) == ("none", None)


def test_sink_mode_wraps_the_train_op_and_loads_k(npu):
    cfg = npu_config(iterations_per_loop=2, max_steps=8, save_checkpoints_steps=4)
    backend_config_k = npu_backend().session_config(cfg).graph_options.rewrite_options.custom_optimizers[0]
    sess, fetches, _ = build_npu_step(cfg)
    (call,) = npu.calls_named("set_iteration_per_loop")
    assert call["sess"] is sess
    assert isinstance(call["train_op"], v1.Operation) and call["train_op"].name.endswith("npu_train_step")
    assert call["iterations_per_loop"] == 2 == backend_config_k.parameter_map["iterations_per_loop"].i
    (loop_var,) = v1.get_collection("npu_runconfig_iterations_per_loop")
    assert sess.run(loop_var) == 1  # K - 1
    assert set(fetches) == set(FETCH_KEYS) | {ITERATION_OP_KEY}
    assert fetches[ITERATION_OP_KEY].name == "IterationOp"  # fetched itself: Grappler keeps a fetch node
    # Like the device, the stand-in runs the graph K times per Session.run that fetches IterationOp...
    assert [sess.run(fetches)["global_step"] for _ in range(2)] == [2, 4]
    # ...and once when the op is not fetched (on the device Grappler may have removed it).
    assert sess.run(fetches["global_step"]) == 5


def test_session_and_loop_must_agree_on_k(npu):
    backend = npu_backend()
    backend.session_config(npu_config(iterations_per_loop=2))
    next_batch, loss_fn, _ = tiny_problem()
    fetches = backend.build_train_loop(npu_config(iterations_per_loop=4), next_batch, loss_fn,
                                       v1.train.get_or_create_global_step())
    with v1.Session() as sess:
        with pytest.raises(ValueError, match="iterations_per_loop=2"):
            backend.prepare_session(sess, fetches)


# --- training through the stand-in ----------------------------------------------------------------------------

def test_steps_train_the_tiny_model(npu):
    sess, fetches, _ = build_npu_step(npu_config(iterations_per_loop=2))
    before = _weights(sess)
    losses = [sess.run(fetches)["loss"] for _ in range(6)]
    after = _weights(sess)
    assert all(not np.array_equal(b, a) for b, a in zip(before, after))
    assert losses[-1] < losses[0]
    assert sess.run(fetches)["global_step"] == 14  # 7 runs of K = 2


def test_gradients_reach_the_optimizer_unscaled(npu):
    """Momentum SGD's first step is w - lr*grad: the loss scale must cancel out exactly (up to float error)."""
    cfg = npu_config(optimizer="momentum", learning_rate=0.1, loss_scale="dynamic", loss_scale_init=4096.0)
    sess, fetches, _ = build_npu_step(cfg)
    variables = v1.trainable_variables()
    next_batch, loss_fn, _ = tiny_problem()
    plain_grads = v1.gradients(loss_fn(next_batch(), v1.constant(0, v1.int64)), variables)
    before, grads = sess.run([variables, plain_grads])
    sess.run(fetches)
    after = _weights(sess)
    for b, g, a in zip(before, grads, after):
        np.testing.assert_allclose(a, b - 0.1 * g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("inf_nan_mode", [False, True], ids=["overflow_status_tensor", "derived_from_grads"])
def test_overflow_skips_the_update_and_counts(npu, inf_nan_mode):
    from npu_bridge.estimator.npu import npu_plugin
    from unet_perf.backends import npu as npu_module
    npu_plugin.INF_NAN_MODE = inf_nan_mode
    cfg = npu_config(loss_scale="dynamic", loss_scale_init=256.0, loss_scale_growth_interval=2)
    backend = npu_backend()
    sess, fetches, nan_factor = build_npu_step(cfg, backend)
    names = [op.name for op in v1.get_default_graph().get_operations()]
    assert any(name.endswith("overflow_status_reduce_all") for name in names) is not inf_nan_mode
    assert backend.overflow_source == (npu_module.OVERFLOW_FROM_GRADIENTS if inf_nan_mode
                                       else npu_module.OVERFLOW_FROM_FLOAT_STATUS)

    before = _weights(sess)
    first = sess.run(fetches, {nan_factor: float("nan")})
    assert bool(first["overflow"]) and first["skipped_steps"] == 1
    assert all(np.array_equal(b, a) for b, a in zip(before, _weights(sess)))  # bit-identical: skipped
    assert first["loss_scale"] == 256.0 and first["scale_changes"] == 0
    assert first["global_step"] == 1  # the step counts even when skipped

    # TF 1.15 semantics: overflows count since the last scale change (a finite step between them does not reset
    # the count), an overflow zeroes the finite-step count, and a scale change zeroes both.
    nan, finite = float("nan"), 1.0
    runs = [sess.run(fetches, {nan_factor: factor}) for factor in [finite, nan, finite, nan, finite, finite, nan]]
    assert [bool(v["overflow"]) for v in runs] == [False, True, False, True, False, False, True]
    assert [float(v["loss_scale"]) for v in runs] == [256.0, 128.0, 128.0, 128.0, 128.0, 256.0, 256.0]
    assert [int(v["scale_changes"]) for v in runs] == [0, 1, 1, 1, 1, 2, 2]
    assert [int(v["skipped_steps"]) for v in runs] == [1, 2, 2, 3, 3, 3, 4]
    assert runs[-1]["global_step"] == 8
    assert not all(np.array_equal(b, a) for b, a in zip(before, _weights(sess)))


def test_dynamic_scale_stays_unchanged_at_the_top_of_float32(npu):
    """A due increase that would pass 3.4e38 leaves the scale as it is (no clamping to 1.7e38)."""
    cfg = npu_config(loss_scale="dynamic", loss_scale_init=2.0 ** 126, loss_scale_growth_interval=1)
    sess, fetches, nan_factor = build_npu_step(cfg)
    runs = [sess.run(fetches, {nan_factor: 0.0}) for _ in range(3)]  # zero loss: finite zero gradients
    assert [bool(v["overflow"]) for v in runs] == [False, False, False]
    assert [float(v["loss_scale"]) for v in runs] == [2.0 ** 127] * 3
    assert [int(v["scale_changes"]) for v in runs] == [1, 1, 1]


def test_saturation_mode_counts_an_overflow_that_leaves_the_gradients_finite(npu):
    """The float status records every overflow of the step; the INF/NaN-mode fallback sees only the gradients."""
    from npu_bridge.estimator.npu import npu_plugin
    cfg = npu_config(loss_scale="dynamic", loss_scale_init=256.0)
    sess, fetches, _ = build_npu_step(cfg)
    before = _weights(sess)
    values = sess.run(fetches, {_saturation(): 1e30})
    assert np.isfinite(values["loss"]) and bool(values["overflow"]) and values["skipped_steps"] == 1
    assert all(np.array_equal(b, a) for b, a in zip(before, _weights(sess)))

    npu_plugin.INF_NAN_MODE = True
    with v1.Graph().as_default():
        sess, fetches, _ = build_npu_step(cfg)
        values = sess.run(fetches, {_saturation(): 1e30})
        assert not values["overflow"] and values["skipped_steps"] == 0


@pytest.mark.parametrize("inf_nan_mode", [False, True], ids=["float_status", "inf_nan_mode"])
def test_none_gradients_are_dropped_before_the_update(npu, inf_nan_mode):
    from npu_bridge.estimator.npu import npu_plugin
    npu_plugin.INF_NAN_MODE = inf_nan_mode
    sess, fetches, nan_factor = build_npu_step(npu_config(loss_scale="dynamic"), unused_variable=True)
    assert "tiny/unused" in [var.op.name for var in v1.trainable_variables()]
    values = sess.run(fetches)
    assert not values["overflow"] and values["global_step"] == 1
    assert bool(sess.run(fetches, {nan_factor: float("nan")})["overflow"])


def test_the_stand_in_inf_nan_check_fails_on_a_none_gradient_like_the_real_one(npu):
    from npu_bridge.estimator.npu import npu_plugin
    from npu_bridge.estimator.npu.npu_loss_scale_manager import FixedLossScaleManager
    from npu_bridge.estimator.npu.npu_loss_scale_optimizer import NPULossScaleOptimizer
    npu_plugin.INF_NAN_MODE = True
    used = v1.get_variable("used", [2])
    unused = v1.get_variable("unused", [2])
    optimizer = NPULossScaleOptimizer(v1.train.GradientDescentOptimizer(0.1), FixedLossScaleManager(8.0))
    grads_and_vars = optimizer.compute_gradients(v1.reduce_sum(used * used))
    assert [grad is None for grad, _ in grads_and_vars] == [False, True]
    assert grads_and_vars[1][1] is unused
    with pytest.raises(ValueError, match="None gradient for unused"):
        optimizer.apply_gradients(grads_and_vars)


def test_older_adapters_without_the_overflow_check_parameter_and_status_name(npu, monkeypatch):
    """Adapters before mid-2021 have no enable_overflow_check; before early 2021 no overflow_status_reduce_all."""
    from npu_bridge.estimator.npu import npu_loss_scale_manager, npu_loss_scale_optimizer
    from unet_perf.backends import npu as npu_module
    monkeypatch.setattr(npu_loss_scale_manager, "FixedLossScaleManager",
                        npu_loss_scale_manager.LegacyFixedLossScaleManager)
    monkeypatch.setattr(npu_loss_scale_optimizer, "NAMES_OVERFLOW_STATUS", False)
    backend = npu_backend()
    sess, fetches, nan_factor = build_npu_step(npu_config(loss_scale="64"), backend)
    assert npu.calls_named("FixedLossScaleManager") == [dict(loss_scale=64.0)]
    assert backend.overflow_source == npu_module.OVERFLOW_FROM_GRADIENTS
    before = _weights(sess)
    values = sess.run(fetches, {nan_factor: float("nan")})
    assert bool(values["overflow"]) and values["skipped_steps"] == 1 and values["loss_scale"] == 64.0
    assert all(np.array_equal(b, a) for b, a in zip(before, _weights(sess)))


def test_overflow_source_without_loss_scaling_and_loss_scale_kind(npu):
    from unet_perf.backends import npu as npu_module
    backend = npu_backend()
    cfg = npu_config(precision_mode="force_fp32")
    build_npu_step(cfg, backend)
    assert backend.overflow_source == npu_module.OVERFLOW_NOT_CHECKED
    assert backend.loss_scale_kind(cfg) == ("none", None)
    assert backend.loss_scale_kind(npu_config(precision_mode="allow_fp32_to_fp16")) == ("dynamic", None)


# --- IterationOp: created once, named exactly IterationOp -------------------------------------------------------

def test_prepare_session_twice_reuses_the_iteration_op(npu):
    backend = npu_backend()
    cfg = npu_config(iterations_per_loop=2, max_steps=8, save_checkpoints_steps=4)
    sess, fetches, _ = build_npu_step(cfg, backend)
    again = backend.prepare_session(sess, fetches)
    raw_again = backend.prepare_session(sess, {"global_step": v1.train.get_global_step().read_value()})
    assert len(npu.calls_named("set_iteration_per_loop")) == 1
    graph_ops = [op.name for op in v1.get_default_graph().get_operations()]
    assert [name for name in graph_ops if name.startswith("IterationOp")] == ["IterationOp"]
    assert again["loss"] is fetches["loss"] and again[ITERATION_OP_KEY] is fetches[ITERATION_OP_KEY]
    assert raw_again[ITERATION_OP_KEY] is fetches[ITERATION_OP_KEY]
    sess.run(raw_again)  # K steps, too
    assert [sess.run(again)["global_step"], sess.run(fetches)["global_step"]] == [4, 6]


def test_prepare_session_inside_a_name_scope_still_makes_iteration_op(npu):
    backend = npu_backend()
    cfg = npu_config(iterations_per_loop=2, max_steps=8, save_checkpoints_steps=4)
    next_batch, loss_fn, _ = tiny_problem()
    fetches = backend.build_train_loop(cfg, next_batch, loss_fn, v1.train.get_or_create_global_step())
    sess = v1.Session(config=backend.session_config(cfg))
    sess.run(v1.global_variables_initializer())
    with v1.name_scope("outer"):
        fetches = backend.prepare_session(sess, fetches)
    assert fetches[ITERATION_OP_KEY].name == "IterationOp"
    assert sess.run(fetches)["global_step"] == 2


def test_a_taken_iteration_op_name_is_a_clear_error(npu):
    v1.no_op(name="IterationOp")  # e.g. made by an earlier set_iteration_per_loop on this graph
    with pytest.raises(ValueError, match="'IterationOp_1'.*exactly 'IterationOp'"):
        build_npu_step(npu_config(iterations_per_loop=2, max_steps=8, save_checkpoints_steps=4))


def test_a_second_session_on_the_prepared_graph_is_refused(npu):
    backend = npu_backend()
    cfg = npu_config(iterations_per_loop=2, max_steps=8, save_checkpoints_steps=4)
    _, fetches, _ = build_npu_step(cfg, backend)
    with v1.Session() as other:
        with pytest.raises(ValueError, match="another session"):
            backend.prepare_session(other, fetches)


# --- K steps per Session.run against the host loop ------------------------------------------------------------

def _batches(count, seed=3):
    rng = np.random.RandomState(seed)
    images = rng.rand(count, 16, 16, 1).astype(np.float32)
    return images, (images > 0.5).astype(np.float32)


def _train(backend, cfg, make_loss_fn, runs):
    """Runs `runs` Session.runs of cfg's loop on distinct batches; (fetched values per run, {var name: value}).

    `make_loss_fn()` is called inside the new graph."""
    with v1.Graph().as_default():
        loss_fn = make_loss_fn()
        images, masks = _batches(2 * cfg.iterations_per_loop * runs)
        dataset = v1.data.Dataset.from_tensor_slices((images, masks)).batch(2, drop_remainder=True)
        iterator = v1.data.make_initializable_iterator(dataset)
        global_step = v1.train.get_or_create_global_step()
        fetches = backend.build_train_loop(cfg, iterator.get_next, loss_fn, global_step)
        model_vars = [var for var in v1.global_variables()
                      if var.op.name.startswith(("tiny/", "unet/")) and "/Momentum" not in var.op.name]
        with v1.Session(config=backend.session_config(cfg)) as sess:
            sess.run(v1.global_variables_initializer())
            sess.run(iterator.initializer)
            fetches = backend.prepare_session(sess, fetches)
            values = [sess.run(fetches) for _ in range(runs)]
            return values, dict(zip([var.op.name for var in model_vars], sess.run(model_vars)))


def _assert_same_training(npu_result, host_result, k, runs):
    (npu_values, npu_vars), (host_values, host_vars) = npu_result, host_result
    assert_same_weights(npu_vars, host_vars, rtol=1e-4, atol=1e-6)
    assert [int(v["global_step"]) for v in npu_values] == [k * (i + 1) for i in range(runs)]
    assert [int(v["global_step"]) for v in host_values] == [k * (i + 1) for i in range(runs)]
    for key in ("loss", "mean_loss"):  # last iteration's loss; mean over the K iterations of the run
        np.testing.assert_allclose([v[key] for v in npu_values], [v[key] for v in host_values], rtol=1e-4)


def test_k_steps_per_run_match_the_host_loop_on_the_same_batches(npu):
    from unet_perf.backends.host import HostBackend
    k, runs = 4, 2
    cfg = npu_config(iterations_per_loop=k, max_steps=k * runs, save_checkpoints_steps=k, optimizer="momentum",
               learning_rate=0.1, loss_scale="none")
    def make_loss_fn():
        return tiny_problem()[1]

    npu_result = _train(npu_backend(), cfg, make_loss_fn, runs)
    host_result = _train(HostBackend(), cfg, make_loss_fn, runs)
    _assert_same_training(npu_result, host_result, k, runs)
    losses = [v["loss"] for v in npu_result[0]]
    assert losses[0] != losses[1]  # distinct batches and updated weights: the last iteration's value
    assert npu_result[0][0]["mean_loss"] != pytest.approx(losses[0])  # a mean over K different steps


def test_batch_norm_moving_statistics_update_like_the_host(npu):
    from unet_perf.backends.host import HostBackend
    from unet_perf.training.assembly import make_loss_fn
    k, runs = 2, 2
    cfg = npu_config(iterations_per_loop=k, max_steps=k * runs, save_checkpoints_steps=k, optimizer="momentum",
               learning_rate=0.05, loss_scale="none", batch_norm=True, depth=1, base_filters=2, crop_size=16,
               dropout=0.0)
    def unet_loss_fn():
        return make_loss_fn(cfg, False)

    npu_values, npu_vars = npu_result = _train(npu_backend(), cfg, unet_loss_fn, runs)
    moving = sorted(name for name in npu_vars if "moving_" in name)
    assert moving, "the model built no batch-norm statistics"
    for name in moving:  # initialised to mean 0 / variance 1; trained statistics differ
        start = 0.0 if "moving_mean" in name else 1.0
        assert np.abs(npu_vars[name] - start).max() > 1e-3, name
    _assert_same_training(npu_result, _train(HostBackend(), cfg, unet_loss_fn, runs), k, runs)


# --- the sink loop as the adapter sees it ---------------------------------------------------------------------

def _open_npu_training(tiny_config, source_kind, k=10):
    """cfg and assembly.open_session's (sess, fetches) of the NPU training graph over one of the sources the trainer
    (pipeline), the benchmarks and the profiler (pipeline, cached_batch) build."""
    from unet_perf.training import assembly
    cfg = tiny_config(iterations_per_loop=k, max_steps=k, save_checkpoints_steps=k, synthetic_count=4,
                      synthetic_size=64, xla_augment="off", precision_mode="allow_mix_precision")
    training = assembly.build(cfg, assembly.dataset_source(cfg, source_kind), backend=npu_backend())
    return cfg, training, assembly.open_session(training, cfg)


def test_multiclass_softmax_and_loss_are_kept_float32_and_the_convolutions_are_not(npu, tiny_config):
    """allow_mix_precision lets the device run ops in float16: for C >= 2 the ops from the logits to the loss are built
    in the adapter's keep_dtype_scope (attribute _keep_dtype), the network is not; C = 1 graphs stay as they were."""
    from unet_perf.training import assembly

    def ops_and_kept(cfg):
        graph = assembly.build(cfg, assembly.cached_batch_source(cfg), backend=npu_backend()).graph
        ops = graph.get_operations()
        return {op.type for op in ops}, {op.type for op in ops if op.node_def.attr["_keep_dtype"].b}

    settings = dict(iterations_per_loop=1, max_steps=1, save_checkpoints_steps=1, loss="ce_dice",
                    precision_mode="allow_mix_precision")
    types, kept = ops_and_kept(tiny_config(num_classes=3, **settings))
    assert {"Softmax", "SparseSoftmaxCrossEntropyWithLogits", "Sum"} <= kept
    assert "Conv2D" in types and not kept & {"Conv2D", "BiasAdd", "Relu", "FusedBatchNormV3"}
    assert npu.calls_named("keep_dtype_scope")
    del npu.CALLS[:]
    assert ops_and_kept(tiny_config(**settings))[1] == set()
    assert not npu.calls_named("keep_dtype_scope")


def _nodes_grappler_left(sess, fetches):
    """(fetched values, names of the nodes TensorFlow executed): the partition graphs after Grappler, what the
    adapter's partition pass receives."""
    metadata = v1.RunMetadata()
    values = sess.run(fetches, options=v1.RunOptions(output_partition_graphs=True), run_metadata=metadata)
    return values, [node.name for graph_def in metadata.partition_graphs for node in graph_def.node]


@pytest.mark.parametrize("source_kind", ["pipeline", "cached_batch"])
def test_grappler_keeps_the_iteration_op_that_open_session_fetches(npu, tiny_config, source_kind):
    """TensorFlow's own Grappler, with the rewriter settings of the session config (remapping and memory
    optimisation off as the adapter's guide sets them, every other pass on), on the exact fetches open_session hands
    to the trainer, the benchmarks and the profiler: a node named IterationOp must survive, or the device runs one
    step per Session.run."""
    from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig
    cfg, training, (sess, fetches) = _open_npu_training(tiny_config, source_kind)
    try:
        rewrite = training.backend.session_config(cfg).graph_options.rewrite_options
        assert not rewrite.disable_meta_optimizer and rewrite.dependency_optimization != RewriterConfig.OFF
        values, nodes = _nodes_grappler_left(sess, fetches)
        assert "IterationOp" in nodes
        assert values["global_step"] == 10  # the stand-in looped: IterationOp was fetched
        # Control: reached only through control edges of the fetched tensors (the wiring before issue 19), the
        # dependency optimizer removes the NoOp.
        with training.graph.as_default(), v1.control_dependencies([fetches[ITERATION_OP_KEY]]):
            through_edges = dict((key, v1.identity(fetches[key])) for key in FETCH_KEYS)
        _, nodes = _nodes_grappler_left(sess, through_edges)
        assert "IterationOp" not in nodes and any(name.startswith("npu_train_step") for name in nodes)
    finally:
        sess.close()


def _trainer_cfg(tiny_config, tmp_path, **overrides):
    values = dict(iterations_per_loop=2, max_steps=4, save_checkpoints_steps=2, synthetic_count=4,
                  synthetic_size=64, xla_augment="off", summary_images=0, model_dir=str(tmp_path / "run"))
    values.update(overrides)
    return tiny_config(**values)


def test_a_device_that_runs_the_graph_once_stops_training_with_one_line(npu, tiny_config, tmp_path, monkeypatch):
    """The trainer checks after every Session.run that global_step moved by K: a device loop that did not happen
    (IterationOp optimised away) is a one-line error naming --iterations_per_loop, not a K-times too high rate."""
    import io

    from npu_bridge.estimator.npu import util

    from unet_perf.training import run as trainer
    # (a healthy stand-in run through the trainer passes the check: tests/tools/test_modelzoo_scripts.py, 8p)
    monkeypatch.setattr(util._DeviceLoop, "_fetches_iteration_op", lambda self, fetches: False)
    cfg = _trainer_cfg(tiny_config, tmp_path, device="npu", model_dir=str(tmp_path / "once"))
    with pytest.raises(UserError) as info:
        trainer.train(cfg, out=io.StringIO())
    message = str(info.value)
    assert "from 0 to 1" in message and "--iterations_per_loop is 2" in message and "\n" not in message


def test_bf16_precision_modes_are_refused_on_ascend_910_only(npu):
    from unet_perf.backends.npu import NpuBackend
    next_batch, loss_fn, _ = tiny_problem()
    step = v1.train.get_or_create_global_step()
    for mode in ("allow_mix_precision_bf16", "allow_fp32_to_bf16"):
        for chip in ("Ascend910A", "Ascend910ProB"):
            with pytest.raises(UserError) as info:
                NpuBackend(chip=lambda: chip).build_train_loop(npu_config(precision_mode=mode), next_batch, loss_fn,
                                                               step)
            message = str(info.value)
            assert mode in message and chip in message and "\n" not in message
            with pytest.raises(UserError, match=mode):
                NpuBackend(chip=lambda: chip).session_config(npu_config(precision_mode=mode))
    # Kept where the chip has bf16 (910B), and when the chip is unknown (no pyACL): the device decides.
    for chip in ("Ascend910B1", None):
        config = NpuBackend(chip=lambda: chip).session_config(npu_config(precision_mode="allow_mix_precision_bf16"))
        assert config.graph_options.rewrite_options.custom_optimizers[0].parameter_map["precision_mode"].s == \
            b"allow_mix_precision_bf16"
    NpuBackend(chip=lambda: "Ascend910A").session_config(npu_config(precision_mode="allow_mix_precision"))


def test_the_start_up_session_fixes_precision_mode_and_profiling_for_the_process(npu, tmp_path, monkeypatch):
    """As GE does, the stand-in takes precision_mode/profiling from the first NPU session (HCCL's initialize_system
    session with several devices) and ignores later sessions' values: that session must carry the training
    config."""
    from npu_bridge import ge_plugin

    from unet_perf import cluster as cluster_lib
    from unet_perf.backends.hccl import NpuCollectives
    from unet_perf.backends.npu import NpuBackend

    table = write_rank_table(str(tmp_path / "table.json"), 2)
    env = {"RANK_TABLE_FILE": table, "RANK_ID": "0", "RANK_SIZE": "2", "ASCEND_DEVICE_ID": "0", "JOB_ID": "job"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = npu_config(precision_mode="allow_fp32_to_fp16", iterations_per_loop=2, save_checkpoints_steps=4)
    backend = NpuBackend(collectives=NpuCollectives(cluster_lib.from_rank_table(table, 0, 2), 60), cfg=cfg)
    try:
        assert backend.session_target() == ""
        assert ge_plugin.effective()["precision_mode"] == "allow_fp32_to_fp16"
        # a later session's precision_mode is ignored, as by the real plugin
        with v1.Session(config=backend.session_config(npu_config(precision_mode="force_fp32"))) as later:
            later.run(v1.constant(1.0))
        assert ge_plugin.effective()["precision_mode"] == "allow_fp32_to_fp16"
        assert [options["precision_mode"] for options in ge_plugin.ignored()] == ["force_fp32"]
    finally:
        backend.collectives.shutdown()


def test_the_hccl_stand_in_refuses_64_bit_all_reduces_and_the_engine_sends_int32_words(npu, tmp_path, monkeypatch):
    from npu_bridge.hccl import hccl_ops

    from unet_perf import cluster as cluster_lib
    from unet_perf.backends.hccl import NpuCollectives

    monkeypatch.setattr(hccl_ops, "_world_size", lambda: 2)  # build only: no peers
    for dtype in (v1.int64, v1.float64):
        with pytest.raises(TypeError, match="not in list of allowed values"):
            hccl_ops.allreduce(v1.constant([1, 2], dtype), "max")
    table = write_rank_table(str(tmp_path / "table.json"), 2)
    collectives = NpuCollectives(cluster_lib.from_rank_table(table, 0, 2), 60,
                                 env={"RANK_TABLE_FILE": table, "ASCEND_DEVICE_ID": "0", "JOB_ID": "job"})
    del npu.CALLS[:]
    reduced = collectives.all_reduce(v1.constant([2.0 ** 52 - 1, -3.0], v1.float64), merge_op="Max", final_op="Id")
    assert reduced.dtype == v1.float64
    assert [call["tensor"].dtype for call in npu.calls_named("hccl_ops.allreduce")] == [v1.int32, v1.int32]
    with pytest.raises(ValueError, match="64-bit values only as Max/Min"):
        collectives.all_reduce(v1.constant([1.0], v1.float64))  # a float64 mean has no int32 form here


# --- device selection, validation, missing npu_bridge ---------------------------------------------------------

def test_auto_device_picks_npu_when_npu_bridge_imports(npu):
    try:
        from unet_perf.backends import get_backend
    except ImportError as err:
        pytest.fail("unet_perf.backends.get_backend is missing ({})".format(err))
    backend = get_backend(npu_config(device="auto"))
    assert backend.name == "npu"
    assert get_backend(npu_config(device="npu")).name == "npu"


def test_step_counts_must_be_multiples_of_k(npu):
    with pytest.raises(UserError, match="multiple of --iterations_per_loop"):
        npu_config(iterations_per_loop=4, max_steps=10, save_checkpoints_steps=4).validate()
    with pytest.raises(UserError, match="save_checkpoints_steps"):
        npu_config(iterations_per_loop=4, max_steps=8, save_checkpoints_steps=6).validate()
    with pytest.raises(UserError, match="val_every"):
        npu_config(iterations_per_loop=4, max_steps=8, save_checkpoints_steps=4, val_every=2).validate()
    from unet_perf.training import assembly

    bad = npu_config(iterations_per_loop=3)
    with pytest.raises(UserError):  # a Config built in code is checked where the graph is assembled, too
        assembly.build(bad, assembly.cached_batch_source(bad), backend=npu_backend())


def test_multi_device_rank_size_is_refused(npu, monkeypatch):
    monkeypatch.setenv("RANK_SIZE", "8")
    with pytest.raises(UserError, match="RANK_SIZE"):
        npu_backend()


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
    with open(NPU_BRIDGE_API) as handle:
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


@pytest.mark.skipif(not os.path.exists(NPU_BRIDGE_API), reason="../shared/compat/npu_bridge_api.txt not present")
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

