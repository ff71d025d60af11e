"""Accuracy of a training recipe over seeds: `python benchmarks/accuracy.py --seeds 0,1,2 [train flags...]`.

For every seed it trains with unet_perf.training.run.train (validating every --val_every steps; best/ keeps the best
V_rand), then scores the best and the last checkpoint with `python -m unet_perf.evaluate`'s code, with and without
8-fold test-time augmentation (TTA). Reported per seed and as mean +- std (sample std over seeds): V_rand and V_info
at best/last x TTA off/on, the best step, the training time (the trainer's E2E duration, validations included), and
the V_rand-vs-step curve of every validation. Also the issue-13 goals (mean last V_rand >= 0.97, std <= 0.01, last
within 0.01 of best for every seed, TTA mean >= 0.98) as booleans.

Defaults: the recipe of docs/accuracy.md (RECIPE below) on ../shared/data/isbi2012 (relative to the repo), training
slices 0-19, validation slices 20-23. Every train flag can be overridden; `--data_path ""` trains on the built-in
synthetic set (smoke tests). Output: <output>/accuracy.json, <output>/v_rand_vs_step.png (when matplotlib is
installed), one model dir per seed (<output>/seed_<n>) and its training log (<output>/seed_<n>.log).
Scores are on held-out training slices, not the challenge's test set: they are not leaderboard numbers.

`--folds K` switches to NVIDIA UNet_Medical's protocol instead (benchmarks/crossval.py): their K-fold split of the
slices (K = 5: 24 train / 6 validate per fold on ISBI's 30), one training per fold (the first of --seeds), and per
fold the Dice NVIDIA reports (soft, both classes, at 512 and resampled to 388 px) beside V_rand, V_info and the
membrane Dice, for the best and the last checkpoint (the last also with TTA). A fold folder whose training finished
is scored again without retraining; an unfinished one resumes. Output: <output>/folds.json.

`--merge a/accuracy.json b/accuracy.json ...` combines runs of the same config with different seeds (e.g. seeds
trained in parallel processes) into one report in --output, recomputing the summary and the goals.
"""
import dataclasses
import json
import os
import sys
import time

# No TensorFlow import at module level: flag errors are reported at once.
from unet_perf.config import Config, build_parser
from unet_perf.errors import UserError, run_cli

import bench_plots  # benchmarks/, next to this script

SCHEMA = "unet_perf.accuracy/1"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(REPO, "..", "shared", "data", "isbi2012")
# The recipe under test (docs/accuracy.md); explicit flags win.
RECIPE = {
    "data_path": DEFAULT_DATA, "val_split": "20-23", "depth": 4, "base_filters": 16, "crop_size": 128,
    "input_scale": 1.0, "batch_size": 4, "optimizer": "adam", "learning_rate": 1e-3, "lr_schedule": "cosine",
    "warmup_steps": 100, "ema": 0.995, "max_steps": 5000, "iterations_per_loop": 10,
    "weight_map": True, "save_checkpoints_steps": 500, "val_every": 500, "summary_images": 0,
}
CHECKPOINTS = ("best", "last")
GOALS = {"mean_last_v_rand": 0.97, "std_last_v_rand": 0.01, "last_minus_best": 0.01, "mean_last_v_rand_tta": 0.98}


def build_arg_parser():
    parser = build_parser("Accuracy of a U-Net training recipe over several seeds",
                          fields=[f.name for f in dataclasses.fields(Config) if f.name not in ("seed", "model_dir")])
    parser.set_defaults(**RECIPE)
    parser.add_argument("--seeds", default="0,1,2", help="comma list of seeds, one training run each")
    parser.add_argument("--output", default="runs/accuracy",
                        help="folder of accuracy.json, the plot and one model dir per seed (must not hold a "
                             "previous run's seed folders)")
    parser.add_argument("--eval_batch_size", type=int, default=4, help="tiles per Session.run when scoring")
    parser.add_argument("--folds", type=int, default=0,
                        help="K > 0: NVIDIA's K-fold cross-validation (replaces --val_split; one training per fold "
                             "with the first of --seeds); 0: the seeds protocol")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="instead of training: combine these accuracy.json files (same config, different "
                             "seeds) into <output>/accuracy.json")
    return parser


def parse_args(argv=None):
    """(args, base Config without seed/model_dir, seeds) with every flag checked."""
    args = build_arg_parser().parse_args(argv)
    try:
        seeds = [int(part) for part in args.seeds.split(",") if part.strip()]
    except ValueError:
        raise UserError("--seeds must be a comma list of integers such as 0,1,2, got {!r}".format(args.seeds))
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError("--seeds must list at least one seed, each once, got {!r}".format(args.seeds))
    if args.data_path and not os.path.exists(args.data_path):
        raise UserError("--data_path {} does not exist; pass the ISBI 2012 folder (or any labelled data train "
                        "accepts), or --data_path \"\" for the built-in synthetic set".format(args.data_path))
    if args.folds < 0 or args.folds == 1:
        raise UserError("--folds must be 0 (seeds protocol) or at least 2, got {}".format(args.folds))
    if not args.val_split and not args.folds:
        raise UserError("--val_split is empty: the benchmark scores held-out slices; pass e.g. --val_split 20-23")
    if args.val_every <= 0:
        raise UserError("--val_every must be positive: the benchmark records V_rand against the step")
    if args.eval_batch_size <= 0:
        raise UserError("--eval_batch_size must be positive, got {}".format(args.eval_batch_size))
    fields = dict((f.name, getattr(args, f.name)) for f in dataclasses.fields(Config)
                  if f.name not in ("seed", "model_dir"))
    base = Config(**fields)
    dataclasses.replace(base, seed=seeds[0]).validate()
    return args, base, seeds


def seed_dir(output, seed):
    return os.path.join(output, "seed_{}".format(seed))


def check_output(output, seeds):
    """UserError when a seed folder already exists (the benchmark times fresh runs, it never resumes)."""
    for seed in seeds:
        path = seed_dir(output, seed)
        if os.path.exists(path):
            raise UserError("{} exists from an earlier run; pass a new --output or delete it".format(path))


def validation_curve(model_dir):
    """[(step, v_rand)] of every validation the trainer logged to TensorBoard in model_dir, by step."""
    import glob

    from unet_perf.compat import v1

    points = {}
    for path in sorted(glob.glob(os.path.join(model_dir, "events.out.tfevents.*"))):
        for event in v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "validation/v_rand":
                    points[int(event.step)] = float(value.simple_value)
    return sorted(points.items())


def score(model_dir, checkpoint, tta, cfg, output, batch_size):
    """The evaluate CLI's metrics.json (mean over slices) for one checkpoint of model_dir, TTA on or off."""
    from unet_perf import evaluate

    folder = os.path.join(output, "eval_{}{}".format(checkpoint, "_tta" if tta else ""))
    argv = ["--model_dir", model_dir, "--checkpoint", "latest" if checkpoint == "last" else "best",
            "--data_path", cfg.data_path, "--val_split", cfg.val_split, "--output", folder,
            "--batch_size", str(batch_size)] + (["--tta"] if tta else [])
    if evaluate.main(argv) != 0:
        raise RuntimeError("evaluate failed for {} ({})".format(model_dir, checkpoint))
    with open(os.path.join(folder, "metrics.json")) as handle:
        report = json.load(handle)
    return {"v_rand": report["mean"]["v_rand"], "v_info": report["mean"]["v_info"],
            "checkpoint": report["checkpoint"], "weights": report.get("weights", "raw")}


def run_seed(base, seed, output, batch_size):
    """Train one seed and score it; returns its result dict."""
    from unet_perf.storage.atomic import read_json
    from unet_perf.training.run import train

    model_dir = seed_dir(output, seed)
    cfg = dataclasses.replace(base, seed=seed, model_dir=model_dir).validate()
    started = time.time()
    with open(model_dir + ".log", "w") as log:
        summary = train(cfg, out=log)
    wall = time.time() - started
    if summary.get("status") != "finished":
        raise RuntimeError("training of seed {} did not finish: {}".format(seed, summary.get("status")))
    best = read_json(os.path.join(model_dir, "best", "metrics.json")) or {}
    result = {"seed": seed, "model_dir": model_dir, "train_sec": summary["duration_sec"], "wall_sec": wall,
              "images_per_sec": summary["images_per_sec"], "best_step": best.get("step"),
              "last_step": summary["end_step"], "curve": validation_curve(model_dir)}
    for checkpoint in CHECKPOINTS:
        for tta in (False, True):
            result["{}{}".format(checkpoint, "_tta" if tta else "")] = score(
                model_dir, checkpoint, tta, cfg, model_dir, batch_size)
    result["last_minus_best"] = result["last"]["v_rand"] - result["best"]["v_rand"]
    return result


def aggregate(results):
    """Mean +- std over seeds of every score, the training time, and the issue-13 goals."""
    from bench_lib import mean_std

    summary = {}
    for key in ("best", "best_tta", "last", "last_tta"):
        for metric in ("v_rand", "v_info"):
            summary["{}_{}".format(key, metric)] = mean_std([r[key][metric] for r in results])
    summary["train_sec"] = mean_std([r["train_sec"] for r in results])
    summary["last_minus_best"] = mean_std([r["last_minus_best"] for r in results])
    goals = {
        "mean_last_v_rand": summary["last_v_rand"]["mean"] >= GOALS["mean_last_v_rand"],
        "std_last_v_rand": summary["last_v_rand"]["std"] <= GOALS["std_last_v_rand"],
        "last_within_best": all(r["last_minus_best"] >= -GOALS["last_minus_best"] for r in results),
        "mean_last_v_rand_tta": summary["last_tta_v_rand"]["mean"] >= GOALS["mean_last_v_rand_tta"],
    }
    return summary, goals


def format_table(results, summary):
    header = "{:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8}".format(
        "seed", "best", "best_tta", "last", "last_tta", "info_last", "last-best", "best@", "train_s")
    lines = ["V_rand (V_info of the last checkpoint without TTA in info_last)", header]
    for r in results:
        lines.append("{:>8} {:>9.4f} {:>9.4f} {:>9.4f} {:>9.4f} {:>9.4f} {:>+9.4f} {:>7} {:>8.0f}".format(
            r["seed"], r["best"]["v_rand"], r["best_tta"]["v_rand"], r["last"]["v_rand"], r["last_tta"]["v_rand"],
            r["last"]["v_info"], r["last_minus_best"], r["best_step"], r["train_sec"]))
    cell = lambda key: "{:.4f}+-{:.4f}".format(summary[key]["mean"], summary[key]["std"])
    lines.append("mean+-std  best {}  best_tta {}  last {}  last_tta {}  train {:.0f}+-{:.0f} s".format(
        cell("best_v_rand"), cell("best_tta_v_rand"), cell("last_v_rand"), cell("last_tta_v_rand"),
        summary["train_sec"]["mean"], summary["train_sec"]["std"]))
    return "\n".join(lines)


def load_reports(paths):
    """The accuracy.json reports at `paths`; UserError unless they share one config and no seed repeats."""
    reports = []
    for path in paths:
        try:
            with open(path) as handle:
                report = json.load(handle)
        except (OSError, ValueError) as err:
            raise UserError("--merge {} is not a readable accuracy.json ({})".format(path, err))
        if report.get("schema") != SCHEMA:
            raise UserError("--merge {} is not an accuracy.json of schema {}".format(path, SCHEMA))
        reports.append(report)
    for path, report in zip(paths[1:], reports[1:]):
        differing = sorted(key for key in report["config"] if report["config"][key] != reports[0]["config"].get(key))
        if differing:
            raise UserError("--merge {} was trained with other settings than {} ({}); merge runs of one "
                            "config only".format(path, paths[0], ", ".join(differing)))
    seeds = [seed for report in reports for seed in report["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise UserError("--merge: seed(s) {} appear in more than one file".format(
            sorted(set(s for s in seeds if seeds.count(s) > 1))))
    return reports


def write_report(output, base_config, seeds, results, machine, extra):
    """accuracy.json + the plot in `output`; prints the table and the goals. Returns the report."""
    summary, goals = aggregate(results)
    title = "{} | seeds {} | {}".format(os.path.basename(base_config["data_path"].rstrip("/")) or "synthetic",
                                        ",".join(map(str, seeds)), machine["cpu"])
    plot = bench_plots.plot_accuracy_curves(results, os.path.join(output, "v_rand_vs_step.png"), title)
    report = {
        "schema": SCHEMA, "config": base_config, "seeds": seeds, "results": results, "summary": summary,
        "goals": goals, "goal_thresholds": GOALS, "plot": plot, "machine": machine,
        "note": "V_rand/V_info on held-out training slices ({}), not the challenge test set; std is the sample "
                "std over seeds; train_sec is the trainer's E2E duration including validations".format(
                    base_config["val_split"]),
    }
    report.update(extra)
    path = os.path.join(output, "accuracy.json")
    with open(path, "w") as handle:
        json.dump(report, handle, indent=1)
    print(format_table(results, summary))
    print("goals: " + "  ".join("{} {}".format(k, "met" if v else "NOT met") for k, v in sorted(goals.items())))
    print("wrote {}{}".format(path, " and {}".format(plot) if plot else ""))
    return report


def merge(paths, output):
    reports = load_reports(paths)
    results = sorted((r for report in reports for r in report["results"]), key=lambda r: r["seed"])
    write_report(output, reports[0]["config"], [r["seed"] for r in results], results, reports[0]["machine"],
                 {"merged_from": [os.path.abspath(p) for p in paths],
                  "load_average": [report.get("load_average") for report in reports]})
    return 0


def main(argv=None):
    args, base, seeds = parse_args(argv)
    output = os.path.abspath(args.output)
    if not args.merge:
        check_output(output, seeds)
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as err:
        raise UserError("--output {} cannot be created ({}); pass a writable folder".format(output, err.strerror))
    if args.merge:
        return merge(args.merge, output)
    from unet_perf import compat  # noqa: F401 -- before TensorFlow loads: it quiets TensorFlow's C++ logging
    import bench_lib
    if args.folds:
        import fold_runs
        return fold_runs.run(base, seeds[0], args.folds, output, args.eval_batch_size,
                             [os.path.basename(sys.argv[0])] + list(sys.argv[1:] if argv is None else argv))

    load_before = os.getloadavg()
    results = []
    for seed in seeds:
        print("seed {}: training {} steps (log: {}.log)".format(seed, base.total_steps, seed_dir(output, seed)),
              flush=True)
        results.append(run_seed(base, seed, output, args.eval_batch_size))
        r = results[-1]
        print("seed {}: {:.0f} s, V_rand best {:.4f} (step {}) last {:.4f}, with TTA last {:.4f}".format(
            seed, r["train_sec"], r["best"]["v_rand"], r["best_step"], r["last"]["v_rand"],
            r["last_tta"]["v_rand"]), flush=True)
    write_report(output, dataclasses.asdict(base), seeds, results, bench_lib.machine_description(), {
        "command": [os.path.basename(sys.argv[0])] + list(sys.argv[1:] if argv is None else argv),
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())}})
    return 0


if __name__ == "__main__":
    run_cli(main)
