"""EMA of the weights: updated inside every applied step (K-step loop == K single steps, skipped overflow steps
skip it), saved and resumed with the checkpoint, and read by validation, predict, evaluate and export."""
import json
import os

import numpy as np
import pytest

from unet_perf import export
from unet_perf.model import ema
from unet_perf.compat import v1
from unet_perf.config import config_from_args
from unet_perf.errors import UserError
from unet_perf.inference.predictor import Predictor, build_predictor
from unet_perf.model.optim import EmaOptimizer, make_optimizer
from unet_perf.training.run import train

from support import HOST_LOOP, HostRun, assert_same_weights, blob_arrays, build_npu_step, make_tiny_config, npu_config

KERNEL = "unet/down0/conv1/kernel"
DECAY = 0.9


def _shadow_of(weights, name=KERNEL):
    return weights[ema.shadow_name(name) + ":0"]


def test_k_step_loop_updates_the_average_every_step():
    k = 4
    settings = dict(ema=DECAY, optimizer="momentum", learning_rate=0.05)
    looped = HostRun(make_tiny_config(HOST_LOOP, iterations_per_loop=k, **settings))
    single = HostRun(make_tiny_config(HOST_LOOP, iterations_per_loop=1, **settings))
    assert ema.shadow_name(KERNEL) + ":0" in looped.names
    expected = single.weights()[KERNEL + ":0"]
    np.testing.assert_array_equal(_shadow_of(single.weights()), expected)  # shadows start at the initial weights
    for step in range(k):
        single.run()
        decay = min(DECAY, (1.0 + step) / (10.0 + step))  # the backends advance the global step after the update
        expected = expected - (1.0 - decay) * (expected - single.weights()[KERNEL + ":0"])
    looped.run()
    end = looped.weights()
    assert_same_weights(end, single.weights())
    np.testing.assert_allclose(_shadow_of(end), expected, rtol=1e-5, atol=1e-7)
    assert not np.allclose(_shadow_of(end), end[KERNEL + ":0"], rtol=1e-3, atol=1e-6)


def test_skipped_overflow_step_skips_the_average():
    cfg = make_tiny_config(HOST_LOOP, ema=DECAY, loss_scale="dynamic", loss_scale_init=1024.0,
                           loss_scale_growth_interval=100)
    run = HostRun(cfg, blob_arrays(nan_index=2))  # the second batch is poisoned
    run.run()
    before = run.weights()
    assert run.run()["overflow"]
    np.testing.assert_array_equal(_shadow_of(run.weights()), _shadow_of(before))
    run.run()
    assert not np.array_equal(_shadow_of(run.weights()), _shadow_of(before))


def test_npu_step_updates_the_average_and_overflow_skips_it(npu):
    cfg = npu_config(ema=DECAY, loss_scale="dynamic", loss_scale_init=256.0)
    sess, fetches, nan_factor = build_npu_step(cfg)
    variable = v1.trainable_variables()[0]
    shadow = [var for var in v1.global_variables() if var.op.name == ema.shadow_name(variable.op.name)][0]
    expected = sess.run(variable)
    sess.run(fetches)
    expected = expected - (1.0 - min(DECAY, 1.0 / 10.0)) * (expected - sess.run(variable))  # step 0
    np.testing.assert_allclose(sess.run(shadow), expected, rtol=1e-6)
    assert sess.run(fetches, {nan_factor: float("nan")})["overflow"]
    np.testing.assert_array_equal(sess.run(shadow), expected)


def test_make_optimizer_wraps_only_with_ema():
    assert not isinstance(make_optimizer(make_tiny_config(HOST_LOOP)), EmaOptimizer)
    assert isinstance(make_optimizer(make_tiny_config(HOST_LOOP, ema=0.99)), EmaOptimizer)
    with pytest.raises(UserError, match="--ema"):
        make_tiny_config(HOST_LOOP, ema=1.0).validate()


# --- through the trainer ------------------------------------------------------------------------------------------

ARGS = ["--depth", "2", "--base_filters", "4", "--crop_size", "32", "--synthetic_count", "6", "--synthetic_size",
        "64", "--val_split", "4,5", "--iterations_per_loop", "5", "--save_checkpoints_steps", "10",
        "--val_every", "10", "--summary_images", "0", "--learning_rate", "0.01", "--augment", "false",
        "--deterministic", "true", "--ema", "0.8"]


def _train(model_dir, steps, *extra):
    return train(config_from_args(ARGS + ["--model_dir", str(model_dir), "--max_steps", str(steps)] + list(extra)),
                 out=open(os.devnull, "w"))


def _checkpoint_values(model_dir):
    prefix = v1.train.latest_checkpoint(str(model_dir))
    return dict((name, v1.train.load_variable(prefix, name)) for name, _ in v1.train.list_variables(prefix))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("ema") / "model"
    summary = _train(model_dir, 20)
    return str(model_dir), summary


def test_resume_restores_the_average(trained, tmp_path):
    model_dir, _ = trained
    resumed = tmp_path / "resumed"
    _train(resumed, 10)
    _train(resumed, 20)
    straight = _checkpoint_values(model_dir)
    again = _checkpoint_values(resumed)
    shadow = ema.shadow_name(KERNEL)
    assert not np.allclose(straight[shadow], straight[KERNEL], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(again[shadow], straight[shadow], rtol=1e-4, atol=1e-6)


def test_resume_with_ema_from_a_run_without_it_names_the_flag(tmp_path):
    model_dir = tmp_path / "plain"
    train(config_from_args(ARGS[:-2] + ["--model_dir", str(model_dir), "--max_steps", "10"]),
          out=open(os.devnull, "w"))
    with pytest.raises(UserError, match="--ema 0.0"):
        _train(model_dir, 20)


def _predict_with(values, cfg, tile):
    """P(interior) of `tile` from a fresh inference graph whose model variables are set to `values`."""
    with v1.Graph().as_default():
        images, probability = build_predictor(cfg, 1)
        with v1.Session() as sess:
            for var in v1.global_variables():
                var.load(values[var.op.name], sess)
            return sess.run(probability, {images: tile})


def test_predictor_reads_ema_by_default_and_raw_on_request(trained):
    model_dir, _ = trained
    values = _checkpoint_values(os.path.join(model_dir, "best"))
    averaged = dict((name, values.get(ema.shadow_name(name), value)) for name, value in values.items())
    with Predictor.from_model_dir(model_dir, batch_size=1) as predictor:
        tile = np.random.default_rng(0).random((1, 32, 32, 1)).astype(np.float32)
        assert predictor.weights == "ema"
        got_ema = predictor.predict_batch(tile)
        cfg = predictor.cfg
    with Predictor.from_model_dir(model_dir, batch_size=1, weights="raw") as predictor:
        assert predictor.weights == "raw"
        got_raw = predictor.predict_batch(tile)
    np.testing.assert_allclose(got_ema, _predict_with(averaged, cfg, tile), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_raw, _predict_with(values, cfg, tile), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got_ema, got_raw, rtol=1e-4, atol=1e-5)


def test_validation_during_training_scores_the_average(trained, tmp_path):
    # The trainer's last validation and an evaluation of the last checkpoint with EMA weights agree.
    model_dir, summary = trained
    from unet_perf.evaluate import main as evaluate_main
    output = tmp_path / "eval"
    assert evaluate_main(["--model_dir", model_dir, "--checkpoint", "latest", "--output", str(output)]) == 0
    with open(str(output / "metrics.json")) as handle:
        report = json.load(handle)
    assert report["weights"] == "ema"
    assert summary["validation"]["step"] == 20
    assert report["mean"]["v_rand"] == pytest.approx(summary["validation"]["v_rand"], abs=1e-6)
    assert report["mean"]["pixel_error"] == pytest.approx(summary["validation"]["pixel_error"], abs=1e-6)


def test_export_bakes_in_the_average(trained, tmp_path):
    model_dir, _ = trained
    info = export.export_model(model_dir, str(tmp_path / "export"))
    assert info["weights"] == "ema"
    raw = export.export_model(model_dir, str(tmp_path / "export_raw"), weights="raw")
    assert raw["weights"] == "raw"
    sizes = [os.path.getsize(item["frozen_graph"]) for item in (info, raw)]
    assert sizes[0] == sizes[1]
    assert open(info["frozen_graph"], "rb").read() != open(raw["frozen_graph"], "rb").read()
