"""predict / evaluate / export of a --num_classes 3 model (random weights, one model dir for the module)."""
import json
import os

import cv2
import numpy as np
import pytest

from unet_perf import evaluate, export, predict
from unet_perf.compat import v1
from unet_perf.errors import run_cli
from unet_perf.inference.predictor import Predictor

from support import make_model_dir, make_tiny_config

CLASSES = 3


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(model_dir, cfg, tile, softmax of the tile computed by the saving session)."""
    cfg = make_tiny_config(dropout=0.0, num_classes=CLASSES, class_colors="0,0,0;255,0,0;0,0,255")
    return make_model_dir(tmp_path_factory.mktemp("model3"), cfg)


def run(main, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def images(count, size=(36, 44), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size).astype(np.uint8) for _ in range(count)]


def test_predict_writes_class_maps_overlays_and_probabilities(tmp_path, model, capsys):
    model_dir = model[0]
    (tmp_path / "in").mkdir()
    pages = images(2)
    volume = str(tmp_path / "in" / "vol.tif")
    assert cv2.imwritemulti(volume, pages)
    code, _, err = run(predict.main, ["--model_dir", model_dir, "--input", volume, "--output", str(tmp_path / "out"),
                                      "--save_probabilities", "--batch_size", "2"], capsys)
    assert code == 0, err
    out = tmp_path / "out"
    assert sorted(os.listdir(str(out))) == sorted(["classes.tif"] + ["vol_{}{}".format(i, suffix) for i in range(2)
                                                   for suffix in ("_classes.png", "_overlay.png", "_probs.tif")])
    with Predictor.from_model_dir(model_dir, batch_size=2) as predictor:
        expected = predictor.predict(pages[1])
    assert expected.shape == (36, 44, CLASSES)
    classes = cv2.imread(str(out / "vol_1_classes.png"), cv2.IMREAD_UNCHANGED)
    assert classes.dtype == np.uint8 and classes.shape == (36, 44)
    np.testing.assert_array_equal(classes, np.argmax(expected, axis=-1))
    ok, probs = cv2.imreadmulti(str(out / "vol_1_probs.tif"), flags=cv2.IMREAD_UNCHANGED)
    assert ok and len(probs) == CLASSES and probs[0].dtype == np.uint8
    np.testing.assert_allclose(np.stack(probs, -1) / 255.0, expected, atol=1 / 255.0 + 1e-6)
    ok, stack = cv2.imreadmulti(str(out / "classes.tif"), flags=cv2.IMREAD_UNCHANGED)
    assert ok and len(stack) == 2
    np.testing.assert_array_equal(stack[1], classes)
    overlay = cv2.imread(str(out / "vol_1_overlay.png"))
    assert overlay.shape[0] > 36 + CLASSES * 10  # the image, then the legend
    tinted = overlay[:36, :44].astype(int)  # --class_colors of the model: class 1 red, class 2 blue (BGR below)
    assert np.all(tinted[classes == 1][:, 2] > tinted[classes == 1][:, 0])
    assert np.all(tinted[classes == 2][:, 0] > tinted[classes == 2][:, 2])


def test_predict_refuses_class_outputs_that_clash(tmp_path, model, capsys):
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a.png"), images(1)[0])
    assert cv2.imwritemulti(str(tmp_path / "in" / "a.tif"), images(1))
    code, _, err = run(predict.main, ["--model_dir", model[0], "--input", str(tmp_path / "in"),
                                      "--output", str(tmp_path / "out")], capsys)
    assert code == 2 and "a_classes.png" in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(str(tmp_path / "out"))


def test_evaluate_prints_the_class_table_and_writes_class_metrics(tmp_path, model, capsys):
    (tmp_path / "data" / "image").mkdir(parents=True)
    (tmp_path / "data" / "label").mkdir()
    for index, image in enumerate(images(2, seed=1)):
        cv2.imwrite(str(tmp_path / "data" / "image" / "{}.png".format(index)), image)
        label = np.ones(image.shape, np.uint8)
        label[:, 10 + index:14 + index] = 0  # class ids 0 and 1; class 2 absent from the truth
        # the model reads labels through its --class_colors table (RGB): class 0 black, 1 red; OpenCV writes BGR
        bgr = np.array([[0, 0, 0], [0, 0, 255], [255, 0, 0]], np.uint8)[label]
        cv2.imwrite(str(tmp_path / "data" / "label" / "{}.png".format(index)), bgr)
    output = tmp_path / "eval"
    code, out, err = run(evaluate.main, ["--model_dir", model[0], "--data_path", str(tmp_path / "data"),
                                         "--output", str(output)], capsys)
    assert code == 0, err
    assert "class" in out and "dice" in out and "pixel accuracy" in out
    report = json.loads((output / "metrics.json").read_text())
    for key in ("dice_per_class", "iou_per_class", "mean_dice", "mean_iou", "pixel_accuracy", "confusion_matrix",
                "slices", "checkpoint", "source"):
        assert key in report
    assert len(report["dice_per_class"]) == CLASSES and np.array(report["confusion_matrix"]).shape == (3, 3)
    confusion = np.array(report["confusion_matrix"])
    assert confusion.sum() == 2 * 36 * 44
    assert confusion[0].sum() == 2 * 36 * 4 and confusion[2].sum() == 0  # rows = truth, decoded from the colours
    assert len(report["slices"]) == 2 and report["slices"][0]["slice"] == "0"
    assert sorted(os.listdir(str(output))) == ["0_overlay.png", "1_overlay.png", "metrics.csv", "metrics.json"]


def test_export_gives_softmax_and_argmax_like_the_predictor(tmp_path, model, capsys):
    model_dir, cfg, tile, expected = model
    output = tmp_path / "export"
    code, out, err = run(export.main, ["--model_dir", model_dir, "--output", str(output)], capsys)
    assert code == 0, err
    assert "classes:0" in out
    info = json.loads((output / "export.json").read_text())
    assert info["num_classes"] == CLASSES
    assert info["outputs"]["probability"]["shape"] == [1, 32, 32, CLASSES]
    assert info["outputs"]["classes"]["tensor"] == "classes:0" and info["outputs"]["classes"]["dtype"] == "int32"
    with Predictor.from_model_dir(model_dir, batch_size=1) as predictor:
        np.testing.assert_allclose(predictor.predict_batch(tile), expected, atol=1e-5)
    graph_def = v1.GraphDef()
    graph_def.ParseFromString((output / "unet.pb").read_bytes())
    with v1.Graph().as_default() as graph:
        v1.import_graph_def(graph_def, name="")
        with v1.Session(graph=graph) as sess:
            frozen_prob, frozen_classes = sess.run(["probability:0", "classes:0"], {"input:0": tile})
    np.testing.assert_allclose(frozen_prob, expected, atol=1e-5)
    np.testing.assert_array_equal(frozen_classes, np.argmax(frozen_prob, -1))
    assert frozen_classes.dtype == np.int32 and frozen_classes.shape == (1, 32, 32)
    with v1.Graph().as_default() as graph, v1.Session(graph=graph) as sess:
        meta = v1.saved_model.loader.load(sess, ["serve"], str(output / "saved_model"))
        signature = meta.signature_def["serving_default"]
        saved_prob, saved_classes = sess.run(
            [signature.outputs["probability"].name, signature.outputs["classes"].name],
            {signature.inputs["images"].name: tile})
    np.testing.assert_allclose(saved_prob, expected, atol=1e-5)
    np.testing.assert_array_equal(saved_classes, frozen_classes)
