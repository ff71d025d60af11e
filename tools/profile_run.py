"""Profile a short training run: `tools/profile.sh [--steps N] [--output DIR] [--top N] [train flags...]`.

It builds the trainer's graph from the same pieces (real input pipeline, backend K-step loop, U-Net, loss), runs
one untraced warm-up Session.run (graph optimisation), then traces at least --steps steps.

CPU/GPU (host backend), under --output:
  trace.json        Chrome trace (chrome://tracing, Perfetto) of the traced runs, from RunMetadata step stats
  ops.csv           op types by summed time: op_type, category, count, total_ms, share
  events.out.*      RunMetadata per traced run for TensorBoard (Graphs tab, "Session runs": time per node)
  plugins/profile/  TensorFlow 2.x profiler trace of one more run (TensorBoard's Profile tab), when available
NPU (Ascend): profiling_mode + profiling_options in the session config (output, training_trace, task_trace,
  aicpu, aic_metrics; fp_point/bp_point empty by default so the profiler finds the iteration boundaries itself,
  --fp_point/--bp_point NAME or "auto" for the U-Net's first forward and last backward TensorFlow op); prints the
  PROF_* (CANN 5+) or JOB* (older CANN) result folders and the `msprof --export` command, which must run after this
  process has exited: the profiler flushes its data only then.
"""
import csv
import dataclasses
import glob
import json
import os
import shutil
import time

from unet_perf.cpu_allocator import prefer_bfc_allocator

prefer_bfc_allocator()  # profile what training processes run with (before TensorFlow allocates)

from unet_perf import compat  # noqa: E402
from unet_perf.training import assembly  # noqa: E402
from unet_perf.compat import v1  # noqa: E402
from unet_perf.config import Config, build_parser  # noqa: E402
from unet_perf.errors import UserError, run_cli  # noqa: E402

CATEGORIES = (
    # (category, op types or prefixes of the base op type, see base_op_type); first match wins
    ("input (tf.data wait: augmentation)", ("IteratorGetNext", "IteratorV2", "MakeIterator", "OptionalGetValue")),
    ("convolution", ("Conv2D", "Conv3D", "DepthwiseConv2d")),
    ("matmul", ("MatMul", "BatchMatMul")),
    ("batch norm", ("BatchNorm",)),
    ("loop control", ("Enter", "Exit", "Merge", "Switch", "NextIteration", "LoopCond", "While", "StatelessWhile",
                      "_SwitchN", "RefEnter", "RefMerge", "RefSwitch", "If", "StatelessIf")),
    ("optimizer update", ("ResourceApply", "Apply", "AssignVariableOp", "AssignAddVariableOp",
                          "AssignSubVariableOp")),
    ("pooling / resize", ("MaxPool", "AvgPool", "ResizeNearest", "ResizeBilinear", "ResizeBicubic")),
    ("random (dropout, seeds)", ("StatelessRandom", "RandomUniform", "RandomStandardNormal")),
    ("variable reads", ("ReadVariableOp", "VarHandleOp", "_Recv", "_Send")),
)

# Prefixes that graph rewrites put in front of a kernel's op type: oneDNN (`_MklNativeFusedConv2D`,
# `__MklDummyConv2DWithBias`), Grappler's remapper (`_FusedConv2D`, `_FusedBatchNormEx`) and their pad/quantize
# fusions. Which ones appear depends on the CPU and the TF build, so the table strips them all.
KERNEL_PREFIXES = ("__MklDummy", "_MklNative", "_Mkl", "_Fused", "FusedResizeAndPad", "FusedPad", "Fused",
                   "PadWith", "Quantized")


def base_op_type(op_type):
    """The op type without kernel-rewrite prefixes: `_MklNativeFusedConv2D` -> `Conv2D`, `_MklMatMul` -> `MatMul`.

    Prefixes are stripped repeatedly (`_MklNativePadWithFusedConv2D` -> `Conv2D`); framework ops such as `_Recv`
    or `_SwitchN` carry none and come back unchanged.
    """
    stripped = True
    while stripped:
        stripped = False
        for prefix in KERNEL_PREFIXES:
            if op_type.startswith(prefix) and len(op_type) > len(prefix):
                op_type = op_type[len(prefix):]
                stripped = True
                break
    return op_type


def op_category(op_type):
    """Category of an op type for the profile table, the same whatever kernel names the CPU's TF build uses."""
    base = base_op_type(op_type)
    for category, prefixes in CATEGORIES:
        if any(base.startswith(p) for p in prefixes):
            return category
    return "other"


def op_type_of(node_stats):
    """Op type from a NodeExecStats timeline label "name = OpType(inputs)"; the node name when there is none."""
    label = node_stats.timeline_label
    if " = " in label:
        return label.split(" = ", 1)[1].split("(", 1)[0].strip() or node_stats.node_name
    return node_stats.node_name.split(":")[0]


def _counted_devices(step_stats):
    # GPU stats list each kernel twice (per stream and "stream:all"): count the per-stream records only.
    return [d for d in step_stats.dev_stats if not d.device.endswith("stream:all")]


def op_table(run_metadatas):
    """Rows {op_type, category, count, total_ms, share} by summed op time over all traced runs, largest first.

    Shares are of the summed op time (ops on parallel threads overlap, so the sum can exceed wall time).
    """
    totals = {}
    for metadata in run_metadatas:
        for device in _counted_devices(metadata.step_stats):
            for node in device.node_stats:
                op_type = op_type_of(node)
                count, micros = totals.get(op_type, (0, 0))
                totals[op_type] = (count + 1, micros + node.all_end_rel_micros)
    grand = float(sum(m for _, m in totals.values())) or 1.0
    rows = [{"op_type": t, "category": op_category(t), "count": c, "total_ms": m / 1000.0, "share": m / grand}
            for t, (c, m) in totals.items()]
    return sorted(rows, key=lambda row: (-row["total_ms"], row["op_type"]))


def category_table(rows):
    """(category, total_ms, share) summed from op rows, largest first."""
    sums = {}
    for row in rows:
        ms, share = sums.get(row["category"], (0.0, 0.0))
        sums[row["category"]] = (ms + row["total_ms"], share + row["share"])
    return sorted(((c, ms, share) for c, (ms, share) in sums.items()), key=lambda item: -item[1])


def chrome_trace(run_metadatas):
    """Chrome trace-event JSON (dict) of the runs' step stats: one process per device, one thread per device row.

    Built from the public RunMetadata proto (no private timeline module), so it works on TF 1.15 and 2.x.
    """
    events, pids = [], {}
    for metadata in run_metadatas:
        for device in _counted_devices(metadata.step_stats):
            if device.device not in pids:
                pids[device.device] = len(pids)
                events.append({"name": "process_name", "ph": "M", "pid": pids[device.device], "tid": 0,
                               "args": {"name": device.device}})
            for node in device.node_stats:
                events.append({"name": op_type_of(node), "cat": "Op", "ph": "X", "pid": pids[device.device],
                               "tid": node.thread_id, "ts": node.all_start_micros,
                               "dur": max(1, node.all_end_rel_micros),
                               "args": {"name": node.node_name, "op": op_type_of(node)}})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def format_ops(rows, top):
    lines = ["{:<32} {:<36} {:>7} {:>10} {:>7}".format("op type", "category", "count", "total ms", "share")]
    for row in rows[:top]:
        lines.append("{:<32} {:<36} {:>7} {:>10.2f} {:>6.1%}".format(
            row["op_type"][:32], row["category"], row["count"], row["total_ms"], row["share"]))
    lines.append("by category: " + ", ".join(
        "{} {:.0%}".format(category, share) for category, _, share in category_table(rows)))
    return "\n".join(lines)


def write_ops_csv(rows, path):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["op_type", "category", "count", "total_ms", "share"])
        writer.writeheader()
        for row in rows:
            writer.writerow(dict(row, total_ms="{:.3f}".format(row["total_ms"]), share="{:.5f}".format(row["share"])))


def profile_host(training, cfg, runs, output, top):
    """Trace `runs` Session.runs after one warm-up run; write trace.json, ops.csv, TensorBoard files."""
    sess, fetches = assembly.open_session(training, cfg)
    loop = assembly.CheckedRuns(sess, fetches, cfg.iterations_per_loop)
    writer = v1.summary.FileWriter(output, training.graph)
    metadatas = []
    try:
        loop.run()  # warm-up: graph optimisation and first-run allocations stay out of the profile
        options = v1.RunOptions(trace_level=v1.RunOptions.FULL_TRACE)
        for _ in range(runs):
            metadata = v1.RunMetadata()
            values = loop.run(options=options, run_metadata=metadata)
            writer.add_run_metadata(metadata, "step_{}".format(int(values["global_step"])))
            metadatas.append(metadata)
        # The TF 2.x profiler cannot run while a FULL_TRACE run is active: trace one more run on its own.
        profiler_dir = None
        if compat.start_profiler_trace(output):
            try:
                loop.run()
            finally:
                compat.stop_profiler_trace()
            profiler_dir = os.path.join(output, "plugins", "profile")
    finally:
        writer.close()
        sess.close()
    with open(os.path.join(output, "trace.json"), "w") as handle:
        json.dump(chrome_trace(metadatas), handle)
    rows = op_table(metadatas)
    write_ops_csv(rows, os.path.join(output, "ops.csv"))
    print(format_ops(rows, top))
    print("wrote {} (chrome://tracing or ui.perfetto.dev), {}".format(
        os.path.join(output, "trace.json"), os.path.join(output, "ops.csv")))
    print("TensorBoard: tensorboard --logdir {} (Graphs tab: Session runs{})".format(
        output, "; Profile tab: trace_viewer" if profiler_dir else ""))
    return rows


_BOOKKEEPING_OPS = {"Identity", "NoOp", "Const", "Shape", "ShapeN", "Fill", "ZerosLike", "OnesLike", "Reshape",
                    "BroadcastGradientArgs"}


def fp_bp_points(graph):
    """(first forward convolution, last backward compute op) of the U-Net in build order, "" when not found.

    Bookkeeping ops (tuple identities, shapes, constants) are skipped: the NPU graph engine removes them, so the
    profiler could not find them. Empty points let the Ascend profiler detect the boundaries itself.
    """
    operations = graph.get_operations()
    forward = next((op.name for op in operations if op.type == "Conv2D" and "gradients" not in op.name), "")
    backward = ""
    for op in operations:
        if "gradients" in op.name.split("/") and op.type not in _BOOKKEEPING_OPS:
            backward = op.name
    return forward, backward


def npu_profiling_points(graph, fp_point="", bp_point=""):
    """(fp_point, bp_point) for the Ascend profiler: "" lets it find the boundaries itself (the default: the graph
    engine fuses and renames ops, so TensorFlow op names can leave the iteration trace empty); "auto" takes the
    graph's first forward / last backward op from `fp_bp_points`; any other value is passed through."""
    forward, backward = fp_bp_points(graph) if "auto" in (fp_point, bp_point) else ("", "")
    return (forward if fp_point == "auto" else fp_point), (backward if bp_point == "auto" else bp_point)


def profile_result_dirs(output):
    """The Ascend profiler's result folders under `output`: PROF_* (CANN 5 and later) and JOB* (older CANN)."""
    found = set()
    for pattern in ("PROF_*", "JOB*"):
        found.update(path for path in glob.glob(os.path.join(output, "**", pattern), recursive=True)
                     if os.path.isdir(path))
    return sorted(found)


def msprof_export_message(dumps, output):
    """What to run once the process has exited (msprof reads data the profiler writes out at process exit)."""
    targets = dumps if dumps else ["<the PROF_* or JOB* folder that appears under {}>".format(output)]
    lines = ["After this process has exited (the profiler flushes its data then; an export before that is "
             "incomplete), export with:"]
    lines += ["  msprof --export=on --output={}".format(target) for target in targets]
    if not shutil.which("msprof"):
        lines.append("  (msprof is not on the PATH here: it comes with the CANN toolkit)")
    return "\n".join(lines)


def profile_npu(training, cfg, runs, output, fp_point="", bp_point=""):
    """Run with the Ascend profiler on; print the result folders and the msprof export command for later."""
    from unet_perf.backends.npu import profiling_options
    forward, backward = npu_profiling_points(training.graph, fp_point, bp_point)
    options = profiling_options(output, forward, backward)
    print("NPU profiling options: {}".format(json.dumps(options)))
    sess, fetches = assembly.open_session(training, cfg, profiling_options=options)
    loop = assembly.CheckedRuns(sess, fetches, cfg.iterations_per_loop)
    try:
        for _ in range(runs + 1):
            loop.run()
    finally:
        sess.close()
    dumps = profile_result_dirs(output)
    print("Ascend profile dump: {}".format(", ".join(dumps) if dumps else "no PROF_* or JOB* folder under {} yet"
                                           .format(output)))
    print(msprof_export_message(dumps, output))
    return dumps


def build_arg_parser():
    parser = build_parser("Profile a short training run (TF trace on CPU/GPU, Ascend profiler on NPU)")
    parser.add_argument("--steps", type=int, default=4, help="training steps to trace (rounded up to whole loops)")
    parser.add_argument("--output", default="runs/profile", help="folder for the profile files")
    parser.add_argument("--top", type=int, default=15, help="rows of the op table printed")
    parser.add_argument("--fp_point", default="", help='NPU: forward start op for the iteration trace; "" = the '
                        'profiler decides (recommended), "auto" = the first forward convolution')
    parser.add_argument("--bp_point", default="", help='NPU: backward end op for the iteration trace; "" = the '
                        'profiler decides (recommended), "auto" = the last backward op')
    return parser


def main(argv=None):
    args = build_arg_parser().parse_args(argv)
    if args.steps <= 0 or args.top <= 0:
        raise UserError("--steps and --top must be positive, got {} and {}".format(args.steps, args.top))
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)}
    k = fields["iterations_per_loop"]
    runs = assembly.steps_to_runs(args.steps, k)
    cfg = Config(**dict(fields, max_steps=(runs + 2) * k, save_checkpoints_steps=k, val_every=0)).validate()
    output = os.path.abspath(args.output)
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as err:
        raise UserError("--output {} cannot be created ({}); pass a writable folder".format(output, err.strerror))
    compat.enable_graph_mode()
    started = time.time()
    training = assembly.build(cfg, assembly.dataset_source(cfg, "pipeline"))
    print("profiling {} traced run(s) of K={} steps, batch {}, crop {}, base {}, {} on the {} backend".format(
        runs, k, cfg.batch_size, cfg.crop_size, cfg.base_filters, cfg.precision, training.backend.name))
    if training.backend.name == "npu":
        profile_npu(training, cfg, runs, output, args.fp_point, args.bp_point)
    else:
        profile_host(training, cfg, runs, output, args.top)
    print("done in {:.0f} s".format(time.time() - started))
    return 0


if __name__ == "__main__":
    run_cli(main)
