"""What a new user trips over first: abbreviated flags (off in every CLI), a --model_dir that is a file, and the
TensorFlow start-up noise on stderr (quiet by default, shown with --verbose)."""
import ast
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from unet_perf import evaluate, export, predict

from support import REPO

HARD_TIMEOUT = 300
# absl/TensorFlow log lines and absl's pre-initialisation banner; cuInit is the CPU machine's GPU probe.
VERBOSE_ENV = "UNET_PERF_VERBOSE"  # unet_perf.VERBOSE_ENV
TF_NOISE = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl)|cuInit")


# --- abbreviations ------------------------------------------------------------------------------------------

def parser_calls(tree):
    """Every call that makes an argparse parser: ArgumentParser(...) or a subclass, and subparsers' add_parser."""
    subclasses = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
                  and any(getattr(base, "attr", getattr(base, "id", "")) == "ArgumentParser" for base in node.bases)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name in {"ArgumentParser", "add_parser"} | subclasses:
                yield node


def test_every_parser_in_the_repository_turns_abbreviations_off():
    checked = []
    for folder in ("unet_perf", "tools", "benchmarks"):
        for root, _, names in os.walk(os.path.join(REPO, folder)):
            for name in (n for n in names if n.endswith(".py")):
                path = os.path.join(root, name)
                with open(path) as handle:
                    tree = ast.parse(handle.read(), path)
                for call in parser_calls(tree):
                    flags = [k for k in call.keywords if k.arg == "allow_abbrev"]
                    where = "{}:{}".format(os.path.relpath(path, REPO), call.lineno)
                    assert flags and getattr(flags[0].value, "value", None) is False, where
                    checked.append(where)
    assert len(checked) >= 9, checked  # the scan really found the parsers (9 when this test was written)


def cli_mains():
    """(name, main, argv with every required flag and one optional flag cut short)."""
    from unet_perf import launch, preview, rank_table, train
    from unet_perf.data import pack
    import accuracy
    import loop_overhead
    import pipeline_speed
    import profile_run
    import throughput
    from tf115check import cli as tf115check_cli

    return [
        ("train", train.train_from_args, ["--base_filter", "8"], "--base_filter"),
        ("predict", predict.main, ["--model_dir", "m", "--input", "i", "--output", "o", "--batch_siz", "2"],
         "--batch_siz"),
        ("evaluate", evaluate.main, ["--model_dir", "m", "--val_spl", "1"], "--val_spl"),
        ("export", export.main, ["--model_dir", "m", "--output", "o", "--heigh", "32"], "--heigh"),
        ("preview", preview.main, ["--coun", "2"], "--coun"),
        ("pack", pack.main, ["--data_path", "d", "--output", "o", "--shard", "1"], "--shard"),
        ("launch", launch.launch_from_args, ["--nproc", "1", "--grac", "1", "--", "x"], "--grac"),
        ("rank_table", rank_table.main, ["generate", "--output", "o", "--device", "8"], "--device"),
        ("profile_run", profile_run.main, ["--step", "1"], "--step"),
        ("accuracy", accuracy.main, ["--seed", "1"], "--seed"),
        ("throughput", throughput.main, ["--step", "1"], "--step"),
        ("loop_overhead", loop_overhead.main, ["--base", "4"], "--base"),
        ("pipeline_speed", pipeline_speed.main, ["--batch", "4"], "--batch"),
        ("tf115check", tf115check_cli.main, ["--compat", "x"], "--compat"),
    ]


def test_a_truncated_flag_is_rejected_by_every_cli(capsys, tmp_path, monkeypatch):
    """Each CLI gets its required flags, one flag cut short and an unknown flag last: the unknown flag stops a CLI
    that accepts the short one (it would name only the unknown flag) before it does any work."""
    monkeypatch.chdir(tmp_path)  # nothing may be written, but if it were, not into the repository
    for name, main, argv, short in cli_mains():
        split = argv.index("--") if "--" in argv else len(argv)
        with pytest.raises(SystemExit) as stop:
            main(argv[:split] + ["--no_such_flag"] + argv[split:])
        err = capsys.readouterr().err
        assert stop.value.code == 2, name
        assert "unrecognized arguments: {}".format(short) in err, (name, err)
    assert os.listdir(str(tmp_path)) == []


# --- --model_dir pointing at a file ---------------------------------------------------------------------------

def test_model_dir_that_is_a_file_says_so(tmp_path, capsys):
    from unet_perf.errors import run_cli

    not_a_dir = tmp_path / "config.json"
    not_a_dir.write_text("{}")
    image = str(tmp_path / "a.png")
    cv2.imwrite(image, np.zeros((32, 32), np.uint8))
    for main, argv in ((predict.main, ["--input", image, "--output", str(tmp_path / "p")]),
                       (evaluate.main, ["--data_path", str(tmp_path)]),
                       (export.main, ["--output", str(tmp_path / "e")])):
        with pytest.raises(SystemExit) as stop:
            run_cli(main, ["--model_dir", str(not_a_dir)] + argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.count("\n") == 1, err
        assert "--model_dir {} is a file".format(not_a_dir) in err, err
    assert sorted(os.listdir(str(tmp_path))) == ["a.png", "config.json"]  # no output folder left behind


# --- TensorFlow start-up noise --------------------------------------------------------------------------------

FAKE_TENSORFLOW = r'''
import os
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
os.write(2, b"I0000 00:00:1796426226.678906    3669 cudart_stub.cc:31] Could not find cuda drivers\n")
os.write(2, b"E0000 00:00:1796426253.881377    4116 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n")
os.write(2, b"W1203 12:00:01.123456   42 some_plugin.cc:7] a warning\n")
os.write(2, b"something the user needs\n")
if os.environ.get("FAKE_TF_FAILS"):
    raise ImportError("libfoo.so not found")
'''


@pytest.mark.parametrize("verbose, fails", [(False, False), (True, False), (False, True)])
def test_tensorflow_import_noise_is_filtered_unless_verbose(tmp_path, verbose, fails):
    """A stand-in `tensorflow` package writes absl-style lines straight to file descriptor 2, as the real native
    libraries do: quiet keeps only the other line; --verbose and a failed import keep everything."""
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text(FAKE_TENSORFLOW)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), REPO]))
    env.pop(VERBOSE_ENV, None)
    if fails:
        env["FAKE_TF_FAILS"] = "1"
    script = ("import sys; from unet_perf import tf_logging; tf_logging.use_verbose_flag(sys.argv[1:]); "
              "tf_logging.import_tensorflow(); print('level', __import__('os').environ['TF_CPP_MIN_LOG_LEVEL'])")
    process = subprocess.run([sys.executable, "-c", script] + (["--verbose"] if verbose else []), env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                             timeout=HARD_TIMEOUT)
    lines = process.stderr.splitlines()
    if verbose or fails:
        assert len(lines) >= 5 and "something the user needs" in lines, process.stderr
    else:
        assert lines == ["something the user needs"], process.stderr
        assert process.stdout.strip() == "level 3"
    if fails:
        assert process.returncode == 1 and "libfoo.so not found" in process.stderr
    else:
        assert process.returncode == 0 and process.stdout.strip() == "level " + ("0" if verbose else "3")


def run_module(module, args, cwd):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for name in ("TF_CPP_MIN_LOG_LEVEL", VERBOSE_ENV):
        env.pop(name, None)  # as a user's shell has it: nothing set
    return subprocess.run([sys.executable, "-m", module] + args, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=HARD_TIMEOUT)


@pytest.mark.slow
def test_predict_errors_are_the_only_stderr_line(tmp_path):
    """Once after TensorFlow is imported (a --model_dir that is a file), once before (an input that is no image):
    stderr is the one error line either way."""
    model_file = tmp_path / "model.txt"
    model_file.write_text("not a model dir")
    image = str(tmp_path / "a.png")
    cv2.imwrite(image, np.zeros((32, 32), np.uint8))
    (tmp_path / "bad.png").write_text("not an image")
    for model_dir, input_path in ((str(model_file), image), (str(model_file), str(tmp_path / "bad.png"))):
        process = run_module("unet_perf.predict", ["--model_dir", model_dir, "--input", input_path, "--output",
                                                   str(tmp_path / "out")], str(tmp_path))
        assert process.returncode == 2, process.stderr
        lines = process.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), process.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_training_prints_no_tensorflow_lines(tmp_path):
    """The smallest training run, from a user's shell: stderr holds no TensorFlow/absl line (nor cuInit)."""
    process = run_module("unet_perf.train", ["--depth", "2", "--base_filters", "4", "--crop_size", "32",
                                             "--batch_size", "2", "--input_scale", "1.0", "--synthetic_count", "4",
                                             "--synthetic_size", "64", "--max_steps", "1", "--iterations_per_loop",
                                             "1", "--val_every", "0", "--model_dir", "run"], str(tmp_path))
    assert process.returncode == 0, process.stderr
    assert "Final Performance" in process.stdout
    noise = [line for line in process.stderr.splitlines() if TF_NOISE.search(line)]
    assert noise == [], process.stderr


def test_a_ctrl_c_outside_training_is_one_line_and_exit_130(capsys):
    from unet_perf.errors import run_cli

    def interrupted(argv):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exited:
        run_cli(interrupted, [])
    assert exited.value.code == 130
    assert capsys.readouterr().err.splitlines() == ["interrupted"]
