"""benchmarks/allocator.py: each child gets its allocator, the order alternates, ratios are per round, and a child's
failure is one line naming the way on.

The children are stood in for (each real one imports TensorFlow and trains for a minute); the failing child is the
real throughput.py refusing a bad flag before it imports TensorFlow.
"""
import json

import pytest

import allocator  # benchmarks/ is on sys.path through pytest.ini
from unet_perf.errors import UserError


def fake_rows(rate, faults):
    return [{"mode": "model", "precision": "fp32", "iterations_per_loop": k, "batch_size": 2, "crop_size": 128,
             "base_filters": 16, "images_per_sec": {"median": rate if k == 1 else 1.1 * rate},
             "cpu_ms_per_step": {"median": 500.0}, "faults_per_step": {"median": faults}} for k in (1, 10)]


def test_children_alternate_and_ratios_are_per_round(tmp_path, monkeypatch, capsys):
    calls = []
    rates = {"false": [10.0, 5.0, 10.0], "true": [11.0, 6.0, 12.0]}  # a slow middle round

    def run_child(flags, value, output, timeout):
        calls.append(value)
        return fake_rows(rates[value][len([c for c in calls if c == value]) - 1], 8000.0 if value == "false" else 1.0)

    monkeypatch.setattr(allocator, "run_child", run_child)
    assert allocator.main(["--rounds", "3", "--output", str(tmp_path)]) == 0
    assert calls == ["false", "true", "true", "false", "false", "true"]
    report = json.loads((tmp_path / "allocator.json").read_text())
    bfc_k1 = [row for row in report["summary"] if row["allocator"] == "bfc" and row["iterations_per_loop"] == 1][0]
    # per-round ratios 1.1, 1.2, 1.2 -> median 1.2 (a ratio of the medians, 11 / 10, would hide the slow round)
    assert bfc_k1["bfc_over_malloc"] == pytest.approx(1.2)
    assert bfc_k1["images_per_sec"] == pytest.approx(11.0) and bfc_k1["faults_per_step"] == 1.0
    assert "1.200" in capsys.readouterr().out


def test_a_failing_child_is_one_line_error(tmp_path):
    with pytest.raises(UserError, match="rerun it alone"):
        allocator.run_child(["--crop_size", "not-a-number"], "true", str(tmp_path), timeout=120)
