"""Host backend: the K-step while_loop equals K single steps, loss scaling inside the loop, precisions, fetches."""
import numpy as np
import tensorflow as tf
import pytest

from unet_perf import compat
from unet_perf.backends import get_backend
from unet_perf.backends.base import FETCH_KEYS
from unet_perf.backends.host import HostBackend
from unet_perf.errors import UserError

from support import HOST_LOOP, HostRun, assert_same_weights, blob_arrays


@pytest.mark.parametrize("batch_norm", [False, True])
def test_k_step_loop_equals_k_single_steps(batch_norm, tiny_config):
    k = 4
    looped = HostRun(tiny_config(HOST_LOOP, iterations_per_loop=k, batch_norm=batch_norm))
    single = HostRun(tiny_config(HOST_LOOP, iterations_per_loop=1, batch_norm=batch_norm))
    start = looped.weights()
    out = looped.run()
    single_losses = [single.run()["loss"] for _ in range(k)]
    assert set(out) == set(FETCH_KEYS)
    assert out["global_step"] == k
    assert out["loss"] == pytest.approx(single_losses[-1], rel=1e-4)
    assert out["mean_loss"] == pytest.approx(np.mean(single_losses), rel=1e-4)
    end = looped.weights()
    assert_same_weights(end, single.weights())
    assert not np.allclose(start["unet/down0/conv1/kernel:0"], end["unet/down0/conv1/kernel:0"])
    if batch_norm:
        assert np.any(end["unet/down0/conv1/moving_mean:0"] != 0)


def test_poisoned_batch_skips_update_halves_scale_and_counts_once(tiny_config):
    # Slice 2 is NaN: with batch 2 the second step's batch is poisoned.
    cfg = tiny_config(HOST_LOOP, loss_scale="dynamic", loss_scale_init=1024.0, loss_scale_growth_interval=100)
    run = HostRun(cfg, blob_arrays(nan_index=2))
    first = run.run()
    assert not first["overflow"]
    before = run.weights()
    second = run.run()
    after = run.weights()
    assert second["overflow"]
    assert second["loss_scale"] == 512.0
    assert second["skipped_steps"] == 1
    assert second["scale_changes"] == 1
    assert second["global_step"] == 2
    for name in before:
        if not name.startswith(("global_step", "loss_scale/")):
            assert np.array_equal(before[name], after[name]), name
    third = run.run()
    assert not third["overflow"] and third["skipped_steps"] == 1


def test_loop_keeps_scale_state_across_iterations(tiny_config):
    # Interval 2 over a 6-step loop: the scale doubles three times; a looped NaN batch is skipped once.
    cfg = tiny_config(HOST_LOOP, iterations_per_loop=6, loss_scale="dynamic", loss_scale_init=4.0,
                      loss_scale_growth_interval=2)
    out = HostRun(cfg).run()
    assert out["loss_scale"] == 32.0 and out["scale_changes"] == 3 and out["skipped_steps"] == 0
    poisoned = HostRun(cfg, blob_arrays(nan_index=5)).run()  # step 3 (0-based 2) sees slices 4,5
    assert poisoned["skipped_steps"] == 1
    assert poisoned["global_step"] == 6
    assert poisoned["scale_changes"] == 3  # x2 after steps 0,1; /2 at step 2; x2 after 3,4
    assert poisoned["loss_scale"] == 8.0
    assert not poisoned["overflow"] and np.isfinite(poisoned["loss"])


@pytest.mark.slow
def test_fp16_reaches_fp32_loss_and_bf16_trains(tiny_config):
    losses = {}
    for precision in ("fp32", "fp16", "bf16"):
        cfg = tiny_config(HOST_LOOP, precision=precision, iterations_per_loop=15, dropout=0.0, learning_rate=3e-3,
                          base_filters=8)
        run = HostRun(cfg)
        for _ in range(2):
            out = run.run()
        losses[precision] = out["mean_loss"]
        assert out["skipped_steps"] <= 2
    assert losses["fp32"] < 0.5  # it learned something (BCE starts near 0.7)
    assert abs(losses["fp16"] - losses["fp32"]) <= 0.1 * losses["fp32"]
    assert np.isfinite(losses["bf16"]) and losses["bf16"] < 0.6


def test_training_graph_has_static_shapes(tiny_config):
    run = HostRun(tiny_config(HOST_LOOP, precision="bf16", batch_norm=True))
    tensors = [t for op in run.graph.get_operations() if op.name.startswith("unet/") for t in op.outputs
               if not (op.type.startswith("FusedBatchNorm") and t.value_index >= 3)]  # opaque reserve space
    assert len(tensors) > 100
    assert [t.name for t in tensors if not t.shape.is_fully_defined()] == []
    assert all(value.shape == () for value in run.fetches.values())


def test_session_config_and_backend_selection(tiny_config):
    config = HostBackend().session_config(tiny_config(HOST_LOOP))
    assert config.gpu_options.allow_growth and config.allow_soft_placement
    assert isinstance(get_backend(tiny_config(HOST_LOOP, device="host")), HostBackend)
    if not compat.npu_bridge_available():
        assert isinstance(get_backend(tiny_config(HOST_LOOP, device="auto")), HostBackend)
        with pytest.raises(UserError, match="--device"):
            get_backend(tiny_config(HOST_LOOP, device="npu"))


def test_a_loop_that_runs_fewer_than_k_steps_is_a_one_line_error(tiny_config, tmp_path, monkeypatch):
    """The check after every training Session.run (backends.base.check_loop_steps) covers the host loop too: here
    a fault makes the in-graph while_loop stop one iteration early."""
    import dataclasses
    import io

    from unet_perf.training import assembly
    from unet_perf.training import run as trainer

    cfg = tiny_config(HOST_LOOP, iterations_per_loop=3, max_steps=6, save_checkpoints_steps=3)
    healthy = HostRun(cfg)
    loop = assembly.CheckedRuns(healthy.sess, healthy.fetches, cfg.iterations_per_loop)
    assert [int(loop.run()["global_step"]) for _ in range(2)] == [3, 6] and loop.step == 6

    build = HostBackend.build_train_loop

    def short_loop(self, cfg, *args):
        return build(self, dataclasses.replace(cfg, iterations_per_loop=cfg.iterations_per_loop - 1), *args)

    monkeypatch.setattr(HostBackend, "build_train_loop", short_loop)
    run_cfg = tiny_config(HOST_LOOP, iterations_per_loop=3, max_steps=6, save_checkpoints_steps=3, synthetic_count=4,
                          synthetic_size=64, xla_augment="off", summary_images=0, model_dir=str(tmp_path / "run"))
    with pytest.raises(UserError) as info:  # the trainer checks every run
        trainer.train(run_cfg, out=io.StringIO())
    message = str(info.value)
    assert "from 0 to 2" in message and "--iterations_per_loop is 3" in message and "\n" not in message


def test_three_classes_in_fp16_keep_softmax_and_loss_in_float32_under_loss_scaling(tiny_config):
    from unet_perf.training import assembly

    cfg = tiny_config(HOST_LOOP, num_classes=3, precision="fp16", loss="ce_dice", iterations_per_loop=4,
                      max_steps=8, dropout=0.0, learning_rate=3e-3)
    training = assembly.build(cfg, assembly.cached_batch_source(cfg))
    graph_def = training.graph.as_graph_def()  # the K-step loop's body is a function of the graph's library
    nodes = list(graph_def.node) + [node for function in graph_def.library.function for node in function.node_def]
    dtypes = {}
    for node in nodes:
        if node.op in ("Conv2D", "Softmax", "SparseSoftmaxCrossEntropyWithLogits"):
            dtypes.setdefault(node.op, set()).add(tf.as_dtype(node.attr["T"].type))
    assert dtypes == {"Conv2D": {tf.float16}, "Softmax": {tf.float32},
                      "SparseSoftmaxCrossEntropyWithLogits": {tf.float32}}
    sess, fetches = assembly.open_session(training, cfg)
    with sess:
        runs = assembly.CheckedRuns(sess, fetches, cfg.iterations_per_loop)
        values = [runs.run() for _ in range(2)]
    assert runs.step == 8 and values[-1]["loss_scale"] >= 1.0
    assert np.isfinite(values[-1]["mean_loss"]) and values[-1]["mean_loss"] < values[0]["mean_loss"]
