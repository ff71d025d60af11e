"""Training speed with TensorFlow's two CPU allocators, side by side: `python benchmarks/allocator.py [--rounds 3]
[-- throughput.py flags]`.

TensorFlow reads TF_CPU_ALLOCATOR_USE_BFC once per process, so the comparison runs in child processes: each round
runs `benchmarks/throughput.py --mode model` once with malloc (TF_CPU_ALLOCATOR_USE_BFC=false, TensorFlow's
default) and once with BFC (=true, what unet_perf's training processes use, see unet_perf/cpu_allocator.py), malloc
first on even rounds and BFC first on odd ones. Flags after `--` go to throughput.py (default: --precision fp32
--iterations_per_loop 1,10 --repeats 5).

Reported per allocator and K: the median over rounds of each child's median img/s with the min-max over rounds,
the BFC/malloc ratio as the median of the per-round ratios, and the children's CPU ms and minor page faults per
step. Output: a table on stdout and <output>/allocator.json.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

from unet_perf.cpu_allocator import BFC_ENV
from unet_perf.errors import UserError, run_cli

HERE = os.path.dirname(os.path.abspath(__file__))
ALLOCATORS = (("malloc", "false"), ("bfc", "true"))
DEFAULT_THROUGHPUT_FLAGS = ["--precision", "fp32", "--iterations_per_loop", "1,10", "--repeats", "5"]


def build_arg_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--rounds", type=int, default=3, help="child runs per allocator (alternating order)")
    parser.add_argument("--output", default="runs/allocator", help="folder of allocator.json and the children's runs")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds one child may take")
    return parser


def run_child(flags, allocator_value, output, timeout):
    """The model-mode rows of one throughput.py child run with TF_CPU_ALLOCATOR_USE_BFC=allocator_value."""
    env = dict(os.environ, **{BFC_ENV: allocator_value})
    command = [sys.executable, os.path.join(HERE, "throughput.py"), "--mode", "model", "--no_plots",
               "--output", output] + flags
    try:
        subprocess.run(command, env=env, check=True, timeout=timeout, stdout=subprocess.DEVNULL)
    except subprocess.CalledProcessError as err:
        raise UserError("benchmarks/throughput.py failed (exit {}) with {}={}; rerun it alone with the same flags "
                        "to see why".format(err.returncode, BFC_ENV, allocator_value))
    except subprocess.TimeoutExpired:
        raise UserError("benchmarks/throughput.py took over --timeout {:.0f} s; raise it or pass fewer --repeats "
                        "after --".format(timeout))
    with open(os.path.join(output, "throughput.json")) as handle:
        results = json.load(handle)["results"]
    return [row for row in results if row.get("mode") == "model" and "error" not in row]


def point_key(row):
    return (row["precision"], row["iterations_per_loop"], row["batch_size"], row["crop_size"], row["base_filters"])


def summarise(rounds):
    """rounds: [{allocator name: [model rows]}]; one summary row per (point, allocator)."""
    summary = []
    keys = sorted({point_key(row) for by_allocator in rounds for rows in by_allocator.values() for row in rows})
    for key in keys:
        # per allocator, this point's row of every round's child
        per_round = dict((name, [[row for row in by_allocator[name] if point_key(row) == key][0]
                                 for by_allocator in rounds]) for name, _ in ALLOCATORS)
        ratios = [bfc["images_per_sec"]["median"] / malloc["images_per_sec"]["median"]
                  for malloc, bfc in zip(per_round["malloc"], per_round["bfc"])]
        for name, _ in ALLOCATORS:
            rates = [row["images_per_sec"]["median"] for row in per_round[name]]
            summary.append({
                "precision": key[0], "iterations_per_loop": key[1], "batch_size": key[2], "crop_size": key[3],
                "base_filters": key[4], "allocator": name, "images_per_sec": statistics.median(rates),
                "min": min(rates), "max": max(rates),
                "cpu_ms_per_step": statistics.median(row["cpu_ms_per_step"]["median"] for row in per_round[name]),
                "faults_per_step": statistics.median(row["faults_per_step"]["median"] for row in per_round[name]),
                "bfc_over_malloc": statistics.median(ratios) if name == "bfc" else None})
    return summary


def format_table(summary):
    lines = ["{:<5} {:>4} {:>5} {:>5} {:>5} {:<7} {:>22} {:>9} {:>10} {:>11}".format(
        "prec", "K", "batch", "crop", "base", "alloc", "img/s median [min-max]", "cpu ms/st", "faults/st",
        "bfc/malloc")]
    for row in summary:
        lines.append("{:<5} {:>4} {:>5} {:>5} {:>5} {:<7} {:>8.2f} [{:.2f}-{:.2f}] {:>9.0f} {:>10.0f} {:>11}".format(
            row["precision"], row["iterations_per_loop"], row["batch_size"], row["crop_size"], row["base_filters"],
            row["allocator"], row["images_per_sec"], row["min"], row["max"], row["cpu_ms_per_step"],
            row["faults_per_step"], "" if row["bfc_over_malloc"] is None else "{:.3f}".format(row["bfc_over_malloc"])))
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    own, flags = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = build_arg_parser().parse_args(own)
    if args.rounds < 1:
        raise UserError("--rounds {} must be at least 1".format(args.rounds))
    import bench_lib  # imports TensorFlow: after the flags are known to be good
    output = bench_lib.output_folder(args.output)
    log = bench_lib.elapsed_logger()
    flags = flags or DEFAULT_THROUGHPUT_FLAGS
    rounds = []
    for round_index in range(args.rounds):
        order = ALLOCATORS if round_index % 2 == 0 else ALLOCATORS[::-1]
        by_allocator = {}
        for name, value in order:
            log("round {}/{}: {} ({}={})".format(round_index + 1, args.rounds, name, BFC_ENV, value))
            by_allocator[name] = run_child(flags, value, os.path.join(output, "{}_{}".format(name, round_index)),
                                           args.timeout)
        rounds.append(by_allocator)
    summary = summarise(rounds)
    print(format_table(summary))
    with open(os.path.join(output, "allocator.json"), "w") as handle:
        json.dump({"schema": "unet_perf.allocator/1", "throughput_flags": flags, "rounds": args.rounds,
                   "machine": bench_lib.machine_description(), "summary": summary, "children": rounds},
                  handle, indent=1)
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
