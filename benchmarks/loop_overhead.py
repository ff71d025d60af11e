"""Steps/s of the host backend for K = iterations_per_loop in {1, 10, 100}, small U-Nets, one run.

    python benchmarks/loop_overhead.py                       # base 4/16 at 64^2/128^2, K = 1, 10, 100
    python benchmarks/loop_overhead.py --bases 4 --sizes 64 --variants tuned,naive --repeats 7

Every (model, K, variant) gets its own graph and session; after warm-up the timed repeats are interleaved
round-robin across them, so slow drift of the machine hits every configuration alike. Each repeat runs
--steps_per_repeat training steps (steps_per_repeat / K Session.run calls). Reported: median steps/s over the
repeats with the min-max spread, and the ratio to K = 1 of the same variant.

Variants: "tuned" is HostBackend() as shipped; "naive" is the same loop with tf.while_loop's default
parallel_iterations=10.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

from unet_perf import compat
from unet_perf.training import assembly

compat.enable_graph_mode()

import tensorflow as tf  # noqa: E402

from unet_perf.backends.host import HostBackend  # noqa: E402
from unet_perf.compat import v1  # noqa: E402
from unet_perf.config import Config  # noqa: E402

VARIANTS = {
    "tuned": lambda: HostBackend(),
    "naive": lambda: HostBackend(parallel_iterations=10),
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
        """(wall seconds, process CPU seconds) for total_steps steps."""
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(max(1, total_steps // self.steps)):
            self.session.run(self.fetches)
        return time.perf_counter() - start, time.process_time() - cpu_start


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
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    results = []
    print("tensorflow {}  cpus {}".format(tf.__version__, os.cpu_count()))
    print("{:>4} {:>5} {:>7} {:>5} {:>10} {:>19} {:>9}".format(
        "base", "size", "variant", "K", "steps/s", "min-max", "vs K=1") + " cpu ms/step")
    for base in [int(b) for b in args.bases.split(",")]:
        for size in [int(s) for s in args.sizes.split(",")]:
            runners = {}
            for variant in args.variants.split(","):
                for k in ks:
                    cfg = Config(depth=2 if size < 64 else 4, base_filters=base, crop_size=size,
                                 batch_size=args.batch_size, iterations_per_loop=k, precision=args.precision)
                    runners[(variant, k)] = Runner(cfg, size, variant)
            for runner in runners.values():
                runner.run_steps(max(args.warmup_steps, runner.steps))
            times = dict((key, []) for key in runners)
            cpu_ms = dict((key, []) for key in runners)
            for _ in range(args.repeats):
                for key, runner in runners.items():
                    steps = max(args.steps_per_repeat, runner.steps)
                    wall, cpu = runner.run_steps(steps)
                    times[key].append(steps / wall)
                    cpu_ms[key].append(1000.0 * cpu / steps)
            for (variant, k), rates in sorted(times.items()):
                median = statistics.median(rates)
                reference = statistics.median(times[(variant, ks[0])])
                cpu = statistics.median(cpu_ms[(variant, k)])
                row = {"base": base, "size": size, "variant": variant, "K": k, "steps_per_s": median,
                       "min": min(rates), "max": max(rates), "vs_first_k": median / reference,
                       "cpu_ms_per_step": cpu, "batch_size": args.batch_size, "precision": args.precision,
                       "repeats": args.repeats, "steps_per_repeat": args.steps_per_repeat}
                results.append(row)
                print("{:>4} {:>5} {:>7} {:>5} {:>10.2f} {:>9.2f}-{:<9.2f} {:>9.3f} {:>10.2f}".format(
                    base, size, variant, k, median, min(rates), max(rates), median / reference, cpu))
            for runner in runners.values():
                runner.session.close()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"config": vars(args), "tf": compat.versions(), "results": results}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
