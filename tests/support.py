"""Helpers shared by several test files, in one place: where things are, tiny configs and batches, the host and
NPU training loops that the backend, model and EMA tests drive, a trained-model directory, and the two-rank harness
of the multi-worker tests.

Fixtures are in conftest.py; a helper that only one test file uses stays in that file. Test files never import
each other: `from support import ...` (pytest.ini puts tests/ on sys.path; rank scripts get it from rank_python_path).
This module has no side effects on import (conftest.py switches TensorFlow to graph mode).
"""
import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
SHARED_DATA = os.path.join(REPO, "..", "shared", "data", "isbi2012")
SHARED_COMPAT = os.path.join(REPO, "..", "shared", "compat")
NPU_BRIDGE_API = os.path.join(SHARED_COMPAT, "npu_bridge_api.txt")  # the shipped npu_bridge listing
NPU_STUB = os.path.join(TESTS, "npu_stub")  # the stand-in npu_bridge (and its hccl package)

# The smallest U-Net the tests train or run: two levels of 4 and 8 filters on 32x32 tiles, batch 2, no rescale.
TINY = dict(depth=2, base_filters=4, crop_size=32, batch_size=2, input_scale=1.0)


def make_tiny_config(*bases, **overrides):
    """A Config of TINY, updated by each dict in `bases` in turn, then by `overrides`."""
    from unet_perf.config import Config

    values = dict(TINY)
    for base in bases:
        values.update(base)
    values.update(overrides)
    return Config(**values)


def take_batches(dataset, count):
    """The first `count` batches of `dataset` through the pipeline's initializable iterator, in the default graph."""
    from unet_perf.compat import v1
    from unet_perf.input import pipeline

    iterator = pipeline.make_iterator(dataset)
    batch = iterator.get_next()
    with v1.Session() as sess:
        sess.run(iterator.initializer)
        return [sess.run(batch) for _ in range(count)]


def assert_same_weights(a, b, rtol=1e-5, atol=1e-6):
    """Two {variable name: value} dicts hold the same variables with values equal within tolerance."""
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=rtol, atol=atol, err_msg=name)


# --- the host training loop on a fixed in-memory task ------------------------------------------------------------

LOOP_SIZE = 32
# make_tiny_config base of HostRun: 32x32 tiles, dropout on, one step per Session.run.
HOST_LOOP = dict(crop_size=LOOP_SIZE, dropout=0.5, iterations_per_loop=1, learning_rate=1e-3)


def blob_arrays(count=8, nan_index=None):
    """(images, masks) of blobs on noise: a learnable in-memory task. Optionally one image full of NaN (a poisoned
    batch)."""
    rng = np.random.RandomState(1)
    yy, xx = np.mgrid[:LOOP_SIZE, :LOOP_SIZE]
    masks = np.zeros((count, LOOP_SIZE, LOOP_SIZE, 1), np.float32)
    for i in range(count):
        cy, cx = rng.randint(8, LOOP_SIZE - 8, size=2)
        masks[i, ..., 0] = ((yy - cy) ** 2 + (xx - cx) ** 2 < 40).astype(np.float32)
    images = (0.6 * masks + 0.4 * rng.rand(count, LOOP_SIZE, LOOP_SIZE, 1)).astype(np.float32)
    if nan_index is not None:
        images[nan_index] = np.nan
    return images, masks


class HostRun(object):
    """A graph + session training the tiny U-Net with the host backend on a fixed, unshuffled dataset
    (blob_arrays unless `arrays` is given)."""

    def __init__(self, cfg, arrays=None, backend=None):
        import tensorflow as tf

        from unet_perf.backends.host import HostBackend
        from unet_perf.compat import v1
        from unet_perf.model.losses import compute_loss
        from unet_perf.model.network import unet

        self.graph = v1.Graph()
        with self.graph.as_default():
            images, masks = arrays if arrays is not None else blob_arrays()
            dataset = tf.data.Dataset.from_tensor_slices((images, masks)).repeat()
            iterator = v1.data.make_initializable_iterator(dataset.batch(cfg.batch_size, drop_remainder=True))
            global_step = v1.train.get_or_create_global_step()

            def loss_fn(batch, step):
                return compute_loss(unet(batch[0], cfg, True, step), batch[1], None, cfg.loss)

            self.backend = backend or HostBackend()
            self.fetches = self.backend.build_train_loop(cfg, iterator.get_next, loss_fn, global_step)
            self.sess = v1.Session(graph=self.graph, config=self.backend.session_config(cfg))
            self.sess.run(v1.global_variables_initializer())
            self.sess.run(iterator.initializer)
            self.names = [v.name for v in v1.global_variables()]
            self.variables = v1.global_variables()

    def run(self):
        return self.sess.run(self.fetches)

    def weights(self):
        return dict(zip(self.names, self.sess.run(self.variables)))


# --- the NPU backend's step against the stand-in npu_bridge (request the `npu` fixture) --------------------------

FLOAT32_MAX = float(np.finfo(np.float32).max)


def forget_stand_in():
    """Drop every module of the stand-in (npu_bridge, hccl) from the import cache, so no other test imports it."""
    for name in list(sys.modules):
        if name.split(".")[0] in ("npu_bridge", "hccl"):
            del sys.modules[name]


def npu_config(**overrides):
    """The Config of the NPU backend tests: 8 steps, K=1, loss scale auto, allow_mix_precision, updated by
    `overrides`."""
    from unet_perf.config import Config

    values = dict(max_steps=8, iterations_per_loop=1, save_checkpoints_steps=8, learning_rate=0.05,
                  loss_scale="auto", precision_mode="allow_mix_precision")
    values.update(overrides)
    return Config(**values)


def npu_backend():
    """An NpuBackend (imported lazily: npu_bridge is importable only inside the `npu` fixture)."""
    from unet_perf.backends.npu import NpuBackend
    return NpuBackend()


def tiny_problem(seed=0, unused_variable=False):
    """A fixed batch and a 2-layer conv net: (next_batch, loss_fn, nan_factor placeholder).

    Feed nan_factor NaN to make the gradients non-finite. Feed the placeholder "saturation" 1e30 for an overflow
    whose clipped result leaves the loss and the gradients finite (the device's float status still records it).
    `unused_variable` adds a trainable variable the loss does not reach (its gradient is None).
    """
    from unet_perf.compat import v1

    rng = np.random.RandomState(seed)
    images = rng.rand(2, 8, 8, 1).astype(np.float32)
    masks = (images > 0.5).astype(np.float32)
    nan_factor = v1.placeholder_with_default(1.0, [], name="nan_factor")
    saturation = v1.placeholder_with_default(1.0, [], name="saturation")

    def next_batch():
        return v1.constant(images), v1.constant(masks)

    def loss_fn(batch, step):
        assert step.dtype == v1.int64
        image, mask = batch
        with v1.variable_scope("tiny", reuse=v1.AUTO_REUSE):
            init = v1.variance_scaling_initializer(2.0, "fan_in", "truncated_normal", seed=1)
            w1 = v1.get_variable("w1", [3, 3, 1, 4], initializer=init)
            w2 = v1.get_variable("w2", [3, 3, 4, 1], initializer=init)
            if unused_variable:
                v1.get_variable("unused", [2], initializer=v1.zeros_initializer())
        hidden = v1.nn.relu(v1.nn.conv2d(image, w1, [1, 1, 1, 1], "SAME"))
        logits = v1.nn.conv2d(hidden, w2, [1, 1, 1, 1], "SAME")
        loss = v1.reduce_mean(v1.nn.sigmoid_cross_entropy_with_logits(labels=mask, logits=logits))
        clipped = v1.minimum(loss * saturation * saturation, FLOAT32_MAX)  # 1e30 * 1e30 overflows, then clips
        return loss * nan_factor + 0.0 * v1.stop_gradient(clipped)

    return next_batch, loss_fn, nan_factor


def build_npu_step(cfg, backend=None, **problem):
    """tiny_problem's training loop on the NPU backend (npu_backend() unless given) in the default graph, in an
    initialised and prepared session: (sess, fetches, nan_factor placeholder)."""
    from unet_perf.compat import v1

    backend = backend if backend is not None else npu_backend()
    config = backend.session_config(cfg)
    next_batch, loss_fn, nan_factor = tiny_problem(**problem)
    global_step = v1.train.get_or_create_global_step()
    fetches = backend.build_train_loop(cfg, next_batch, loss_fn, global_step)
    sess = v1.Session(config=config)
    sess.run(v1.global_variables_initializer())
    fetches = backend.prepare_session(sess, fetches)
    return sess, fetches, nan_factor


# --- a trained-model directory -----------------------------------------------------------------------------------

def make_model_dir(path, cfg=None, seed=0):
    """A trained-model directory as the trainer writes it: config.json + a checkpoint of random U-Net weights
    (cfg: the tiny U-Net without dropout unless given). Returns (model_dir, cfg, a fixed random tile, its
    probability computed by the saving session: sigmoid [1,t,t,1] for num_classes 1, softmax [1,t,t,C] for C >= 2)."""
    from unet_perf.compat import v1
    from unet_perf.model.network import unet

    cfg = cfg or make_tiny_config(dropout=0.0)
    model_dir = str(path)
    os.makedirs(model_dir, exist_ok=True)
    tile = np.random.default_rng(seed).random((1, cfg.crop_size, cfg.crop_size, 1)).astype(np.float32)
    with v1.Graph().as_default():
        v1.set_random_seed(seed)
        images = v1.placeholder(np.float32, [1, cfg.crop_size, cfg.crop_size, 1])
        logits = unet(images, cfg, training=False)
        probability = v1.math.sigmoid(logits) if cfg.num_classes == 1 else v1.nn.softmax(logits)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            expected = sess.run(probability, {images: tile})
            v1.train.Saver().save(sess, os.path.join(model_dir, "model.ckpt"), global_step=0,
                                  write_meta_graph=False)
    with open(os.path.join(model_dir, "config.json"), "w") as handle:
        json.dump(dataclasses.asdict(cfg), handle)
    return model_dir, cfg, tile, expected


# --- rank tables ---------------------------------------------------------------------------------------------------

def made_up_device_ip(device):
    """A made-up NIC address for test rank tables (the stand-in's HCCL does not use it)."""
    return "192.0.2.{}".format(10 + device)


def write_rank_table(path, devices):
    """A generated one-server rank table of `devices` devices at `path` (made-up device IPs); returns `path`."""
    from unet_perf import rank_table
    with open(path, "w") as handle:
        json.dump(rank_table.generate(devices, device_ip=made_up_device_ip), handle)
    return path


# --- two rank processes (a test file run as a script) and what they saved -----------------------------------------

def free_addresses(count):
    """`count` "127.0.0.1:<free port>" addresses."""
    from unet_perf.launch import free_ports
    return ["127.0.0.1:{}".format(port) for port in free_ports(count)]


def rank_python_path(*folders):
    """PYTHONPATH for a rank process running a test file as a script: the repository, tests/ (for `support`),
    then `folders`, then the caller's PYTHONPATH."""
    return os.pathsep.join([REPO, TESTS] + list(folders) + [os.environ.get("PYTHONPATH", "")])


def run_rank_processes(script, out_dir, envs, hard_timeout):
    """Run `python script out_dir` once per environment (one process per rank), all within hard_timeout s, killing
    only these processes if they overrun; then {(scenario, rank): npz dict} of the .npz files they saved."""
    processes = [subprocess.Popen([sys.executable, script, out_dir], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, universal_newlines=True) for env in envs]
    deadline = time.time() + hard_timeout
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=max(1.0, deadline - time.time()))[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for rank, process in enumerate(processes):
        assert process.returncode == 0, "rank {} failed:\n{}".format(rank, outputs[rank][-3000:])
    found = {}
    for name in os.listdir(out_dir):
        if name.endswith(".npz"):
            scenario, rank = name[:-len(".npz")].rsplit("_rank", 1)
            with np.load(os.path.join(out_dir, name), allow_pickle=True) as data:
                found[(scenario, rank)] = dict(data)
    return found


def train_rank(cfg, backend, source, size, runs, keep_initial=False, inspect=False, before_session=None):
    """Build cfg's training graph for this rank, open it with assembly.open_session (the trainer's order: init,
    sync to the chief, iterator, prepare_session), call `before_session()` (when given) just before opening, and
    do `runs` checked Session.runs. Returns a dict for np.savez: the final trainable variables ("var:<name>") and
    the FETCH_KEYS of the last run; with keep_initial also the weights before the sync ("initial:<name>") and, on
    several ranks, after it ("initial"); with inspect, "before" and "after_sync" ({"var:<name>": value})."""
    from unet_perf.backends.base import FETCH_KEYS
    from unet_perf.compat import v1
    from unet_perf.training import assembly

    training = assembly.build(cfg, source, backend=backend)
    with training.graph.as_default():
        trainable = v1.trainable_variables()

    def read(sess):
        return dict(("var:" + v.op.name, value) for v, value in zip(trainable, sess.run(trainable)))

    data = {}

    def before_sync(sess):
        """open_session's restore step: the variables are initialised and not yet synced."""
        if inspect:
            data["before"] = np.array(read(sess), dtype=object)
        if keep_initial:
            data.update(("initial:" + key[len("var:"):], value) for key, value in read(sess).items())

    if before_session is not None:
        before_session()
    sess, fetches = assembly.open_session(training, cfg, restore=before_sync)
    with sess:
        if inspect:
            data["after_sync"] = np.array(read(sess), dtype=object)
        if keep_initial and size > 1:  # the chief's values are the start of everyone
            data["initial"] = np.array(read(sess), dtype=object)
        loop = assembly.CheckedRuns(sess, fetches, cfg.iterations_per_loop)
        for _ in range(runs):
            values = loop.run()
        data.update(read(sess))
        data.update((key, np.asarray(values[key])) for key in FETCH_KEYS)
    return data


def save_single_reference(out_dir, scenario, data):
    """Save the one-worker reference as rank "single", and its "initial:<name>" weights as "var:<name>" of rank
    "single_initial"."""
    initial = dict(("var:" + key[len("initial:"):], value) for key, value in data.items()
                   if key.startswith("initial:"))
    np.savez(os.path.join(out_dir, "{}_ranksingle_initial.npz".format(scenario)), **initial)
    np.savez(os.path.join(out_dir, "{}_ranksingle.npz".format(scenario)), **data)


def poisoned_source(cfg, poisoned, bad_batch):
    """A cached-batch source whose images are inf in batch `bad_batch` when `poisoned` (one worker's overflow)."""
    import tensorflow as tf

    from unet_perf.training import assembly

    base = assembly.cached_batch_source(cfg)

    def source():
        numbered = tf.data.Dataset.zip((base(), tf.data.Dataset.range(1 << 40)))

        def poison(batch, number):
            factor = tf.where(tf.logical_and(tf.constant(poisoned), tf.equal(number, bad_batch)),
                              tf.constant(float("inf")), tf.constant(1.0))
            return (batch[0] * factor,) + tuple(batch[1:])
        return numbered.map(poison)
    return source


def weights_of(data):
    """{name: value} of the "var:<name>" entries of a saved .npz dict."""
    return dict((key[len("var:"):], value) for key, value in data.items() if key.startswith("var:"))


def assert_rank_0_weights_everywhere(results, scenario):
    """The two ranks started from different weights and both hold rank 0's after the sync."""
    chief_before = weights_of(results[(scenario, "0")]["before"].item())
    other_before = weights_of(results[(scenario, "1")]["before"].item())
    assert any(not np.array_equal(chief_before[name], other_before[name]) for name in chief_before)
    for rank in ("0", "1"):
        after_sync = weights_of(results[(scenario, rank)]["after_sync"].item())
        for name in chief_before:
            np.testing.assert_array_equal(after_sync[name], chief_before[name], err_msg=name)


def assert_one_skip_everywhere(chief, other):
    """Both ranks skipped exactly one step and ended with the same weights, which the other steps did train."""
    for data in (chief, other):
        assert int(data["skipped_steps"]) == 1
    weights_chief, weights_other = weights_of(chief), weights_of(other)
    for name in weights_chief:
        np.testing.assert_array_equal(weights_chief[name], weights_other[name], err_msg=name)
    # the other steps did train (a skipped step alone would leave the weights at their start)
    start = weights_of(chief["initial"].item())
    assert any(not np.array_equal(weights_chief[name], start[name]) for name in start)
