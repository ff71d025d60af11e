"""Overlap-tile inference: the numpy tiler, normalisation, the predictor graph, model-dir loading, validation."""
import dataclasses
import json

import numpy as np
import pytest

from unet_perf.inference import tiling
from unet_perf.inference.predictor import Predictor, build_predictor
from unet_perf.input import pipeline
from unet_perf.compat import v1
from unet_perf.data.sources import Pairs
from unet_perf.errors import UserError

from support import make_model_dir, make_tiny_config

NO_DROPOUT = dict(dropout=0.0)


def tiny_config(**overrides):
    """The tiny U-Net without dropout (make_model_dir's default), updated by `overrides`."""
    return make_tiny_config(NO_DROPOUT, **overrides)


def identity(batch):
    return batch.copy()


# --- numpy tiler ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(32, 32), (50, 77), (7, 40), (1, 1), (130, 33)])
@pytest.mark.parametrize("overlap", [0, 8, 15])
def test_tiler_reassembles_the_image_exactly(shape, overlap):
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    calls = []

    def fn(batch):
        calls.append(batch.shape)
        return identity(batch)

    out = tiling.predict_tiled(fn, image, tile=16, overlap=overlap, batch_size=3)
    assert out.shape == shape and out.dtype == np.float32
    np.testing.assert_allclose(out, image, atol=1e-6)
    assert all(call == (3, 16, 16, 1) for call in calls)  # static batch shape, last batch padded


def test_tiler_blends_constant_predictions_to_the_constant():
    out = tiling.predict_tiled(lambda b: np.full(b.shape, 0.3, np.float32), np.zeros((45, 60)), 16, 6, 4)
    np.testing.assert_allclose(out, 0.3, atol=1e-6)


def test_tta_inverts_each_dihedral_transform():
    """A prediction that weights pixels by their column inside the tile is not rotation-equivariant: averaged over
    the 8 transforms, correctly inverted, the weight becomes (c + (t-1-c) + r + (t-1-r)) / 4 / (t-1) = 1/2."""
    tile = 16
    column = np.arange(tile, dtype=np.float32) / (tile - 1)

    def fn(batch):
        return batch * column[None, None, :, None]

    image = np.random.default_rng(1).random((40, 29)).astype(np.float32)
    out = tiling.predict_tiled(fn, image, tile, 4, 5, tta=True)
    np.testing.assert_allclose(out, 0.5 * image, atol=1e-5)
    plain = tiling.predict_tiled(fn, image, tile, 4, 5, tta=False)
    assert not np.allclose(plain, 0.5 * image, atol=1e-3)


def test_tta_runs_eight_transforms_per_tile():
    seen = []
    tiling.predict_tiled(lambda b: seen.append(1) or b, np.zeros((16, 16)), 16, 0, 1, tta=True)
    assert len(seen) == 8


def test_dihedral_inverse_round_trip():
    array = np.arange(12.0).reshape(3, 4)
    square = np.arange(16.0).reshape(4, 4)
    transformed = [tiling.dihedral(square, k) for k in range(8)]
    assert len({t.tobytes() for t in transformed}) == 8  # all 8 are distinct
    for k in range(8):
        np.testing.assert_array_equal(tiling.inverse_dihedral(tiling.dihedral(array, k), k), array)


@pytest.mark.parametrize("kind", ["cosine", "gaussian", "flat"])
def test_blend_window_is_positive_and_peaks_in_the_centre(kind):
    window = tiling.blend_window(16, kind)
    assert window.shape == (16, 16) and (window > 0).all()
    assert window[8, 8] >= window[0, 0] and window[8, 8] >= window[0, 8]
    np.testing.assert_allclose(window, window.T)


def test_overlap_must_be_smaller_than_the_tile():
    with pytest.raises(UserError, match="--overlap"):
        tiling.predict_tiled(identity, np.zeros((20, 20)), 16, 16, 1)


def test_predict_image_rescales_and_restores_the_size():
    """input_scale 0.5: predicted at half size, probability map resized back; a linear ramp survives."""
    cfg = tiny_config(input_scale=0.5, crop_size=16)
    ramp = np.tile(np.linspace(0, 255, 64, dtype=np.float32), (48, 1))
    seen = []

    def fn(batch):
        seen.append(batch.shape)
        return identity(batch)

    prob = tiling.predict_image(fn, ramp, cfg, batch_size=2)
    assert prob.shape == (48, 64)
    np.testing.assert_allclose(prob[:, 4:-4], ramp[:, 4:-4] / 255.0, atol=2e-3)
    assert seen and seen[0] == (2, 16, 16, 1)


# --- normalisation --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["unit", "symmetric", "standard"])
def test_graph_and_numpy_normalisation_agree(mode):
    images = np.random.default_rng(2).integers(0, 256, (2, 8, 8, 1)).astype(np.float32)
    tensor = pipeline.normalize(v1.constant(images / 255.0), mode)  # the training path's normaliser
    with v1.Session() as sess:
        graph_values = sess.run(tensor)
    for index in range(2):
        np.testing.assert_allclose(graph_values[index], tiling.normalize_array(images[index], mode), atol=1e-5)
    if mode == "standard":
        assert abs(graph_values[0].mean()) < 1e-5 and graph_values[0].std() == pytest.approx(1.0, abs=1e-4)
    if mode == "symmetric":
        assert tiling.normalize_array(np.array([0.0, 255.0]), mode).tolist() == [-1.0, 1.0]


def test_standard_normalisation_of_a_flat_image_is_zero():
    assert np.all(tiling.normalize_array(np.full((4, 4), 7.0), "standard") == 0)


# --- graph and model dir --------------------------------------------------------------------------------------

def test_build_predictor_static_shapes_and_shared_variables():
    cfg = tiny_config()
    images, prob = build_predictor(cfg, 3)
    count = len(v1.global_variables())
    assert images.shape.as_list() == [3, 32, 32, 1] and prob.shape.as_list() == [3, 32, 32, 1]
    assert all(v.op.name.startswith("unet/") for v in v1.global_variables())
    build_predictor(cfg, 1, input_name="again", output_name="again_prob")
    assert len(v1.global_variables()) == count  # the second predictor reuses the "unet" variables
    with v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        values = sess.run(prob, {images: np.zeros((3, 32, 32, 1), np.float32)})
    assert ((values > 0) & (values < 1)).all()


def test_predictor_restores_the_saved_weights(tmp_path):
    model_dir, cfg, tile, expected = make_model_dir(tmp_path / "model")
    with Predictor.from_model_dir(model_dir, batch_size=2) as predictor:
        got = predictor.predict_batch(np.concatenate([tile, tile]))
        assert predictor.checkpoint.endswith("model.ckpt-0")
        full = predictor.predict(np.random.default_rng(3).integers(0, 256, (45, 70)).astype(np.uint8))
    np.testing.assert_allclose(got[0], expected[0], atol=1e-5)
    np.testing.assert_allclose(got[1], expected[0], atol=1e-5)
    assert full.shape == (45, 70) and full.dtype == np.float32 and ((full >= 0) & (full <= 1)).all()


def test_predictor_prefers_best_and_honours_precision(tmp_path):
    model_dir, cfg, tile, expected = make_model_dir(tmp_path / "model", seed=0)
    make_model_dir(tmp_path / "model" / "best", seed=5)  # other weights in best/
    with Predictor.from_model_dir(model_dir, batch_size=1) as best:
        from_best = best.predict_batch(tile)
        assert "best" in best.checkpoint
    with Predictor.from_model_dir(model_dir, checkpoint="latest", batch_size=1) as latest:
        np.testing.assert_allclose(latest.predict_batch(tile), expected, atol=1e-5)
        assert conv_dtypes(latest.sess.graph) == {"float32"}
    assert not np.allclose(from_best, expected, atol=1e-3)
    for precision in ("bf16", "fp16"):
        with Predictor.from_model_dir(model_dir, checkpoint="latest", precision=precision,
                                                batch_size=1) as low:
            assert low.cfg.precision == precision
            # the graph really computes in the low precision: every convolution, not only a cast at the input
            assert conv_dtypes(low.sess.graph) == {"bfloat16" if precision == "bf16" else "float16"}
            np.testing.assert_allclose(low.predict_batch(tile), expected, atol=0.05)


def conv_dtypes(graph):
    """Names of the element types the graph's convolutions compute in (fails when there is none)."""
    convs = [op for op in graph.get_operations() if op.type in ("Conv2D", "Conv2DBackpropInput")]
    assert convs
    return set(op.get_attr("T").name for op in convs)


def test_model_dir_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        Predictor.from_model_dir(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="config.json is missing"):
        Predictor.from_model_dir(str(empty))
    (empty / "config.json").write_text(json.dumps(dataclasses.asdict(tiny_config())))
    with pytest.raises(UserError, match="no checkpoint"):
        Predictor.from_model_dir(str(empty))
    model_dir, cfg, _, _ = make_model_dir(tmp_path / "model")
    with pytest.raises(UserError, match="--checkpoint"):
        Predictor.from_model_dir(model_dir, checkpoint=str(tmp_path / "nope"))
    with pytest.raises(UserError, match="--precision"):
        Predictor.from_model_dir(model_dir, precision="fp8")
    config = dataclasses.asdict(tiny_config(base_filters=8))  # config.json disagrees with the checkpoint
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="different architecture"):
        Predictor.from_model_dir(model_dir)


# --- validation hook ------------------------------------------------------------------------------------------

def test_validator_scores_held_out_slices_in_the_training_graph():
    from unet_perf.inference.metrics import evaluate_slices
    from unet_perf.model.network import unet
    from unet_perf.training.validation import Validator

    cfg = tiny_config()
    rng = np.random.default_rng(4)
    masks = np.ones((2, 40, 48), np.uint8)
    masks[:, :, 20:23] = 0
    pairs = Pairs(rng.integers(0, 256, (2, 40, 48)).astype(np.uint8), masks, ["a", "b"])
    # the trainer's own model first, then the validator in the same graph
    unet(v1.zeros([2, 32, 32, 1]), cfg, training=True)
    count = len(v1.global_variables())
    validator = Validator(cfg, pairs, batch_size=2)
    assert len(v1.global_variables()) == count
    with v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        scores = validator.run(sess)
        probs = validator.predict(sess)
    assert set(scores) >= {"v_rand", "v_info", "dice", "pixel_error"}
    assert probs.shape == (2, 40, 48)
    reference = evaluate_slices(probs, masks)
    for key in ("v_rand", "v_info", "dice", "pixel_error"):
        assert scores[key] == pytest.approx(reference[key])
        assert 0.0 <= scores[key] <= 1.0
