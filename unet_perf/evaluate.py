"""`python -m unet_perf.evaluate`: score a trained model on labelled slices the way ISBI 2012 does.

    python -m unet_perf.evaluate --model_dir runs/unet --data_path ../shared/data/isbi2012 --val_split 20-23

Prints a table (one row per slice, then the mean), writes `metrics.json` and `metrics.csv`, and one overlay PNG
per slice (image | ground truth | prediction | errors: false membrane red, missed membrane blue) to --output
(default `<model_dir>/eval`), replacing an earlier evaluation there once complete (a folder holding other files is
refused; a failed run leaves nothing behind). Without --data_path it scores the held-out slices of the model's own
config.

A --num_classes C >= 2 model is scored per class instead (unet_perf.inference.class_metrics): the table lists Dice
and IoU of every class, then the means over the foreground classes 1..C-1 and the pixel accuracy (all from the
confusion matrix summed over the slices; unlabelled pixels left out); metrics.json holds dice_per_class,
iou_per_class, mean_dice, mean_iou, pixel_accuracy, confusion_matrix (rows = truth), dice_nvidia (the soft Dice
NVIDIA's UNet_Medical reports) and every slice's own scores; the overlays show the classes in their colours and
the wrongly classified pixels red.
"""
import csv
import dataclasses
import json
import os
import re
import time

from unet_perf.inference.class_metrics import class_map, evaluate_class_slices, flat_scores
from unet_perf.inference.cli_flags import (add_inference_flags, check_inference_flags, model_palette, open_predictor,
                                           write_output_image)
from unet_perf.config import build_parser
from unet_perf.data.loading import read_slices, subset
from unet_perf.data.split import split_indices
from unet_perf.storage import run_dir
from unet_perf.errors import run_cli
from unet_perf.inference.metrics import METRIC_KEYS, THRESHOLD_KEYS, evaluate_slices
from unet_perf.inference.panels import class_error_overlay, error_overlay
from unet_perf.storage.output_folder import OutputFolder
from unet_perf.progress import ItemProgress


def labelled_slices(data_path, val_split, cfg, rgb):
    """(Pairs, description) of the slices to score: `val_split` of `data_path` ("" = every slice); an empty
    data_path means the built-in synthetic set of the model's config."""
    pairs = read_slices(dataclasses.replace(cfg, data_path=data_path, rgb=rgb))
    source = data_path or "the synthetic set (seed {})".format(cfg.seed)
    if val_split:
        pairs = subset(pairs, split_indices(len(pairs.names), val_split, cfg.seed)[1])
        source += " slices {}".format(val_split)
    return pairs, source


def is_evaluation_output(name):
    """True for a file name evaluate writes (what a new evaluation replaces in --output)."""
    return name in ("metrics.json", "metrics.csv") or name.endswith("_overlay.png")


def safe_name(name):
    """A file-name-safe version of a slice name such as 'train-volume.tif[3]'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "slice"


def format_table(names, scores):
    """The printed table: one row per slice, then the mean; one column per metric."""
    width = max([len("slice"), len("mean")] + [len(name) for name in names])

    def row(label, cells):
        return "{:<{w}}  ".format(label, w=width) + "  ".join(cells)

    def numbers(values):
        return ["{:>11.4f}".format(values[key]) for key in METRIC_KEYS]

    header = row("slice", ["{:>11}".format(key) for key in METRIC_KEYS])
    rule = "-" * len(header)
    lines = [header, rule] + [row(name, numbers(values)) for name, values in zip(names, scores["slices"])]
    return "\n".join(lines + [rule, row("mean", numbers(scores))])


def write_reports(output, names, scores, meta):
    """metrics.json (means, per-slice scores with their threshold sweeps, and `meta`) and metrics.csv."""
    per_slice = [dict([("slice", name)] + [(c, row[c]) for c in METRIC_KEYS] +
                      [("v_rand_best", row["v_rand_best"]), ("v_info_best", row["v_info_best"]),
                       ("v_rand_per_threshold", row["v_rand_per_threshold"]),
                       ("v_info_per_threshold", row["v_info_per_threshold"])])
                 for name, row in zip(names, scores["slices"])]
    summary = dict((key, scores[key]) for key in METRIC_KEYS + THRESHOLD_KEYS)
    report = {"mean": summary, "slices": per_slice, "thresholds": scores["slices"][0]["thresholds"]}
    report.update(meta)
    with open(os.path.join(output, "metrics.json"), "w") as handle:
        json.dump(report, handle, indent=2)
    with open(os.path.join(output, "metrics.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("slice",) + METRIC_KEYS)
        for row in per_slice:
            writer.writerow([row["slice"]] + ["{:.6f}".format(row[c]) for c in METRIC_KEYS])
        writer.writerow(["mean"] + ["{:.6f}".format(summary[c]) for c in METRIC_KEYS])


def format_class_table(scores):
    """The printed table of a C >= 2 model: Dice and IoU per class, then the foreground means and accuracy."""
    rows = ["{:<8}  {:>8}  {:>8}".format("class", "dice", "iou"), "-" * 28]
    rows += ["{:<8}  {:>8.4f}  {:>8.4f}".format(k, dice, iou)
             for k, (dice, iou) in enumerate(zip(scores["dice_per_class"], scores["iou_per_class"]))]
    rows += ["-" * 28, "{:<8}  {:>8.4f}  {:>8.4f}  (classes 1..{})".format(
        "mean", scores["mean_dice"], scores["mean_iou"], len(scores["dice_per_class"]) - 1),
        "pixel accuracy {:.4f}; soft Dice as NVIDIA UNet_Medical reports it (all classes) {:.4f}".format(
            scores["pixel_accuracy"], scores["dice_nvidia"])]
    return "\n".join(rows)


def write_class_reports(output, names, scores, meta):
    """metrics.json (the set's per-class scores at the top level, every slice's own, and `meta`) and metrics.csv
    (a row per slice, then the set: the means, accuracy and per-class Dice and IoU)."""
    report = dict((key, value) for key, value in scores.items() if key != "slices")
    report["slices"] = [dict([("slice", name)] + sorted(row.items())) for name, row in zip(names, scores["slices"])]
    report.update(meta)
    with open(os.path.join(output, "metrics.json"), "w") as handle:
        json.dump(report, handle, indent=2)
    columns = list(flat_scores(scores))
    with open(os.path.join(output, "metrics.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slice"] + columns)
        for name, row in zip(names + ["all"], scores["slices"] + [scores]):
            values = flat_scores(row)
            writer.writerow([name] + ["{:.6f}".format(values[c]) for c in columns])


def predict_slices(predictor, names, pairs, staging, overlay):
    """The prediction of every slice, with `overlay(image, mask, prediction)` written as <name>_overlay.png on the
    way (progress shown)."""
    progress = ItemProgress(len(names))
    probs = []
    for name, image, mask in zip(names, pairs.images, pairs.masks):
        start = time.time()
        prob = predictor.predict(image)
        probs.append(prob)
        write_output_image(os.path.join(staging, name + "_overlay.png"), overlay(image, mask, prob))
        progress.step(name, time.time() - start)
    progress.close()
    return probs


def score_binary(predictor, names, pairs, staging, threshold):
    """P(interior) of every slice (overlays written on the way) and evaluate_slices of them."""
    probs = predict_slices(predictor, names, pairs, staging,
                           lambda image, mask, prob: error_overlay(image, mask, prob, threshold))
    return evaluate_slices(probs, pairs.masks)


def score_classes(predictor, names, pairs, staging, palette):
    """Class probabilities of every slice (overlays written on the way) and evaluate_class_slices of them."""
    probs = predict_slices(predictor, names, pairs, staging,
                           lambda image, mask, prob: class_error_overlay(image, mask, class_map(prob), palette))
    return evaluate_class_slices(probs, pairs.masks, predictor.cfg.num_classes)


def main(argv=None):
    parser = add_inference_flags(build_parser("Score a trained U-Net on labelled slices (ISBI 2012 metrics)",
                                              fields=()))
    parser.add_argument("--data_path", default=None,
                        help="labelled slices (any layout train accepts); default: the model's --data_path")
    parser.add_argument("--val_split", default=None,
                        help="slices to score: '20-23', '20,21' or fold 'k/i'; default: every slice of "
                             "--data_path, or the model's own --val_split when --data_path is not given")
    parser.add_argument("--output", default=None, help="folder for metrics.json/csv and overlays "
                                                       "(default: <model_dir>/eval)")
    args = parser.parse_args(argv)
    check_inference_flags(args)
    from unet_perf.inference.model_dir import load_config

    cfg = load_config(args.model_dir)
    data_path = cfg.data_path if args.data_path is None else args.data_path
    val_split = args.val_split if args.val_split is not None else (cfg.val_split if args.data_path is None else "")
    pairs, source = labelled_slices(data_path, val_split, cfg, args.rgb)
    output = args.output or os.path.join(args.model_dir, run_dir.EVAL_DIR)
    names = [safe_name(name) for name in pairs.names]
    # A new evaluation replaces the previous one in --output as a whole, once complete (never other files).
    with OutputFolder(output, True, is_evaluation_output, last=("metrics.json",), command="evaluate") as staging:
        predictor = open_predictor(args, cfg)
        try:
            print("evaluating {} slice(s) of {} with {} ({} weights)".format(
                len(names), source, predictor.checkpoint, predictor.weights), flush=True)
            if cfg.num_classes > 1:
                scores = score_classes(predictor, names, pairs, staging, model_palette(cfg))
            else:
                scores = score_binary(predictor, names, pairs, staging, args.threshold)
        finally:
            predictor.close()
        meta = {"source": source, "checkpoint": predictor.checkpoint, "precision": predictor.cfg.precision,
                "tta": args.tta, "weights": predictor.weights, "overlap": args.overlap}
        if cfg.num_classes > 1:
            print(format_class_table(scores))
            write_class_reports(staging, names, scores, dict(meta, num_classes=cfg.num_classes))
        else:
            print(format_table(names, scores))
            print("best thresholds: V_rand {:.1f}, V_info {:.1f}".format(scores["v_rand_threshold"],
                                                                       scores["v_info_threshold"]))
            write_reports(staging, names, scores, meta)
    print("wrote metrics.json, metrics.csv and {} overlay(s) to {}".format(len(names), output))
    return 0


if __name__ == "__main__":
    run_cli(main)
