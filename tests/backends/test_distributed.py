"""Two workers on 127.0.0.1 against one: equivalence with the real pipeline, the chief's broadcast, and a
non-finite gradient on one worker only.

One pair of worker processes (this file run as a script, see `worker_main`) does every scenario in turn on one
TensorFlow server each and writes what it saw to an .npz per scenario; rank 0 also trains the single-worker
reference. The tests below only compare those files, so the whole module costs one process start-up per worker.
"""
import os
import sys

import numpy as np
import pytest

from support import (assert_one_skip_everywhere, assert_rank_0_weights_everywhere, free_addresses, poisoned_source,
                     rank_python_path, run_rank_processes, save_single_reference, take_batches, train_rank,
                     weights_of)

HARD_TIMEOUT = 900  # seconds for the pair (start-up alone took minutes on a busy machine); a hang fails, never blocks
BATCH = 1  # per worker; the reference trains one worker with 2 x BATCH
# --deterministic: tf.data keeps the order of batches (otherwise a worker may take its batches out of order).
TINY = ["--depth", "2", "--base_filters", "4", "--crop_size", "32", "--synthetic_count", "6", "--synthetic_size",
        "64", "--xla_augment", "off", "--dropout", "0.5", "--learning_rate", "0.01", "--precision", "fp32",
        "--summary_images", "0", "--deterministic", "true"]
# (name, iterations_per_loop, extra flags): fp32 with SGD-momentum and Adam at K=1 and K=4, dropout on; the last
# one has the weight map (its normaliser is a global sum) and the Dice term; the last trains three classes.
EQUIVALENCE = [
    ("k1_momentum", 1, ["--optimizer", "momentum"]),
    # Adam divides by sqrt(v): a gradient element near zero keeps its rounding noise at the size of a whole
    # update, so its learning rate is lower to keep those elements inside rtol 1e-5.
    ("k4_adam", 4, ["--optimizer", "adam", "--learning_rate", "0.001"]),
    ("k4_momentum_weighted_dice", 4, ["--optimizer", "momentum", "--weight_map", "true", "--loss", "bce_dice"]),
    # three classes (softmax): the weight map's normaliser is a global sum too (class weights enter it the same
    # way: tests/model/test_losses.py checks worker shares of the class-weighted loss)
    ("k4_3class_weighted_dice", 4, ["--optimizer", "momentum", "--num_classes", "3", "--weight_map", "true",
                                    "--loss", "ce_dice"]),
]
RUNS = 2  # Session.runs per scenario: the second starts from the state the first left


def worker_env(addresses, rank):
    from unet_perf.launch import tf_config
    env = dict(os.environ, TF_CONFIG=tf_config(addresses, rank), TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=rank_python_path())
    return env


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Run the worker pair once; {(scenario, rank): npz dict}."""
    out_dir = str(tmp_path_factory.mktemp("distributed"))
    addresses = free_addresses(2)
    envs = [worker_env(addresses, rank) for rank in range(2)]
    return run_rank_processes(os.path.abspath(__file__), out_dir, envs, HARD_TIMEOUT)


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


def _train(cfg, backend, loaded, rank, size, keep_initial=False, inspect=False, source=None):
    """support.train_rank of RUNS Session.runs on this worker's share of the pipeline of `loaded` (train, val,
    weights), or on `source`."""
    from unet_perf.training import assembly

    if source is None:
        train, _, weights = loaded
        source = assembly.pipeline_source(cfg, train, weights, 0, rank, size)
    return train_rank(cfg, backend, source, size, RUNS, keep_initial=keep_initial, inspect=inspect)


if __name__ == "__main__":
    worker_main(sys.argv[1])
