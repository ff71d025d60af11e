"""Inference speed and memory of unet_perf: `python benchmarks/inference.py [--tiny] [--output DIR]`.

Rate rows, for one synthetic --image_size^2 uint8 TIFF, per precision and with/without --tta, side by side:
  pipeline  `python -m unet_perf.predict --model_dir M --input image.tif --output O ...` as a user runs it, in a
            child process: MP/s from its "throughput:" line (input pixels / time from the first tile read to the
            last output closed); a CLI without that line is timed by its wall time instead (rate_source says
            which), and its peak RSS (the child's own ru_maxrss, os.wait4)
  ceiling   the same tile batches (same count, batch size and precision; TTA = 8x the tiles), cut from the image
            beforehand and held in memory, through the same inference graph (Predictor.predict_batch): no tiling,
            blending or I/O in the timing. pipeline / ceiling is the share of the model's speed the pipeline keeps.
  keras     the same U-Net built from Keras layers (benchmarks/keras_baseline.py, parameter count asserted
            equal), model.predict on all tiles of the image, numpy overlap-average stitching: today's Keras way
Memory rows (--rss_sizes, default 16384 and 32768): a synthetic TIFF of that side is written to disk strip by strip
(never held in memory), predicted once by the CLI (fp32, no TTA) with a lighter model (--rss_base_filters,
--rss_tile_size) so the run fits in minutes, and deleted; peak RSS and MP/s are recorded. A child whose RSS passes
--rss_cap_gb is killed (a shared machine must not swap) and the row says so.

The models are checkpoints the benchmark trains itself for one step (`python -m unet_perf.train --max_steps 1`,
random weights: speed does not depend on them) in a temporary folder, deleted at the end with every input file;
--model_dir / --rss_model_dir use existing trained models instead. Precision "auto" is fp32, plus bf16 where it
has hardware support (as benchmarks/throughput.py resolves it: emulated bf16 is ~12x slower); skipped rows say why.
Rates: median over --repeats (--tta_repeats for TTA rows) with the min-max spread; in-memory rows after
--warmup_batches untimed batches, CLI rows are a fresh process each (graph build and restore are outside the
throughput line). Output: a table on stdout and <output>/inference.json (every figure, the configs, the exact
commands, TF version and machine). --tiny: a seconds-long smoke configuration (tests).
"""
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time

# No TensorFlow import here: flag errors are reported at once. bench_lib (which imports it) is imported in main.
from unet_perf.config import build_parser
from unet_perf.errors import UserError, run_cli

SCHEMA = "unet_perf.inference_bench/1"
BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCHMARKS)
THROUGHPUT_LINE = re.compile(r"^throughput: ([0-9.]+) MP in ([0-9.]+) s = ([0-9.]+) MP/s\s*$", re.M)
KINDS = ("pipeline", "ceiling", "keras")
RSS_GOAL_BYTES = 2e9  # the goals: peak RSS under 2 GB at both sizes, within 10% of each other
RSS_SPREAD_GOAL = 0.10
PRESETS = {
    "default": {"image_size": 4096, "precision": "auto", "tta": "off,on", "repeats": 3, "tta_repeats": 1,
                "warmup_batches": 2, "batch_size": 4, "base_filters": 16, "crop_size": 128, "depth": 4,
                "rss_sizes": "16384,32768", "rss_base_filters": 8, "rss_tile_size": 256},
    "tiny": {"image_size": 64, "precision": "fp32", "tta": "off,on", "repeats": 2, "tta_repeats": 1,
             "warmup_batches": 1, "batch_size": 2, "base_filters": 4, "crop_size": 32, "depth": 2,
             "rss_sizes": "64,96", "rss_base_filters": 2, "rss_tile_size": 64},
}


def build_arg_parser():
    parser = build_parser("Benchmark unet_perf inference: predict pipeline vs model ceiling vs Keras, peak RSS",
                          fields=("input_scale",))
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke configuration (tests)")
    for name, kind, text in (
            ("image_size", int, "side of the synthetic image of the rate rows"),
            ("precision", str, "comma list of fp32, bf16, or auto (fp32, + bf16 where it has hardware support)"),
            ("tta", str, "comma list of off, on"),
            ("repeats", int, "timed repeats of each rate row without TTA"),
            ("tta_repeats", int, "timed repeats of each rate row with TTA (8x the work)"),
            ("warmup_batches", int, "untimed batches before the in-memory rows"),
            ("batch_size", int, "tiles per Session.run (predict --batch_size; also the ceiling's and Keras')"),
            ("base_filters", int, "model of the rate rows (trained for 1 step)"),
            ("crop_size", int, "model of the rate rows: its tile side"),
            ("depth", int, "depth of both models"),
            ("rss_sizes", str, "comma list of image sides for the peak-RSS rows; 'none' skips them"),
            ("rss_base_filters", int, "model of the RSS rows (lighter: the big images take minutes)"),
            ("rss_tile_size", int, "tile side (the model's --crop_size) of the RSS rows")):
        parser.add_argument("--" + name, type=kind, default=None, help=text + " (default from the preset)")
    parser.add_argument("--tile_size", type=int, default=None,
                        help="predict --tile_size for the rate rows (default: the model's crop size, flag not "
                             "passed)")
    parser.add_argument("--overlap", type=int, default=None,
                        help="predict --overlap, at the network's scale (default: a quarter of the tile)")
    parser.add_argument("--skip", default="", help="comma list of rows to leave out: pipeline, ceiling, keras, rss")
    parser.add_argument("--model_dir", default=None, help="use this trained model for the rate rows")
    parser.add_argument("--rss_model_dir", default=None, help="use this trained model for the RSS rows")
    parser.add_argument("--rss_cap_gb", type=float, default=8.0,
                        help="kill a predict child whose RSS passes this (the row records it)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before a child process is killed")
    parser.add_argument("--tmp_dir", default=None, help="where the temporary models and images go (default: "
                                                        "the system's temp folder; the big images need ~1.1 GB)")
    parser.add_argument("--output", default="runs/inference", help="folder of inference.json")
    return parser


def parse_list(text, kind, flag, allowed=None):
    """'a,b' -> [kind(a), kind(b)]; a UserError naming the flag otherwise."""
    try:
        values = [kind(part.strip()) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise UserError("--{} must be a comma list of {} values, got {!r}".format(flag, kind.__name__, text))
    bad = [v for v in values if allowed is not None and v not in allowed]
    if bad or not values:
        raise UserError("--{} {!r}: use a comma list of {}".format(flag, text, ", ".join(map(str, allowed or []))))
    return values


def make_plan(argv):
    """Parsed flags with the preset filled in and the lists parsed; UserError for bad values."""
    args = build_arg_parser().parse_args(argv)
    preset = PRESETS["tiny" if args.tiny else "default"]
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.tta = [v == "on" for v in parse_list(args.tta, str, "tta", ("off", "on"))]
    args.precision = parse_list(args.precision, str, "precision", ("auto", "fp32", "bf16"))
    args.skip = set(parse_list(args.skip, str, "skip", KINDS + ("rss",))) if args.skip else set()
    args.rss_sizes = [] if args.rss_sizes == "none" else parse_list(args.rss_sizes, int, "rss_sizes")
    for name in ("image_size", "repeats", "tta_repeats", "batch_size", "base_filters", "crop_size", "depth",
                 "rss_base_filters", "rss_tile_size"):
        if getattr(args, name) <= 0:
            raise UserError("--{} must be positive, got {}".format(name, getattr(args, name)))
    if args.warmup_batches < 0 or any(size <= 0 for size in args.rss_sizes):
        raise UserError("--warmup_batches must be >= 0 and --rss_sizes positive")
    for flag, size in (("crop_size", args.crop_size), ("rss_tile_size", args.rss_tile_size)):
        if size % 2 ** args.depth:
            raise UserError("--{} {} must be divisible by 2^depth = {}".format(flag, size, 2 ** args.depth))
    return args


def resolve_precisions(requested, native_bf16):
    """(precisions to run, {precision: why it is skipped}) for the --precision list."""
    from throughput import resolve_auto_precision

    if "auto" not in requested:
        return list(dict.fromkeys(requested)), {}
    run = resolve_auto_precision(native_bf16)
    skipped = {} if "bf16" in run else {
        "bf16": "no bf16 hardware here (no GPU/NPU, no AVX512-BF16/AMX): emulated bf16 runs ~12x slower than "
                "fp32; pass --precision fp32,bf16 to measure it anyway"}
    return run, skipped


# --- children -----------------------------------------------------------------------------------------------

def child_env():
    """This checkout's unet_perf for every child (the benchmark measures the code it sits in)."""
    return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def predict_command():
    """How the predict CLI is started (a function, so a test can stand in a light fake)."""
    return [sys.executable, "-m", "unet_perf.predict"]


def train_command():
    return [sys.executable, "-m", "unet_perf.train"]


def keras_command():
    return [sys.executable, os.path.join(BENCHMARKS, "keras_baseline.py")]


def train_model(model_dir, base_filters, crop_size, depth, input_scale, timeout):
    """A one-step checkpoint of the given U-Net (random weights) in model_dir, trained by the train CLI."""
    from child_run import run_measured

    size = max(64, int(math.ceil(crop_size / input_scale)))  # synthetic slices must hold one training crop
    argv = train_command() + [
        "--max_steps", "1", "--iterations_per_loop", "1", "--base_filters", str(base_filters), "--crop_size",
        str(crop_size), "--depth", str(depth), "--input_scale", str(input_scale), "--synthetic_count", "2",
        "--synthetic_size", str(size), "--model_dir", model_dir]
    result = run_measured(argv, env=child_env(), timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError("training the benchmark model failed ({}):\n{}".format(
            " ".join(argv), result.stderr[-3000:]))
    return model_dir


def run_predict(model_dir, image_path, work, precision, tta, batch_size, overlap, tile_size, args):
    """One predict CLI run: {"seconds", "wall_seconds", "rate", "rate_source", "peak_rss_bytes"} or {"error"}."""
    from child_run import run_measured

    output = os.path.join(work, "predictions")
    argv = predict_command() + ["--model_dir", model_dir, "--input", image_path, "--output", output,
                                "--precision", precision, "--batch_size", str(batch_size),
                                "--overlap", str(overlap)]
    argv += ["--tta"] if tta else []
    argv += ["--tile_size", str(tile_size)] if tile_size else []
    try:
        result = run_measured(argv, env=child_env(), timeout=args.timeout, rss_cap_bytes=args.rss_cap_gb * 1e9)
    finally:
        shutil.rmtree(output, ignore_errors=True)
    run = {"argv": argv, "wall_seconds": result.seconds, "peak_rss_bytes": result.peak_rss_bytes}
    if result.killed or result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        run["error"] = "killed: " + result.killed if result.killed else "exit {}: {}".format(
            result.returncode, lines[-1] if lines else "no output")
        return run
    found = THROUGHPUT_LINE.findall(result.stdout)
    megapixels = image_pixels(image_path) / 1e6
    if found:
        run.update(seconds=float(found[-1][1]), rate=float(found[-1][2]), rate_source="throughput_line",
                   reported_megapixels=float(found[-1][0]))
    else:  # today's CLI prints no throughput line: its whole wall time, start-up included
        run.update(seconds=result.seconds, rate=megapixels / result.seconds, rate_source="wall_time")
    return run


def image_pixels(path):
    import tifffile

    with tifffile.TiffFile(path) as tif:
        height, width = tif.pages[0].shape[:2]
    return height * width


# --- the rows -----------------------------------------------------------------------------------------------

def summary(values):
    import bench_lib

    return bench_lib.stats(values)


def pipeline_row(model_dir, image_path, work, precision, tta, repeats, overlap, args):
    runs = [run_predict(model_dir, image_path, work, precision, tta, args.batch_size, overlap, args.tile_size,
                        args) for _ in range(repeats)]
    row = {"kind": "pipeline", "command": " ".join(runs[0]["argv"][2:])}
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        row["error"] = errors[0]
        return row
    row.update(mp_per_s=summary([r["rate"] for r in runs]), seconds=summary([r["seconds"] for r in runs]),
               wall_seconds=summary([r["wall_seconds"] for r in runs]),
               peak_rss_bytes=summary([r["peak_rss_bytes"] for r in runs]), rate_source=runs[0]["rate_source"])
    return row


def cut_batches(image, cfg, tile, overlap, batch_size, tta):
    """(scaled normalised image, the exact [B,t,t,1] batches predict's tiling sends to the network for it).

    The batches are recorded from unet_perf.inference.tiling.predict_tiled itself (with a stand-in network), so
    the ceiling runs the same tiles, padding slots and TTA transforms as the pipeline."""
    import numpy as np
    from unet_perf.inference.tiling import normalize_array, predict_tiled, rescale

    scaled = normalize_array(rescale(np.asarray(image, np.float32), cfg.input_scale), cfg.normalize)
    batches = []

    def record(batch):
        batches.append(batch.copy())
        return np.zeros(batch.shape[:3] + (cfg.num_classes,), np.float32)

    predict_tiled(record, scaled, tile, overlap, batch_size, tta)
    return scaled, batches


def ceiling_row(model_dir, cfg, precision, batches, tile, repeats, warmup_batches, megapixels):
    """The inference graph alone on the recorded batches; also returns its parameter count."""
    import numpy as np
    import bench_lib
    from unet_perf.compat import v1
    from unet_perf.inference.model_dir import resolve_checkpoint
    from unet_perf.inference.predictor import Predictor, build_predictor, restore, with_precision

    cfg = with_precision(cfg, precision)
    graph = v1.Graph()
    with graph.as_default():
        images, probability = build_predictor(cfg, int(batches[0].shape[0]), tile, tile)
        params = int(sum(np.prod(v.shape.as_list()) for v in v1.trainable_variables()))
        sess = v1.Session(graph=graph)
        restore(sess, resolve_checkpoint(model_dir), model_dir, cfg)
    with Predictor(sess, cfg, images, probability) as predictor:
        for index in range(warmup_batches):
            predictor.predict_batch(batches[index % len(batches)])
        times = bench_lib.time_calls(lambda: [predictor.predict_batch(b) for b in batches], repeats, 0)
    return {"kind": "ceiling", "mp_per_s": summary([megapixels / t for t in times]), "seconds": summary(times),
            "params": params}


def keras_row(scaled, cfg, precision, tta, tile, overlap, params, repeats, args, work, megapixels):
    """The Keras user's way, in its own process (Keras runs eagerly; unet_perf's graphs switch eager off)."""
    import numpy as np
    from child_run import run_measured

    image_path = os.path.join(work, "keras_image.npy")
    np.save(image_path, scaled)
    spec = {"image": image_path, "tile": tile, "overlap": overlap, "batch_size": args.batch_size, "tta": tta,
            "precision": precision, "depth": cfg.depth, "base_filters": cfg.base_filters,
            "num_classes": cfg.num_classes, "expected_params": params, "repeats": repeats,
            "warmup_batches": max(1, args.warmup_batches), "result": os.path.join(work, "keras_result.json")}
    spec_path = os.path.join(work, "keras_spec.json")
    with open(spec_path, "w") as handle:
        json.dump(spec, handle)
    try:
        result = run_measured(keras_command() + ["--spec", spec_path], env=child_env(), timeout=args.timeout)
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            return {"kind": "keras", "error": "exit {}: {}".format(result.returncode, lines[-1] if lines else "")}
        with open(spec["result"]) as handle:
            done = json.load(handle)
    finally:
        for path in (image_path, spec_path, spec["result"]):
            if os.path.exists(path):
                os.remove(path)
    if "skipped" in done:
        return {"kind": "keras", "skipped": done["skipped"]}
    return {"kind": "keras", "mp_per_s": summary([megapixels / t for t in done["seconds"]]),
            "seconds": summary(done["seconds"]), "predict_seconds": summary(done["predict_seconds"]),
            "tiles": done["tiles"], "params": done["params"], "keras_version": done["keras"],
            "peak_rss_bytes": result.peak_rss_bytes}


def rate_rows(args, model_dir, cfg, image_path, work, precisions, log):
    """Every (precision, TTA) group: pipeline, ceiling and Keras side by side, with the ratios."""
    import tifffile
    from unet_perf.inference.tiling import default_overlap

    tile = args.tile_size or cfg.crop_size
    overlap = default_overlap(tile) if args.overlap is None else args.overlap
    image = tifffile.imread(image_path)
    megapixels = image.size / 1e6
    rows = []
    for precision in precisions:
        for tta in args.tta:
            repeats = args.tta_repeats if tta else args.repeats
            common = {"image_size": args.image_size, "precision": precision, "tta": tta, "tile_size": tile,
                      "overlap": overlap, "batch_size": args.batch_size, "repeats": repeats}
            scaled, batches = cut_batches(image, cfg, tile, overlap, args.batch_size, tta)
            common["network_tiles"] = len(batches) * args.batch_size  # padding slots of the last batch included
            group = {}
            if "pipeline" not in args.skip:
                log("pipeline {} tta {} x{}".format(precision, tta, repeats))
                group["pipeline"] = pipeline_row(model_dir, image_path, work, precision, tta, repeats, overlap,
                                                 args)
            log("ceiling {} tta {} ({} batches)".format(precision, tta, len(batches)))
            ceiling = ceiling_row(model_dir, cfg, precision, batches, tile, repeats, args.warmup_batches,
                                  megapixels)  # always built: Keras' parameter check needs its count
            if "ceiling" not in args.skip:
                group["ceiling"] = ceiling
            del batches
            if "keras" not in args.skip:
                log("keras {} tta {}".format(precision, tta))
                group["keras"] = keras_row(scaled, cfg, precision, tta, tile, overlap, ceiling["params"], repeats,
                                           args, work, megapixels)
            add_ratios(group)
            rows += [dict(common, **row) for row in group.values()]
    return rows


def add_ratios(group):
    """pipeline / ceiling (goal >= 0.9) and pipeline / keras on the pipeline row, from the medians."""
    pipeline = group.get("pipeline")
    if pipeline is None or "mp_per_s" not in pipeline:
        return
    for other in ("ceiling", "keras"):
        if other in group and "mp_per_s" in group[other]:
            pipeline["over_" + other] = pipeline["mp_per_s"]["median"] / group[other]["mp_per_s"]["median"]


def rss_rows(args, model_dir, work, log):
    """One CLI run (fp32, no TTA) per --rss_sizes side on a synthetic TIFF written for it and deleted after."""
    from big_tiff import write_synthetic_tiff
    from unet_perf.inference.tiling import default_overlap

    rows = []
    for size in args.rss_sizes:
        path = os.path.join(work, "rss_{}.tif".format(size))
        row = {"kind": "rss", "image_size": size, "precision": "fp32", "tta": False,
               "tile_size": args.rss_tile_size, "base_filters": args.rss_base_filters}
        try:
            log("rss {}^2: writing the image".format(size))
            row["file_bytes"] = write_synthetic_tiff(path, size)
            log("rss {}^2: predicting".format(size))
            run = run_predict(model_dir, path, work, "fp32", False, args.batch_size,
                              default_overlap(args.rss_tile_size), None, args)
        finally:
            if os.path.exists(path):
                os.remove(path)
        row.update(command=" ".join(run["argv"][2:]), peak_rss_bytes=run["peak_rss_bytes"],
                   wall_seconds=run["wall_seconds"])
        if "error" in run:
            row["error"] = run["error"]
        else:
            row.update(mp_per_s=run["rate"], seconds=run["seconds"], rate_source=run["rate_source"])
        rows.append(row)
    return rows


def rss_goals(rows):
    """The issue's memory goals over the RSS rows: every size finished under 2 GB, largest/smallest peak within
    10%. A killed or failed row fails both (its peak is then a lower bound)."""
    peaks = [r["peak_rss_bytes"] for r in rows]
    finished = all("error" not in r for r in rows)
    spread = max(peaks) / min(peaks) - 1.0
    return {"all_finished": finished, "max_peak_rss_bytes": max(peaks), "spread": spread,
            "under_2gb": finished and max(peaks) < RSS_GOAL_BYTES,
            "within_10_percent": finished and spread <= RSS_SPREAD_GOAL}


# --- report -------------------------------------------------------------------------------------------------

def _rate_text(row):
    if "skipped" in row:
        return "skipped: " + row["skipped"]
    if "error" in row:
        return "error: " + row["error"]
    rate = row["mp_per_s"]
    if isinstance(rate, dict):
        return "{:.3f} [{:.3f}-{:.3f}]".format(rate["median"], rate["min"], rate["max"])
    return "{:.3f}".format(rate)


def _rss_text(row):
    rss = row.get("peak_rss_bytes")
    if rss is None:
        return "-"
    return "{:.2f}".format((rss["median"] if isinstance(rss, dict) else rss) / 1e9)


def format_table(rows):
    lines = ["| row | image | precision | TTA | tile | MP/s median [min-max] | vs ceiling | vs Keras | peak RSS GB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append("| {} | {}^2 | {} | {} | {} | {} | {} | {} | {} |".format(
            row["kind"], row["image_size"], row["precision"], "on" if row["tta"] else "off",
            row.get("tile_size", "-"), _rate_text(row),
            "{:.2f}".format(row["over_ceiling"]) if "over_ceiling" in row else "-",
            "{:.2f}x".format(row["over_keras"]) if "over_keras" in row else "-", _rss_text(row)))
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = make_plan(argv)
    import bench_lib  # imports TensorFlow
    from unet_perf.inference.model_dir import load_config

    started = time.time()
    log = bench_lib.elapsed_logger()
    output = bench_lib.output_folder(args.output)
    precisions, skipped = resolve_precisions(args.precision, bench_lib.native_bf16())
    work = tempfile.mkdtemp(prefix="unet_inference_bench_", dir=args.tmp_dir)
    rows, rss, models = [], [], {}
    try:
        from big_tiff import write_synthetic_tiff

        needs_rate = bool({"pipeline", "ceiling", "keras"} - args.skip)
        if needs_rate:
            log("rate model: base {} crop {} depth {}".format(args.base_filters, args.crop_size, args.depth))
            model_dir = args.model_dir or train_model(os.path.join(work, "model"), args.base_filters,
                                                      args.crop_size, args.depth, args.input_scale, args.timeout)
            cfg = load_config(model_dir)
            models["rate"] = {"model_dir": "given: " + model_dir if args.model_dir else "trained for 1 step",
                              "config": dataclasses.asdict(cfg)}
            image_path = os.path.join(work, "image.tif")
            write_synthetic_tiff(image_path, args.image_size)
            rows = rate_rows(args, model_dir, cfg, image_path, work, precisions, log)
            os.remove(image_path)
            for precision, reason in sorted(skipped.items()):
                for tta in args.tta:
                    rows.append({"kind": "all", "image_size": args.image_size, "precision": precision, "tta": tta,
                                 "skipped": reason})
        if args.rss_sizes and "rss" not in args.skip:
            log("rss model: base {} tile {} depth {}".format(args.rss_base_filters, args.rss_tile_size,
                                                            args.depth))
            rss_dir = args.rss_model_dir or train_model(os.path.join(work, "rss_model"), args.rss_base_filters,
                                                        args.rss_tile_size, args.depth, args.input_scale,
                                                        args.timeout)
            models["rss"] = {"model_dir": "given: " + rss_dir if args.rss_model_dir else "trained for 1 step",
                             "config": dataclasses.asdict(load_config(rss_dir))}
            rss = rss_rows(args, rss_dir, work, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    machine = bench_lib.machine_description()
    report = {
        "schema": SCHEMA,
        "command": ["python", "benchmarks/inference.py"] + argv,
        "preset": "tiny" if args.tiny else "default",
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "settings": {name: getattr(args, name) for name in (
            "image_size", "precision", "tta", "repeats", "tta_repeats", "warmup_batches", "batch_size",
            "tile_size", "overlap", "rss_sizes", "rss_base_filters", "rss_tile_size", "rss_cap_gb", "input_scale")},
        "precisions_run": precisions,
        "precisions_skipped": skipped,
        "timing": "rates: median over repeats with min-max; in-memory rows after warm-up batches, CLI rows are "
                  "one fresh process per repeat",
        "models": models,
        "machine": machine,
        "results": rows,
        "rss": rss,
        "rss_goals": rss_goals(rss) if rss else None,
        "duration_sec": time.time() - started,
    }
    report["settings"]["skip"] = sorted(args.skip)
    path = os.path.join(output, "inference.json")
    with open(path + ".tmp", "w") as handle:
        json.dump(report, handle, indent=1, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))
    os.replace(path + ".tmp", path)

    print("machine: {} ({} usable cores), TensorFlow {}".format(machine["cpu"], machine["usable_cores"],
                                                                machine["tensorflow"]))
    print(format_table(rows + rss))
    if report["rss_goals"]:
        print("rss goals: {}".format(report["rss_goals"]))
    print("wrote {}  ({:.0f} s)".format(path, time.time() - started))
    return 0


if __name__ == "__main__":
    run_cli(main)
