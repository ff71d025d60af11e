"""Steps/s of the host backend for K = iterations_per_loop in {1, 10, 100}, small U-Nets, one run.

    python benchmarks/loop_overhead.py                       # base 4/16 at 64^2/128^2, K = 1, 10, 100
    python benchmarks/loop_overhead.py --bases 4 --sizes 64 --variants tuned,naive --repeats 7

Every (model, K, variant) gets its own graph and session; after warm-up the timed repeats are interleaved across
them, in forward order on even rounds and backward on odd ones (A B B A), so slow drift of the machine hits every
configuration alike. Each repeat runs --steps_per_repeat training steps (steps_per_repeat / K Session.run calls).
Reported: median steps/s over the repeats with the min-max spread; the speed relative to the first row (the first
variant at the first K) as the median of the per-round ratios with their interquartile range (a ratio of
neighbouring blocks drifts less than a ratio of medians); process CPU ms, minor page faults and context switches
per step.

Variants: "tuned" is HostBackend() as shipped; "naive" is the same loop with tf.while_loop's default
parallel_iterations=10; "frame" runs K = 1 as a one-iteration while loop too, so that "tuned" K = 1 against
"frame" K = 1 is what the while frame itself costs, and "frame" K = 1 against K = 10 is what the fewer
Session.runs save:

    python benchmarks/loop_overhead.py --bases 16 --sizes 128 --ks 1,10 --variants tuned,frame --repeats 16

Page faults per step show the CPU allocator at work: thousands with malloc (TF_CPU_ALLOCATOR_USE_BFC=false), about
none with the BFC allocator that training processes use (unet_perf/cpu_allocator.py).

    python benchmarks/loop_overhead.py --op_report --precision bf16   # no timing: what each K executes per step

--op_report times nothing: it traces one Session.run per K and prints, per op type, how often the session executed
it per training step after Grappler and the device rewrites (oneDNN names included). The K-step loop is only as
fast as K single steps if the columns agree; a fusion or cast that applies to the plain step but not inside the
while frame shows up as a differing row.
"""
import argparse
import collections
import json
import os
import statistics
import sys

import numpy as np

from unet_perf.cpu_allocator import prefer_bfc_allocator

prefer_bfc_allocator()  # measure what training processes run with (before TensorFlow allocates)

import bench_lib  # noqa: E402  (benchmarks/: the script's folder, or on sys.path through pytest.ini)
from unet_perf import compat  # noqa: E402
from unet_perf.training import assembly  # noqa: E402

compat.enable_graph_mode()

import tensorflow as tf  # noqa: E402

from unet_perf.backends.host import HostBackend  # noqa: E402
from unet_perf.compat import v1  # noqa: E402
from unet_perf.config import Config  # noqa: E402

VARIANTS = {
    "tuned": lambda: HostBackend(),
    "naive": lambda: HostBackend(parallel_iterations=10),
    "frame": lambda: HostBackend(plain_single_step=False),
    # Diagnostics: TF 1.15-style dataflow control flow (Switch/Merge built directly, not a lowered While op).
    "cf_v1": lambda: HostBackend(),
}


def in_memory_batches(cfg, size, count=16):
    """A source of a deterministic repeating dataset of random images and thresholded masks, static shapes."""
    rng = np.random.RandomState(cfg.seed)
    images = rng.rand(count, size, size, 1).astype(np.float32)
    masks = (images > 0.5).astype(np.float32)

    def source():
        dataset = tf.data.Dataset.from_tensor_slices((images, masks)).cache().repeat()
        return dataset.batch(cfg.batch_size, drop_remainder=True).prefetch(2)
    return source


# Loop control, variable handles and fetch plumbing carry no float tensor of rank >= 1 and are left out of the count.
FLOAT_DTYPES = frozenset(dtype.as_datatype_enum for dtype in (tf.float16, tf.bfloat16, tf.float32, tf.float64))


def executed_compute_ops(session, fetches):
    """Counter {op type: executions} over one traced Session.run of `fetches`: the nodes the session executed (after
    Grappler, lowering and the device rewrites) that compute a float tensor of rank >= 1 from data inputs.

    Constants, handles, loop control and fetch plumbing do not count, so a K-step run counts exactly K times the
    counts of one plain step when the loop body executes the same kernels as the plain step.
    """
    metadata = v1.RunMetadata()
    session.run(fetches, options=v1.RunOptions(trace_level=v1.RunOptions.FULL_TRACE, output_partition_graphs=True),
                run_metadata=metadata)
    nodes = {node.name: node for graph in metadata.partition_graphs for node in graph.node}
    counts = collections.Counter()
    for device in metadata.step_stats.dev_stats:
        for stats in device.node_stats:
            node = nodes.get(stats.node_name)
            if node is None or not any(not name.startswith("^") for name in node.input):
                continue
            if any(out.tensor_description.dtype in FLOAT_DTYPES and out.tensor_description.shape.dim
                   for out in stats.output):
                counts[node.op] += 1
    return counts


def op_report(cfgs, size, variant):
    """Prints executed_compute_ops per training step for each cfg (one per K); returns the rows that differ from
    the first cfg's (op type, per-step counts)."""
    per_step = []
    for cfg in cfgs:
        runner = Runner(cfg, size, variant)
        with runner.session:
            runner.session.run(runner.fetches)  # the first run optimises the graph
            counts = executed_compute_ops(runner.session, runner.fetches)
        per_step.append({op: count / float(cfg.iterations_per_loop) for op, count in counts.items()})
    print("{:<40}".format("op type, executions per step") + "".join(
        "{:>10}".format("K={}".format(cfg.iterations_per_loop)) for cfg in cfgs))
    differing = []
    for op in sorted(set().union(*per_step)):
        row = [counts.get(op, 0.0) for counts in per_step]
        same = all(value == row[0] for value in row)
        if not same:
            differing.append((op, row))
        print("{:<40}".format(op) + "".join("{:>10g}".format(value) for value in row) + ("" if same else "  <- differs"))
    print("{} op types differ".format(len(differing)))
    return differing


class Runner(object):
    """One graph + session running K steps per call."""

    def __init__(self, cfg, size, variant):
        self.steps = cfg.iterations_per_loop
        restore_v2 = variant == "cf_v1" and v1.control_flow_v2_enabled()
        if restore_v2:
            v1.disable_control_flow_v2()
        try:
            training = assembly.build(cfg, in_memory_batches(cfg, size), backend=VARIANTS[variant]())
            self.session, self.fetches = assembly.open_session(training, cfg)
        finally:
            if restore_v2:
                v1.enable_control_flow_v2()

    def run_steps(self, total_steps):
        """bench_lib.timed_usage of total_steps steps (wall, cpu, faults, switches)."""
        def work():
            for _ in range(max(1, total_steps // self.steps)):
                self.session.run(self.fetches)
        return bench_lib.timed_usage(work)


def quartiles(values):
    """(first quartile, median, third quartile), nearest rank."""
    ordered = sorted(values)
    pick = lambda share: ordered[int(round(share * (len(ordered) - 1)))]  # noqa: E731
    return pick(0.25), statistics.median(ordered), pick(0.75)


def time_point(args, base, size, ks):
    """One result row per (variant, K) of one model: see the module docstring."""
    runners = collections.OrderedDict()
    for variant in args.variants.split(","):
        for k in ks:
            runners[(variant, k)] = Runner(loop_config(args, base, size, k), size, variant)
    try:
        for runner in runners.values():
            runner.run_steps(max(args.warmup_steps, runner.steps))
        blocks = dict((key, []) for key in runners)
        for round_index in range(args.repeats):
            keys = list(runners) if round_index % 2 == 0 else list(reversed(runners))
            for key in keys:
                steps = max(args.steps_per_repeat, runners[key].steps)
                usage = runners[key].run_steps(steps)
                blocks[key].append(dict((name, value / steps) for name, value in usage.items()))
    finally:
        for runner in runners.values():
            runner.session.close()
    rows = []
    reference = next(iter(blocks.values()))
    for (variant, k), per_step in blocks.items():
        rates = [1.0 / block["wall"] for block in per_step]
        q1, ratio, q3 = quartiles([ref["wall"] / block["wall"] for ref, block in zip(reference, per_step)])
        rows.append({"base": base, "size": size, "variant": variant, "K": k, "steps_per_s": statistics.median(rates),
                     "min": min(rates), "max": max(rates), "vs_first": ratio, "vs_first_q1": q1,
                     "vs_first_q3": q3,
                     "cpu_ms_per_step": 1000.0 * statistics.median(block["cpu"] for block in per_step),
                     "faults_per_step": statistics.median(block["faults"] for block in per_step),
                     "switches_per_step": statistics.median(block["switches"] for block in per_step),
                     "batch_size": args.batch_size, "precision": args.precision, "repeats": args.repeats,
                     "steps_per_repeat": args.steps_per_repeat})
    return rows


def loop_config(args, base, size, k):
    return Config(depth=2 if size < 64 else 4, base_filters=base, crop_size=size, batch_size=args.batch_size,
                  iterations_per_loop=k, precision=args.precision)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--bases", default="4,16")
    parser.add_argument("--sizes", default="64,128")
    parser.add_argument("--ks", default="1,10,100")
    parser.add_argument("--variants", default="tuned")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--steps_per_repeat", type=int, default=100)
    parser.add_argument("--warmup_steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    parser.add_argument("--op_report", action="store_true",
                        help="no timing: the op types executed per step for each K (first base, size, variant)")
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    if args.op_report:
        base, size = int(args.bases.split(",")[0]), int(args.sizes.split(",")[0])
        print("tensorflow {}  base {} size {} batch {} precision {}".format(
            tf.__version__, base, size, args.batch_size, args.precision))
        cfgs = [loop_config(args, base, size, k) for k in ks]
        return 1 if op_report(cfgs, size, args.variants.split(",")[0]) else 0
    results = []
    print("tensorflow {}  cpus {}  {}={}".format(tf.__version__, os.cpu_count(), "TF_CPU_ALLOCATOR_USE_BFC",
                                                os.environ.get("TF_CPU_ALLOCATOR_USE_BFC")))
    print("{:>4} {:>5} {:>7} {:>5} {:>9} {:>15} {:>19} {:>9} {:>8} {:>7}".format(
        "base", "size", "variant", "K", "steps/s", "min-max", "vs first [IQR]", "cpu ms", "faults",
        "switch") + " (per step)")
    for base in [int(b) for b in args.bases.split(",")]:
        for size in [int(s) for s in args.sizes.split(",")]:
            for row in time_point(args, base, size, ks):
                results.append(row)
                print("{:>4} {:>5} {:>7} {:>5} {:>9.2f} {:>7.2f}-{:<7.2f} {:>7.3f} [{:.3f}-{:.3f}] {:>9.1f} {:>8.0f} "
                      "{:>7.0f}".format(base, size, row["variant"], row["K"], row["steps_per_s"], row["min"],
                                        row["max"], row["vs_first"], row["vs_first_q1"], row["vs_first_q3"],
                                        row["cpu_ms_per_step"], row["faults_per_step"], row["switches_per_step"]))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"config": vars(args), "tf": compat.versions(), "results": results}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
