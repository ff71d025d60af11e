"""data.sources (layouts, formats, every user error) and data.loading (Config -> train/val/weights)."""
import os
import warnings

import cv2
import numpy as np
import pytest
import tifffile

from unet_perf.data.loading import load_dataset, required_size, summarize_slices
from unet_perf.data.sources import load_pairs, natural_key
from unet_perf.errors import UserError

from support import SHARED_DATA

SIDE = 32


def _image(index, side=SIDE):
    return ((np.arange(side * side).reshape(side, side) + 7 * index) % 256).astype(np.uint8)


def _label(index, side=SIDE):
    label = np.full((side, side), 255, np.uint8)
    label[(index % side), :] = 0  # a membrane row whose position identifies the slice
    return label


def _write_folders(root, count, ext=".png", label_ext=".png", side=SIDE):
    for sub in ("image", "label"):
        os.makedirs(os.path.join(str(root), sub), exist_ok=True)
    for index in range(count):
        cv2.imwrite(os.path.join(str(root), "image", "{}{}".format(index, ext)), _image(index, side))
        cv2.imwrite(os.path.join(str(root), "label", "{}{}".format(index, label_ext)), _label(index, side))
    return str(root)


def _write_volumes(root, count):
    os.makedirs(str(root), exist_ok=True)
    images = np.stack([_image(i) for i in range(count)])
    labels = np.stack([_label(i) for i in range(count)])
    tifffile.imwrite(os.path.join(str(root), "train-volume.tif"), images, photometric="minisblack")
    tifffile.imwrite(os.path.join(str(root), "train-labels.tif"), labels, photometric="minisblack")
    return str(root)


def _error(path, **kwargs):
    with pytest.raises(UserError) as info:
        load_pairs(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- layouts ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sub", ["", "train", os.path.join("data", "membrane", "train")])
def test_folder_layouts_pair_by_stem_in_natural_order(tmp_path, sub):
    _write_folders(tmp_path / sub if sub else tmp_path, 12)
    pairs = load_pairs(str(tmp_path))
    assert pairs.names == [str(i) for i in range(12)]  # 2 before 10
    assert pairs.images.dtype == np.uint8 and pairs.images.shape == (12, SIDE, SIDE)
    assert pairs.masks.dtype == np.uint8 and set(np.unique(pairs.masks)) == {0, 1}
    for index in (2, 10):
        np.testing.assert_array_equal(pairs.images[index], _image(index))
        np.testing.assert_array_equal(pairs.masks[index], _label(index) // 255)


def test_images_and_labels_match_by_stem_across_formats(tmp_path):
    _write_folders(tmp_path, 3, ext=".tif", label_ext=".png")
    pairs = load_pairs(str(tmp_path))
    np.testing.assert_array_equal(pairs.masks[1], _label(1) // 255)
    np.testing.assert_array_equal(pairs.images[1], _image(1))


def test_isbi_volume_pages_become_slices(tmp_path):
    _write_volumes(tmp_path / "train", 5)
    pairs = load_pairs(str(tmp_path))
    assert pairs.names == ["train-volume.tif[{}]".format(i) for i in range(5)]
    np.testing.assert_array_equal(pairs.images[4], _image(4))
    np.testing.assert_array_equal(pairs.masks[3], _label(3) // 255)


def test_labels_in_zero_one_and_single_value_are_accepted(tmp_path):
    root = _write_folders(tmp_path, 2)
    cv2.imwrite(os.path.join(root, "label", "0.png"), _label(0) // 255)
    cv2.imwrite(os.path.join(root, "label", "1.png"), np.full((SIDE, SIDE), 255, np.uint8))
    pairs = load_pairs(root)
    np.testing.assert_array_equal(pairs.masks[0], _label(0) // 255)
    assert pairs.masks[1].min() == 1


def test_16bit_images_map_full_range_to_uint8(tmp_path):
    root = _write_folders(tmp_path, 1)
    os.remove(os.path.join(root, "image", "0.png"))
    ramp = np.array([[0, 257, 32896, 65535]] * 4, np.uint16)
    cv2.imwrite(os.path.join(root, "image", "0.tif"), ramp)
    cv2.imwrite(os.path.join(root, "label", "0.png"), np.full((4, 4), 255, np.uint8))
    pairs = load_pairs(root)
    np.testing.assert_array_equal(pairs.images[0][0], [0, 1, 128, 255])


def test_rgb_converts_with_warning_or_is_refused(tmp_path):
    root = _write_folders(tmp_path, 2)
    colour = np.zeros((SIDE, SIDE, 3), np.uint8)
    colour[..., 2] = 200  # pure red in BGR
    cv2.imwrite(os.path.join(root, "image", "1.png"), colour)
    with pytest.warns(UserWarning, match="colour"):
        pairs = load_pairs(root, rgb="convert")
    assert pairs.images.shape == (2, SIDE, SIDE)
    assert abs(int(pairs.images[1, 0, 0]) - int(round(0.299 * 200))) <= 1
    message = _error(root, rgb="refuse")
    assert "1.png" in message and "--rgb" in message


def test_gray_saved_as_rgb_is_plain_gray_without_warning(tmp_path):
    root = _write_folders(tmp_path, 1)
    cv2.imwrite(os.path.join(root, "image", "0.png"), np.stack([_image(0)] * 3, axis=-1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pairs = load_pairs(root, rgb="refuse")
    np.testing.assert_array_equal(pairs.images[0], _image(0))


def test_natural_key_orders_numbers_by_value():
    assert sorted(["10", "2", "1", "b", "a10", "a9"], key=natural_key) == ["1", "2", "10", "a9", "a10", "b"]


# --- user errors ------------------------------------------------------------------------------------------------

def test_missing_path_and_unknown_layout(tmp_path):
    assert "does not exist" in _error(str(tmp_path / "nope"))
    (tmp_path / "stuff").mkdir()
    message = _error(str(tmp_path))
    assert "no recognised layout" in message and "train-volume.tif" in message


def test_empty_folders(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "label").mkdir()
    (tmp_path / "image" / "notes.txt").write_text("x")
    message = _error(str(tmp_path))
    assert "holds no images" in message and "image" in message


def test_label_folder_missing(tmp_path):
    (tmp_path / "image").mkdir()
    assert "label" in _error(str(tmp_path))


def test_orphans_are_named(tmp_path):
    root = _write_folders(tmp_path, 3)
    os.remove(os.path.join(root, "label", "1.png"))
    message = _error(root)
    assert "no label for 1.png" in message
    root2 = _write_folders(tmp_path / "b", 2)
    cv2.imwrite(os.path.join(root2, "label", "7.png"), _label(0))
    assert "no image for 7.png" in _error(root2)


def test_volume_page_count_mismatch(tmp_path):
    root = _write_volumes(tmp_path, 4)
    tifffile.imwrite(os.path.join(root, "train-labels.tif"), np.stack([_label(0)] * 3), photometric="minisblack")
    message = _error(root)
    assert "4 pages" in message and "3" in message and "train-labels.tif" in message


def test_size_mismatch_between_image_and_label(tmp_path):
    root = _write_folders(tmp_path, 2)
    cv2.imwrite(os.path.join(root, "label", "1.png"), _label(1, side=16))
    message = _error(root)
    assert "1.png" in message and "32x32" in message and "16x16" in message


def test_slices_of_different_sizes(tmp_path):
    root = _write_folders(tmp_path, 2)
    cv2.imwrite(os.path.join(root, "image", "1.png"), _image(1, side=16))
    cv2.imwrite(os.path.join(root, "label", "1.png"), _label(1, side=16))
    assert "one size" in _error(root)


def test_zero_byte_corrupt_and_truncated_files(tmp_path):
    root = _write_folders(tmp_path, 2)
    path = os.path.join(root, "image", "1.png")
    open(path, "wb").close()
    assert "1.png is empty" in _error(root)
    with open(path, "wb") as handle:
        handle.write(b"not an image at all" * 20)
    assert "cannot be decoded" in _error(root)
    cv2.imwrite(path, _image(1))
    data = open(path, "rb").read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
    assert "1.png" in _error(root)


def test_truncated_jpeg_and_tiff_are_caught(tmp_path):
    """OpenCV silently decodes the readable part of these, so sources checks the file structure."""
    root = _write_folders(tmp_path, 1, ext=".jpg")
    path = os.path.join(root, "image", "0.jpg")
    data = open(path, "rb").read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) - 100])
    assert "truncated" in _error(root)
    vol = _write_volumes(tmp_path / "vol", 3)
    path = os.path.join(vol, "train-volume.tif")
    data = open(path, "rb").read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
    message = _error(vol)
    assert "train-volume.tif is truncated" in message


def test_non_binary_labels_report_the_count(tmp_path):
    root = _write_folders(tmp_path, 4)
    seventeen = (np.arange(SIDE * SIDE).reshape(SIDE, SIDE) % 17).astype(np.uint8)
    cv2.imwrite(os.path.join(root, "label", "3.png"), seventeen)
    message = _error(root)
    assert "3.png has 17 distinct values" in message and "{0,255}" in message
    cv2.imwrite(os.path.join(root, "label", "3.png"), np.where(_label(3) > 0, 128, 0).astype(np.uint8))
    assert "[0, 128]" in _error(root)


def test_jpeg_labels_that_are_not_binary_suggest_png(tmp_path):
    root = _write_folders(tmp_path, 1, label_ext=".jpg")
    noisy = _label(0).copy()
    noisy[:, ::3] = 0  # sharp edges make JPEG ring
    cv2.imwrite(os.path.join(root, "label", "0.jpg"), noisy)
    assert "save labels as PNG" in _error(root)


def test_min_size_names_the_flags(tmp_path):
    root = _write_folders(tmp_path, 1)
    message = _error(root, min_size=64)
    assert "32x32" in message and "--crop_size" in message and "--input_scale" in message
    assert load_pairs(root, min_size=32).images.shape == (1, SIDE, SIDE)


# --- loading ----------------------------------------------------------------------------------------------------

SOURCES = dict(crop_size=16, synthetic_count=6, synthetic_size=32)  # this file's tiny_config base


def test_required_size_is_crop_over_scale():
    assert required_size(256, 0.5) == 512
    assert required_size(256, 1.0) == 256
    assert required_size(100, 0.3) == 334


def test_load_dataset_splits_files_and_builds_weights(tmp_path, tiny_config):
    root = _write_folders(tmp_path, 6)
    train, val, weights = load_dataset(tiny_config(SOURCES, data_path=root, val_split="4-5", weight_map=True))
    assert train.names == ["0", "1", "2", "3"] and val.names == ["4", "5"]
    np.testing.assert_array_equal(val.masks[1], _label(5) // 255)
    assert weights.dtype == np.float32 and weights.shape == (4, SIDE, SIDE)
    assert weights[0][train.masks[0] == 0].min() > weights[0][train.masks[0] == 1].max()


def test_load_dataset_synthetic_without_split_or_weights(tiny_config):
    train, val, weights = load_dataset(tiny_config(SOURCES, seed=3))
    assert val is None and weights is None
    assert train.images.shape == (6, 32, 32) and train.names[0] == "synthetic[0]"


def test_load_dataset_user_errors(tmp_path, tiny_config):
    root = _write_folders(tmp_path, 4)
    with pytest.raises(UserError, match=r"--batch_size 8 is larger than the 4 training slices in .*"):
        load_dataset(tiny_config(SOURCES, data_path=root, batch_size=8))
    with pytest.raises(UserError, match="--crop_size"):
        load_dataset(tiny_config(SOURCES, data_path=root, crop_size=32, input_scale=0.5))
    with pytest.raises(UserError, match="--synthetic_size"):
        load_dataset(tiny_config(SOURCES, crop_size=32, input_scale=0.5))
    with pytest.raises(UserError, match="--weight_sigma"):
        load_dataset(tiny_config(SOURCES, weight_map=True, weight_sigma=0.0))


def test_summary_reports_count_size_and_membrane_share(tmp_path):
    pairs = load_pairs(_write_folders(tmp_path, 3))
    assert summarize_slices(pairs) == "3 slices 32x32, membrane {:.1f}%".format(100.0 / SIDE)


@pytest.mark.skipif(not os.path.isdir(SHARED_DATA), reason="../shared/data/isbi2012 is not present")
def test_shared_isbi_data_loads():
    pairs = load_pairs(SHARED_DATA, min_size=512)
    assert pairs.images.shape == (24, 512, 512) and pairs.names[:3] == ["0", "1", "2"]
    assert 0.15 < 1.0 - pairs.masks.mean() < 0.30
