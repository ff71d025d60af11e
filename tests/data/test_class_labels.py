"""Issue 21, the data side of --num_classes C >= 2: label decoding (integer PNG / 16-bit TIFF, palette PNG, colours
from a string or a JSON file, --ignore_index, C = 2 0/255), every bad label as one line naming the file and the
value, the synthetic organelle set, class weight maps, median-frequency class weights and class shares."""
import dataclasses
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from support import REPO, make_tiny_config
from unet_perf.data import classes
from unet_perf.data.loading import class_weights_for, load_dataset, read_slices, summarize_slices
from unet_perf.data.sources import load_pairs
from unet_perf.data.synthetic import membranes
from unet_perf.data.weights import border_weight_map
from unet_perf.errors import UserError

SIDE = 16
COLOURS = "0,0,0;255,0,0;0,255,0"  # RGB of classes 0, 1, 2
TABLE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8)


def class_map(index=0):
    """A 3-class map [SIDE, SIDE] whose class-2 column identifies the slice."""
    labels = np.zeros((SIDE, SIDE), np.uint8)
    labels[:4] = 1
    labels[:, 8 + index % 8] = 2
    return labels


def write_set(root, labels, ext=".png"):
    """image/ + label/ folders holding one slice per label array (labels written as given, BGR for colour)."""
    for sub in ("image", "label"):
        os.makedirs(os.path.join(str(root), sub), exist_ok=True)
    for index, label in enumerate(labels):
        cv2.imwrite(os.path.join(str(root), "image", "{}.png".format(index)), np.full((SIDE, SIDE), 9, np.uint8))
        path = os.path.join(str(root), "label", "{}{}".format(index, ext))
        if ext == ".tif":
            tifffile.imwrite(path, label, photometric="minisblack")
        else:
            cv2.imwrite(path, label)
    return str(root)


def spec(num_classes=3, colors="", ignore_index=-1):
    return classes.LabelSpec(num_classes, classes.color_table(colors, num_classes, ignore_index), ignore_index)


def load_error(root, label_spec):
    with pytest.raises(UserError) as info:
        load_pairs(root, spec=label_spec)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- decoding ---------------------------------------------------------------------------------------------------

def test_integer_png_and_16bit_tiff_with_an_ignore_value(tmp_path):
    marked = class_map(1)
    marked[0, :3] = 7  # unlabelled in the files
    png = load_pairs(write_set(tmp_path / "png", [class_map(0), marked]), spec=spec(ignore_index=7))
    tif = load_pairs(write_set(tmp_path / "tif", [class_map(0).astype(np.uint16), marked.astype(np.uint16)],
                               ext=".tif"), spec=spec(ignore_index=7))
    expected = np.where(marked == 7, classes.IGNORE_LABEL, marked)
    for pairs in (png, tif):
        assert pairs.masks.dtype == np.uint8
        np.testing.assert_array_equal(pairs.masks[0], class_map(0))
        np.testing.assert_array_equal(pairs.masks[1], expected)


def test_two_classes_read_a_0_255_mask_as_0_1_unless_255_is_unlabelled(tmp_path):
    binary = np.where(class_map() > 0, 255, 0).astype(np.uint8)
    root = write_set(tmp_path, [binary])
    np.testing.assert_array_equal(load_pairs(root, spec=spec(2)).masks[0], binary // 255)
    np.testing.assert_array_equal(load_pairs(root, spec=spec(2, ignore_index=255)).masks[0], binary)


def test_palette_png_labels_are_their_palette_indices(tmp_path):
    root = write_set(tmp_path, [class_map()])
    palette = Image.fromarray(class_map(), mode="P")
    palette.putpalette([0, 0, 0, 200, 30, 30, 30, 200, 30] + [0] * (253 * 3))  # colours OpenCV would return
    palette.save(os.path.join(root, "label", "0.png"))
    np.testing.assert_array_equal(load_pairs(root, spec=spec()).masks[0], class_map())


def test_rgb_labels_through_class_colors_text_or_json_file_with_an_unlabelled_colour(tmp_path):
    labels = class_map()
    labels[0, 0] = 3  # the unlabelled colour (white), listed last with --ignore_index 3
    table = np.vstack([TABLE, [[255, 255, 255]]])
    root = write_set(tmp_path, [table[labels][:, :, ::-1]])  # OpenCV writes BGR
    json_file = str(tmp_path / "colours.json")
    with open(json_file, "w") as handle:
        json.dump(table.tolist(), handle)
    expected = np.where(labels == 3, classes.IGNORE_LABEL, labels)
    for colours in (COLOURS + ";255,255,255", json_file):
        np.testing.assert_array_equal(load_pairs(root, spec=spec(3, colours, 3)).masks[0], expected)


def test_binary_task_keeps_its_messages(tmp_path):
    root = write_set(tmp_path, [class_map()])
    with pytest.raises(UserError, match=r"0.png has 3 distinct values \[0, 1, 2\]; labels must be binary"):
        load_pairs(root)


# --- one-line errors naming the file and the value --------------------------------------------------------------

def test_a_value_that_is_no_class_names_file_value_pixel_and_fix(tmp_path):
    labels = class_map()
    labels[2, 5] = 4
    message = load_error(write_set(tmp_path, [class_map(), labels]), spec(ignore_index=255))
    assert "1.png has label value 4 (first at pixel (5, 2))" in message
    assert "--num_classes 3 allows 0..2 and --ignore_index 255" in message and "--num_classes 5" in message


def test_num_classes_that_disagrees_with_binary_labels(tmp_path):
    root = write_set(tmp_path, [np.where(class_map() > 0, 255, 0).astype(np.uint8)])
    message = load_error(root, spec(3))
    assert "0.png has label value 255" in message and "--ignore_index 255" in message


def test_a_colour_not_in_the_table_names_file_colour_and_pixel(tmp_path):
    rgb = TABLE[class_map()].copy()
    rgb[3, 6] = [10, 20, 30]
    message = load_error(write_set(tmp_path, [rgb[:, :, ::-1]]), spec(3, COLOURS))
    assert "0.png has colour (10, 20, 30) at pixel (6, 3), which is not in --class_colors" in message


def test_rgb_labels_without_class_colors_say_so(tmp_path):
    message = load_error(write_set(tmp_path, [TABLE[class_map()][:, :, ::-1]]), spec(3))
    assert "0.png is a colour label ((255, 0, 0) at pixel (0, 0)); pass --class_colors" in message


def test_train_cli_stops_at_load_time_with_one_line(tmp_path):
    labels = class_map()
    labels[1, 2] = 9
    root = write_set(tmp_path / "data", [class_map(), labels])
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-m", "unet_perf.train", "--data_path", root, "--num_classes", "3", "--max_steps", "10",
         "--crop_size", str(SIDE), "--input_scale", "1", "--depth", "2", "--base_filters", "4",
         "--model_dir", str(tmp_path / "run")],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "1.png has label value 9 (first at pixel (2, 1))" in lines[0], result.stderr


# --- synthetic classes ------------------------------------------------------------------------------------------

SYNTHETIC = dict(synthetic_count=2, synthetic_size=128, crop_size=32)


@pytest.mark.parametrize("num_classes", [3, 4])
def test_synthetic_classes_are_all_present_with_plausible_shares(num_classes):
    masks = read_slices(make_tiny_config(SYNTHETIC, num_classes=num_classes)).masks
    shares = np.bincount(masks.ravel(), minlength=256)[:num_classes] / float(masks.size)
    assert masks.max() == num_classes - 1
    assert shares[0] > 0.5 and 0.12 < shares[1] < 0.35 and 0.02 < shares[2] < 0.15, shares
    if num_classes == 4:
        assert 0.01 < shares[3] < 0.08, shares


def test_synthetic_two_classes_are_the_membrane_masks_and_five_are_refused():
    np.testing.assert_array_equal(read_slices(make_tiny_config(SYNTHETIC, num_classes=2)).masks,
                                  membranes(2, 128, 0).masks)
    with pytest.raises(UserError, match="synthetic set has 4 classes .* not --num_classes 5"):
        read_slices(make_tiny_config(SYNTHETIC, num_classes=5))


def test_synthetic_organelles_differ_in_brightness():
    pairs = read_slices(make_tiny_config(SYNTHETIC, num_classes=4))
    means = [pairs.images[pairs.masks == label].mean() for label in range(4)]
    assert means[1] + 25 < means[2] < means[0] - 15 and means[3] > means[2] + 15, means


# --- weights ----------------------------------------------------------------------------------------------------

def test_two_class_weight_map_equals_the_binary_one_bit_for_bit():
    mask = membranes(1, 96, seed=3).masks[0]
    for w0 in (10.0, 0.0):
        expected = border_weight_map(mask, w0=w0, sigma=5.0)
        np.testing.assert_array_equal(border_weight_map(mask, w0=w0, sigma=5.0, num_classes=2), expected)


def test_class_weight_map_separates_touching_objects_of_one_class_and_zeroes_unlabelled():
    labels = np.zeros((24, 40), np.uint8)
    labels[4:20, 4:14] = 1
    labels[4:20, 16:26] = 1  # a 2 px gap of class 0 between two class-1 objects
    labels[4:20, 30:36] = 2  # class 2: 4 px from a class-1 object, alone in its class
    labels[0, :] = classes.IGNORE_LABEL
    weights = border_weight_map(labels, w0=10.0, sigma=5.0, num_classes=3)
    balance = border_weight_map(labels, w0=0.0, num_classes=3)
    assert (weights[0] == 0).all()
    present = [balance[labels == label][0] for label in range(3)]
    np.testing.assert_allclose(np.mean(present), 1.0, rtol=1e-6)  # mean 1 over the classes present
    assert present[2] > present[1] > present[0]  # the rarer, the heavier
    gap, beside_class_2 = weights[12, 14] - balance[12, 14], weights[12, 28] - balance[12, 28]
    # touching objects of one class get the border term, objects of two classes do not (ignoring both classes
    # would give 10 exp(-(2 + 3)^2 / 50) = 6.1 there; what is left comes from the far class-1 object)
    assert gap > 5.0 and beside_class_2 < 0.1


def test_median_frequency_weights_by_hand():
    masks = np.array([[[0, 0], [0, 1]], [[0, 0], [2, classes.IGNORE_LABEL]]], np.uint8)
    # freq: class 0 5/7 (7 labelled px hold it), class 1 1/4, class 2 1/3; median 1/3
    np.testing.assert_allclose(classes.median_frequency_weights(masks, 3), [7.0 / 15, 4.0 / 3, 1.0])
    with pytest.raises(UserError, match="class 3 appears in none of the training labels.*--class_weights"):
        classes.median_frequency_weights(masks, 4)


def test_class_weights_for_each_flag_value(tmp_path):
    root = write_set(tmp_path, [class_map(index) for index in range(2)])
    cfg = make_tiny_config(data_path=root, crop_size=SIDE, num_classes=3)
    train, _, _ = load_dataset(cfg)
    assert class_weights_for(cfg, train) is None
    assert class_weights_for(dataclasses.replace(cfg, class_weights="1,2,3"), train) == [1.0, 2.0, 3.0]
    auto = class_weights_for(dataclasses.replace(cfg, class_weights="auto"), train)
    np.testing.assert_allclose(auto, classes.median_frequency_weights(train.masks, 3))
    assert summarize_slices(train, 3) == "2 slices 16x16, classes 0 70.3% 1 23.4% 2 6.2%"
