"""The deployment path of a --num_classes 1 model: the frozen graph is what Ascend's ATC takes (static shapes,
inference ops only, batch norm folded), it and the SavedModel's serving signature give the Predictor's
probabilities, and tools/atc_command.py prints (or, with a stand-in atc, runs) the atc line for the export.
No ATC exists here: that ATC accepts the graph is NOT tested. One export of one tiny batch-norm model per module."""
import json
import os
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

import atc_command
from unet_perf import export
from unet_perf.compat import v1
from unet_perf.errors import run_cli
from unet_perf.inference.atc_graph import atc_problems
from unet_perf.inference.predictor import Predictor
from unet_perf.inference.tiling import normalize_array

from support import REPO, make_model_dir, make_tiny_config

BATCH = 2
# Every op type of the frozen U-Net (C = 1). A new one must first be found in CANN's "Supported TensorFlow
# Operators" list (ATC converts only those).
ATC_OPS = {"Placeholder", "Const", "Conv2D", "BiasAdd", "Relu", "MaxPool", "Pack", "Reshape", "ConcatV2", "Sigmoid",
           "Identity"}


def give_batch_norm_statistics(model_dir, cfg):
    """Replace the model's checkpoint by one with random gamma, beta and moving statistics (fresh ones are 1, 0,
    0, 1: folding them would prove nothing)."""
    from unet_perf.inference.model_dir import resolve_checkpoint
    from unet_perf.model.network import unet

    rng = np.random.default_rng(3)
    with v1.Graph().as_default(), v1.Session() as sess:
        unet(v1.placeholder(v1.float32, [1, cfg.crop_size, cfg.crop_size, 1]), cfg, training=False)
        sess.run(v1.global_variables_initializer())
        for variable in v1.global_variables():
            name, size = variable.op.name.rsplit("/", 1)[-1], variable.shape.as_list()
            if name in ("gamma", "moving_variance"):
                sess.run(variable.assign(rng.uniform(0.5, 2.0, size).astype(np.float32)))
            elif name in ("beta", "moving_mean"):
                sess.run(variable.assign(rng.normal(0.0, 0.3, size).astype(np.float32)))
        v1.train.Saver().save(sess, resolve_checkpoint(model_dir), write_meta_graph=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model_dir, export folder, export.json) of a batch-norm model exported at [BATCH, 32, 32, 1]."""
    cfg = make_tiny_config(dropout=0.0, batch_norm=True, normalize="symmetric")
    model_dir = make_model_dir(tmp_path_factory.mktemp("model_bn"), cfg)[0]
    give_batch_norm_statistics(model_dir, cfg)
    output = str(tmp_path_factory.mktemp("exports") / "export")
    info = export.export_model(model_dir, output, batch=BATCH)
    return model_dir, output, info


def frozen_graph_def(output):
    graph_def = v1.GraphDef()
    with open(os.path.join(output, "unet.pb"), "rb") as handle:
        graph_def.ParseFromString(handle.read())
    return graph_def


def run_frozen(output, inputs):
    with v1.Graph().as_default() as graph:
        v1.import_graph_def(frozen_graph_def(output), name="")
        with v1.Session(graph=graph) as sess:
            return sess.run("probability:0", {"input:0": inputs})


# --- the frozen graph ----------------------------------------------------------------------------------------

def test_frozen_graph_holds_only_static_shape_inference_ops(exported):
    _, output, info = exported
    graph_def = frozen_graph_def(output)
    ops = sorted(set(node.op for node in graph_def.node))
    assert set(ops) <= ATC_OPS, ops  # batch norm folded into the convolutions: no FusedBatchNorm*
    assert info["frozen_graph_ops"] == ops
    assert [node.name for node in graph_def.node if node.op == "Identity"] == ["probability"]  # the output's name
    assert [node.name for node in graph_def.node if node.op == "Placeholder"] == ["input"]
    with v1.Graph().as_default() as graph:
        v1.import_graph_def(graph_def, name="")
        assert graph.get_tensor_by_name("input:0").shape.as_list() == [BATCH, 32, 32, 1]
        unknown = [t.name for op in graph.get_operations() for t in op.outputs if not t.shape.is_fully_defined()]
    assert unknown == []
    assert atc_problems(graph_def, "input") == []


def test_atc_problems_names_what_atc_cannot_take():
    images = v1.placeholder(v1.float32, [None, 8, 8, 2], name="input")
    v1.placeholder(v1.float32, [1], name="extra")
    noise = v1.random.uniform([1, 8, 8, 2], name="noise")
    ones = v1.ones([2])
    v1.nn.fused_batch_norm(images + noise, ones, ones, is_training=True, name="bn")
    graph_def = v1.get_default_graph().as_graph_def()
    problems = "\n".join(atc_problems(graph_def, "input"))
    assert "placeholders ['input', 'extra']" in problems
    assert "noise/RandomUniform is a RandomUniform op" in problems
    assert "bn (FusedBatchNormV3) is in training mode" in problems
    assert "input:0 (Placeholder) has no static shape" in problems


def test_frozen_graph_and_saved_model_give_the_predictors_probabilities(exported):
    model_dir, output, info = exported
    image = np.random.default_rng(6).integers(0, 256, (32, 32)).astype(np.uint8)
    # a random normalised tile, and the image normalised as export.json says (the model's --normalize)
    tiles = np.stack([np.random.default_rng(5).uniform(-1.0, 1.0, (32, 32)).astype(np.float32),
                      normalize_array(image, info["normalize"])])[..., None]
    with Predictor.from_model_dir(model_dir, batch_size=BATCH) as predictor:
        expected = predictor.predict_batch(tiles)
        predicted = predictor.predict(image, overlap=0)  # what `predict` computes for an image of one tile
    frozen = run_frozen(output, tiles)
    np.testing.assert_allclose(frozen, expected, atol=1e-5)
    np.testing.assert_allclose(frozen[1, :, :, 0], predicted, atol=1e-5)
    with v1.Graph().as_default() as graph, v1.Session(graph=graph) as sess:
        meta = v1.saved_model.loader.load(sess, ["serve"], os.path.join(output, "saved_model"))
        signature = meta.signature_def["serving_default"]
        served = sess.run(signature.outputs["probability"].name, {signature.inputs["images"].name: tiles})
    np.testing.assert_allclose(served, expected, atol=1e-5)


# --- tools/atc_command.py -----------------------------------------------------------------------------------

def run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(atc_command.main, argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def expected_line(output, input_shape, out_nodes, soc, extra=""):
    return ("atc --framework=3 --model={}/unet.pb --output={}_{} --input_format=NHWC --input_shape=\"{}\" "
            "--out_nodes=\"{}\" --soc_version={}{}".format(output, output, soc, input_shape, out_nodes, soc, extra))


@pytest.fixture
def no_atc(tmp_path, monkeypatch):
    """A PATH without atc."""
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def test_atc_command_prints_the_line_for_ascend_910_and_310(exported, capsys, no_atc):
    output = exported[1]
    code, out, _ = run([output], capsys)
    assert code == 0
    assert out.splitlines() == [expected_line(output, "input:2,32,32,1", "probability:0", "Ascend910")]
    code, out, _ = run([output + "/export.json", "--soc_version", "Ascend310", "--precision_mode",
                        "allow_fp32_to_fp16"], capsys)
    assert code == 0
    assert out.splitlines() == [expected_line(output, "input:2,32,32,1", "probability:0", "Ascend310",
                                              " --precision_mode=allow_fp32_to_fp16")]


def test_atc_command_of_a_multi_class_export_outputs_the_classes_too(exported, tmp_path, capsys, no_atc):
    """export.json of a C = 3 export as unet_perf.export writes it (tests/inference/test_multiclass_outputs.py)."""
    output = str(tmp_path / "export3")
    os.makedirs(output)
    shutil.copy(os.path.join(exported[1], "unet.pb"), output)
    info = dict(exported[2], num_classes=3, shape=[1, 48, 64, 1], outputs={
        "probability": {"tensor": "probability:0", "shape": [1, 48, 64, 3]},
        "classes": {"tensor": "classes:0", "shape": [1, 48, 64]}})
    with open(os.path.join(output, "export.json"), "w") as handle:
        json.dump(info, handle)
    code, out, _ = run([output], capsys)
    assert code == 0
    assert out.splitlines() == [expected_line(output, "input:1,48,64,1", "probability:0;classes:0", "Ascend910")]


STAND_IN_ATC = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["ATC_LOG"], "w") as handle:
    json.dump(args, handle)
status = int(os.environ.get("ATC_STATUS", "0"))
if status == 0:
    prefix = [a.split("=", 1)[1] for a in args if a.startswith("--output=")][0]
    open(prefix + ".om", "wb").close()
sys.exit(status)
"""


@pytest.fixture
def stand_in_atc(tmp_path, monkeypatch):
    """An `atc` on PATH that records its arguments in ATC_LOG, writes <--output>.om and exits with ATC_STATUS."""
    folder = tmp_path / "bin"
    folder.mkdir()
    atc = folder / "atc"
    atc.write_text(STAND_IN_ATC.format(python=sys.executable))
    atc.chmod(0o755)
    log = tmp_path / "atc_args.json"
    monkeypatch.setenv("PATH", str(folder))
    monkeypatch.setenv("ATC_LOG", str(log))
    return log


def test_atc_command_run_runs_atc_with_the_printed_arguments(exported, tmp_path, capsys, stand_in_atc,
                                                             monkeypatch):
    om = str(tmp_path / "om" / "unet")
    code, out, _ = run([exported[1], "--om", om], capsys)  # atc on PATH: printed, not run
    assert code == 0 and "add --run" in out and not stand_in_atc.exists()
    code, out, _ = run([exported[1], "--om", om, "--run"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert json.loads(stand_in_atc.read_text()) == shlex.split(lines[0])[1:]  # exactly the printed command
    assert lines[1:] == ["atc exited with status 0", "offline model  {}.om".format(om)]
    monkeypatch.setenv("ATC_STATUS", "3")
    code, out, _ = run([exported[1], "--om", str(tmp_path / "failed"), "--run"], capsys)
    assert code == 3 and out.splitlines()[1:] == ["atc exited with status 3"]


@pytest.mark.parametrize("case, message", [
    ("no_export", "export.json is missing; run python -m unet_perf.export"),
    ("not_json", "is not readable JSON"),
    ("no_shape", "has no input, output and static 4-d shape"),
    ("no_frozen_graph", "unet.pb is missing"),
    ("run_without_atc", "--run: atc is not on PATH"),
    ("bad_soc", "--soc_version 'Ascend 910' is not a chip name"),
])
def test_atc_command_user_errors_are_one_line(exported, tmp_path, capsys, no_atc, case, message):
    folder = tmp_path / "export"
    folder.mkdir()
    argv = [str(folder)]
    if case != "no_export":
        shutil.copy(os.path.join(exported[1], "export.json"), str(folder))
        shutil.copy(os.path.join(exported[1], "unet.pb"), str(folder))
    if case == "not_json":
        (folder / "export.json").write_text("{")
    elif case == "no_shape":
        (folder / "export.json").write_text(json.dumps(dict(exported[2], shape=[1, None, 32, 1])))
    elif case == "no_frozen_graph":
        os.remove(str(folder / "unet.pb"))
    elif case == "run_without_atc":
        argv.append("--run")
    elif case == "bad_soc":
        argv += ["--soc_version", "Ascend 910"]
    code, out, err = run(argv, capsys)
    assert code == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert out == ""


def test_atc_command_script_runs_from_any_folder(tmp_path):
    """The script finds the repository itself (no PYTHONPATH), as on an Ascend host."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "atc_command.py"), "missing"],
                          cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: missing/export.json is missing; run python -m unet_perf.export --output missing first")
