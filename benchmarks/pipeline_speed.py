"""Input pipeline speed: augmented 512x512 image+mask pairs per second.

    python benchmarks/pipeline_speed.py [--batches 24] [--repeats 5] [--warmup 4] [--json PATH] [--plain]

(a) per core: one intra-op thread, one tf.data thread, full geometric + intensity augmentation, 512x512 output
    (crop_size 512, input_scale 1), batch 8;
(b) the whole pipeline on 2 cores (2 tf.data threads, 2 session threads), batch 8, 512x512.
Each figure is the median over `repeats` timed runs of `batches` batches after `warmup` untimed batches (which
include XLA compilation), with min-max. Besides wall-clock pairs/s it reports pairs per CPU-second of this
process, which stays meaningful when other programs share the machine. `--plain` adds (a) without XLA.
"""
import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_lib  # noqa: E402  (puts the repo on sys.path)

from unet_perf import compat  # noqa: E402
from unet_perf.compat import v1  # noqa: E402
from unet_perf.config import Config, config_to_dict  # noqa: E402
from unet_perf.errors import run_cli  # noqa: E402

SIZE = 512
BATCH = 8


def measure_pipeline(cfg, batches, repeats, warmup, session_threads=None):
    """Time the real pipeline (load_dataset(cfg) -> make_dataset) for cfg; returns a dict with "pairs_per_s" and
    "pairs_per_cpu_s" (each {"median", "min", "max", "samples"}), "xla", and the settings.

    session_threads: intra/inter-op threads of the Session (default: cfg.data_threads or 1).
    """
    from unet_perf import augment, pipeline
    from unet_perf.data.loading import load_dataset

    compat.enable_graph_mode()
    train, _, weights = load_dataset(cfg)
    threads = session_threads or cfg.data_threads or 1
    graph = v1.Graph()
    with graph.as_default():
        iterator = pipeline.make_iterator(pipeline.make_dataset(train.images, train.masks, weights, cfg))
        # one element of each output: the dataset still produces whole batches, the fetch copies nothing big
        fetch = [tensor[0, 0, 0, 0] for tensor in iterator.get_next()]
    session_config = v1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=threads)
    wall, cpu = [], []
    with v1.Session(graph=graph, config=session_config) as sess:
        sess.run(iterator.initializer)
        for _ in range(warmup):
            sess.run(fetch)
        for _ in range(repeats):
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(batches):
                sess.run(fetch)
            wall.append(batches * cfg.batch_size / (time.perf_counter() - start_wall))
            cpu.append(batches * cfg.batch_size / max(time.process_time() - start_cpu, 1e-9))
    return {"pairs_per_s": bench_lib.stats(wall), "pairs_per_cpu_s": bench_lib.stats(cpu),
            "xla": augment.use_xla(cfg), "batches": batches, "repeats": repeats, "warmup": warmup,
            "session_threads": threads, "batch_size": cfg.batch_size, "crop_size": cfg.crop_size,
            "input_scale": cfg.input_scale, "data_threads": cfg.data_threads, "data_intra_op": cfg.data_intra_op}


def scenarios(base, plain):
    """(name, cfg, session threads) of the measured set-ups."""
    per_core = dataclasses.replace(base, data_threads=1, data_intra_op=1)
    found = [("per_core", per_core, 1), ("two_cores", dataclasses.replace(base, data_threads=2, data_intra_op=1), 2)]
    if plain:
        found.append(("per_core_plain", dataclasses.replace(per_core, xla_augment="off"), 1))
    return found


def _line(name, result):
    rate, per_cpu = result["pairs_per_s"], result["pairs_per_cpu_s"]
    return ("{:<15} {:7.1f} pairs/s (min {:.1f}, max {:.1f})   {:7.1f} pairs/CPU-s (min {:.1f}, max {:.1f})   "
            "xla={} threads={}".format(name, rate["median"], rate["min"], rate["max"], per_cpu["median"],
                                       per_cpu["min"], per_cpu["max"], result["xla"], result["session_threads"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=24, help="batches per timed repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median and min-max reported)")
    parser.add_argument("--warmup", type=int, default=4, help="untimed batches first (XLA compiles here)")
    parser.add_argument("--synthetic_count", type=int, default=16, help="synthetic 512x512 slices to augment")
    parser.add_argument("--data_path", default="", help="real slices instead of the synthetic set")
    parser.add_argument("--plain", action="store_true", help="also measure the per-core figure without XLA")
    parser.add_argument("--json", default="", help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    base = dataclasses.replace(Config(), crop_size=SIZE, input_scale=1.0, batch_size=BATCH, synthetic_size=SIZE,
                               synthetic_count=args.synthetic_count, data_path=args.data_path)
    print("TensorFlow {} | augmentation: full geometric (flip, rotate {}°, scale ±{}, shear {}, translate {}, "
          "elastic {}x{} sigma {}) + intensity | {}x{} out, batch {}".format(
              compat.tf.__version__, base.rotate_deg, base.scale_range, base.shear, base.translate,
              base.elastic_grid, base.elastic_grid, base.elastic_sigma, SIZE, SIZE, BATCH))
    results = {}
    for name, cfg, threads in scenarios(base, args.plain):
        results[name] = measure_pipeline(cfg, args.batches, args.repeats, args.warmup, session_threads=threads)
        print(_line(name, results[name]), flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"results": results, "config": config_to_dict(base),
                       "machine": bench_lib.machine_description(), "command": " ".join(sys.argv)}, handle, indent=2)
        print("wrote {}".format(args.json))
    return 0


if __name__ == "__main__":
    run_cli(main)
