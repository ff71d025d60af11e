"""predict / evaluate CLIs and the frozen-graph + SavedModel export, on a tiny model dir built here."""
import csv
import json
import os

import cv2
import numpy as np
import pytest

from unet_perf import evaluate, export, predict
from unet_perf.compat import v1
from unet_perf.inference.predictor import Predictor, build_predictor, restore

from support import make_model_dir


@pytest.fixture
def model_dir(tmp_path):
    return make_model_dir(tmp_path / "model")[0]


def run(main, argv, capsys):
    """Run a CLI main through run_cli; returns (exit code, stdout, stderr)."""
    from unet_perf.errors import run_cli

    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def write_slices(folder, count, size=(40, 52), seed=0, labels=False):
    rng = np.random.default_rng(seed)
    (folder / "image").mkdir(parents=True)
    if labels:
        (folder / "label").mkdir()
    for index in range(count):
        cv2.imwrite(str(folder / "image" / "{}.png".format(index)), rng.integers(0, 256, size).astype(np.uint8))
        if labels:
            mask = np.full(size, 255, np.uint8)
            mask[:, 20 + index] = 0
            cv2.imwrite(str(folder / "label" / "{}.png".format(index)), mask)


# --- predict -----------------------------------------------------------------------------------------------

def test_predict_folder_writes_probability_and_mask_pngs(tmp_path, model_dir, capsys):
    write_slices(tmp_path / "in", 3)
    code, out, _ = run(predict.main, ["--model_dir", model_dir, "--input", str(tmp_path / "in" / "image"),
                                      "--output", str(tmp_path / "out"), "--batch_size", "2"], capsys)
    assert code == 0
    assert "[3/3]" in out  # a line per image when stderr is not a terminal
    with Predictor.from_model_dir(model_dir, batch_size=2) as predictor:
        expected = predictor.predict(cv2.imread(str(tmp_path / "in" / "image" / "1.png"), cv2.IMREAD_GRAYSCALE))
    prob = cv2.imread(str(tmp_path / "out" / "1_prob.png"), cv2.IMREAD_UNCHANGED)
    mask = cv2.imread(str(tmp_path / "out" / "1_mask.png"), cv2.IMREAD_UNCHANGED)
    assert prob.shape == (40, 52) and prob.dtype == np.uint8
    np.testing.assert_allclose(prob / 255.0, expected, atol=1 / 255.0 + 1e-6)
    np.testing.assert_array_equal(mask, np.where(expected > 0.5, 255, 0))
    assert sorted(os.listdir(str(tmp_path / "out"))) == sorted(
        "{}_{}.png".format(i, kind) for i in range(3) for kind in ("prob", "mask"))


def test_predict_multipage_tiff_writes_stacks(tmp_path, model_dir, capsys):
    pages = [np.random.default_rng(i).integers(0, 256, (36, 36)).astype(np.uint8) for i in range(3)]
    volume = str(tmp_path / "test-volume.tif")
    assert cv2.imwritemulti(volume, pages)
    code, _, _ = run(predict.main, ["--model_dir", model_dir, "--input", volume, "--output",
                                    str(tmp_path / "out"), "--tta", "--overlap", "8"], capsys)
    assert code == 0
    ok, stack = cv2.imreadmulti(str(tmp_path / "out" / "prob.tif"), flags=cv2.IMREAD_UNCHANGED)
    assert ok and len(stack) == 3 and stack[0].shape == (36, 36)
    ok, masks = cv2.imreadmulti(str(tmp_path / "out" / "mask.tif"), flags=cv2.IMREAD_UNCHANGED)
    assert ok and len(masks) == 3 and set(np.unique(masks[2]).tolist()) <= {0, 255}
    np.testing.assert_array_equal(stack[2], cv2.imread(str(tmp_path / "out" / "test-volume_2_prob.png"),
                                                       cv2.IMREAD_UNCHANGED))


@pytest.mark.parametrize("case, message", [
    ("no_model_dir", "does not exist"),
    ("no_config", "config.json is missing"),
    ("no_checkpoint", "no checkpoint"),
    ("empty_input", "holds no images"),
    ("missing_input", "--input"),
    ("big_overlap", "--overlap"),
    ("model_dir_is_file", "is a file"),
])
def test_predict_user_errors(tmp_path, capsys, case, message, tiny_config):
    model_dir = str(tmp_path / "model")
    inputs = tmp_path / "in"
    write_slices(inputs, 1)
    input_path = str(inputs / "image")
    extra = []
    if case == "model_dir_is_file":
        open(model_dir, "w").close()
    elif case == "no_config":
        os.makedirs(model_dir)
    elif case == "no_checkpoint":
        os.makedirs(model_dir)
        with open(os.path.join(model_dir, "config.json"), "w") as handle:
            json.dump(tiny_config().__dict__, handle)
    elif case not in ("no_model_dir", "model_dir_is_file"):
        make_model_dir(model_dir)
    if case == "empty_input":
        input_path = str(tmp_path / "empty")
        os.makedirs(input_path)
    elif case == "missing_input":
        input_path = str(tmp_path / "nowhere")
    elif case == "big_overlap":
        extra = ["--overlap", "32"]
    code, out, err = run(predict.main, ["--model_dir", model_dir, "--input", input_path,
                                        "--output", str(tmp_path / "out")] + extra, capsys)
    assert code == 2
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert not os.path.exists(str(tmp_path / "out"))  # a failed predict leaves no (empty) output folder


def test_predict_refuses_inputs_that_would_write_the_same_file(tmp_path, model_dir, capsys):
    (tmp_path / "in").mkdir()
    for name in ("a.png", "a.tif", "b.png"):
        cv2.imwrite(str(tmp_path / "in" / name), np.zeros((32, 32), np.uint8))
    code, out, err = run(predict.main, ["--model_dir", model_dir, "--input", str(tmp_path / "in"),
                                        "--output", str(tmp_path / "out")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "a.png" in err and "a.tif" in err and "a_prob.png" in err
    assert not os.path.exists(str(tmp_path / "out")) and "wrote" not in out


def prediction_files(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)}


def test_predict_into_an_existing_output_needs_overwrite(tmp_path, model_dir, capsys):
    write_slices(tmp_path / "in", 2)
    output = str(tmp_path / "out")
    argv = ["--model_dir", model_dir, "--input", str(tmp_path / "in" / "image"), "--output", output]
    assert run(predict.main, argv, capsys)[0] == 0
    first = prediction_files(output)
    code, _, err = run(predict.main, argv, capsys)
    assert code == 2 and "not empty" in err and "--overwrite" in err
    assert prediction_files(output) == first
    os.remove(str(tmp_path / "in" / "image" / "1.png"))
    assert run(predict.main, argv + ["--overwrite"], capsys)[0] == 0
    assert sorted(prediction_files(output)) == ["0_mask.png", "0_prob.png"]  # replaced, not merged
    open(os.path.join(output, "notes.txt"), "w").close()
    code, _, err = run(predict.main, argv + ["--overwrite"], capsys)
    assert code == 2 and "notes.txt" in err  # --overwrite never deletes what predict did not write
    assert sorted(os.listdir(output)) == ["0_mask.png", "0_prob.png", "notes.txt"]


def test_failed_predict_keeps_the_previous_predictions_and_leaves_nothing(tmp_path, model_dir, capsys,
                                                                           monkeypatch):
    write_slices(tmp_path / "in", 3)
    output = str(tmp_path / "out")
    argv = ["--model_dir", model_dir, "--input", str(tmp_path / "in" / "image"), "--output", output]
    assert run(predict.main, argv, capsys)[0] == 0
    before = prediction_files(output)
    writes = []

    def fail_on_third(path, image):
        writes.append(path)
        if len(writes) == 3:
            raise OSError("disk full")
        cv2.imwrite(path, image)
    monkeypatch.setattr(predict, "write_output_image", fail_on_third)
    with pytest.raises(OSError):
        predict.main(argv + ["--overwrite"])
    assert prediction_files(output) == before  # the old predictions, no half-written new ones, no staging folder


# --- evaluate ----------------------------------------------------------------------------------------------

def test_evaluate_writes_table_json_csv_and_overlays(tmp_path, model_dir, capsys):
    write_slices(tmp_path / "data", 4, labels=True)
    output = tmp_path / "eval"
    code, out, _ = run(evaluate.main, ["--model_dir", model_dir, "--data_path", str(tmp_path / "data"),
                                       "--val_split", "2-3", "--output", str(output)], capsys)
    assert code == 0
    assert "v_rand" in out and "mean" in out
    report = json.loads((output / "metrics.json").read_text())
    assert [row["slice"] for row in report["slices"]] == ["2", "3"]
    for key in ("v_rand", "v_info", "dice", "pixel_error"):
        assert 0.0 <= report["mean"][key] <= 1.0
    assert report["mean"]["pixel_error"] == pytest.approx(
        np.mean([row["pixel_error"] for row in report["slices"]]))
    rows = list(csv.reader((output / "metrics.csv").open()))
    assert rows[0][:3] == ["slice", "v_rand", "v_info"] and rows[-1][0] == "mean" and len(rows) == 4
    strip = cv2.imread(str(output / "3_overlay.png"))
    assert strip.shape == (40, 4 * 52 + 3 * 4, 3)


def test_evaluate_reports_missing_data(tmp_path, model_dir, capsys):
    code, _, err = run(evaluate.main, ["--model_dir", model_dir, "--data_path", str(tmp_path / "none")], capsys)
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err


# --- export ------------------------------------------------------------------------------------------------

def session_prediction(model_dir, batch, height, width, inputs):
    """What a session restored from the model dir predicts for `inputs` at the exported shape."""
    from unet_perf.inference.model_dir import load_config, resolve_checkpoint

    cfg = load_config(model_dir)
    with v1.Graph().as_default() as graph, v1.Session(graph=graph) as sess:
        images, probability = build_predictor(cfg, batch, height, width)
        restore(sess, resolve_checkpoint(model_dir), model_dir, cfg)
        return sess.run(probability, {images: inputs})


def test_export_frozen_graph_and_saved_model_match_the_session(tmp_path, model_dir, capsys):
    output = str(tmp_path / "export")
    code, out, _ = run(export.main, ["--model_dir", model_dir, "--output", output, "--height", "32", "--width",
                                     "64", "--batch", "2"], capsys)
    assert code == 0 and "input:0" in out
    inputs = np.random.default_rng(7).random((2, 32, 64, 1)).astype(np.float32)
    expected = session_prediction(model_dir, 2, 32, 64, inputs)

    graph_def = v1.GraphDef()
    with open(os.path.join(output, "unet.pb"), "rb") as handle:
        graph_def.ParseFromString(handle.read())
    assert not [n.name for n in graph_def.node if n.op in ("VarHandleOp", "VariableV2")]  # really frozen
    with v1.Graph().as_default() as graph:
        v1.import_graph_def(graph_def, name="")
        images = graph.get_tensor_by_name("input:0")
        assert images.shape.as_list() == [2, 32, 64, 1]
        with v1.Session(graph=graph) as sess:
            frozen = sess.run("probability:0", {images: inputs})
    np.testing.assert_allclose(frozen, expected, atol=1e-6)

    with v1.Graph().as_default() as graph, v1.Session(graph=graph) as sess:
        meta = v1.saved_model.loader.load(sess, [v1.saved_model.tag_constants.SERVING],
                                          os.path.join(output, "saved_model"))
        signature = meta.signature_def["serving_default"]
        saved = sess.run(signature.outputs["probability"].name, {signature.inputs["images"].name: inputs})
    np.testing.assert_allclose(saved, expected, atol=1e-6)

    info = json.loads(open(os.path.join(output, "export.json")).read())
    assert info["input"] == "input:0" and info["output"] == "probability:0" and info["shape"] == [2, 32, 64, 1]
    # exporting again into the same folder is refused without --overwrite, and replaces the export with it
    code, _, err = run(export.main, ["--model_dir", model_dir, "--output", output], capsys)
    assert code == 2 and "not empty" in err and "--overwrite" in err
    assert json.loads(open(os.path.join(output, "export.json")).read()) == info
    code, _, _ = run(export.main, ["--model_dir", model_dir, "--output", output, "--overwrite"], capsys)
    assert code == 0
    assert json.loads(open(os.path.join(output, "export.json")).read())["shape"] == [1, 32, 32, 1]
    assert sorted(os.listdir(output)) == ["export.json", "saved_model", "unet.pb"]


def test_failed_export_overwrite_leaves_the_previous_export_intact(tmp_path, model_dir, capsys, monkeypatch):
    output = str(tmp_path / "export")
    assert run(export.main, ["--model_dir", model_dir, "--output", output], capsys)[0] == 0
    before = {name: open(os.path.join(output, name), "rb").read() for name in ("unet.pb", "export.json")}
    saved_model = sorted(os.listdir(os.path.join(output, "saved_model")))

    def fail(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(v1.saved_model.builder.SavedModelBuilder, "save", fail)
    with pytest.raises(OSError):
        export.export_model(model_dir, output, height=64, width=64, overwrite=True)
    assert sorted(os.listdir(output)) == ["export.json", "saved_model", "unet.pb"]
    assert {name: open(os.path.join(output, name), "rb").read() for name in before} == before
    assert sorted(os.listdir(os.path.join(output, "saved_model"))) == saved_model


def test_failed_export_leaves_no_output_folder(tmp_path, model_dir, capsys, monkeypatch):
    monkeypatch.setattr(v1.saved_model.builder.SavedModelBuilder, "save", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        export.export_model(model_dir, str(tmp_path / "new" / "export"))
    assert os.listdir(str(tmp_path)) == ["model"]


def test_export_rejects_shapes_the_unet_cannot_take(tmp_path, model_dir, capsys):
    code, _, err = run(export.main, ["--model_dir", model_dir, "--output", str(tmp_path / "x"), "--height", "30"],
                       capsys)
    assert code == 2 and "--height 30" in err and "2^depth = 4" in err


def test_evaluate_replaces_its_previous_output_and_leaves_nothing_when_it_fails(tmp_path, model_dir, capsys):
    write_slices(tmp_path / "data", 4, labels=True)
    output = tmp_path / "eval"
    argv = ["--model_dir", model_dir, "--data_path", str(tmp_path / "data"), "--output", str(output)]
    assert run(evaluate.main, argv + ["--val_split", "1-2"], capsys)[0] == 0
    assert run(evaluate.main, argv + ["--val_split", "2"], capsys)[0] == 0
    assert sorted(os.listdir(str(output))) == ["2_overlay.png", "metrics.csv", "metrics.json"]  # no stale overlays
    code, _, err = run(evaluate.main, argv[:-1] + [str(tmp_path / "new"), "--overlap", "40"], capsys)
    assert code == 2 and "--overlap" in err
    assert not (tmp_path / "new").exists()
