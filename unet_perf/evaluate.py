"""`python -m unet_perf.evaluate`: score a trained model on labelled slices the way ISBI 2012 does.

    python -m unet_perf.evaluate --model_dir runs/unet --data_path ../shared/data/isbi2012 --val_split 20-23

Prints a table (one row per slice, then the mean), writes `metrics.json` and `metrics.csv`, and one overlay PNG
per slice (image | ground truth | prediction | errors: false membrane red, missed membrane blue) to --output
(default `<model_dir>/eval`). Without --data_path it scores the held-out slices of the model's own config.
"""
import csv
import json
import os
import re

import cv2
import numpy as np

from unet_perf.config import build_parser
from unet_perf.errors import UserError, run_cli
from unet_perf.predict import Reporter, add_inference_flags, check_inference_flags, open_predictor, write_image

COLUMNS = ("v_rand", "v_info", "dice", "iou", "pixel_error")
FALSE_MEMBRANE = (0, 0, 255)   # BGR red: predicted membrane where the ground truth has cell interior
MISSED_MEMBRANE = (255, 0, 0)  # BGR blue: ground-truth membrane predicted as interior


def labelled_slices(data_path, val_split, cfg, rgb):
    """(Pairs, description) of the slices to score: `val_split` of `data_path` ("" = every slice); an empty
    data_path means the built-in synthetic set of the model's config."""
    from unet_perf.data.loading import subset
    from unet_perf.data.sources import load_pairs
    from unet_perf.data.split import split_indices

    if data_path:
        pairs, source = load_pairs(data_path, rgb=rgb), data_path
    else:
        from unet_perf.data.synthetic import membranes
        pairs = membranes(cfg.synthetic_count, cfg.synthetic_size, cfg.seed)
        source = "the synthetic set (seed {})".format(cfg.seed)
    if val_split:
        pairs = subset(pairs, split_indices(len(pairs.names), val_split, cfg.seed)[1])
        source += " slices {}".format(val_split)
    if not len(pairs.names):
        raise UserError("no slices to evaluate in {}".format(source))
    return pairs, source


def overlay(image, gt_mask, prob, threshold=0.5):
    """One BGR strip: image | ground truth | prediction | image with errors coloured."""
    gray = cv2.cvtColor(np.asarray(image, np.uint8), cv2.COLOR_GRAY2BGR)
    predicted = prob > threshold
    truth = np.asarray(gt_mask) > 0
    errors = gray.copy()
    errors[truth & ~predicted] = FALSE_MEMBRANE
    errors[~truth & predicted] = MISSED_MEMBRANE
    as_bgr = lambda binary: cv2.cvtColor(np.where(binary, 255, 0).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    gap = np.full((gray.shape[0], 4, 3), 128, np.uint8)
    return np.concatenate([gray, gap, as_bgr(truth), gap, as_bgr(predicted), gap, errors], axis=1)


def safe_name(name):
    """A file-name-safe version of a slice name such as 'train-volume.tif[3]'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "slice"


def format_table(names, scores):
    width = max([len("slice"), len("mean")] + [len(name) for name in names])
    header = "{:<{w}}  ".format("slice", w=width) + "  ".join("{:>11}".format(c) for c in COLUMNS)
    lines = [header, "-" * len(header)]
    for name, row in zip(names, scores["slices"]):
        lines.append("{:<{w}}  ".format(name, w=width) + "  ".join("{:>11.4f}".format(row[c]) for c in COLUMNS))
    lines.append("-" * len(header))
    lines.append("{:<{w}}  ".format("mean", w=width) + "  ".join("{:>11.4f}".format(scores[c]) for c in COLUMNS))
    return "\n".join(lines)


def write_reports(output, names, scores, meta):
    per_slice = [dict([("slice", name)] + [(c, row[c]) for c in COLUMNS] +
                      [("v_rand_best", row["v_rand_best"]), ("v_info_best", row["v_info_best"]),
                       ("v_rand_per_threshold", row["v_rand_per_threshold"]),
                       ("v_info_per_threshold", row["v_info_per_threshold"])])
                 for name, row in zip(names, scores["slices"])]
    summary = dict((c, scores[c]) for c in COLUMNS)
    summary["v_rand_threshold"] = scores["v_rand_threshold"]
    summary["v_info_threshold"] = scores["v_info_threshold"]
    report = {"mean": summary, "slices": per_slice, "thresholds": scores["slices"][0]["thresholds"]}
    report.update(meta)
    with open(os.path.join(output, "metrics.json"), "w") as handle:
        json.dump(report, handle, indent=2)
    with open(os.path.join(output, "metrics.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("slice",) + COLUMNS)
        for row in per_slice:
            writer.writerow([row["slice"]] + ["{:.6f}".format(row[c]) for c in COLUMNS])
        writer.writerow(["mean"] + ["{:.6f}".format(summary[c]) for c in COLUMNS])


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
    from unet_perf.inference import load_config
    from unet_perf.metrics import evaluate_slices

    cfg = load_config(args.model_dir)
    data_path = cfg.data_path if args.data_path is None else args.data_path
    val_split = args.val_split if args.val_split is not None else (cfg.val_split if args.data_path is None else "")
    pairs, source = labelled_slices(data_path, val_split, cfg, args.rgb)
    output = args.output or os.path.join(args.model_dir, "eval")
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as err:
        raise UserError("cannot create --output {} ({}); choose a writable folder".format(output, err))
    predictor = open_predictor(args)
    names = [safe_name(name) for name in pairs.names]
    try:
        print("evaluating {} slice(s) of {} with {} ({} weights)".format(
            len(names), source, predictor.checkpoint, predictor.weights), flush=True)
        reporter = Reporter(len(names))
        probs = []
        for name, image, mask in zip(names, pairs.images, pairs.masks):
            start = cv2.getTickCount()
            prob = predictor.predict(image)
            probs.append(prob)
            write_image(os.path.join(output, name + "_overlay.png"), overlay(image, mask, prob, args.threshold))
            reporter.step(name, (cv2.getTickCount() - start) / cv2.getTickFrequency())
        reporter.close()
    finally:
        predictor.close()
    scores = evaluate_slices(probs, pairs.masks)
    print(format_table(names, scores))
    print("best thresholds: V_rand {:.1f}, V_info {:.1f}".format(scores["v_rand_threshold"],
                                                               scores["v_info_threshold"]))
    write_reports(output, names, scores, {"source": source, "checkpoint": predictor.checkpoint,
                                          "precision": predictor.cfg.precision, "tta": args.tta,
                                          "weights": predictor.weights,
                                          "overlap": args.overlap})
    print("wrote metrics.json, metrics.csv and {} overlay(s) to {}".format(len(names), output))
    return 0


if __name__ == "__main__":
    run_cli(main)
