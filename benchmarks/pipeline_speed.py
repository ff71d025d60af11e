"""Input pipeline speed: augmented 512x512 image+mask pairs per second, every engine and source side by side.

    python benchmarks/pipeline_speed.py [--batches 24] [--repeats 5] [--warmup 4] [--json PATH]
        [--engines xla,graph,opencv] [--no_shards] [--streaming_gb 6]

Full geometric + intensity augmentation, 512x512 output (crop_size 512, input_scale 1), batch 8, 16 synthetic
slices. For every augmentation engine (xla where this TensorFlow compiles it, graph = plain TensorFlow ops,
opencv = cv2.remap on the host) and every source (memory = arrays embedded in the graph as in training today;
shards = the same slices packed into TFRecord shards in a temporary folder and streamed, graph engine excepted:
it is the slow one), it measures (a) per core: one tf.data thread, one intra-op thread, a one-thread Session;
(b) all cores: as many tf.data and Session threads as usable cores.
Each figure is the median over `repeats` timed blocks of `batches` batches, with min-max. The set-ups are timed
in turns (block r of every set-up, then block r + 1 of every set-up), so a machine whose speed drifts during
the run (these shared machines do, by 30% and more) shifts all of them alike; each block builds its pipeline
afresh, waits until the process is idle and takes `warmup` untimed batches (XLA compiles there). Ratios
(shards / memory, all cores / 1 core) are taken block by block, then summarised. Each engine's set-ups run in a
fresh process of their own.
Besides wall-clock pairs/s it reports pairs per CPU-second of this process.
--streaming_gb N also writes an N GB synthetic shard set of 1024x1024 slices to a temporary folder, streams one
epoch of it (opencv engine, all cores) in a fresh process, reports that process's peak resident memory and
pairs/s, and deletes the set.
"""
import argparse
import dataclasses
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

import bench_lib
from unet_perf import compat
from unet_perf.compat import v1
from unet_perf.config import Config, config_to_dict
from unet_perf.errors import UserError, run_cli

SIZE = 512
BATCH = 8
STREAM_SIDE = 1024  # slices of the large synthetic shard set


class PipelineUnderTest(object):
    """The real pipeline for one cfg (load_dataset(cfg) -> the trainer's assembly.pipeline_source, without the model)
    in its own graph and Session, ready to be timed."""

    def __init__(self, cfg, session_threads, loaded=None):
        """loaded: load_dataset(cfg)'s result when the caller already has it."""
        from unet_perf.training import assembly
        from unet_perf.input import pipeline
        from unet_perf.data.loading import load_dataset

        compat.enable_graph_mode()
        self.cfg = cfg
        train, _, weights = loaded or load_dataset(cfg)
        with v1.Graph().as_default() as pipeline_graph:
            iterator = pipeline.make_iterator(assembly.pipeline_source(cfg, train, weights)())
            # one element of each output: the dataset still produces whole batches, the fetch copies nothing big
            self.fetch = [tensor[0, 0, 0, 0] for tensor in iterator.get_next()]
        self.session = v1.Session(graph=pipeline_graph, config=v1.ConfigProto(
            intra_op_parallelism_threads=session_threads, inter_op_parallelism_threads=session_threads))
        self.session.run(iterator.initializer)

    def take(self, batches):
        for _ in range(batches):
            self.session.run(self.fetch)

    def time_block(self, batches):
        """Fetch `batches` batches: (wall-clock pairs/s, pairs per CPU-second of this process)."""
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        self.take(batches)
        pairs = batches * self.cfg.batch_size
        return pairs / (time.perf_counter() - start_wall), pairs / max(time.process_time() - start_cpu, 1e-9)

    def close(self):
        self.session.close()


def wait_until_idle(limit_s=10.0):
    """Return once this process uses under 5% of a core over 50 ms (background threads have settled), or after
    limit_s."""
    deadline = time.perf_counter() + limit_s
    while time.perf_counter() < deadline:
        start = time.process_time()
        time.sleep(0.05)
        if time.process_time() - start < 0.0025:
            return


def measure_side_by_side(named, batches, repeats, warmup):
    """Time every (name, cfg, session_threads) of `named` in turns: round r times one block of `batches` batches
    of every set-up, one after the other (in reverse order every other round), so a machine whose speed drifts
    affects them alike. Each block gets a freshly built pipeline (the speed of one instance can sit 20-30% off
    another's for its whole life here, so reusing one would bias a set-up), waits until the process is idle and
    takes `warmup` untimed batches (XLA compiles there). Returns {name: result dict}."""
    from unet_perf.input import augment
    from unet_perf.data.shard_format import is_shard_set
    from unet_perf.data.loading import load_dataset

    loaded = {}  # the set-ups differ in engine and threads, not in data: load (or synthesise) each source once
    samples = {name: ([], []) for name, _, _ in named}
    started = time.perf_counter()
    for repeat in range(repeats):
        if repeat:
            print("  round {}/{} of {} set-ups, {:.0f} s so far".format(repeat, repeats, len(named),
                                                                     time.perf_counter() - started),
                  file=sys.stderr, flush=True)
        for name, cfg, threads in (named if repeat % 2 == 0 else named[::-1]):  # no set-up always goes first
            source = json.dumps(config_to_dict(dataclasses.replace(cfg, augment_engine="", data_threads=0,
                                                                   data_intra_op=0)), sort_keys=True)
            if source not in loaded:
                loaded[source] = load_dataset(cfg)
            pipeline = PipelineUnderTest(cfg, threads or cfg.data_threads or 1, loaded[source])
            try:
                wait_until_idle()
                pipeline.take(warmup)
                wall, cpu = pipeline.time_block(batches)
            finally:
                pipeline.close()
            samples[name][0].append(wall)
            samples[name][1].append(cpu)
    results = {}
    for name, cfg, threads in named:
        results[name] = {
            "pairs_per_s": bench_lib.stats(samples[name][0]), "pairs_per_cpu_s": bench_lib.stats(samples[name][1]),
            "engine": augment.resolve_engine(cfg), "xla": augment.resolve_engine(cfg) == "xla",
            "source": "shards" if is_shard_set(cfg.data_path) else "memory", "batches": batches,
            "repeats": repeats, "warmup": warmup, "session_threads": threads or cfg.data_threads or 1,
            "batch_size": cfg.batch_size, "crop_size": cfg.crop_size, "input_scale": cfg.input_scale,
            "data_threads": cfg.data_threads, "data_intra_op": cfg.data_intra_op}
    return results


def measure_in_child(named, batches, repeats, warmup):
    """measure_side_by_side in a fresh process: one engine's set-ups are then not slowed by what other engines
    left in this one (in a single process, the OpenCV shard/memory ratio on 2 cores read 0.85 after the XLA and
    plain-ops set-ups had run, against 0.93-0.99 on its own)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure_side_by_side, (named, batches, repeats, warmup))


def paired_ratios(results, chosen, baseline_of):
    """{name: stats of pairs/s of `name` / pairs/s of baseline_of(name), block by block} for every chosen name
    whose baseline was measured."""
    ratios = {}
    for name, result in results.items():
        baseline = results.get(baseline_of(name))
        if chosen(name) and baseline:
            ratios[name] = bench_lib.stats(
                [mine / theirs for mine, theirs in zip(result["pairs_per_s"]["samples"],
                                                       baseline["pairs_per_s"]["samples"])])
    return ratios


def measure_pipeline(cfg, batches, repeats, warmup, session_threads=None):
    """measure_side_by_side for one cfg: its result dict ("pairs_per_s", "pairs_per_cpu_s" as {"median", "min",
    "max", "samples"}, "engine", "source" and the settings).

    session_threads: intra/inter-op threads of the Session (default: cfg.data_threads or 1).
    """
    return measure_side_by_side([("pipeline", cfg, session_threads)], batches, repeats, warmup)["pipeline"]


def scenarios(base, engines, shard_path, cores):
    """(name, cfg, session threads) of the measured set-ups: engine x (1 core, all cores) x source, in that order
    (a memory set-up right before its shard twin: their block-by-block ratio compares neighbours in time)."""
    found = []
    for engine in engines:
        sources = [("memory", base.data_path)] + ([("shards", shard_path)] if shard_path and engine != "graph" else [])
        for label, threads in (("1core", 1), ("{}cores".format(cores), cores)):
            for source, path in sources:
                cfg = dataclasses.replace(base, augment_engine=engine, data_path=path, data_threads=threads,
                                          data_intra_op=1)
                found.append(("{}/{}/{}".format(engine, source, label), cfg, threads))
    return found


def pack_slices(slices, count, output, shard_mb):
    """Write `count` uint8 (image, mask) pairs from the iterable `slices` into a shard set under `output` (a new
    folder); the pairs are streamed, so a generator keeps one slice in memory. Returns the manifest."""
    from unet_perf.data.pack import write_shard_set

    os.makedirs(output)
    pairs = ((image, mask, "slice{}".format(index)) for index, (image, mask) in enumerate(slices))
    with open(os.devnull, "w") as quiet:
        return write_shard_set(pairs, count, output, shard_mb, progress_stream=quiet)


def write_large_set(output, gigabytes, seed=0):
    """A synthetic shard set of about `gigabytes` GB of 1024x1024 image+mask slices (shifted copies of a few
    random slices: writing, not generating, dominates). Returns the manifest."""
    rng = np.random.RandomState(seed)
    bases = [rng.randint(0, 256, (STREAM_SIDE, STREAM_SIDE)).astype(np.uint8) for _ in range(4)]
    count = int(gigabytes * 2 ** 30 / (2 * STREAM_SIDE * STREAM_SIDE))

    def slices():
        for index in range(count):
            image = np.roll(bases[index % 4], index, axis=1)
            yield image, (image > 100).astype(np.uint8)
    return pack_slices(slices(), count, output, shard_mb=256.0)


def stream_child(path, cores):
    """In a fresh process: stream one epoch of the shard set at `path`; print JSON with peak RSS and pairs/s."""
    import resource

    from unet_perf.input import pipeline
    from unet_perf.data.loading import load_dataset

    compat.enable_graph_mode()
    cfg = dataclasses.replace(Config(), data_path=path, crop_size=SIZE, input_scale=1.0, batch_size=BATCH,
                              augment_engine="opencv", data_threads=cores, data_intra_op=1)
    train, _, _ = load_dataset(cfg)
    batches = -(-len(train) // BATCH)
    with v1.Graph().as_default():
        iterator = pipeline.make_iterator(pipeline.make_dataset(train.images, train.masks, None, cfg))
        fetch = [tensor[0, 0, 0, 0] for tensor in iterator.get_next()]
        config = v1.ConfigProto(intra_op_parallelism_threads=cores, inter_op_parallelism_threads=cores)
        with v1.Session(config=config) as sess:
            sess.run(iterator.initializer)
            sess.run(fetch)
            start = time.perf_counter()
            for _ in range(batches - 1):
                sess.run(fetch)
            elapsed = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kilobytes
    print(json.dumps({"peak_rss_gb": peak_kb / 2.0 ** 20, "slices": len(train), "batches": batches,
                      "pairs_per_s": (batches - 1) * BATCH / elapsed}))
    return 0


def measure_streaming(gigabytes, cores):
    """Write the large set, stream it in a child process, delete it; returns the child's figures + set size."""
    folder = tempfile.mkdtemp(prefix="unet_perf_stream_")
    try:
        started = time.perf_counter()
        manifest = write_large_set(os.path.join(folder, "set"), gigabytes)
        written = time.perf_counter() - started
        command = [sys.executable, os.path.abspath(__file__), "--stream_child", os.path.join(folder, "set"),
                   "--cores", str(cores)]
        output = subprocess.run(command, stdout=subprocess.PIPE, check=True, universal_newlines=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        result.update(set_gb=sum(entry["bytes"] for entry in manifest["shards"]) / 2.0 ** 30,
                      shards=len(manifest["shards"]), write_seconds=written, slice_side=STREAM_SIDE)
        result["training"] = _train_child(os.path.join(folder, "set"), os.path.join(folder, "run"),
                                          manifest["slices"])
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _train_child(data_path, model_dir, slices):
    """Train a small U-Net for one epoch of the shard set in a child process; its peak RSS and wall time."""
    steps = -(-slices // BATCH // 10) * 10
    flags = ["--data_path", data_path, "--model_dir", model_dir, "--max_steps", str(steps),
             "--iterations_per_loop", "10", "--save_checkpoints_steps", str(steps), "--batch_size", str(BATCH),
             "--crop_size", "128", "--input_scale", "0.5", "--depth", "2", "--base_filters", "4",
             "--augment_engine", "opencv"]
    # the child reports its own peak RSS (RUSAGE_CHILDREN here would also count the streaming child)
    script = ("import resource, sys\nfrom unet_perf import train\ntry:\n    train.main({!r})\nfinally:\n"
              "    print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n").format(flags)
    started = time.perf_counter()
    output = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, check=True,
                            universal_newlines=True, cwd=bench_lib.REPO).stdout
    peak_kb = float(output.strip().splitlines()[-1].split()[1])
    return {"steps": steps, "batch_size": BATCH, "crop_size": 128, "seconds": time.perf_counter() - started,
            "peak_rss_gb": peak_kb / 2.0 ** 20, "command": "python -m unet_perf.train " + " ".join(flags)}


def _line(name, result):
    rate, per_cpu = result["pairs_per_s"], result["pairs_per_cpu_s"]
    return ("{:<24} {:7.1f} pairs/s (min {:.1f}, max {:.1f})   {:7.1f} pairs/CPU-s (min {:.1f}, max {:.1f})".format(
        name, rate["median"], rate["min"], rate["max"], per_cpu["median"], per_cpu["min"], per_cpu["max"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--batches", type=int, default=24, help="batches per timed repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median and min-max reported)")
    parser.add_argument("--warmup", type=int, default=4,
                        help="untimed batches before every timed block (XLA compiles here)")
    parser.add_argument("--synthetic_count", type=int, default=16, help="synthetic 512x512 slices to augment")
    parser.add_argument("--data_path", default="", help="real slices instead of the synthetic set")
    parser.add_argument("--engines", default="", help="comma-separated subset of xla,graph,opencv (default all "
                                                      "this TensorFlow runs)")
    parser.add_argument("--no_shards", action="store_true", help="skip the shard source")
    parser.add_argument("--streaming_gb", type=float, default=0.0, help="also stream a synthetic shard set of "
                                                                        "this many GB and report peak RSS")
    parser.add_argument("--json", default="", help="write the figures to this JSON file")
    parser.add_argument("--stream_child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--cores", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cores = args.cores or bench_lib.usable_cores() or os.cpu_count() or 1
    if args.stream_child:
        return stream_child(args.stream_child, cores)
    from unet_perf.input import augment

    engines = [name for name in args.engines.split(",") if name] or [
        engine for engine in augment.ENGINES if engine != "xla" or compat.xla_jit_available()]
    for engine in engines:
        if engine not in augment.ENGINES:
            raise UserError("--engines takes {} and {}, got {!r}".format(
                ", ".join(augment.ENGINES[:-1]), augment.ENGINES[-1], engine))
    base = dataclasses.replace(Config(), crop_size=SIZE, input_scale=1.0, batch_size=BATCH, synthetic_size=SIZE,
                               synthetic_count=args.synthetic_count, data_path=args.data_path)
    print("TensorFlow {} | {} | augmentation: full geometric (flip, rotate {}°, scale ±{}, shear {}, translate {}, "
          "elastic {}x{} sigma {}) + intensity | {}x{} out, batch {}".format(
              compat.tf.__version__, bench_lib.cpu_model_name(), base.rotate_deg, base.scale_range, base.shear,
              base.translate, base.elastic_grid, base.elastic_grid, base.elastic_sigma, SIZE, SIZE, BATCH))
    folder = tempfile.mkdtemp(prefix="unet_perf_shards_")
    results = {}
    try:
        shard_path = ""
        if not args.no_shards:
            from unet_perf.data.loading import load_dataset
            train, _, _ = load_dataset(base)
            shard_path = os.path.join(folder, "set")
            # 1 MB shards: several shards, as a large set has
            pack_slices(zip(train.images, train.masks), len(train.images), shard_path, shard_mb=1.0)
        for engine in engines:
            found = measure_in_child(scenarios(base, [engine], shard_path, cores), args.batches, args.repeats,
                                     args.warmup)
            for name, result in found.items():
                print(_line(name, result), flush=True)
            results.update(found)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    # ratios of blocks timed one right after the other (same repeat): the machine's drift cancels in each
    ratios = paired_ratios(results, lambda name: "/shards/" in name, lambda name: name.replace("/shards/", "/memory/"))
    for name, ratio in ratios.items():
        print("{:<24} {:.2f} x the in-memory pairs/s [{:.2f}-{:.2f}]".format(name, ratio["median"], ratio["min"],
                                                                            ratio["max"]))
    scaling = paired_ratios(results, lambda name: not name.endswith("/1core"),
                            lambda name: name.rsplit("/", 1)[0] + "/1core")
    for name, ratio in scaling.items():
        print("{:<24} {:.2f} x its 1-core pairs/s [{:.2f}-{:.2f}]".format(name, ratio["median"], ratio["min"],
                                                                         ratio["max"]))
    streaming = None
    if args.streaming_gb > 0:
        streaming = measure_streaming(args.streaming_gb, cores)
        print("streaming {:.1f} GB ({} slices {}x{}, {} shards, written in {:.0f} s): peak RSS {:.2f} GB, "
              "{:.1f} pairs/s over one epoch".format(streaming["set_gb"], streaming["slices"], STREAM_SIDE,
                                                     STREAM_SIDE, streaming["shards"], streaming["write_seconds"],
                                                     streaming["peak_rss_gb"], streaming["pairs_per_s"]))
        training = streaming["training"]
        print("training from it: {} steps x batch {} ({}x{} tiles, depth 2, base 4) in {:.0f} s, peak RSS {:.2f} GB"
              .format(training["steps"], training["batch_size"], training["crop_size"], training["crop_size"],
                      training["seconds"], training["peak_rss_gb"]))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"results": results, "shards_vs_memory": ratios, "scaling": scaling, "streaming": streaming,
                       "config": config_to_dict(base), "machine": bench_lib.machine_description(),
                       "command": " ".join(sys.argv)}, handle, indent=2)
        print("wrote {}".format(args.json))
    return 0


if __name__ == "__main__":
    run_cli(main)
