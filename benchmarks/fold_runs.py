"""`benchmarks/accuracy.py --folds K`: train and score one model per NVIDIA fold (protocol: benchmarks/crossval.py).

Every fold trains in <output>/fold_<k> with the benchmark's config, --val_split set to the fold's held-out slices;
the best and the last checkpoint are scored on them in this process. A fold whose summary.json says the training
finished with this config is scored again without retraining (so a report can be recomputed); an unfinished one
resumes. Writes <output>/folds.json and prints one row per fold and the mean +- std.
"""
import dataclasses
import json
import os
import time

import numpy as np

import bench_lib
import crossval
from unet_perf.errors import UserError

SCHEMA = "unet_perf.accuracy_folds/1"
SCORED = (("best", "best", False), ("last", "latest", False), ("last_tta", "latest", True))
METRICS = ("nvidia_dice", "nvidia_dice_388", "v_rand", "v_info", "membrane_dice")


def fold_dir(output, fold):
    return os.path.join(output, "fold_{}".format(fold))


def finished_summary(model_dir, cfg):
    """summary.json of a finished training of `cfg` in model_dir, else None (absent, unfinished or other config)."""
    from unet_perf.config import config_to_dict
    from unet_perf.storage import run_dir
    from unet_perf.storage.atomic import read_json

    summary = read_json(os.path.join(model_dir, run_dir.SUMMARY_FILE)) or {}
    if summary.get("status") != "finished" or summary.get("end_step") != cfg.total_steps:
        return None
    wanted = config_to_dict(cfg)
    saved = summary.get("config") or {}
    differing = sorted(key for key in wanted if key != "model_dir" and saved.get(key, wanted[key]) != wanted[key])
    if differing:
        raise UserError("{} holds a finished training with other settings ({}); pass a new --output".format(
            model_dir, ", ".join(differing)))
    return summary


def train_fold(cfg):
    """(summary of the fold's training, whether it ran now)."""
    from unet_perf.training.run import train

    summary = finished_summary(cfg.model_dir, cfg)
    if summary is not None:
        return summary, False
    with open(cfg.model_dir + ".log", "a") as log:
        summary = train(cfg, out=log)
    if summary.get("status") != "finished":
        raise RuntimeError("training of {} did not finish: {}".format(cfg.model_dir, summary.get("status")))
    return summary, True


def score_checkpoint(model_dir, checkpoint, tta, pairs, batch_size):
    """The protocol's scores of one checkpoint on the held-out `pairs` (labels {0, 1}, 1 = interior)."""
    from unet_perf.inference.class_metrics import soft_dice_nvidia
    from unet_perf.inference.metrics import evaluate_slices
    from unet_perf.inference.predictor import Predictor

    predictor = Predictor.from_model_dir(model_dir, checkpoint=checkpoint, batch_size=batch_size, tta=tta)
    try:
        probs = [crossval.two_class_probabilities(predictor.predict(image)) for image in pairs.images]
        used = predictor.checkpoint
    finally:
        predictor.close()
    labels = np.asarray(pairs.masks)
    resampled = [crossval.nvidia_resample(prob, label) for prob, label in zip(probs, labels)]
    isbi = evaluate_slices([prob[..., 1] for prob in probs], labels)
    return {"checkpoint": used,
            "nvidia_dice": soft_dice_nvidia(np.stack(probs), labels, 2),
            "nvidia_dice_388": soft_dice_nvidia(np.stack([p for p, _ in resampled]),
                                                np.stack([l for _, l in resampled]), 2),
            "v_rand": isbi["v_rand"], "v_info": isbi["v_info"], "membrane_dice": isbi["dice"]}


def run_fold(base, slices, seed, fold, folds, output, batch_size):
    """Train and score fold `fold` of `slices` (every labelled slice of base, read once by the caller)."""
    from unet_perf.data.loading import subset

    _, held_out = crossval.nvidia_fold(len(slices.names), fold, folds)
    cfg = dataclasses.replace(base, seed=seed, val_split=",".join(map(str, held_out)),
                              model_dir=fold_dir(output, fold)).validate()
    started = time.time()
    summary, trained_now = train_fold(cfg)
    result = {"fold": fold, "val_slices": held_out, "model_dir": cfg.model_dir, "trained_now": trained_now,
              "train_sec": summary["duration_sec"], "images_per_sec": summary["images_per_sec"],
              "wall_sec": time.time() - started if trained_now else None}
    pairs = subset(slices, held_out)
    for key, checkpoint, tta in SCORED:
        result[key] = score_checkpoint(cfg.model_dir, checkpoint, tta, pairs, batch_size)
    return result


def summarize(results):
    """{"<checkpoint>_<metric>": {"mean", "std", "min", "max"}} over folds, and the train time."""
    summary = {"{}_{}".format(key, metric): bench_lib.mean_std([r[key][metric] for r in results])
               for key, _, _ in SCORED for metric in METRICS}
    summary["train_sec"] = bench_lib.mean_std([r["train_sec"] for r in results])
    return summary


def format_table(results, summary):
    columns = [("best", "nvidia_dice"), ("last", "nvidia_dice"), ("last", "nvidia_dice_388"),
               ("last_tta", "nvidia_dice"), ("last", "v_rand"), ("last", "membrane_dice")]
    header = "{:>5} ".format("fold") + " ".join("{:>16}".format(k + ":" + m.replace("nvidia_", "nv_"))
                                                 for k, m in columns) + " {:>8}".format("train_s")
    lines = [header]
    for r in results:
        lines.append("{:>5} ".format(r["fold"]) + " ".join("{:>16.4f}".format(r[k][m]) for k, m in columns)
                     + " {:>8.0f}".format(r["train_sec"]))
    lines.append("{:>5} ".format("mean") + " ".join(
        "{:>16}".format("{:.4f}+-{:.4f}".format(summary[k + "_" + m]["mean"], summary[k + "_" + m]["std"]))
        for k, m in columns) + " {:>8.0f}".format(summary["train_sec"]["mean"]))
    return "\n".join(lines)


def run(base, seed, folds, output, batch_size, command):
    """Train and score every fold; writes <output>/folds.json. Returns 0."""
    from unet_perf.data.loading import read_slices

    load_before = os.getloadavg()
    slices = read_slices(base)
    results = []
    for fold in range(folds):
        print("fold {}/{}: {} steps in {} (log: {}.log)".format(fold, folds, base.total_steps,
                                                               fold_dir(output, fold), fold_dir(output, fold)),
              flush=True)
        results.append(run_fold(base, slices, seed, fold, folds, output, batch_size))
        r = results[-1]
        print("fold {}: {:.0f} s{}, Dice (NVIDIA's) best {:.4f} last {:.4f}, V_rand last {:.4f}".format(
            fold, r["train_sec"], "" if r["trained_now"] else " (trained before)", r["best"]["nvidia_dice"],
            r["last"]["nvidia_dice"], r["last"]["v_rand"]), flush=True)
    summary = summarize(results)
    report = {"schema": SCHEMA, "config": dataclasses.asdict(base), "seed": seed, "folds": folds,
              "results": results, "summary": summary,
              "nvidia": {"dice_fp32_1gpu": crossval.NVIDIA_DICE, "dice_range": crossval.NVIDIA_RANGE},
              "at_or_above_nvidia": summary["last_nvidia_dice"]["mean"] >= crossval.NVIDIA_RANGE[0],
              "machine": bench_lib.machine_description(), "command": command,
              "load_average": {"before": list(load_before), "after": list(os.getloadavg())}}
    path = os.path.join(output, "folds.json")
    with open(path, "w") as handle:
        json.dump(report, handle, indent=1)
    print(format_table(results, summary))
    print("NVIDIA's Dice (FP32, 1 GPU): {:.4f}-{:.4f}; this run (last checkpoint): {:.4f}".format(
        min(crossval.NVIDIA_DICE.values()), max(crossval.NVIDIA_DICE.values()), summary["last_nvidia_dice"]["mean"]))
    print("wrote {}".format(path))
    return 0
