"""The CLIs as a user types them: a fresh working directory, relative paths, the default --model_dir.

Every other CLI test passes absolute temporary paths; a relative --model_dir once made every checkpoint lookup
miss (the state file's entries were joined onto the directory twice), so a rerun restarted from step 0 over its
own checkpoints and predict/evaluate/export found no checkpoint. Here each command runs as a subprocess whose
working directory is a new temporary folder, with the paths written the way the README writes them.
"""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from unet_perf.compat import v1

from support import REPO

TINY = ["--depth", "2", "--base_filters", "4", "--crop_size", "32", "--iterations_per_loop", "5",
        "--save_checkpoints_steps", "5", "--summary_images", "1"]
SYNTHETIC = ["--synthetic_count", "4", "--synthetic_size", "64"]
DEFAULT_MODEL_DIR = os.path.join("runs", "unet")  # config.py's default, relative to the working directory


def run_here(workdir, args, timeout=300):
    """`python -m <args>` (or a script path) run in `workdir` as a user would; a CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-u"] + (["-m"] if not args[0].endswith((".py", ".sh")) else []) + list(args)
    if args[0].endswith(".sh"):
        command = ["bash"] + list(args)
        env["PYTHON"] = sys.executable
    return subprocess.run(command, cwd=str(workdir), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout)


def ok(result):
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def listed_steps(model_dir):
    state = v1.train.get_checkpoint_state(model_dir)
    return sorted(int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths)


def write_labelled_set(folder, count=4, size=64):
    """A tiny {image,label} folder of PNGs (labels binary, 255 = interior)."""
    rng = np.random.default_rng(0)
    for sub in ("image", "label"):
        os.makedirs(os.path.join(folder, sub))
    for index in range(count):
        image = rng.integers(0, 256, (size, size)).astype(np.uint8)
        mask = np.full((size, size), 255, np.uint8)
        mask[:, 10 + 5 * index] = 0
        cv2.imwrite(os.path.join(folder, "image", "{}.png".format(index)), image)
        cv2.imwrite(os.path.join(folder, "label", "{}.png".format(index)), mask)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A fresh working directory holding one finished 10-step run in the default model dir (runs/unet)."""
    folder = tmp_path_factory.mktemp("user")
    ok(run_here(folder, ["unet_perf.train", "--max_steps", "10"] + TINY + SYNTHETIC))
    write_labelled_set(str(folder / "data"))
    return folder


@pytest.fixture
def fresh_run(workdir, tmp_path):
    """A copy of the module's working directory (so tests that train on do not disturb each other)."""
    import shutil

    copy = tmp_path / "work"
    shutil.copytree(str(workdir), str(copy))
    return copy


def test_default_model_dir_rerun_resumes_from_its_checkpoint(fresh_run):
    result = ok(run_here(fresh_run, ["unet_perf.train", "--max_steps", "20"] + TINY + SYNTHETIC))
    expected = os.path.join(DEFAULT_MODEL_DIR, "model.ckpt-10")
    assert "resumed from {} at step 10".format(expected) in result.stdout, result.stdout
    assert "step 5/20" not in result.stdout  # nothing trained twice
    assert listed_steps(str(fresh_run / DEFAULT_MODEL_DIR))[-2:] == [15, 20]


def test_relative_model_dir_keeps_the_architecture_guard(fresh_run):
    model_dir = fresh_run / DEFAULT_MODEL_DIR
    config_before = (model_dir / "config.json").read_text()
    steps_before = listed_steps(str(model_dir))
    other = [flag if flag != "4" else "8" for flag in TINY]  # --base_filters 8
    result = run_here(fresh_run, ["unet_perf.train", "--max_steps", "20"] + other + SYNTHETIC)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "different architecture" in result.stderr and "--base_filters 4" in result.stderr
    assert (model_dir / "config.json").read_text() == config_before
    assert listed_steps(str(model_dir)) == steps_before


def test_predict_evaluate_export_with_the_readme_relative_paths(fresh_run):
    common = ["--model_dir", DEFAULT_MODEL_DIR]
    ok(run_here(fresh_run, ["unet_perf.predict"] + common + ["--input", "data/image", "--output", "predictions/"]))
    assert sorted(os.listdir(str(fresh_run / "predictions"))) == sorted(
        "{}_{}.png".format(i, kind) for i in range(4) for kind in ("prob", "mask"))

    ok(run_here(fresh_run, ["unet_perf.evaluate"] + common + ["--data_path", "data"]))
    with open(str(fresh_run / DEFAULT_MODEL_DIR / "eval" / "metrics.json")) as handle:
        metrics = json.load(handle)
    assert 0.0 <= metrics["mean"]["v_rand"] <= 1.0

    ok(run_here(fresh_run, ["unet_perf.export"] + common + ["--output", "export/", "--height", "32", "--width",
                                                            "32", "--batch", "1"]))
    assert os.path.getsize(str(fresh_run / "export" / "unet.pb")) > 0


def test_pack_then_train_from_relative_shards(fresh_run):
    ok(run_here(fresh_run, ["unet_perf.data.pack", "--data_path", "data", "--output", "shards/"]))
    # The same tiny U-Net resumes from the default model dir's step 10 on the packed set.
    result = ok(run_here(fresh_run, ["unet_perf.train", "--data_path", "shards/", "--max_steps", "15"] + TINY))
    assert "streamed from 1 shard in shards/" in result.stdout
    assert "resumed from {} at step 10".format(os.path.join(DEFAULT_MODEL_DIR, "model.ckpt-10")) in result.stdout


@pytest.mark.slow
def test_launch_two_workers_resume_the_default_model_dir(fresh_run):
    args = ["unet_perf.launch", "--nproc", "2", "--"] + TINY + SYNTHETIC + ["--batch_size", "1", "--max_steps", "20"]
    result = ok(run_here(fresh_run, args, timeout=240))
    assert "resumed from {} at step 10".format(os.path.join(DEFAULT_MODEL_DIR, "model.ckpt-10")) in result.stdout
    assert listed_steps(str(fresh_run / DEFAULT_MODEL_DIR))[-2:] == [15, 20]


def test_profile_writes_into_a_relative_output(fresh_run):
    ok(run_here(fresh_run, [os.path.join(REPO, "tools", "profile.sh"), "--steps", "2", "--output", "prof",
                            "--top", "3"] + TINY + SYNTHETIC))
    with open(str(fresh_run / "prof" / "trace.json")) as handle:
        assert json.load(handle)["traceEvents"]
