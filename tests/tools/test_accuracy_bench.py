"""benchmarks/accuracy.py: a tiny two-seed run on synthetic data writes consistent JSON; flag errors exit 2."""
import json
import os
import subprocess
import sys

import pytest

from support import REPO

BENCHMARKS = os.path.join(REPO, "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)

import accuracy  # noqa: E402

TINY = ["--data_path", "", "--synthetic_count", "6", "--synthetic_size", "64", "--val_split", "4,5", "--depth", "2",
        "--base_filters", "4", "--crop_size", "32", "--input_scale", "0.5", "--batch_size", "2", "--max_steps",
        "20", "--iterations_per_loop", "5", "--save_checkpoints_steps", "10", "--val_every", "10", "--warmup_steps",
        "5", "--augment", "false", "--learning_rate", "0.01"]


def _run(args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, os.path.join(BENCHMARKS, "accuracy.py")] + args, cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=600)


@pytest.mark.slow
def test_tiny_two_seed_run_writes_consistent_json(tmp_path):
    proc = _run(TINY + ["--seeds", "3,4", "--output", str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "accuracy.json").read_text())
    assert report["schema"] == accuracy.SCHEMA
    assert report["seeds"] == [3, 4] and [r["seed"] for r in report["results"]] == [3, 4]
    assert report["config"]["ema"] == accuracy.RECIPE["ema"] and report["config"]["lr_schedule"] == "cosine"
    assert report["machine"]["cpu"]
    for result in report["results"]:
        assert result["last_step"] == 20
        assert [step for step, _ in result["curve"]] == [10, 20]
        assert result["best_step"] in (10, 20)
        # best/ holds the best validation V_rand, which the evaluate CLI (same inference, no TTA) reproduces.
        assert result["best"]["v_rand"] == pytest.approx(max(v for _, v in result["curve"]), abs=1e-6)
        assert result["last"]["v_rand"] == pytest.approx(result["curve"][-1][1], abs=1e-6)
        assert result["best"]["v_rand"] >= result["last"]["v_rand"] - 1e-9
        assert result["last_minus_best"] == pytest.approx(result["last"]["v_rand"] - result["best"]["v_rand"])
        assert result["last"]["weights"] == "ema"
        assert result["last"]["checkpoint"].endswith("model.ckpt-20")
        for key in ("best", "best_tta", "last", "last_tta"):
            assert 0.0 <= result[key]["v_rand"] <= 1.0 and 0.0 <= result[key]["v_info"] <= 1.0
        assert 0 < result["train_sec"] <= result["wall_sec"]
    values = [r["last"]["v_rand"] for r in report["results"]]
    summary = report["summary"]["last_v_rand"]
    assert summary["mean"] == pytest.approx(sum(values) / 2)
    assert summary["std"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)
    assert summary["min"] == min(values) and summary["max"] == max(values)
    assert report["goals"]["last_within_best"] == all(
        r["last_minus_best"] >= -0.01 for r in report["results"])
    assert report["goals"]["mean_last_v_rand"] == (summary["mean"] >= 0.97)
    if report["plot"]:
        assert (tmp_path / "v_rand_vs_step.png").stat().st_size > 0
    # A second run into the same folder would mix runs: refused.
    again = _run(TINY + ["--seeds", "3", "--output", str(tmp_path)])
    assert again.returncode == 2 and "seed_3 exists" in again.stderr
    _check_merge(report, tmp_path)


def _check_merge(report, tmp_path):
    """Splitting the two-seed report into one file per seed and merging them gives back the same summary."""
    paths = []
    for result in report["results"]:
        part = dict(report, seeds=[result["seed"]], results=[result])
        path = tmp_path / "part_{}.json".format(result["seed"])
        path.write_text(json.dumps(part))
        paths.append(str(path))
    merged_dir = tmp_path / "merged"
    assert accuracy.main(["--merge"] + paths[::-1] + ["--output", str(merged_dir)]) == 0
    merged = json.loads((merged_dir / "accuracy.json").read_text())
    assert merged["seeds"] == [3, 4]
    for key, figure in report["summary"].items():
        for stat in ("mean", "std", "min", "max"):
            assert merged["summary"][key][stat] == pytest.approx(figure[stat]), (key, stat)
    assert merged["goals"] == report["goals"]
    other = dict(json.loads(open(paths[1]).read()))
    other["config"] = dict(other["config"], ema=0.0)
    (tmp_path / "other.json").write_text(json.dumps(other))
    from unet_perf.errors import UserError
    with pytest.raises(UserError, match="other settings .*ema"):
        accuracy.main(["--merge", paths[0], str(tmp_path / "other.json"), "--output", str(tmp_path / "bad")])
    with pytest.raises(UserError, match="seed"):
        accuracy.main(["--merge", paths[0], paths[0], "--output", str(tmp_path / "bad")])


@pytest.mark.parametrize("flags, message", [
    (["--seeds", "0,x"], "--seeds must be a comma list"),
    (["--seeds", "1,1"], "each once"),
    (["--data_path", "/nonexistent/isbi"], "--data_path /nonexistent/isbi does not exist"),
    (["--val_split", ""], "--val_split is empty"),
    (["--val_every", "0"], "--val_every must be positive"),
])
def test_flag_errors_are_one_line(flags, message, tmp_path):
    proc = _run(TINY + flags + ["--output", str(tmp_path)])
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
