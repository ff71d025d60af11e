"""`python -m unet_perf.train`: a tiny run end to end, resume, and the train-CLI part of the bad-input suite.

Runs that need TensorFlow anyway (data, model dir, checkpoint problems) call the CLI entry point in-process
(same code path as the console: `main` -> run_cli -> exit code), so the file imports TensorFlow only once more
than pytest does; flag errors run as real subprocesses, which answer before TensorFlow is imported.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from unet_perf.compat import v1
from unet_perf.train import main as train_main

from support import REPO

TINY = ["--depth", "2", "--base_filters", "4", "--crop_size", "32", "--synthetic_count", "4",
        "--synthetic_size", "64", "--iterations_per_loop", "5", "--save_checkpoints_steps", "10",
        "--summary_images", "1"]
FIRST_RUN = TINY + ["--max_steps", "30", "--learning_rate", "0.01"]


def run_cli_subprocess(args, timeout=600):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-u", "-m", "unet_perf.train"] + args, cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=timeout)


def run_in_process(args, capsys):
    """(exit code, stdout, stderr) of the CLI entry point run in this process."""
    with pytest.raises(SystemExit) as exited:
        train_main(args)
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


# TensorFlow's own C++ start-up log (absl, e.g. the CPU wheel's "cudart_stub ... Could not find cuda drivers"),
# which unet_perf.tf_logging keeps off stderr unless --verbose: such a line is counted (and fails) everywhere.
TF_LOG_LINE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|[IWEF]\d{4} [\d:. ]+\d+ \S+:\d+\])"
                         r"|cuInit")


def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def read_all_tensors(prefix):
    """Every tensor of a checkpoint (fails on a truncated or damaged file)."""
    reader = v1.train.NewCheckpointReader(prefix)
    return dict((name, reader.get_tensor(name)) for name in reader.get_variable_to_shape_map())


def listed_checkpoints(model_dir):
    state = v1.train.get_checkpoint_state(model_dir)
    return [os.path.join(model_dir, os.path.basename(p)) for p in state.all_model_checkpoint_paths]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("cli") / "run")
    result = run_cli_subprocess(FIRST_RUN + ["--model_dir", model_dir])
    return model_dir, result


def copy_run(first_run, tmp_path):
    target = str(tmp_path / "copy")
    shutil.copytree(first_run[0], target)
    return target


def test_run_finishes_with_outputs_and_falling_loss(first_run):
    model_dir, result = first_run
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert "synthetic" in out[0]
    assert "Traceback" not in result.stderr
    assert not [line for line in result.stderr.splitlines() if TF_LOG_LINE.search(line)], result.stderr
    for prefix in ("Final Performance images/sec : ", "E2E Training Duration sec : ", "Final Train Accuracy : "):
        line = [text for text in out if text.startswith(prefix)]
        assert len(line) == 1 and float(line[0][len(prefix):]) > 0
    progress = [text for text in out if text.startswith("step ")]
    assert [text.split()[1] for text in progress] == ["{}/30".format(s) for s in (5, 10, 15, 20, 25, 30)]
    with open(os.path.join(model_dir, "summary.json")) as handle:
        summary = json.load(handle)
    with open(os.path.join(model_dir, "config.json")) as handle:
        assert json.load(handle)["base_filters"] == 4
    assert summary["status"] == "finished" and summary["start_step"] == 0 and summary["end_step"] == 30
    assert summary["backend"] == "host" and summary["config"]["max_steps"] == 30
    assert summary["final_mean_loss"] < 0.9 * summary["first_mean_loss"]
    assert 0.5 < summary["train_accuracy"] <= 1.0
    assert [h["step"] for h in summary["history"]] == [5, 10, 15, 20, 25, 30]
    assert [os.path.basename(p) for p in listed_checkpoints(model_dir)] == [
        "model.ckpt-10", "model.ckpt-20", "model.ckpt-30"]
    assert read_all_tensors(os.path.join(model_dir, "model.ckpt-30"))["global_step"] == 30
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(model_dir))


def test_rerun_with_more_steps_resumes_from_the_saved_step(first_run, tmp_path):
    model_dir = copy_run(first_run, tmp_path)
    result = run_cli_subprocess(FIRST_RUN[:-4] + ["--max_steps", "40", "--learning_rate", "0.01",
                                                  "--model_dir", model_dir])
    assert result.returncode == 0, result.stderr
    assert "resumed from {} at step 30".format(os.path.join(model_dir, "model.ckpt-30")) in result.stdout
    with open(os.path.join(model_dir, "summary.json")) as handle:
        summary = json.load(handle)
    assert (summary["start_step"], summary["end_step"], summary["steps_run"]) == (30, 40, 10)
    assert [h["step"] for h in summary["history"]] == [35, 40]
    assert read_all_tensors(os.path.join(model_dir, "model.ckpt-40"))["global_step"] == 40


def test_rerun_of_a_finished_run_trains_nothing(first_run, tmp_path, capsys):
    model_dir = copy_run(first_run, tmp_path)
    before = sorted(os.listdir(model_dir))
    code, out, err = run_in_process(FIRST_RUN + ["--model_dir", model_dir], capsys)
    assert code == 0, err
    assert "already holds a checkpoint at step 30" in out and "nothing to train" in out
    assert sorted(os.listdir(model_dir)) == before


# --- bad flags: subprocess, answered before TensorFlow loads ------------------------------------------------

BAD_FLAGS = [
    (["--batch_size", "0"], "--batch_size must be positive"),
    (["--learning_rate", "-0.1"], "--learning_rate must be positive"),
    (["--max_steps", "-5"], "--max_steps must not be negative"),
    (["--iterations_per_loop", "0"], "--iterations_per_loop must be positive"),
    (["--precision", "fp8"], "--precision"),
    (["--crop_size", "30"], "divisible by 2^depth"),
    (["--iterations_per_loop", "3", "--save_checkpoints_steps", "10", "--max_steps", "30"],
     "--save_checkpoints_steps 10 must be a multiple of --iterations_per_loop 3"),
    (["--max_steps", "12"], "multiple of --iterations_per_loop"),
    (["--deterministic", "maybe"], "--deterministic"),
    (["--no_such_flag", "1"], "unrecognized arguments"),
    (["--base_filter", "8"], "unrecognized arguments: --base_filter"),  # a typo, not an abbreviation
]


@pytest.mark.parametrize("flags,fragment", BAD_FLAGS, ids=[case[1][:30] for case in BAD_FLAGS])
def test_bad_flag_is_one_line_error_exit_2(flags, fragment, tmp_path):
    model_dir = tmp_path / "never"
    result = run_cli_subprocess(TINY + ["--max_steps", "10", "--model_dir", str(model_dir)] + flags, timeout=120)
    assert_one_line_error(result.returncode, result.stderr, fragment)
    assert result.stdout == ""
    assert not model_dir.exists()


def test_help_documents_every_flag():
    from unet_perf.config import Config
    import dataclasses

    result = run_cli_subprocess(["--help"], timeout=120)
    assert result.returncode == 0
    for field in dataclasses.fields(Config):
        assert "--" + field.name in result.stdout


# --- bad inputs that need the data or the model dir (in-process CLI) --------------------------------------

def test_missing_data_path(tmp_path, capsys):
    model_dir = tmp_path / "run"
    code, _, err = run_in_process(TINY + ["--max_steps", "10", "--data_path", str(tmp_path / "nope"),
                                          "--model_dir", str(model_dir)], capsys)
    assert_one_line_error(code, err, str(tmp_path / "nope"))
    assert not model_dir.exists()


def write_pairs(root, count=4, size=64, label_values=(0, 255)):
    """A valid <root>/image + <root>/label folder pair of `count` slices; returns the two folders."""
    import cv2

    image_dir, label_dir = root / "image", root / "label"
    image_dir.mkdir(parents=True)
    label_dir.mkdir()
    rng = np.random.RandomState(0)
    for index in range(count):
        cv2.imwrite(str(image_dir / "{}.png".format(index)), rng.randint(0, 256, (size, size)).astype(np.uint8))
        label = rng.choice(np.array(label_values, dtype=np.uint8), (size, size))
        cv2.imwrite(str(label_dir / "{}.png".format(index)), label)
    return image_dir, label_dir


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


BAD_DATA = [
    ("truncated", lambda image_dir, label_dir: _truncate(image_dir / "1.png"), "1.png"),
    ("zero_byte", lambda image_dir, label_dir: (label_dir / "2.png").write_bytes(b""), "2.png"),
    ("orphan", lambda image_dir, label_dir: (label_dir / "3.png").unlink(), "3.png"),
    ("non_binary", lambda image_dir, label_dir: __import__("cv2").imwrite(
        str(label_dir / "0.png"), np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 7 * 30), "distinct values"),
    ("size_mismatch", lambda image_dir, label_dir: __import__("cv2").imwrite(
        str(label_dir / "1.png"), np.zeros((32, 64), np.uint8)), "1.png"),
]


@pytest.mark.parametrize("name,damage,fragment", BAD_DATA, ids=[case[0] for case in BAD_DATA])
def test_bad_data_is_one_line_error_exit_2(name, damage, fragment, tmp_path, capsys):
    image_dir, label_dir = write_pairs(tmp_path / "data")
    damage(image_dir, label_dir)
    model_dir = tmp_path / "run"
    code, _, err = run_in_process(TINY + ["--max_steps", "10", "--batch_size", "2", "--data_path",
                                          str(tmp_path / "data"), "--model_dir", str(model_dir)], capsys)
    assert_one_line_error(code, err, fragment)
    assert not model_dir.exists()


def test_image_smaller_than_the_crop(tmp_path, capsys):
    write_pairs(tmp_path / "data", size=16)
    code, _, err = run_in_process(TINY + ["--max_steps", "10", "--input_scale", "1.0", "--data_path",
                                          str(tmp_path / "data"), "--model_dir", str(tmp_path / "run")], capsys)
    assert_one_line_error(code, err, "--crop_size")


def test_batch_larger_than_training_set(tmp_path, capsys):
    model_dir = tmp_path / "run"
    code, _, err = run_in_process(TINY + ["--max_steps", "10", "--batch_size", "8", "--model_dir", str(model_dir)],
                                  capsys)
    assert_one_line_error(code, err, "--batch_size 8")
    assert not model_dir.exists()


@pytest.mark.parametrize("where", ["file", "parent_file"])
def test_unwritable_model_dir(tmp_path, capsys, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    model_dir = blocker if where == "file" else blocker / "run"
    code, _, err = run_in_process(TINY + ["--max_steps", "10", "--model_dir", str(model_dir)], capsys)
    assert_one_line_error(code, err, "--model_dir", "is a file")
    assert blocker.read_text() == "not a directory"


def test_checkpoint_of_a_different_architecture(first_run, tmp_path, capsys):
    model_dir = copy_run(first_run, tmp_path)
    before = dict((name, os.path.getmtime(os.path.join(model_dir, name))) for name in os.listdir(model_dir))
    code, _, err = run_in_process(FIRST_RUN[:-4] + ["--max_steps", "40", "--base_filters", "8",
                                                    "--model_dir", model_dir], capsys)
    assert_one_line_error(code, err, "different architecture", "--base_filters 4", "use a new --model_dir")
    after = dict((name, os.path.getmtime(os.path.join(model_dir, name))) for name in os.listdir(model_dir))
    assert after == before  # nothing written, config.json still describes the checkpoint


def test_damaged_newest_checkpoint_is_a_clear_error(first_run, tmp_path, capsys):
    model_dir = copy_run(first_run, tmp_path)
    data = os.path.join(model_dir, "model.ckpt-30.data-00000-of-00001")
    with open(data, "r+b") as handle:
        handle.truncate(os.path.getsize(data) // 2)
    code, _, err = run_in_process(FIRST_RUN[:-4] + ["--max_steps", "40", "--model_dir", model_dir], capsys)
    assert_one_line_error(code, err, "model.ckpt-30 is damaged", "delete its files")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(first_run, tmp_path, capsys, monkeypatch):
    # A NaN loss from step 40 on, injected (a huge learning rate overflows on some CPUs and not on others).
    # Resumed at 30, the run saves model.ckpt-40, then the loop of steps 41..45 turns the loss NaN.
    model_dir = copy_run(first_run, tmp_path)
    monkeypatch.setenv("UNET_PERF_FAULTS", "nan_loss_from_step=40")
    code, out, err = run_in_process(TINY + ["--max_steps", "60", "--learning_rate", "0.01",
                                            "--model_dir", model_dir], capsys)
    assert_one_line_error(code, err, "the loss became nan by step 45", "last good checkpoint is",
                          os.path.join(model_dir, "model.ckpt-40"))
    assert "saved checkpoint {}".format(os.path.join(model_dir, "model.ckpt-40")) in out
    assert v1.train.latest_checkpoint(model_dir).endswith("model.ckpt-40")
    assert [os.path.basename(p) for p in listed_checkpoints(model_dir)][-1] == "model.ckpt-40"
    assert not [name for name in os.listdir(model_dir) if name.startswith("model.ckpt-") and
                int(name.split("-")[1].split(".")[0]) > 40]
    with open(os.path.join(model_dir, "summary.json")) as handle:
        assert json.load(handle)["end_step"] == 30  # still the first run's: the failed run wrote no summary
    kept = read_all_tensors(os.path.join(model_dir, "model.ckpt-40"))
    assert int(kept["global_step"]) == 40
    assert all(np.all(np.isfinite(value)) for value in kept.values() if value.dtype.kind == "f")


def test_unknown_fault_is_refused(monkeypatch):
    from unet_perf import faults
    from unet_perf.errors import UserError

    monkeypatch.setenv("UNET_PERF_FAULTS", "nan_los_from_step=3")
    with pytest.raises(UserError, match="unknown fault 'nan_los_from_step'"):
        faults.armed("nan_loss_from_step")
    monkeypatch.setenv("UNET_PERF_FAULTS", "nan_loss_from_step=soon")
    with pytest.raises(UserError, match="integer"):
        faults.armed("nan_loss_from_step")


def test_unarmed_faults_leave_the_loss_graph_unchanged(monkeypatch):
    import tensorflow as tf
    from unet_perf import faults

    monkeypatch.delenv("UNET_PERF_FAULTS", raising=False)
    loss = tf.constant(0.5)
    step = tf.constant(7, tf.int64)
    count = len(v1.get_default_graph().get_operations())
    assert faults.nan_loss(loss, step) is loss
    assert len(v1.get_default_graph().get_operations()) == count
    monkeypatch.setenv("UNET_PERF_FAULTS", "nan_loss_from_step=8")
    before = faults.nan_loss(loss, step)
    monkeypatch.setenv("UNET_PERF_FAULTS", "nan_loss_from_step=7")
    from_here = faults.nan_loss(loss, step)
    with v1.Session() as sess:
        before, from_here = sess.run([before, from_here])
    assert before == 0.5 and np.isnan(from_here)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        mounted = False
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)


def fill_disk(directory, leave_bytes):
    """Fill the filesystem of `directory`, then free `leave_bytes`."""
    filler = os.path.join(directory, "filler")
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(descriptor, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(descriptor)
    os.truncate(filler, max(0, os.path.getsize(filler) - leave_bytes))


def test_full_disk_is_a_clear_error_and_keeps_the_previous_checkpoint(tiny_tmpfs, capsys):
    model_dir = str(tiny_tmpfs / "run")
    args = TINY + ["--summary_images", "0", "--keep_checkpoints", "1", "--model_dir", model_dir]
    code, _, err = run_in_process(args + ["--max_steps", "10"], capsys)
    assert code == 0, err
    good = read_all_tensors(os.path.join(model_dir, "model.ckpt-10"))
    fill_disk(str(tiny_tmpfs), leave_bytes=16 * 1024)
    code, _, err = run_in_process(args + ["--max_steps", "20"], capsys)
    assert_one_line_error(code, err, "No space left on device", "model.ckpt-10")
    assert v1.train.latest_checkpoint(model_dir).endswith("model.ckpt-10")
    assert not [name for name in os.listdir(model_dir) if "tempstate" in name]
    restored = read_all_tensors(os.path.join(model_dir, "model.ckpt-10"))
    assert all(np.array_equal(good[name], restored[name]) for name in good)


def test_validation_keeps_the_best_checkpoint_by_v_rand(tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    code, out, err = run_in_process(TINY + ["--max_steps", "20", "--learning_rate", "0.01", "--val_split", "3",
                                            "--val_every", "10", "--model_dir", model_dir], capsys)
    assert code == 0, err
    scores = {}
    for line in out.splitlines():
        if line.startswith("validation at step "):
            words = line.split()
            scores[int(words[3].rstrip(":"))] = float(words[words.index("v_rand") + 1])
    assert sorted(scores) == [10, 20]
    best_step = max(sorted(scores), key=lambda step: scores[step])  # first step wins a tie, as in training
    best = v1.train.latest_checkpoint(os.path.join(model_dir, "best"))
    assert best.endswith("model.ckpt-{}".format(best_step))
    with open(os.path.join(model_dir, "summary.json")) as handle:
        summary = json.load(handle)
    assert summary["validation"]["step"] == 20
    assert abs(summary["validation"]["v_rand"] - scores[20]) < 1e-4
    assert abs(summary["best_v_rand"] - scores[best_step]) < 1e-4


def test_progress_lines_and_eta_from_the_steady_rate():
    import io
    from unet_perf.progress import Progress, format_duration

    out = io.StringIO()
    progress = Progress(total_steps=100, start_step=0, batch_size=2, steps_per_epoch=50, out=out, use_bar=False)
    first = progress.update(10, 0.5, 0.6, 1.0, 0, 20.0, now=100.0)  # first loop: graph optimisation, no ETA yet
    second = progress.update(20, 0.4, 0.45, 1.0, 0, 40.0, now=110.0)  # 10 steps in 10 s -> 80 s left
    assert first["eta_sec"] is None and second["eta_sec"] == 80.0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("step 10/100  epoch 0.20  loss 0.5000  mean 0.6000") and lines[0].endswith("eta ?")
    assert lines[1].endswith("img/s 40.0  eta 1:20")
    assert format_duration(3725) == "1:02:05"


def test_resuming_between_loops_is_refused_with_the_first_runs_k():
    from unet_perf.config import Config
    from unet_perf.errors import UserError

    cfg = Config(max_steps=30, iterations_per_loop=10, save_checkpoints_steps=10, model_dir="runs/k")
    cfg.check_resume_step(20)  # 10 steps left: one Session.run
    with pytest.raises(UserError, match=r"resumes at step 25 \(the checkpoint in runs/k\).*remaining 5 steps"):
        cfg.check_resume_step(25)
