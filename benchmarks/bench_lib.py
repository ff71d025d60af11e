"""Shared helpers of the benchmarks: statistics, machine description, matmul ceiling, timed training runs.

The training graph is built from the same pieces as the trainer (backend K-step loop, U-Net, loss), fed either by
the real input pipeline ("pipeline" source: the e2e mode) or by one cached random batch repeated through an
equally shaped iterator ("synthetic" source: the model mode), so the two modes differ only by their input.
"""
import dataclasses
import math
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # `python benchmarks/x.py` puts benchmarks/ on sys.path, not the repo
    sys.path.insert(0, REPO)

import tensorflow as tf  # noqa: E402

from unet_perf import compat  # noqa: E402
from unet_perf.compat import v1  # noqa: E402
from unet_perf.precision import compute_dtype  # noqa: E402


# --- statistics -----------------------------------------------------------------------------------------------

def stats(samples):
    """{"median", "min", "max", "samples"} of a list of numbers (the benchmarks' one summary format)."""
    values = [float(v) for v in samples]
    if not values:
        return {"median": None, "min": None, "max": None, "samples": []}
    return {"median": float(np.median(values)), "min": min(values), "max": max(values), "samples": values}


def steps_to_runs(steps, iterations_per_loop):
    """Session.run calls needed for at least `steps` training steps (at least one)."""
    return max(1, int(math.ceil(float(steps) / iterations_per_loop)))


# --- machine --------------------------------------------------------------------------------------------------

def cpu_model_name(cpuinfo_path="/proc/cpuinfo"):
    """The `model name` line of /proc/cpuinfo, else platform.processor() (macOS, Windows), else "unknown"."""
    try:
        with open(cpuinfo_path) as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except (IOError, OSError):
        pass
    return platform.processor() or "unknown"


def cpu_flags(cpuinfo_path="/proc/cpuinfo"):
    """The `flags` of the first CPU in /proc/cpuinfo as a set (empty where there is none)."""
    try:
        with open(cpuinfo_path) as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except (IOError, OSError):
        pass
    return set()


def native_bf16():
    """True when bf16 compute has hardware support here: a GPU, an NPU, or a CPU with AVX512-BF16 or AMX-BF16."""
    if compat.npu_bridge_available() or tf.config.experimental.list_physical_devices("GPU"):
        return True
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def usable_cores():
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _command_lines(argv):
    """Output lines of a vendor tool when it is on the PATH, else []."""
    if shutil.which(argv[0]) is None:
        return []
    try:
        out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=20,
                             universal_newlines=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def machine_description():
    """CPU, cores, OS, Python, TensorFlow build, GPUs and NPUs: what a reader needs to compare numbers."""
    gpus = [device.name for device in tf.config.experimental.list_physical_devices("GPU")]
    description = {
        "cpu": cpu_model_name(),
        "cpu_bf16": sorted(cpu_flags() & {"avx512_bf16", "amx_bf16", "avx512f", "avx2"}),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "gpus": gpus,
        "gpu_names": _command_lines(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]),
        "npu_info": _command_lines(["npu-smi", "info", "-l"])[:20],
    }
    description.update(compat.describe())
    return description


# --- machine ceiling ------------------------------------------------------------------------------------------

def matmul_ceiling(precision, size=2048, repeats=5, warmup=2, chain=2):
    """GFLOP/s of `chain` independent size x size matmuls per Session.run in `precision` (fp32|bf16|fp16).

    Operands are variables (no constant folding); each product is summed to a scalar (a slice would let grappler skip most of the matmul), so nothing big is fetched.
    """
    dtype = compute_dtype(precision)
    graph = tf.Graph()
    with graph.as_default():
        products = []
        for index in range(chain):
            # Operands are variables already in `dtype`: no constant folding and no cast inside the timed op.
            a, b = [v1.get_variable("{}{}".format(name, index), initializer=tf.cast(
                tf.random.uniform([size, size], -1.0, 1.0, seed=index), dtype), use_resource=True)
                for name in ("a", "b")]
            products.append(tf.matmul(a.read_value(), b.read_value()))
        # Fetch the sums themselves: grappler may prune a tf.group of them down to a no-op.
        target = [tf.reduce_sum(tf.cast(p, tf.float32)) for p in products]
        init = v1.global_variables_initializer()
    flops = 2.0 * size ** 3 * chain
    with v1.Session(graph=graph) as sess:
        sess.run(init)
        times = time_calls(lambda: sess.run(target), repeats, warmup)
    result = stats([flops / t / 1e9 for t in times])
    result.update({"precision": precision, "size": size, "chain": chain})
    return result


def time_calls(call, repeats, warmup):
    """Seconds of `repeats` timed calls after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


# --- training graphs ------------------------------------------------------------------------------------------

@dataclasses.dataclass
class TrainingGraph:
    graph: object
    backend: object
    fetches: dict
    iterator_init: object
    variables_init: object


def synthetic_dataset(cfg, seed=0):
    """A tf.data.Dataset repeating one random batch shaped like the pipeline's (static shapes, compute dtype)."""
    shape = [cfg.batch_size, cfg.crop_size, cfg.crop_size, 1]
    rng = np.random.RandomState(seed)
    images = tf.cast(tf.constant(rng.uniform(0, 1, shape).astype(np.float32)), compute_dtype(cfg.precision))
    masks = tf.constant((rng.uniform(0, 1, shape) > 0.2).astype(np.float32))
    batch = (images, masks)
    if cfg.weight_map:
        batch = batch + (tf.ones(shape, tf.float32),)
    return tf.data.Dataset.from_tensors(batch).repeat()


def pipeline_dataset(cfg):
    """The real input pipeline of the trainer: loaded or synthetic slices, augmented, batched, prefetched."""
    from unet_perf.data.loading import load_dataset
    from unet_perf.pipeline import make_dataset
    train, _, weights = load_dataset(cfg)
    return make_dataset(train.images, train.masks, weights, cfg, seed=cfg.seed)


def build_training(cfg, source, backend=None):
    """A TrainingGraph of cfg's K-step training loop fed by `source` ("synthetic" or "pipeline")."""
    from unet_perf.backends import get_backend
    from unet_perf.pipeline import make_iterator
    from unet_perf.trainer import make_loss_fn

    backend = backend if backend is not None else get_backend(cfg)
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(cfg.seed)
        if source == "synthetic":
            dataset = synthetic_dataset(cfg, cfg.seed)
        elif source == "pipeline":
            dataset = pipeline_dataset(cfg)
        else:
            raise ValueError("source must be synthetic or pipeline, got {!r}".format(source))
        iterator = make_iterator(dataset)
        global_step = v1.train.get_or_create_global_step()

        # Both sources yield a weight channel exactly when cfg.weight_map is on.
        fetches = backend.build_train_loop(cfg, iterator.get_next, make_loss_fn(cfg, cfg.weight_map), global_step)
        variables_init = v1.global_variables_initializer()
    return TrainingGraph(graph, backend, fetches, iterator.initializer, variables_init)


def open_session(training, cfg, profiling_options=None):
    """(session, fetches) ready to run: variables first, then the iterator on its own (NPU pitfall)."""
    if profiling_options is None:
        config = training.backend.session_config(cfg)
    else:
        config = training.backend.session_config(cfg, profiling_options=profiling_options)
    sess = v1.Session(graph=training.graph, config=config)
    sess.run(training.variables_init)
    sess.run(training.iterator_init)
    return sess, training.backend.prepare_session(sess, training.fetches)


def time_training(cfg, source, steps, repeats, warmup_steps):
    """Images/sec and steps/sec of cfg's training loop: medians and spread over `repeats` timed blocks.

    Each block is the smallest whole number of Session.runs (K steps each) covering `steps`; warm-up runs (at least
    one: the first run includes graph optimisation) are excluded.
    """
    k = cfg.iterations_per_loop
    runs = steps_to_runs(steps, k)
    training = build_training(cfg, source)
    sess, fetches = open_session(training, cfg)
    try:
        for _ in range(steps_to_runs(warmup_steps, k)):
            last = sess.run(fetches)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(runs):
                last = sess.run(fetches)
            times.append(time.perf_counter() - start)
    finally:
        sess.close()
    steps_per_block = runs * k
    return {
        "images_per_sec": stats([steps_per_block * cfg.batch_size / t for t in times]),
        "steps_per_sec": stats([steps_per_block / t for t in times]),
        "steps_per_repeat": steps_per_block,
        "final_loss": float(last["loss"]),
        "backend": training.backend.name,
    }


def run_steps(cfg, source, runs):
    """Fetched values (dicts of numpy scalars) of `runs` consecutive Session.runs of cfg's training loop."""
    training = build_training(cfg, source)
    sess, fetches = open_session(training, cfg)
    try:
        return [sess.run(fetches) for _ in range(runs)]
    finally:
        sess.close()
