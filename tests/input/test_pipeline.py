"""The tf.data pipeline: static shapes, dtypes, normalisation, epochs, seeding, exact resume, options, errors."""
import numpy as np
import pytest
import tensorflow as tf

from support import take_batches
from unet_perf.input import pipeline
from unet_perf.compat import v1
from unet_perf.errors import UserError
from unet_perf.inference.panels import GAP

SIZE = 24
CROP = 16
PIPELINE = dict(batch_size=3, crop_size=CROP, xla_augment="off", data_threads=1)  # this file's tiny_config base


def numbered_slices(count=6):
    """Slice i is filled with the value 10*i (+ a little texture), so a batch tells which slices it holds."""
    rng = np.random.RandomState(0)
    images = (np.arange(count)[:, None, None] * 10 + rng.randint(0, 3, (count, SIZE, SIZE))).astype(np.uint8)
    masks = (rng.rand(count, SIZE, SIZE) > 0.6).astype(np.uint8)
    return images, masks


def slice_ids(image_batch):
    """Which numbered slice each sample came from (augment off: values stay within 10*i .. 10*i+2)."""
    return [int(round(float(np.median(sample)) * 255.0)) // 10 for sample in image_batch]


@pytest.mark.parametrize("precision,dtype", [("fp32", tf.float32), ("fp16", tf.float16), ("bf16", tf.bfloat16)])
def test_shapes_are_static_and_dtypes_follow_precision(precision, dtype, tiny_config):
    images, masks = numbered_slices()
    weights = np.ones(images.shape, np.float32)
    dataset = pipeline.make_dataset(images, masks, weights, tiny_config(PIPELINE, precision=precision))
    expected = [3, CROP, CROP, 1]
    shapes = v1.data.get_output_shapes(dataset)
    assert [shape.as_list() for shape in shapes] == [expected] * 3
    assert v1.data.get_output_types(dataset) == (dtype, tf.float32, tf.float32)
    batch = pipeline.make_iterator(dataset).get_next()
    assert [tensor.shape.as_list() for tensor in batch] == [expected] * 3
    image, mask, weight = take_batches(dataset, 1)[0]
    assert image.shape == tuple(expected) and weight.shape == tuple(expected)
    assert set(np.unique(mask)) <= {0.0, 1.0}


def test_cached_batch_source_gives_class_ids_for_multiclass(tiny_config):
    from unet_perf.training import assembly
    for num_classes, expected in ((1, {0.0, 1.0}), (4, {0.0, 1.0, 2.0, 3.0})):
        cfg = tiny_config(num_classes=num_classes)
        batch = take_batches(assembly.cached_batch_source(cfg)(), 1)[0]
        assert batch[1].dtype == np.float32 and batch[1].shape == (2, 32, 32, 1)
        assert set(np.unique(batch[1])) == expected


def test_without_weights_yields_pairs(tiny_config):
    images, masks = numbered_slices()
    dataset = pipeline.make_dataset(images, masks, None, tiny_config(PIPELINE))
    assert len(v1.data.get_output_shapes(dataset)) == 2


def test_each_epoch_visits_every_slice_once(tiny_config):
    images, masks = numbered_slices(6)
    cfg = tiny_config(PIPELINE, augment=False, batch_size=3)
    batches = take_batches(pipeline.make_dataset(images, masks, None, cfg), 4)  # two epochs of 6 slices
    first_epoch = slice_ids(batches[0][0]) + slice_ids(batches[1][0])
    second_epoch = slice_ids(batches[2][0]) + slice_ids(batches[3][0])
    assert sorted(first_epoch) == list(range(6))
    assert sorted(second_epoch) == list(range(6))
    assert first_epoch != second_epoch or first_epoch != list(range(6))  # shuffled, not in file order


def test_same_seed_same_batches_other_seed_other_batches(tiny_config):
    images, masks = numbered_slices()
    cfg = tiny_config(PIPELINE)
    first = take_batches(pipeline.make_dataset(images, masks, None, cfg, seed=3), 3)
    with v1.Graph().as_default():
        again = take_batches(pipeline.make_dataset(images, masks, None, cfg, seed=3), 3)
    with v1.Graph().as_default():
        other = take_batches(pipeline.make_dataset(images, masks, None, cfg, seed=4), 3)
    for ours, theirs in zip(first, again):
        np.testing.assert_array_equal(ours[0], theirs[0])
        np.testing.assert_array_equal(ours[1], theirs[1])
    assert not np.array_equal(first[0][0], other[0][0])


def test_start_batch_continues_the_uninterrupted_stream(tiny_config):
    images, masks = numbered_slices()
    cfg = tiny_config(PIPELINE)
    full = take_batches(pipeline.make_dataset(images, masks, None, cfg, seed=1), 7)
    with v1.Graph().as_default():
        resumed = take_batches(pipeline.make_dataset(images, masks, None, cfg, seed=1, start_batch=5), 2)
    np.testing.assert_array_equal(resumed[0][0], full[5][0])
    np.testing.assert_array_equal(resumed[1][1], full[6][1])
    assert not np.array_equal(resumed[0][0], full[0][0])


@pytest.mark.parametrize("mode", ["unit", "symmetric", "standard"])
def test_normalisation(mode, tiny_config):
    images, masks = numbered_slices()
    images[:, :, : SIZE // 2] = 200  # contrast inside every image
    cfg = tiny_config(PIPELINE, augment=False, normalize=mode)
    image = take_batches(pipeline.make_dataset(images, masks, None, cfg), 1)[0][0]
    with v1.Graph().as_default():
        unit = take_batches(pipeline.make_dataset(images, masks, None, tiny_config(PIPELINE, augment=False)), 1)[0][0]
    if mode == "unit":
        assert 0.0 <= image.min() and image.max() <= 1.0
    elif mode == "symmetric":
        np.testing.assert_allclose(image, unit * 2.0 - 1.0, atol=1e-6)
    else:
        per_image = image.reshape(len(image), -1)
        np.testing.assert_allclose(per_image.mean(axis=1), 0.0, atol=1e-5)
        np.testing.assert_allclose(per_image.std(axis=1), 1.0, atol=1e-4)


def test_dataset_options_follow_the_config(tiny_config):
    images, masks = numbered_slices()
    cfg = tiny_config(PIPELINE, data_threads=2, data_intra_op=1, deterministic=True)
    options = pipeline.make_dataset(images, masks, None, cfg).options()
    threading = getattr(options, "threading", None) or options.experimental_threading
    assert threading.private_threadpool_size == 2
    assert threading.max_intra_op_parallelism == 1
    assert getattr(options, "deterministic", None) in (True, None)
    assert options.experimental_deterministic is True


def test_bad_arrays_raise_user_errors(tiny_config):
    images, masks = numbered_slices()
    with pytest.raises(UserError, match="masks"):
        pipeline.make_dataset(images, masks[:, :10], None, tiny_config(PIPELINE))
    with pytest.raises(UserError, match="uint8"):
        pipeline.make_dataset(images.astype(np.float32), masks, None, tiny_config(PIPELINE))
    with pytest.raises(UserError, match="weight"):
        pipeline.make_dataset(images, masks, np.ones((2, 3, 3), np.float32), tiny_config(PIPELINE))
    with pytest.raises(UserError, match="--normalize"):
        pipeline.make_dataset(images, masks, None, tiny_config(PIPELINE, normalize="zscore"))


def test_preview_cli_writes_one_row_per_pair(tmp_path, capsys):
    from unet_perf import preview

    out = tmp_path / "preview.png"
    args = ["--out", str(out), "--count", "3", "--synthetic_count", "2", "--synthetic_size", "64",
            "--crop_size", "32", "--xla_augment", "off"]
    with pytest.raises(SystemExit) as exit_info:
        preview.run_cli(preview.main, args)
    assert exit_info.value.code == 0
    import cv2
    written = cv2.imread(str(out))
    assert written.shape == (3 * 32 + 2 * GAP, 2 * 32 + GAP, 3)
    assert str(out) in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        preview.run_cli(preview.main, ["--out", str(tmp_path / "missing" / "p.png")])
    assert exit_info.value.code == 2
    assert "error: --out" in capsys.readouterr().err
