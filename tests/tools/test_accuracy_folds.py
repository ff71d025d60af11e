"""benchmarks/accuracy.py --folds: NVIDIA's fold sets, and a tiny two-fold run whose report matches its own models."""
import collections
import dataclasses
import json

import numpy as np
import pytest

import accuracy
import crossval
from unet_perf.errors import UserError


def nvidia_reference_fold(count, fold):
    """NVIDIA UNet_Medical's `_get_val_train_indices` (5 folds, ratio 0.8), restated with numpy and a deque."""
    np.random.seed(0)
    indices = np.arange(count)
    np.random.shuffle(indices)
    rotated = collections.deque(indices.tolist())
    rotated.rotate(fold * int(0.2 * count))
    rotated = np.array(rotated)
    return sorted(rotated[:int(0.8 * count)].tolist()), sorted(rotated[int(0.8 * count):].tolist())


@pytest.mark.parametrize("fold", range(5))
def test_thirty_slices_give_nvidias_exact_folds(fold):
    assert crossval.nvidia_fold(30, fold) == nvidia_reference_fold(30, fold)


def test_every_slice_is_held_out_once_for_any_count():
    for count, folds in ((24, 5), (7, 3)):
        held = [index for fold in range(folds) for index in crossval.nvidia_fold(count, fold, folds)[1]]
        assert sorted(held) == list(range(count))
        for fold in range(folds):
            train, val = crossval.nvidia_fold(count, fold, folds)
            assert not set(train) & set(val) and len(train) + len(val) == count


def test_a_sigmoid_probability_becomes_two_class_probabilities():
    probs = crossval.two_class_probabilities(np.full((4, 4), 0.75, np.float32))
    assert probs.shape == (4, 4, 2) and np.allclose(probs.sum(-1), 1.0) and np.allclose(probs[..., 1], 0.75)


TINY = ["--data_path", "", "--synthetic_count", "6", "--synthetic_size", "64", "--depth", "2", "--base_filters",
        "4", "--crop_size", "32", "--input_scale", "0.5", "--batch_size", "2", "--max_steps", "5",
        "--iterations_per_loop", "5", "--save_checkpoints_steps", "5", "--val_every", "5", "--warmup_steps", "2",
        "--augment", "false", "--learning_rate", "0.01", "--seeds", "1", "--eval_batch_size", "2"]


@pytest.mark.slow
def test_two_fold_run_scores_each_fold_on_its_held_out_slices(tmp_path):
    assert accuracy.main(TINY + ["--folds", "2", "--num_classes", "2", "--loss", "ce_dice",
                                 "--output", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "folds.json").read_text())
    assert report["folds"] == 2 and [r["fold"] for r in report["results"]] == [0, 1]
    assert sorted(report["results"][0]["val_slices"] + report["results"][1]["val_slices"]) == list(range(6))
    for result in report["results"]:
        saved = json.loads((tmp_path / "fold_{}".format(result["fold"]) / "config.json").read_text())
        assert saved["val_split"] == ",".join(map(str, result["val_slices"])) and saved["num_classes"] == 2
        assert result["trained_now"] and result["last"]["checkpoint"].endswith("model.ckpt-5")
        for key in ("best", "last", "last_tta"):
            for metric in ("nvidia_dice", "nvidia_dice_388", "v_rand", "membrane_dice"):
                assert 0.0 <= result[key][metric] <= 1.0
    dice = [r["last"]["nvidia_dice"] for r in report["results"]]
    assert report["summary"]["last_nvidia_dice"]["mean"] == pytest.approx(np.mean(dice))
    assert report["at_or_above_nvidia"] == (np.mean(dice) >= crossval.NVIDIA_RANGE[0])
    # A second run would score the finished folds again without retraining them: the trainer's summary is found.
    import fold_runs
    from unet_perf.inference.model_dir import load_config
    for result in report["results"]:
        cfg = load_config(result["model_dir"])
        assert fold_runs.finished_summary(result["model_dir"], cfg)["end_step"] == 5
        with pytest.raises(UserError, match="other settings .*learning_rate"):
            fold_runs.finished_summary(result["model_dir"], dataclasses.replace(cfg, learning_rate=0.5))
