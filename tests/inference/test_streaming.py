"""Band-by-band prediction (inference.streaming) and the predict CLI on top of it: same maps as the whole-image path,
bounded memory, stacks written page by page, huge pages streamed into TIFFs, --tile_size/--blend.

Not bitwise equal to tiling.predict_image, by design: the band engine accumulates in float32 (not float64), divides
by the separable blend-weight sums instead of accumulating a weight map, rescales with its own row-streaming
bilinear resampler (cv2.resize's sample positions, not its SIMD rounding) and takes the "standard" mean/std from
float64 sums. Each of these moves a probability by well under 1e-5.
"""
import argparse
import dataclasses
import os
import tracemalloc

import cv2
import numpy as np
import pytest
import tifffile

from unet_perf import predict
from unet_perf.errors import UserError
from unet_perf.inference import cli_flags, streaming, tiling
from unet_perf.inference.image_io import ArraySource, open_pages
from unet_perf.inference.predictor import Predictor

from support import make_model_dir, make_tiny_config

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """One tiny trained-model directory (C = 1, tile 32, depth 2) and its predictor (batch 2)."""
    model_dir, _, _, _ = make_model_dir(tmp_path_factory.mktemp("model"), make_tiny_config(dropout=0.0))
    with Predictor.from_model_dir(model_dir, batch_size=2) as predictor:
        yield model_dir, predictor


def three_classes(predict_batch):
    """A C = 3 model from the C = 1 one: softmax over (p, 1 - p, p^2) scaled; spatially varying, channel-mixing."""
    def run(batch):
        p = predict_batch(batch)[..., 0]
        logits = np.stack([4 * p, 4 * (1 - p), 6 * p * p], axis=-1)
        exp = np.exp(logits - logits.max(-1, keepdims=True))
        return exp / exp.sum(-1, keepdims=True)
    return run


class ThreeClassPredictor(object):
    """The module's predictor seen as a --num_classes 3 model (for the C >= 2 outputs without a second model)."""

    def __init__(self, predictor):
        self.cfg = dataclasses.replace(predictor.cfg, num_classes=3)
        self.inner = predictor

    def predict_source(self, source, sink):
        return streaming.predict_source(three_classes(self.inner.predict_batch), source, self.cfg,
                                        self.inner.batch_size, sink)


CASES = [  # channels, input_scale, normalize, overlap, tta, blend
    (1, 1.0, "unit", None, False, "cosine"),
    (1, 0.5, "standard", 10, True, "cosine"),
    (1, 0.5, "unit", 0, False, "gaussian"),
    (3, 1.0, "standard", 14, False, "gaussian"),
    (3, 0.5, "standard", None, True, "cosine"),
    (3, 0.37, "unit", 8, False, "cosine"),
]


@pytest.mark.parametrize("channels, scale, normalize, overlap, tta, blend", CASES)
def test_band_engine_matches_the_whole_image_path(model, channels, scale, normalize, overlap, tta, blend):
    predictor = model[1]
    cfg = dataclasses.replace(predictor.cfg, input_scale=scale, normalize=normalize)
    fn = predictor.predict_batch if channels == 1 else three_classes(predictor.predict_batch)
    image = np.random.default_rng(channels).integers(0, 256, (97, 75)).astype(np.uint8)
    expected = tiling.predict_image(fn, image, cfg, 2, overlap, tta, blend)
    got = streaming.predict_array(fn, image, cfg, 2, overlap=overlap, tta=tta, blend=blend)
    assert got.shape == expected.shape == ((97, 75) if channels == 1 else (97, 75, 3))
    assert np.abs(got - expected).max() <= TOLERANCE


def peak_bytes(function):
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_of_a_tall_page_is_bounded_by_its_width():
    """An 8000 x 200 page (input_scale 0.5, "standard"): the engine holds a few bands (and a few numbers per row),
    never the page; the whole-image path needs several page-sized buffers (the bound tells them apart)."""
    cfg = make_tiny_config(input_scale=0.5, normalize="standard")
    image = np.random.default_rng(0).integers(0, 256, (8000, 200)).astype(np.float32)
    source = ArraySource(image.astype(np.uint8))
    half = lambda batch: batch * np.float32(0.5)  # noqa: E731 (the model does not matter for memory)
    rows = [0]
    stats = {}

    def stream():
        count = lambda out: rows.__setitem__(0, rows[0] + len(out))  # noqa: E731
        stats.update(streaming.predict_source(half, source, cfg, 4, count))

    bound = image.nbytes // 4
    assert peak_bytes(stream) < bound
    assert rows[0] == 8000
    tile = cfg.crop_size
    assert stats["accumulator"][0] == tile and stats["cached_rows"] <= tile + streaming.READ_ROWS
    assert peak_bytes(lambda: tiling.predict_image(half, image, cfg, 4)) > bound


def write_stack(path, pages):
    assert cv2.imwritemulti(str(path), list(pages))
    return str(path)


def test_stacks_are_written_page_by_page_and_equal_each_page_alone(model, tmp_path):
    predictor = model[1]
    pages = np.random.default_rng(1).integers(0, 256, (20, 30, 36)).astype(np.uint8)
    stack = write_stack(tmp_path / "stack.tif", pages)
    plan = predict.output_plan([(stack, open_pages(stack))], True)
    out = tmp_path / "out"
    out.mkdir()
    written = predict.predict_files(predictor, plan, str(out), 0.5)
    assert len(written) == 20
    probs = tifffile.imread(str(out / "prob.tif"))
    masks = tifffile.imread(str(out / "mask.tif"))
    assert probs.shape == masks.shape == (20, 30, 36)
    for index, page in enumerate(pages):
        alone = predictor.predict(page)
        assert np.abs(probs[index].astype(int) - predict.to_png(alone)).max() <= 1  # rounding at .5 only
        np.testing.assert_array_equal(probs[index], cv2.imread(str(out / "stack_{}_prob.png".format(index)), 0))
        np.testing.assert_array_equal(masks[index], cv2.imread(str(out / "stack_{}_mask.png".format(index)), 0))


def test_huge_pages_are_streamed_into_tiffs(model, tmp_path):
    """With the threshold forced down to 1000 px: a 40 x 50 PNG gets <name>_prob.tif/_mask.tif (C = 1), a C = 3
    model <name>_classes.tif and a 3-sample <name>_probs.tif, no PNG, no overlay; a TIFF with such a page no
    stacks."""
    predictor = model[1]
    image = np.random.default_rng(2).integers(0, 256, (40, 50)).astype(np.uint8)
    png = str(tmp_path / "big.png")
    cv2.imwrite(png, image)
    small = np.random.default_rng(3).integers(0, 256, (20, 30)).astype(np.uint8)
    stack = write_stack(tmp_path / "mixed.tif", [small, image[:, :30]])
    expected = predictor.predict(image)

    one = tmp_path / "one"
    one.mkdir()
    plan = predict.output_plan([(png, open_pages(png)), (stack, open_pages(stack))], False, huge_pixels=1000)
    assert plan[1][3] is None  # no stacks for the TIFF holding a 40 x 30 page
    predict.predict_files(predictor, plan, str(one), 0.5, huge_pixels=1000)
    assert sorted(os.listdir(str(one))) == ["big_mask.tif", "big_prob.tif", "mixed_0_mask.png", "mixed_0_prob.png",
                                            "mixed_1_mask.tif", "mixed_1_prob.tif"]
    prob = tifffile.imread(str(one / "big_prob.tif"))
    assert np.abs(prob.astype(int) - predict.to_png(expected)).max() <= 1
    np.testing.assert_array_equal(tifffile.imread(str(one / "big_mask.tif")), predict.to_mask(expected, 0.5))

    three = tmp_path / "three"
    three.mkdir()
    classes = ThreeClassPredictor(predictor)
    plan = predict.output_plan([(png, open_pages(png))], True, 3, True, huge_pixels=1000)
    predict.predict_files(classes, plan, str(three), 0.5, save_probabilities=True, huge_pixels=1000)
    assert sorted(os.listdir(str(three))) == ["big_classes.tif", "big_probs.tif"]
    reference = streaming.predict_array(three_classes(predictor.predict_batch), image, classes.cfg, 2)
    probs = tifffile.imread(str(three / "big_probs.tif"))
    assert probs.shape == (40, 50, 3)
    assert np.abs(probs.astype(int) - predict.to_png(reference)).max() <= 1
    np.testing.assert_array_equal(tifffile.imread(str(three / "big_classes.tif")), np.argmax(reference, -1))


def flags(model_dir, **values):
    parser = cli_flags.add_inference_flags(argparse.ArgumentParser())
    return parser.parse_args(["--model_dir", model_dir] + [item for key, value in values.items()
                                                           for item in ("--" + key, str(value))])


def test_tile_size_and_blend_reach_the_band_engine(model):
    model_dir = model[0]
    args = flags(model_dir, tile_size=64, blend="gaussian", overlap=12)
    with cli_flags.open_predictor(args) as predictor:
        assert (predictor.tile, predictor.blend) == (64, "gaussian")
        image = np.random.default_rng(5).integers(0, 256, (70, 90)).astype(np.uint8)
        cfg = dataclasses.replace(predictor.cfg, crop_size=64)
        expected = tiling.predict_image(predictor.predict_batch, image, cfg, 4, 12, False, "gaussian")
        assert np.abs(predictor.predict(image) - expected).max() <= TOLERANCE


@pytest.mark.parametrize("values, message", [
    (dict(tile_size=34), "--tile_size 34 must be a positive multiple of 2^depth = 4 for this model; try 32 or 36"),
    (dict(tile_size=30), "try 28 or 32"),
    (dict(tile_size=0), "--tile_size must be positive"),
    (dict(tile_size=64, overlap=64), "--overlap 64 must be smaller than the tile (64 px"),
])
def test_bad_tile_sizes_are_one_line_user_errors(model, values, message):
    args = flags(model[0], **values)
    with pytest.raises(UserError) as caught:
        cli_flags.check_inference_flags(args)
        cli_flags.open_predictor(args).close()
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_predict_cli_prints_the_throughput_line_last(model, tmp_path, capsys):
    stack = write_stack(tmp_path / "s.tif", np.random.default_rng(6).integers(0, 256, (3, 30, 40)).astype(np.uint8))
    assert predict.main(["--model_dir", model[0], "--input", stack, "--output", str(tmp_path / "o"),
                         "--tile_size", "32", "--blend", "gaussian"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("wrote 3 prediction(s)")
    assert lines[-2].startswith("throughput: 0.00 MP in ") and lines[-2].endswith(" MP/s")
    with pytest.raises(SystemExit):
        predict.main(["--model_dir", model[0], "--input", stack, "--output", str(tmp_path / "p"), "--blend", "box"])
