"""Two workers on 127.0.0.1 against one: equivalence with the real pipeline, the chief's broadcast, and a
non-finite gradient on one worker only.

One pair of worker processes (this file run as a script, see `worker_main`) does every scenario in turn on one
TensorFlow server each and writes what it saw to an .npz per scenario; rank 0 also trains the single-worker
reference. The tests below only compare those files, so the whole module costs one process start-up per worker.
"""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARD_TIMEOUT = 900  # seconds for the pair (start-up alone took minutes on a busy machine); a hang fails, never blocks
BATCH = 1  # per worker; the reference trains one worker with 2 x BATCH
# --deterministic: tf.data keeps the order of batches (otherwise a worker may take its batches out of order).
TINY = ["--depth", "2", "--base_filters", "4", "--crop_size", "32", "--synthetic_count", "6", "--synthetic_size",
        "64", "--xla_augment", "off", "--dropout", "0.5", "--learning_rate", "0.01", "--precision", "fp32",
        "--summary_images", "0", "--deterministic", "true"]
# (name, iterations_per_loop, extra flags): fp32 with SGD-momentum and Adam at K=1 and K=4, dropout on; the last
# one has the weight map (its normaliser is a global sum) and the Dice term.
EQUIVALENCE = [
    ("k1_momentum", 1, ["--optimizer", "momentum"]),
    # Adam divides by sqrt(v): a gradient element near zero keeps its rounding noise at the size of a whole
    # update, so its learning rate is lower to keep those elements inside rtol 1e-5.
    ("k4_adam", 4, ["--optimizer", "adam", "--learning_rate", "0.001"]),
    ("k4_momentum_weighted_dice", 4, ["--optimizer", "momentum", "--weight_map", "true", "--loss", "bce_dice"]),
]
RUNS = 2  # Session.runs per scenario: the second starts from the state the first left


def free_addresses(count):
    from unet_perf.launch import free_ports
    return ["127.0.0.1:{}".format(port) for port in free_ports(count)]


def worker_env(addresses, rank):
    from unet_perf.launch import tf_config
    env = dict(os.environ, TF_CONFIG=tf_config(addresses, rank), TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return env


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Run the worker pair once; {(scenario, rank): npz dict}."""
    out_dir = str(tmp_path_factory.mktemp("distributed"))
    addresses = free_addresses(2)
    envs = [worker_env(addresses, rank) for rank in range(2)]
    return run_rank_processes(os.path.abspath(__file__), out_dir, envs, HARD_TIMEOUT)


def run_rank_processes(script, out_dir, envs, hard_timeout):
    """Run `python script out_dir` once per environment (one process per rank), all within hard_timeout s, killing
    only these processes if they overrun; then {(scenario, rank): npz dict} of the .npz files they saved.
    Also used by test_npu_distributed."""
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


def weights_of(data):
    """{name: value} of the "var:<name>" entries of a saved .npz dict; also used by test_npu_distributed."""
    return dict((key[len("var:"):], value) for key, value in data.items() if key.startswith("var:"))


def assert_rank_0_weights_everywhere(results, scenario):
    """The two ranks started from different weights and both hold rank 0's after the sync; also used by
    test_npu_distributed."""
    chief_before = weights_of(results[(scenario, "0")]["before"].item())
    other_before = weights_of(results[(scenario, "1")]["before"].item())
    assert any(not np.array_equal(chief_before[name], other_before[name]) for name in chief_before)
    for rank in ("0", "1"):
        after_sync = weights_of(results[(scenario, rank)]["after_sync"].item())
        for name in chief_before:
            np.testing.assert_array_equal(after_sync[name], chief_before[name], err_msg=name)


def assert_one_skip_everywhere(chief, other):
    """Both ranks skipped exactly one step and ended with the same weights, which the other steps did train;
    also used by test_npu_distributed."""
    for data in (chief, other):
        assert int(data["skipped_steps"]) == 1
    weights_chief, weights_other = weights_of(chief), weights_of(other)
    for name in weights_chief:
        np.testing.assert_array_equal(weights_chief[name], weights_other[name], err_msg=name)
    # the other steps did train (a skipped step alone would leave the weights at their start)
    start = weights_of(chief["initial"].item())
    assert any(not np.array_equal(weights_chief[name], start[name]) for name in start)


@pytest.mark.parametrize("scenario", [name for name, _, _ in EQUIVALENCE])
def test_two_workers_equal_one_worker_with_the_global_batch(results, scenario):
    single = weights_of(results[(scenario, "single")])
    start = weights_of(results[(scenario, "single_initial")])
    for rank in ("0", "1"):
        distributed = weights_of(results[(scenario, rank)])
        assert sorted(distributed) == sorted(single)
        for name in single:
            np.testing.assert_allclose(distributed[name], single[name], rtol=1e-5, atol=1e-7, err_msg=name)
    # the comparison means something: training moved the weights well beyond the tolerance
    moved = max(float(np.max(np.abs(single[name] - start[name]))) for name in single)
    assert moved > 1e-3
    np.testing.assert_allclose(results[(scenario, "0")]["mean_loss"], results[(scenario, "single")]["mean_loss"],
                               rtol=1e-5)


def test_workers_seeded_differently_hold_the_chiefs_weights(results):
    assert_rank_0_weights_everywhere(results, "broadcast")
    first = weights_of(results[("broadcast", "0")])
    second = weights_of(results[("broadcast", "1")])
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_non_finite_gradient_on_one_worker_skips_the_step_everywhere(results):
    chief, other = results[("overflow", "0")], results[("overflow", "1")]
    assert_one_skip_everywhere(chief, other)
    for data in (chief, other):
        assert float(data["loss_scale"]) == 2.0 ** 9  # halved once from the initial 2^10


# --- in-process: each worker's share is its rows of the global batch --------------------------------------------

def _config(*flags):
    from unet_perf.config import config_from_args
    return config_from_args(TINY + list(flags))


def test_pipeline_shares_are_the_global_batch_rows():
    from conftest import take_batches
    from unet_perf.training import assembly
    from unet_perf.compat import v1
    from unet_perf.data.loading import load_dataset

    def first_batches(batch, rank, size):
        cfg = _config("--batch_size", str(batch), "--weight_map", "true")
        train, _, weights = load_dataset(cfg)
        with v1.Graph().as_default():
            return take_batches(assembly.pipeline_source(cfg, train, weights, 1, rank, size)(), 2)

    whole = first_batches(4, 0, 1)
    shares = [first_batches(2, rank, 2) for rank in range(2)]
    for step in range(2):
        for part in range(3):  # image, mask, weight map
            joined = np.concatenate([shares[0][step][part], shares[1][step][part]])
            # same samples and draws; float maths on 2 vs 4 rows may round differently in the last bit
            np.testing.assert_allclose(joined, whole[step][part], rtol=1e-6, atol=1e-6)
        assert not np.array_equal(shares[0][step][0], shares[1][step][0])


def test_dropout_masks_are_the_global_batch_rows():
    import tensorflow as tf

    from unet_perf.model import network
    from unet_perf.compat import v1

    cfg = _config()
    images = np.random.RandomState(0).uniform(0, 1, (4, 32, 32, 1)).astype(np.float32)
    with v1.Graph().as_default():
        step = tf.constant(3, tf.int64)
        whole = network.unet(tf.constant(images), cfg, training=True, step=step)
        parts = [network.unet(tf.constant(images[2 * r:2 * r + 2]), cfg, training=True, step=step, worker_index=r,
                            num_workers=2) for r in range(2)]
        plain = network.unet(tf.constant(images[2:]), cfg, training=True, step=step)  # no share: rank 0's mask
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            whole, first, second, plain = sess.run([whole] + parts + [plain])
    np.testing.assert_allclose(np.concatenate([first, second]), whole, rtol=1e-6, atol=1e-6)
    assert not np.allclose(plain, second, atol=1e-4)


def test_weighted_bce_is_normalised_over_the_global_batch():
    import tensorflow as tf

    from unet_perf.model import losses
    from unet_perf.compat import v1

    rng = np.random.RandomState(1)
    logits = rng.normal(size=(4, 8, 8, 1)).astype(np.float32)
    masks = (rng.uniform(size=logits.shape) > 0.5).astype(np.float32)
    weights = rng.uniform(0.5, 1.5, logits.shape).astype(np.float32)
    weights[2:] *= 5.0  # the second worker's share weighs much more
    with v1.Graph().as_default():
        whole = losses.bce(logits, masks, weights)
        share_sums = [tf.reduce_sum(weights[2 * r:2 * r + 2]) for r in range(2)]
        mean_sum = (share_sums[0] + share_sums[1]) / 2.0
        global_norm = [losses.bce(logits[2 * r:2 * r + 2], masks[2 * r:2 * r + 2], weights[2 * r:2 * r + 2],
                                  weight_total=mean_sum) for r in range(2)]
        local_norm = [losses.bce(logits[2 * r:2 * r + 2], masks[2 * r:2 * r + 2], weights[2 * r:2 * r + 2])
                      for r in range(2)]
        with v1.Session() as sess:
            whole, global_norm, local_norm = sess.run([whole, global_norm, local_norm])
    np.testing.assert_allclose(np.mean(global_norm), whole, rtol=1e-6)
    # what per-worker normalisation would have given instead: a different loss (so the all-reduce matters)
    assert abs(np.mean(local_norm) - whole) > 1e-3 * abs(whole)


# --- the worker side (this file run as a script) ------------------------------------------------------------------

def worker_main(out_dir):
    from unet_perf import cluster as cluster_lib
    from unet_perf import compat
    from unet_perf.backends.collective import HostCollectives
    from unet_perf.backends.host import HostBackend
    from unet_perf.config import config_from_args
    from unet_perf.data.loading import load_dataset

    compat.enable_graph_mode()
    cluster = cluster_lib.from_environment()
    collectives = HostCollectives(cluster, timeout_sec=120)  # one server and one instance-key counter per process
    collectives.start()  # also waits for the peer
    rank = cluster.rank

    def save(name, data):
        np.savez(os.path.join(out_dir, "{}_rank{}.npz".format(name, rank)), **data)

    for name, k, extra in EQUIVALENCE:
        flags = TINY + extra + ["--iterations_per_loop", str(k), "--max_steps", str(k * RUNS)]
        cfg = config_from_args(flags + ["--batch_size", str(BATCH)])
        save(name, _train(cfg, HostBackend(collectives=collectives), load_dataset(cfg), cluster.rank, 2))
        if rank == 0:
            single_cfg = config_from_args(flags + ["--batch_size", str(2 * BATCH)])
            data = _train(single_cfg, HostBackend(), load_dataset(single_cfg), 0, 1, keep_initial=True)
            save_single_reference(out_dir, name, data)

    # broadcast: seeds differ per worker, so the initial weights differ until the chief's are shared
    cfg = config_from_args(TINY + ["--seed", str(7 + rank), "--iterations_per_loop", "2", "--batch_size", "1"])
    save("broadcast", _train(cfg, HostBackend(collectives=collectives), load_dataset(cfg), rank, 2, inspect=True))

    # overflow: worker 1's images are non-finite in the second step of a 4-step loop (dynamic loss scaling)
    cfg = config_from_args(TINY + ["--iterations_per_loop", "4", "--batch_size", "1", "--loss_scale", "dynamic",
                                   "--loss_scale_init", "1024"])
    backend = HostBackend(collectives=collectives)
    save("overflow", _train(cfg, backend, None, rank, 2, keep_initial=True,
                            source=poisoned_source(cfg, poisoned=(rank == 1), bad_batch=1)))


def save_single_reference(out_dir, scenario, data):
    """Save the one-worker reference as rank "single", and its "initial:<name>" weights as "var:<name>" of rank
    "single_initial"; also used by test_npu_distributed."""
    initial = dict(("var:" + key[len("initial:"):], value) for key, value in data.items()
                   if key.startswith("initial:"))
    np.savez(os.path.join(out_dir, "{}_ranksingle_initial.npz".format(scenario)), **initial)
    np.savez(os.path.join(out_dir, "{}_ranksingle.npz".format(scenario)), **data)


def poisoned_source(cfg, poisoned, bad_batch):
    """A cached-batch source whose images are inf in batch `bad_batch` when `poisoned` (one worker's overflow);
    also used by test_npu_distributed."""
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


def _train(cfg, backend, loaded, rank, size, keep_initial=False, inspect=False, source=None):
    """Build cfg's graph for this worker, open it like assembly.open_session, run RUNS Session.runs; a dict of the
    final trainable variables ("var:<name>") and fetches (plus "initial:<name>" / "before"/"after_sync")."""
    from unet_perf.training import assembly
    from unet_perf.compat import v1

    if source is None:
        train, _, weights = loaded
        source = assembly.pipeline_source(cfg, train, weights, 0, rank, size)
    training = assembly.build(cfg, source, backend=backend)
    with training.graph.as_default():
        trainable = v1.trainable_variables()
    read = lambda sess: dict(("var:" + v.op.name, value) for v, value in zip(trainable, sess.run(trainable)))
    data = {}
    config = backend.session_config(cfg)
    with v1.Session(backend.session_target(), graph=training.graph, config=config) as sess:
        sess.run(training.init_ops)
        if inspect:
            data["before"] = np.array(read(sess), dtype=object)
        if keep_initial:
            data.update(("initial:" + key[4:], value) for key, value in read(sess).items())
        backend.sync_variables(sess)
        if inspect:
            data["after_sync"] = np.array(read(sess), dtype=object)
        if keep_initial and size > 1:  # the chief's values are the start of everyone
            data["initial"] = np.array(read(sess), dtype=object)
        sess.run(training.iterator.initializer)
        for _ in range(RUNS):
            values = sess.run(training.fetches)
        data.update(read(sess))
        data.update((key, np.asarray(value)) for key, value in values.items())
    return data


if __name__ == "__main__":
    worker_main(sys.argv[1])
