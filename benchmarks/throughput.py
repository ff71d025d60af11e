"""Training throughput of unet_perf: `python benchmarks/throughput.py [--mode pipeline,model,e2e] [sweeps...]`.

Modes (run alone or together):
  pipeline  the input pipeline alone (augmented pairs/sec), via benchmarks/pipeline_speed.measure_pipeline
  model     training steps fed by one cached random batch (the compute ceiling of this config)
  e2e       the real input pipeline feeding the same training loop; input-bound share = max(0, 1 - e2e/model)
Sweeps are comma lists: --iterations_per_loop 1,10,100 --precision fp32,bf16,fp16 --batch_size 2,8
--crop_size 128,256 --base_filters 16,64 --num_classes 1,2,8 (C = 1 sigmoid, C >= 2 softmax; above 4 classes the
pipeline and e2e modes need --data_path, the synthetic set has 4). Each training config: warm-up excluded, --repeats timed blocks of
--steps steps (rounded up to whole Session.runs), median and min-max; the K values of a point run side by side in
their own sessions with their blocks interleaved (K=1, K=10, K=1, ...), so a shared machine's drift hits every K alike,
and the process CPU ms per step is reported next to the rates. The same run measures the machine's
matmul ceiling per precision and reports achieved FLOP/s (analytic U-Net FLOPs) as a fraction of it.
  loss_scale  (or --loss_scale_report) fp16 dynamic loss scaling vs fp32, step by step, on the same batches, at
            the first value of each sweep (fp16 convolutions are slow on CPUs: use a small config there)
  --workers 1,2  data-parallel scaling on this host (benchmarks/scaling.py): N workers on 127.0.0.1 with
            --cores_per_worker cores each (default 1), global and per-worker img/s, efficiency img/s(N)/(N x img/s(1))
            and the bytes all-reduced per step, at the first value of each sweep, fed like --scaling_source

Defaults (a few minutes on a 2-core CPU): K 1,10, batch 2, crop 128, base 16, depth 4, synthetic data, precision
fp32 plus bf16 where it has hardware support (GPU, NPU, AVX512-BF16/AMX CPU; see resolve_auto_precision). --full: the ModelZoo size (512x512 input, batch 2 and 8, base 64). --tiny: a seconds-long smoke run.
Output: a table on stdout, <output>/throughput.json (every figure, the full config, TF version, machine) and
PNG plots when matplotlib is installed.
"""
import dataclasses
import itertools
import json
import os
import sys
import time

# No TensorFlow import here: flag errors are reported at once. bench_lib (which imports it) is imported in main.
from unet_perf.config import PRECISIONS, Config, build_parser
from unet_perf.cpu_allocator import prefer_bfc_allocator
from unet_perf.errors import UserError, run_cli

SCHEMA = "unet_perf.throughput/1"
MODES = ("pipeline", "model", "e2e", "loss_scale")
SWEEPS = {"iterations_per_loop": int, "precision": str, "batch_size": int, "crop_size": int, "base_filters": int,
          "num_classes": int}
SYNTHETIC_MAX_CLASSES = 4  # the built-in synthetic set has at most 4 classes (the real pipeline needs data beyond)
# Config fields that are not passed through: the sweeps, and --warmup_steps, which here means the untimed warm-up
# steps (the learning-rate warm-up does not change the speed of a step).
NOT_CONFIG = set(SWEEPS) | {"warmup_steps"}
# Values of the sweep flags and of a few Config fields per preset; explicit flags always win.
PRESETS = {
    "default": {"precision": "auto", "iterations_per_loop": "1,10", "batch_size": "2", "crop_size": "128",
                "base_filters": "16", "num_classes": "1", "steps": 20, "repeats": 3, "warmup_steps": 5, "matmul_size": 2048,
                "pipeline_batches": 20, "loss_scale_steps": 60},
    "full": {"precision": "auto", "iterations_per_loop": "1,10", "batch_size": "2,8", "crop_size": "512",
             "base_filters": "64", "num_classes": "1", "input_scale": 1.0, "depth": 4, "steps": 10, "repeats": 3, "warmup_steps": 2,
             "matmul_size": 2048, "pipeline_batches": 20, "loss_scale_steps": 100},
    "tiny": {"precision": "fp32", "iterations_per_loop": "1,2", "batch_size": "2", "crop_size": "32",
             "base_filters": "4", "num_classes": "1", "depth": 2, "synthetic_count": 4, "synthetic_size": 64, "steps": 4, "repeats": 2,
             "warmup_steps": 2, "matmul_size": 256, "pipeline_batches": 4, "loss_scale_steps": 12},
}


def build_arg_parser():
    parser = build_parser("Benchmark unet_perf training throughput",
                          fields=[f.name for f in dataclasses.fields(Config) if f.name not in NOT_CONFIG])
    for name in SWEEPS:
        parser.add_argument("--" + name, default=None, help="comma list to sweep (see the preset for the default)")
    parser.add_argument("--mode", default="pipeline,model,e2e",
                        help="comma list of pipeline, model, e2e, loss_scale (= --loss_scale_report)")
    parser.add_argument("--full", action="store_true", help="ModelZoo size: 512x512 input, batch 2 and 8, base 64")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke configuration (tests)")
    for name, kind in (("steps", int), ("repeats", int), ("warmup_steps", int), ("matmul_size", int),
                       ("pipeline_batches", int), ("loss_scale_steps", int)):
        parser.add_argument("--" + name, type=kind, default=None, help="default from the preset")
    parser.add_argument("--loss_scale_report", action="store_true",
                        help="also run fp16 dynamic loss scaling vs fp32 for --loss_scale_steps steps")
    parser.add_argument("--workers", default=None,
                        help="comma list of worker counts for the data-parallel scaling table, e.g. 1,2")
    parser.add_argument("--cores_per_worker", type=int, default=1, help="cores pinned per worker for --workers")
    parser.add_argument("--scaling_source", default="cached_batch", choices=("cached_batch", "pipeline"),
                        help="input of the --workers runs: one cached batch (compute + communication) or the real "
                             "pipeline (each worker augments its share on its own cores)")
    parser.add_argument("--output", default="runs/throughput", help="folder of throughput.json and the plots")
    parser.add_argument("--no_plots", action="store_true", help="skip the PNG plots")
    return parser


def parse_list(text, kind, flag):
    """'1,10,100' -> [1, 10, 100]; a UserError naming the flag otherwise."""
    try:
        values = [kind(part.strip()) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise UserError("--{} must be a comma list of {} values, got {!r}".format(flag, kind.__name__, text))
    if not values:
        raise UserError("--{} is empty".format(flag))
    return values


def given_flags(argv):
    return {token[2:].split("=", 1)[0] for token in argv if token.startswith("--")}


def make_plan(argv):
    """(args, base Config, {sweep name: values}, modes) from the command line and the chosen preset."""
    args = build_arg_parser().parse_args(argv)
    if args.full and args.tiny:
        raise UserError("--full and --tiny exclude each other: pick one")
    preset = PRESETS["full" if args.full else "tiny" if args.tiny else "default"]
    given = given_flags(argv)
    for name, value in preset.items():
        if name not in given and hasattr(args, name):
            setattr(args, name, value)
    modes = parse_list(args.mode, str, "mode")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise UserError("--mode {} is unknown: use a comma list of {}".format(",".join(unknown), ",".join(MODES)))
    if args.loss_scale_report and "loss_scale" not in modes:
        modes.append("loss_scale")
    args.workers = parse_list(args.workers, int, "workers") if args.workers else []
    if any(count < 1 for count in args.workers) or args.cores_per_worker < 1:
        raise UserError("--workers and --cores_per_worker must be positive, got {} and {}".format(
            args.workers, args.cores_per_worker))
    if args.workers and "mode" not in given:
        modes = []  # --workers alone: only the scaling table
    sweeps = {name: parse_list(getattr(args, name), kind, name) for name, kind in SWEEPS.items()}
    if sweeps["precision"] == ["auto"]:
        sweeps["precision"] = None  # resolved in main against the hardware (see resolve_auto_precision)
    bad = [p for p in sweeps["precision"] or [] if p not in PRECISIONS]
    if bad:
        raise UserError("--precision {} is unknown: use a comma list of {}".format(",".join(bad), ",".join(PRECISIONS)))
    for name in ("steps", "repeats", "warmup_steps", "matmul_size", "pipeline_batches", "loss_scale_steps"):
        if getattr(args, name) <= 0 and not (name == "warmup_steps" and getattr(args, name) == 0):
            raise UserError("--{} must be positive, got {}".format(name, getattr(args, name)))
    # the modes that load data: e2e at every value, the others at the first (a failure after minutes otherwise)
    loading = max(sweeps["num_classes"]) if "e2e" in modes else sweeps["num_classes"][0] if (
        {"pipeline", "loss_scale"} & set(modes) or args.scaling_source == "pipeline" and args.workers) else 0
    if loading > SYNTHETIC_MAX_CLASSES and not args.data_path:
        raise UserError("--num_classes {} needs --data_path for the modes that load data (the synthetic set has at "
                        "most {} classes); use --mode model".format(loading, SYNTHETIC_MAX_CLASSES))
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if f.name not in NOT_CONFIG}
    base = Config(**fields)
    return args, base, sweeps, modes


def resolve_auto_precision(native_bf16):
    """The default precision sweep: bf16 too only where it has hardware support (on an AVX2-only CPU, bf16
    convolutions are emulated and run about 10x slower than fp32, which would blow the time budget)."""
    return ["fp32", "bf16"] if native_bf16 else ["fp32"]


def config_for(base, point, steps):
    """The validated Config of one sweep point; step count a multiple of K, no checkpoints or validation."""
    k = point["iterations_per_loop"]
    total = max(1, -(-steps // k)) * k  # whole loops covering `steps`
    return dataclasses.replace(base, max_steps=total, save_checkpoints_steps=k, val_every=0, **point).validate()


def sweep_points(sweeps):
    names = list(SWEEPS)
    for values in itertools.product(*[sweeps[name] for name in names]):
        yield dict(zip(names, values))


def measure_training(args, base, sweeps, modes, ceilings, log):
    """One result dict per (sweep point, training mode); e2e results carry the input-bound share.

    The K values of a point are timed together, block by block (time_training), so the K comparison holds on a
    machine whose speed drifts; an error (an unsupported dtype on this device) is recorded for every K of the point.
    """
    from unet_perf.model.network import unet_flops
    results = []
    by_point = {}
    ks = sweeps["iterations_per_loop"]
    for first in sweep_points(dict(sweeps, iterations_per_loop=ks[:1])):
        points = [dict(first, iterations_per_loop=k) for k in ks]
        cfgs = [config_for(base, point, max(args.steps, args.warmup_steps)) for point in points]
        for mode in ("model", "e2e"):
            if mode not in modes:
                continue
            log("{} {} (K interleaved)".format(mode, _point_text(dict(first, iterations_per_loop=ks))))
            try:
                figures = time_training(cfgs, "cached_batch" if mode == "model" else "pipeline",
                                        args.steps, args.repeats, args.warmup_steps)
            except UserError:
                raise
            except Exception as err:  # an unsupported dtype/op on this device: record it, keep sweeping
                results += [dict(point, mode=mode, error=_error_text(err)) for point in points]
                continue
            for point, cfg, figure in zip(points, cfgs, figures):
                result = dict(point, mode=mode, **figure)
                _add_flops(result, unet_flops(cfg, cfg.crop_size, cfg.crop_size), ceilings.get(point["precision"]))
                by_point.setdefault(_point_text(point), {})[mode] = result
                results.append(result)
    for by_mode in by_point.values():
        if "model" in by_mode and "e2e" in by_mode:
            ratio = by_mode["e2e"]["images_per_sec"]["median"] / by_mode["model"]["images_per_sec"]["median"]
            by_mode["e2e"]["e2e_over_model"] = ratio
            by_mode["e2e"]["input_bound_share"] = max(0.0, 1.0 - ratio)
    return results


def time_training(cfgs, source_kind, steps, repeats, warmup_steps):
    """Images/sec, steps/sec and process CPU ms/step of each cfg's training loop (one figure dict per cfg):
    medians and spread over `repeats` timed blocks.

    Each block is the smallest whole number of Session.runs (K steps each) covering `steps`; warm-up runs (at least
    one: the first run includes graph optimisation) are excluded. Every cfg gets its own session, all are warmed
    up first, then the blocks go forward on even repeats and backward on odd ones (cfg 1, cfg 2, cfg 2, cfg 1, ...):
    a shared machine's drift hits every cfg alike. CPU ms/step counts every thread of this process (other
    processes' load shows less there than in the wall-clock rates); faults/step counts its minor page faults (the
    CPU allocator refilling freed memory page by page, see unet_perf/cpu_allocator.py). With the pipeline source
    an idle session may refill its few prefetched batches during another's block. source_kind: see
    assembly.dataset_source.
    """
    import bench_lib
    from unet_perf.training import assembly
    sessions, loops, backends = [], [], []
    try:
        for cfg in cfgs:
            training = assembly.build(cfg, assembly.dataset_source(cfg, source_kind))
            sess, fetches = assembly.open_session(training, cfg)
            sessions.append(sess)
            backends.append(training.backend.name)
            loops.append(assembly.CheckedRuns(sess, fetches, cfg.iterations_per_loop))  # fewer than K: an error
        last = [None] * len(cfgs)
        for index, cfg in enumerate(cfgs):
            for _ in range(assembly.steps_to_runs(warmup_steps, cfg.iterations_per_loop)):
                last[index] = loops[index].run()
        runs = [assembly.steps_to_runs(steps, cfg.iterations_per_loop) for cfg in cfgs]
        walls, cpus, faults = [[] for _ in cfgs], [[] for _ in cfgs], [[] for _ in cfgs]
        for repeat in range(repeats):
            order = range(len(loops)) if repeat % 2 == 0 else reversed(range(len(loops)))
            for index in order:
                def block():
                    for _ in range(runs[index]):
                        last[index] = loops[index].run()
                usage = bench_lib.timed_usage(block)
                walls[index].append(usage["wall"])
                cpus[index].append(usage["cpu"])
                faults[index].append(usage["faults"])
    finally:
        for sess in sessions:
            sess.close()
    figures = []
    for cfg, count, times, cpu, fault_counts, values, backend in zip(cfgs, runs, walls, cpus, faults, last, backends):
        steps_per_block = count * cfg.iterations_per_loop
        figures.append({
            "images_per_sec": bench_lib.stats([steps_per_block * cfg.batch_size / t for t in times]),
            "steps_per_sec": bench_lib.stats([steps_per_block / t for t in times]),
            "cpu_ms_per_step": bench_lib.stats([1000.0 * c / steps_per_block for c in cpu]),
            "faults_per_step": bench_lib.stats([float(f) / steps_per_block for f in fault_counts]),
            "steps_per_repeat": steps_per_block,
            "final_loss": float(values["loss"]),
            "backend": backend,
        })
    return figures


def _error_text(err):
    """Type, first and last line of an exception (TF errors put the useful part last)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()] or [""]
    text = lines[0] if len(lines) == 1 else "{} ... {}".format(lines[0], lines[-1])
    return "{}: {}".format(type(err).__name__, text[:500])


def _add_flops(result, flops, ceiling):
    per_image = flops["train_step"]
    result["train_flops_per_image"] = per_image
    achieved = result["images_per_sec"]["median"] * per_image / 1e9
    result["achieved_gflops"] = achieved
    result["ceiling_fraction"] = achieved / ceiling["median"] if ceiling and ceiling["median"] else None


def _point_text(point):
    return " ".join("{}={}".format(name, point[name]) for name in SWEEPS)


def measure_pipelines(args, base, sweeps, log):
    """Input pipeline alone, once per (batch size, crop size): measure_pipeline of benchmarks/pipeline_speed.py.

    The session gets every usable core, like the training session of the e2e mode.
    """
    import bench_lib
    from pipeline_speed import measure_pipeline
    results = []
    for batch_size, crop_size in itertools.product(sweeps["batch_size"], sweeps["crop_size"]):
        point = {"batch_size": batch_size, "crop_size": crop_size, "precision": sweeps["precision"][0],
                 "iterations_per_loop": 1, "base_filters": sweeps["base_filters"][0],
                 "num_classes": sweeps["num_classes"][0]}
        cfg = config_for(base, point, 1)
        log("pipeline batch_size={} crop_size={}".format(batch_size, crop_size))
        figures = measure_pipeline(cfg, args.pipeline_batches, args.repeats, max(1, args.warmup_steps),
                                   session_threads=bench_lib.usable_cores())
        result = {"mode": "pipeline", "batch_size": batch_size, "crop_size": crop_size, "measure_pipeline": figures}
        rate = _pairs_per_sec(figures)
        if rate is not None:
            result["images_per_sec"] = rate
        results.append(result)
    return results


def _pairs_per_sec(figures):
    """The {"median","min","max"} pairs/sec figure of a measure_pipeline dict, wherever it keeps it."""
    for key in ("pairs_per_s", "pairs_per_sec", "images_per_sec"):
        value = figures.get(key)
        if isinstance(value, dict) and "median" in value:
            return {k: value[k] for k in ("median", "min", "max") if k in value}
        if isinstance(value, (int, float)):
            return {"median": float(value), "min": figures.get(key + "_min", value),
                    "max": figures.get(key + "_max", value)}
    return None


def format_table(results, ceilings):
    header = "{:<8} {:<5} {:>4} {:>5} {:>5} {:>5} {:>3} {:>24} {:>10} {:>10} {:>10} {:>8} {:>7} {:>7}".format(
        "mode", "prec", "K", "batch", "crop", "base", "C", "img/s median [min-max]", "steps/s", "cpu ms/st",
        "faults/st", "GFLOP/s", "ceil%", "inbound")
    lines = [header, "-" * len(header)]
    for r in results:
        if "error" in r:
            lines.append("{:<8} {:<5} {:>4} {:>5} {:>5} {:>5} {:>3}  failed: {}".format(
                r["mode"], r.get("precision", ""), r.get("iterations_per_loop", ""), r["batch_size"],
                r["crop_size"], r.get("base_filters", ""), r.get("num_classes", ""), r["error"][:60]))
            continue
        ips = r.get("images_per_sec")
        ips_text = "{:.2f} [{:.2f}-{:.2f}]".format(ips["median"], ips["min"], ips["max"]) if ips else "see JSON"
        sps = r.get("steps_per_sec")
        cpu = r.get("cpu_ms_per_step")
        faults = r.get("faults_per_step")
        lines.append("{:<8} {:<5} {:>4} {:>5} {:>5} {:>5} {:>3} {:>24} {:>10} {:>10} {:>10} {:>8} {:>7} {:>7}".format(
            r["mode"], r.get("precision", "-") if r["mode"] != "pipeline" else "-",
            r.get("iterations_per_loop", "-") if r["mode"] != "pipeline" else "-", r["batch_size"], r["crop_size"],
            r.get("base_filters", "-") if r["mode"] != "pipeline" else "-",
            r.get("num_classes", "-") if r["mode"] != "pipeline" else "-", ips_text,
            "{:.2f}".format(sps["median"]) if sps else "-",
            "{:.0f}".format(cpu["median"]) if cpu else "-",
            "{:.0f}".format(faults["median"]) if faults else "-",
            "{:.1f}".format(r["achieved_gflops"]) if "achieved_gflops" in r else "-",
            "{:.0%}".format(r["ceiling_fraction"]) if r.get("ceiling_fraction") is not None else "-",
            "{:.0%}".format(r["input_bound_share"]) if r.get("input_bound_share") is not None else "-"))
    lines.append("")
    for precision, c in sorted(ceilings.items()):
        lines.append("matmul ceiling {} {}x{}: {:.1f} GFLOP/s [{:.1f}-{:.1f}]".format(
            precision, c["size"], c["size"], c["median"], c["min"], c["max"]))
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args, base, sweeps, modes = make_plan(argv)
    prefer_bfc_allocator()  # time what training processes run with (before bench_lib imports TensorFlow)
    import bench_lib
    from unet_perf import compat
    compat.enable_graph_mode()
    if sweeps["precision"] is None:
        sweeps["precision"] = resolve_auto_precision(bench_lib.native_bf16())
    for point in sweep_points(sweeps):  # a bad combination (crop vs depth, ...) fails now, not after minutes
        config_for(base, point, args.steps)
    started = time.time()
    log = bench_lib.elapsed_logger()
    output = bench_lib.output_folder(args.output)

    machine = bench_lib.machine_description()
    ceilings = {}
    if "model" in modes or "e2e" in modes:
        for precision in sorted(set(sweeps["precision"]) | {"fp32", "bf16"}):
            log("matmul ceiling {} {}^2".format(precision, args.matmul_size))
            ceilings[precision] = bench_lib.matmul_ceiling(precision, args.matmul_size, args.repeats, 2)
    results = []
    if "pipeline" in modes:
        results += measure_pipelines(args, base, sweeps, log)
    results += measure_training(args, base, sweeps, modes, ceilings, log)
    scaling = []
    if args.workers:
        import scaling as scaling_bench
        first = config_for(base, {name: values[0] for name, values in sweeps.items()}, args.steps)
        scaling = scaling_bench.measure_scaling(first, args.workers, args.cores_per_worker, args.scaling_source,
                                                args.steps, args.repeats, args.warmup_steps, log)
    loss_scale = None
    if "loss_scale" in modes:
        import loss_scale_report
        log("loss-scale report: fp16 dynamic vs fp32, {} steps".format(args.loss_scale_steps))
        cfg = config_for(base, {name: values[0] for name, values in sweeps.items()}, args.loss_scale_steps)
        loss_scale = loss_scale_report.run_report(cfg, args.loss_scale_steps)

    preset = "full" if args.full else "tiny" if args.tiny else "default"
    report = {
        "schema": SCHEMA,
        "command": ["python", "benchmarks/throughput.py"] + argv,
        "preset": preset,
        "modes": modes,
        "sweeps": sweeps,
        "timing": {"steps": args.steps, "repeats": args.repeats, "warmup_steps": args.warmup_steps,
                   "statistic": "median over repeats, min-max spread; warm-up excluded; the K values of a point "
                                "interleaved block by block"},
        # the first sweep point's full config; each result names the sweep values it overrides
        "config": dataclasses.asdict(config_for(base, {n: v[0] for n, v in sweeps.items()}, args.steps)),
        "machine": machine,
        "ceilings": ceilings,
        "results": results,
        "scaling": scaling,
        "loss_scale": loss_scale,
        "duration_sec": time.time() - started,
    }
    title = "{} | TF {} | {} cores".format(machine["cpu"], machine["tensorflow"], machine["usable_cores"])
    plots = []
    if not args.no_plots:
        import bench_plots
        plots += bench_plots.plot_throughput(results, output, title)
        if loss_scale is not None:
            plots += bench_plots.plot_loss_scale(loss_scale, output)
    report["plots"] = plots
    path = os.path.join(output, "throughput.json")
    with open(path + ".tmp", "w") as handle:
        json.dump(report, handle, indent=1, default=_json_default)
    os.replace(path + ".tmp", path)

    print("machine: {} ({} usable cores), TensorFlow {}, backend {}".format(
        machine["cpu"], machine["usable_cores"], machine["tensorflow"],
        next((r["backend"] for r in results if "backend" in r), "-")))
    print("config: depth {} input_scale {} data {} | {} steps x {} repeats after {} warm-up steps".format(
        base.depth, base.input_scale, base.data_path or "synthetic", args.steps, args.repeats, args.warmup_steps))
    if results or ceilings:
        print(format_table(results, ceilings))
    if scaling:
        import scaling as scaling_bench
        print("data-parallel scaling ({} input; machine shared with other jobs unless stated):".format(
            args.scaling_source))
        print(scaling_bench.format_scaling(scaling))
    if loss_scale is not None:
        import loss_scale_report
        print(loss_scale_report.format_report(loss_scale))
    print("wrote {}{}  ({:.0f} s)".format(path, "".join(", " + p for p in plots), time.time() - started))
    return 0


def _json_default(value):
    """numpy scalars and arrays in the figures."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError("not JSON serialisable: {!r}".format(value))


if __name__ == "__main__":
    run_cli(main)
