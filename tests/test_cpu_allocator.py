"""The training entry point gives TensorFlow a CPU allocator that reuses freed memory (unet_perf/cpu_allocator.py).

TensorFlow reads the choice once per process, so the check runs `train_from_args` in a fresh Python process with
the training itself replaced by a graph whose 16 MB intermediates are freed and allocated again on every
Session.run, and counts the process's minor page faults over those runs. With malloc (TensorFlow's default on
CPUs without oneDNN) each run faults its intermediates in again, thousands of pages; with the BFC allocator almost
none. Page faults are counted by the kernel: no timing.
"""
import os
import subprocess
import sys

import pytest

from unet_perf import cpu_allocator

CHILD = r"""
import resource, sys, types
import numpy as np

def measure_faults(cfg):
    from unet_perf.compat import v1
    import tensorflow as tf
    graph = tf.Graph()
    with graph.as_default():
        weights = v1.get_variable("w", initializer=np.ones((2048, 2048), np.float32))
        total = tf.reduce_sum(tf.sqrt(tf.abs(weights.read_value() * 3.0) + 1.0))
        init = v1.global_variables_initializer()
    with v1.Session(graph=graph) as sess:
        sess.run(init)
        for _ in range(5):
            sess.run(total)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(20):
            sess.run(total)
        print("faults per run", (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20.0)

stand_in = types.ModuleType("unet_perf.training.run")
stand_in.train = measure_faults
sys.modules["unet_perf.training.run"] = stand_in
from unet_perf.train import train_from_args
train_from_args(["--model_dir", sys.argv[1]])
"""


def faults_per_run(tmp_path, allocator_env):
    env = dict(os.environ)
    env.pop(cpu_allocator.BFC_ENV, None)
    env.update(allocator_env)
    result = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "run")], env=env, cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=120)
    assert result.returncode == 0, result.stdout
    line = [text for text in result.stdout.splitlines() if text.startswith("faults per run")][-1]
    return float(line.split()[-1])


def test_training_processes_reuse_freed_tensor_memory(tmp_path):
    # 16 MB of intermediates per run = 4096 pages; a pooling allocator faults in none of them again.
    assert faults_per_run(tmp_path, {}) < 100


def test_the_users_choice_of_allocator_wins(monkeypatch):
    monkeypatch.setenv(cpu_allocator.BFC_ENV, "false")
    assert cpu_allocator.prefer_bfc_allocator() == "false"
    monkeypatch.delenv(cpu_allocator.BFC_ENV)
    assert cpu_allocator.prefer_bfc_allocator() == "true"
    assert os.environ[cpu_allocator.BFC_ENV] == "true"


def test_malloc_is_what_the_check_would_catch(tmp_path):
    """The same child with the user's TF_CPU_ALLOCATOR_USE_BFC=false: on a CPU where TensorFlow's default is
    malloc the intermediates fault in again on every run, so the check above is not vacuous there. oneDNN builds
    (AVX512-VNNI/BF16, AMX) pool by default: nothing to show there."""
    faults = faults_per_run(tmp_path, {cpu_allocator.BFC_ENV: "false"})
    if faults < 100:
        pytest.skip("TensorFlow's default CPU allocator pools memory on this machine ({} faults per run)".format(
            faults))
    assert faults > 1000
