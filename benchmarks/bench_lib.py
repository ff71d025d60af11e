"""Shared helpers of the benchmarks: statistics and the machine (description, matmul ceiling).

Training graphs come from unet_perf.training.assembly, the trainer's own assembly point.
"""
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

import tensorflow as tf

from unet_perf import compat
from unet_perf.compat import v1
from unet_perf.errors import UserError
from unet_perf.model.precision import compute_dtype

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout: benchmarks/ sits in it


# --- a benchmark run: its output folder and its progress lines ---------------------------------------------------

def output_folder(path):
    """`path` made absolute and created (with its parents); a UserError when it cannot be."""
    output = os.path.abspath(path)
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as err:
        raise UserError("--output {} cannot be created ({}); pass a writable folder".format(output, err.strerror))
    return output


def elapsed_logger():
    """log(text): prints "[  12.3s] text" to stderr, seconds since this call (a benchmark's progress lines)."""
    started = time.time()

    def log(text):
        print("[{:6.1f}s] {}".format(time.time() - started, text), file=sys.stderr, flush=True)

    return log


def timed_usage(work):
    """Run work(); a dict of its wall seconds and of this process's CPU seconds (every thread), minor page faults
    and context switches meanwhile: wall, cpu, faults, switches."""
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    work()
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {"wall": wall,
            "cpu": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
            "faults": after.ru_minflt - before.ru_minflt,
            "switches": after.ru_nvcsw + after.ru_nivcsw - before.ru_nvcsw - before.ru_nivcsw}


# --- statistics -----------------------------------------------------------------------------------------------

def stats(samples):
    """{"median", "min", "max", "samples"} of a list of numbers (the benchmarks' one summary format)."""
    values = [float(v) for v in samples]
    if not values:
        return {"median": None, "min": None, "max": None, "samples": []}
    return {"median": float(np.median(values)), "min": min(values), "max": max(values), "samples": values}


def mean_std(values):
    """{"mean", "std" (sample std, 0 for one value), "min", "max"} of a list of numbers."""
    values = [float(v) for v in values]
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(values), "max": max(values)}


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
    description.update(compat.versions())
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
