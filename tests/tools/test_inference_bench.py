"""benchmarks/inference.py: the JSON of a --tiny run (schema, ratios, RSS goals, clean-up) and the Keras twin.

The run is in-process with the real tiling, ceiling graph and big-TIFF writer; the predict CLI and the Keras child
are light stand-ins (each real one would import TensorFlow in a child, far over this test's time budget). The
benchmark itself runs the real ones (docs/performance.md, Inference).
"""
import json
import sys

import pytest

import inference  # benchmarks/ is on sys.path through pytest.ini
import keras_baseline
from support import make_model_dir, make_tiny_config

# Stand-in predict CLI: no imports; memory grows with the image file; prints the contract's throughput line except
# with --tta (so the wall-time fallback is exercised too).
FAKE_PREDICT = """
import os, sys
argv = sys.argv[1:]
buffer = bytearray(16 * os.path.getsize(argv[argv.index("--input") + 1]))
if "--tta" not in argv:
    print("throughput: 0.01 MP in 0.50 s = 1.250 MP/s")
print("wrote 1 prediction(s) to x")
"""
# Stand-in Keras child: answers the spec with the parameter count it was asked to match.
FAKE_KERAS = """
import json, sys
spec = json.load(open(sys.argv[sys.argv.index("--spec") + 1]))
json.dump({"seconds": [0.5 + 0.1 * k for k in range(spec["repeats"])], "predict_seconds": [0.4] * spec["repeats"],
           "tiles": 9, "params": spec["expected_params"], "keras": "stand-in"}, open(spec["result"], "w"))
"""


def _stats_ok(figure, count):
    assert figure["min"] <= figure["median"] <= figure["max"] and figure["min"] > 0
    assert len(figure["samples"]) == count


def test_tiny_run_json(tmp_path, monkeypatch):
    cfg = make_tiny_config(dropout=0.0)  # depth 2, base 4, crop 32 (the --tiny preset's model)
    model_dir = make_model_dir(tmp_path / "model", cfg)[0]
    rss_dir = make_model_dir(tmp_path / "rss_model", make_tiny_config(dropout=0.0, crop_size=64))[0]
    for name, text in (("fake_predict.py", FAKE_PREDICT), ("fake_keras.py", FAKE_KERAS)):
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(inference, "predict_command", lambda: [sys.executable, str(tmp_path / "fake_predict.py")])
    monkeypatch.setattr(inference, "keras_command", lambda: [sys.executable, str(tmp_path / "fake_keras.py")])
    work = tmp_path / "work"
    work.mkdir()
    assert inference.main(["--tiny", "--model_dir", model_dir, "--rss_model_dir", rss_dir, "--tmp_dir", str(work),
                           "--output", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "inference.json").read_text())

    assert report["schema"] == inference.SCHEMA and report["preset"] == "tiny"
    assert report["machine"]["cpu"] and report["machine"]["tensorflow"]
    assert list(work.iterdir()) == []  # models, images and predictions deleted
    rows = report["results"]
    assert sorted((r["kind"], r["tta"]) for r in rows) == sorted(
        (kind, tta) for kind in inference.KINDS for tta in (False, True))
    for tta in (False, True):
        group = {r["kind"]: r for r in rows if r["tta"] == tta}
        pipeline, ceiling, keras = group["pipeline"], group["ceiling"], group["keras"]
        for row in group.values():
            assert row["image_size"] == 64 and row["precision"] == "fp32" and row["batch_size"] == 2
            assert row["tile_size"] == 32 and row["overlap"] == 8
            _stats_ok(row["mp_per_s"], 1 if tta else 2)  # --tiny: 2 repeats, 1 with TTA
        # TTA sends 8x the tiles to the network (whole batches of 2)
        assert ceiling["network_tiles"] % 2 == 0
        assert pipeline["rate_source"] == ("wall_time" if tta else "throughput_line")
        assert ("--tta" in pipeline["command"]) == tta and "--overlap 8" in pipeline["command"]
        _stats_ok(pipeline["peak_rss_bytes"], 1 if tta else 2)
        assert pipeline["over_ceiling"] == pytest.approx(pipeline["mp_per_s"]["median"] / ceiling["mp_per_s"]["median"])
        assert pipeline["over_keras"] == pytest.approx(pipeline["mp_per_s"]["median"] / keras["mp_per_s"]["median"])
        assert keras["params"] == ceiling["params"]
        for row in (ceiling, keras):
            megapixels = 64 * 64 / 1e6
            assert row["mp_per_s"]["samples"] == pytest.approx([megapixels / t for t in row["seconds"]["samples"]])
    no_tta = {r["kind"]: r for r in rows if not r["tta"]}
    tta = {r["kind"]: r for r in rows if r["tta"]}
    # the same tiles 8 times over, up to the padding slots of the last batch of 2
    assert 8 * (no_tta["ceiling"]["network_tiles"] - 1) <= tta["ceiling"]["network_tiles"] <= 8 * no_tta[
        "ceiling"]["network_tiles"]

    rss = report["rss"]
    assert [r["image_size"] for r in rss] == [64, 96]
    for row in rss:
        assert "error" not in row and row["tile_size"] == 64 and row["peak_rss_bytes"] > 0
        assert row["file_bytes"] == row["image_size"] ** 2  # the synthetic uint8 TIFF, written and deleted
        assert row["rate_source"] == "throughput_line"
        assert row["mp_per_s"] == 1.25 and row["seconds"] == 0.5
    goals = report["rss_goals"]
    peaks = [r["peak_rss_bytes"] for r in rss]
    assert goals["max_peak_rss_bytes"] == max(peaks)
    assert goals["spread"] == pytest.approx(max(peaks) / min(peaks) - 1.0)
    assert goals["under_2gb"] == (max(peaks) < 2e9)


def test_auto_precision_skips_emulated_bf16_with_a_reason():
    run, skipped = inference.resolve_precisions(["auto"], native_bf16=False)
    assert run == ["fp32"] and "bf16" in skipped and "emulated" in skipped["bf16"]
    assert inference.resolve_precisions(["auto"], native_bf16=True) == (["fp32", "bf16"], {})
    assert inference.resolve_precisions(["bf16", "fp32"], native_bf16=False) == (["bf16", "fp32"], {})


def test_keras_twin_has_the_graph_models_parameters(num_classes=3):
    import keras
    from unet_perf.model.network import unet_flops

    cfg = make_tiny_config(num_classes=num_classes)
    model = keras_baseline.keras_unet(keras, cfg.depth, cfg.base_filters, cfg.num_classes, cfg.crop_size)
    assert model.count_params() == unet_flops(cfg, cfg.crop_size, cfg.crop_size)["params"]
    assert tuple(model.output_shape) == (None, cfg.crop_size, cfg.crop_size, num_classes)
