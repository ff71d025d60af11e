"""benchmarks/throughput.py: JSON schema of a tiny run, sweep/flag handling, and the loss-scale report counters."""
import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest

import loss_scale_report  # benchmarks/ is on sys.path through pytest.ini
import throughput
from support import REPO
from unet_perf.training import assembly
from unet_perf.config import Config
from unet_perf.errors import UserError

BENCHMARKS = os.path.join(REPO, "benchmarks")

# The --tiny preset's data on this file's tiny_config (at the default rescale, as the preset trains it).
TINY_RUN = dict(synthetic_count=4, synthetic_size=64, input_scale=0.5)


def _run(args, cwd):
    # This checkout's unet_perf, not another installed copy (the benchmark must measure the code under test).
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, os.path.join(BENCHMARKS, "throughput.py")] + args, cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=240)


def _check_stat(figure):
    assert figure["min"] <= figure["median"] <= figure["max"]
    assert figure["min"] > 0
    assert len(figure["samples"]) == 2  # --tiny: 2 repeats


@pytest.mark.slow
def test_tiny_run_writes_every_figure(tmp_path, tiny_config):
    proc = _run(["--tiny", "--output", str(tmp_path)], REPO)  # all three modes
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "throughput.json").read_text())

    assert report["schema"] == throughput.SCHEMA
    assert report["preset"] == "tiny"
    assert report["sweeps"]["iterations_per_loop"] == [1, 2]
    assert set(report["config"]) == {f.name for f in dataclasses.fields(Config)}
    assert report["config"]["depth"] == 2 and report["config"]["synthetic_count"] == 4
    machine = report["machine"]
    assert machine["cpu"] and machine["usable_cores"] >= 1 and machine["tensorflow"]
    for precision in ("fp32", "bf16"):  # the ceiling is always measured for both
        _check_stat(report["ceilings"][precision])

    pipelines = [r for r in report["results"] if r["mode"] == "pipeline"]
    assert len(pipelines) == 1 and pipelines[0]["batch_size"] == 2 and pipelines[0]["crop_size"] == 32
    assert pipelines[0]["images_per_sec"] == {
        k: pipelines[0]["measure_pipeline"]["pairs_per_s"][k] for k in ("median", "min", "max")}
    results = [r for r in report["results"] if r["mode"] != "pipeline"]
    assert sorted((r["mode"], r["iterations_per_loop"]) for r in results) == [
        ("e2e", 1), ("e2e", 2), ("model", 1), ("model", 2)]
    from unet_perf.model.network import unet_flops
    per_image = unet_flops(tiny_config(TINY_RUN), 32, 32)["train_step"]
    for result in results:
        assert "error" not in result, result
        _check_stat(result["images_per_sec"])
        _check_stat(result["steps_per_sec"])
        assert result["steps_per_repeat"] % result["iterations_per_loop"] == 0
        assert math.isclose(result["images_per_sec"]["median"], 2 * result["steps_per_sec"]["median"], rel_tol=1e-6)
        assert result["train_flops_per_image"] == per_image
        achieved = result["images_per_sec"]["median"] * per_image / 1e9
        assert math.isclose(result["achieved_gflops"], achieved, rel_tol=1e-9)
        assert math.isclose(result["ceiling_fraction"], achieved / report["ceilings"]["fp32"]["median"],
                            rel_tol=1e-9)
    for k in (1, 2):
        model, e2e = [next(r for r in results if r["mode"] == m and r["iterations_per_loop"] == k)
                      for m in ("model", "e2e")]
        ratio = e2e["images_per_sec"]["median"] / model["images_per_sec"]["median"]
        assert math.isclose(e2e["e2e_over_model"], ratio, rel_tol=1e-9)
        assert e2e["input_bound_share"] == pytest.approx(max(0.0, 1.0 - ratio))
        assert "input_bound_share" not in model

    assert "img/s median" in proc.stdout and "matmul ceiling fp32" in proc.stdout
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "skipping the plots" in proc.stdout
    else:
        for name in ("images_per_sec.png", "e2e_vs_model.png"):
            assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert sorted(os.path.basename(p) for p in report["plots"]) == ["e2e_vs_model.png", "images_per_sec.png"]


def test_bad_sweep_flag_is_one_line_error(tmp_path):
    proc = _run(["--tiny", "--precision", "fp32,fp8", "--output", str(tmp_path)], REPO)
    assert proc.returncode == 2
    # TensorFlow's C++ start-up lines may precede it; the message itself is one line and there is no traceback
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        "error: --precision fp8 is unknown: use a comma list of fp32,fp16,bf16"]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "throughput.json").exists()


def test_presets_yield_to_explicit_flags():
    args, base, sweeps, modes = throughput.make_plan(["--tiny", "--crop_size", "64,32", "--depth", "3"])
    assert sweeps["crop_size"] == [64, 32]  # explicit
    assert sweeps["base_filters"] == [4]  # from the tiny preset
    assert base.depth == 3 and base.synthetic_count == 4
    args, base, sweeps, modes = throughput.make_plan(["--full", "--mode", "model"])
    assert sweeps["batch_size"] == [2, 8] and sweeps["crop_size"] == [512] and base.input_scale == 1.0
    assert modes == ["model"]
    assert sweeps["precision"] is None  # "auto": resolved against the hardware in main
    assert throughput.resolve_auto_precision(False) == ["fp32"]
    assert throughput.resolve_auto_precision(True) == ["fp32", "bf16"]
    assert throughput.make_plan(["--mode", "model", "--loss_scale_report"])[3] == ["model", "loss_scale"]
    with pytest.raises(UserError, match="--batch_size"):
        throughput.make_plan(["--batch_size", "2,x"])
    with pytest.raises(UserError, match="--mode"):
        throughput.make_plan(["--mode", "model,training"])
    with pytest.raises(UserError, match="exclude"):
        throughput.make_plan(["--full", "--tiny"])


def test_num_classes_is_a_sweep_with_one_row_per_value():
    args, base, sweeps, modes = throughput.make_plan(["--tiny", "--mode", "model", "--num_classes", "1,2,8"])
    assert sweeps["num_classes"] == [1, 2, 8]
    assert [point["num_classes"] for point in throughput.sweep_points(sweeps)] == [1, 2, 8] * 2  # K 1,2 of tiny
    assert throughput.config_for(base, dict(next(throughput.sweep_points(sweeps)), num_classes=8), 4).num_classes == 8
    assert throughput.make_plan(["--tiny"])[2]["num_classes"] == [1]
    rows = [{"mode": "model", "precision": "fp32", "iterations_per_loop": 1, "batch_size": 2, "crop_size": 32,
             "base_filters": 4, "num_classes": c, "images_per_sec": {"median": 1.0, "min": 1.0, "max": 1.0}}
            for c in (1, 8)]
    table = throughput.format_table(rows, {}).splitlines()
    assert table[0].split()[6] == "C" and [line.split()[6] for line in table[2:4]] == ["1", "8"]
    with pytest.raises(UserError, match="--num_classes 8 needs --data_path"):  # the synthetic set has 4 classes
        throughput.make_plan(["--tiny", "--mode", "model,e2e", "--num_classes", "1,8"])


def test_sweep_point_steps_are_whole_loops():
    cfg = throughput.config_for(Config(), {"iterations_per_loop": 10, "precision": "fp32", "batch_size": 2,
                                           "crop_size": 128, "base_filters": 16}, 25)
    assert cfg.total_steps == 30 and cfg.save_checkpoints_steps == 10


def _records(scales, overflow, skipped, changes, losses):
    return [{"loss_scale": s, "overflow": o, "skipped_steps": skipped, "scale_changes": changes, "loss": l,
             "global_step": i + 1} for i, (s, o, l) in enumerate(zip(scales, overflow, losses))]


def test_summary_flags_counters_that_disagree_with_the_series():
    fp32 = _records([1.0] * 4, [False] * 4, 0, 0, [1.0, 0.9, 0.8, 0.7])
    good = loss_scale_report.summarize(_records([4.0, 2.0, 2.0, 4.0], [True, True, False, False], 2, 3,
                                                [1.0, 1.0, 0.9, 0.8]), fp32, 8.0)
    assert good["overflows"] == 2 and good["trajectory_changes"] == 3 and good["final_scale"] == 4.0
    assert all(good["consistent"].values())
    assert good["loss_gap"]["final_abs"] == pytest.approx(0.1)
    bad = loss_scale_report.summarize(_records([4.0, 2.0, 2.0, 4.0], [True, False, False, False], 2, 1,
                                               [1.0] * 4), fp32, 8.0)
    assert bad["consistent"] == {"skipped_equals_overflows": False, "changes_match_trajectory": False}
    assert "WARNING" in loss_scale_report.format_report(dict(bad, growth_interval=2))


@pytest.mark.slow
def test_loss_scale_report_on_a_tiny_fp16_run(tiny_config):
    # An initial scale of 2^20 overflows float16 gradients of this tiny U-Net for the first steps (they overflow
    # above about 2^16 here); a growth interval of 2 makes the scale grow again once it fits: both kinds of change
    # show up within 14 steps.
    cfg = tiny_config(TINY_RUN, loss_scale_init=2.0 ** 20, loss_scale_growth_interval=2)
    report = loss_scale_report.run_report(cfg, 14)
    series = report["per_step"]
    assert report["steps"] == 14 and series["step"] == list(range(1, 15))
    assert report["overflows"] >= 1
    assert report["skipped_steps"] == report["overflows"] == sum(series["overflow"])
    assert report["scale_changes"] == report["trajectory_changes"] >= 2
    assert all(report["consistent"].values())
    assert report["final_scale"] == series["loss_scale"][-1] < 2.0 ** 20
    previous = 2.0 ** 20
    for scale, overflow in zip(series["loss_scale"], series["overflow"]):
        if overflow:  # an overflow halves the scale; a finite step keeps or doubles it
            assert scale == max(1.0, previous / 2)
        else:
            assert scale in (previous, previous * 2)
        previous = scale
    assert any(b == 2 * a for a, b in zip(series["loss_scale"], series["loss_scale"][1:]))
    # Same initial weights and the same first batch: the first losses agree to fp16 accuracy.
    assert series["fp16_loss"][0] == pytest.approx(series["fp32_loss"][0], rel=2e-2)
    assert all(math.isfinite(v) for v in series["fp32_loss"])
    assert report["loss_gap"]["final_abs"] == pytest.approx(abs(series["fp16_loss"][-1] - series["fp32_loss"][-1]))


def test_cpu_description_from_cpuinfo(tmp_path):
    import bench_lib
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 amx_bf16\n")
    assert bench_lib.cpu_model_name(str(cpuinfo)) == "Test CPU 9000"
    assert bench_lib.cpu_flags(str(cpuinfo)) == {"fpu", "avx2", "amx_bf16"}
    assert bench_lib.cpu_flags(str(tmp_path / "missing")) == set()
    assert bench_lib.stats([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "samples": [3.0, 1.0, 2.0]}
    assert assembly.steps_to_runs(25, 10) == 3 and assembly.steps_to_runs(1, 10) == 1
