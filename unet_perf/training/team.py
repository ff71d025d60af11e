"""The workers of one job and how they agree: who they are, the start-up handshake, the stop vote.

    team = join(cfg)                                  # from TF_CONFIG / the rank table; one worker otherwise
    start = team.handshake(cfg, train_pairs, start)   # same config and data everywhere; the chief's start step
    training = assembly.build(team.run_config(cfg), assembly.pipeline_source(cfg, ..., *team.share), team.backend)
    while step < total and not team.agree_to_stop(sess, stop.requested):
        values = team.run(sess, fetches)              # a training Session.run, bounded, lost peers named

Roles: the chief (rank 0) restores, broadcasts (assembly.open_session), logs, validates and writes model_dir; the
other workers only train and never touch model_dir. Every worker agrees before each Session.run whether to stop
(one worker's SIGINT/SIGTERM stops all after the same step). Every wait on a peer is bounded: the start-up
handshake, and the training runs and votes once every worker is past its first training run, by
--collective_timeout; a worker's first training run and the votes around it (graph optimisation and op compilation,
every worker at once, the peers waiting for the slowest) by the first-run bound (backends.collective).
"""
import hashlib
import json
import zlib

import numpy as np

from unet_perf import cluster as cluster_lib
from unet_perf import faults
from unet_perf.config import config_to_dict
from unet_perf.errors import UserError

# Flags that may legitimately differ between machines (paths); everything else must agree.
LOCAL_FLAGS = ("model_dir", "data_path")
_HASH_BITS = 52  # exact in a float64, which the collective carries


def join(cfg, env=None):
    """The Team of this process: cluster from the environment, backend for cfg, and (with several workers) this
    worker's TensorFlow server started (its port checked first)."""
    from unet_perf.backends import get_backend

    cluster = cluster_lib.from_environment(env)
    backend = get_backend(cfg, cluster)
    if cluster.distributed:
        backend.session_target()  # start now: a taken port or an absent peer is an error before any data is loaded
    return Team(cluster, backend)


class Team(object):
    """This worker's view of the job (see the module docstring). `backend` is what assembly.build should use."""

    def __init__(self, cluster, backend):
        self.cluster = cluster
        self.backend = backend
        self._vote = None
        self._training_runs = 0  # completed training Session.runs of this process

    @property
    def chief(self):
        return self.cluster.chief

    @property
    def size(self):
        return self.cluster.size

    @property
    def share(self):
        """(worker_index, num_workers) for assembly.pipeline_source."""
        return self.cluster.rank, self.cluster.size

    def run_config(self, cfg):
        """cfg as the graph uses it: with --lr_scaling linear the learning rate times the number of workers."""
        import dataclasses
        if cfg.lr_scaling == "linear" and self.size > 1:
            return dataclasses.replace(cfg, learning_rate=cfg.learning_rate * self.size)
        return cfg

    def describe(self, cfg):
        """The start-up line: workers, global batch and learning-rate rule."""
        return ("data parallel: {} workers ({}), batch {} per worker = global batch {}; learning rate {:g} "
                "(--lr_scaling {}{})".format(
                    self.size, self.cluster.source, cfg.batch_size, cfg.batch_size * self.size,
                    self.run_config(cfg).learning_rate, cfg.lr_scaling,
                    ": x{}".format(self.size) if cfg.lr_scaling == "linear" else ": as given"))

    # --- agreement between workers ----------------------------------------------------------------------------

    def handshake(self, cfg, train_pairs, start_step):
        """Wait (bounded) for every worker; check they all run the same config on the same training data; return
        the chief's start step (the chief passes the step of its checkpoint, the others anything).

        Raises UserError when a worker does not arrive within --collective_timeout (naming it) or when the
        config/data fingerprints differ.
        """
        if self.size == 1:
            return start_step
        fingerprint = float(config_fingerprint(cfg, train_pairs))
        chief_step = float(start_step) if self.chief else -1.0
        values = self._all_max([fingerprint, -fingerprint, chief_step], "waiting for every worker to start")
        if values[0] != -values[1]:
            raise UserError("the workers do not all run the same configuration and training data (their config "
                            "fingerprints differ; {} has {:x}); start every worker with the same flags and data (only "
                            "--model_dir and --data_path may differ)".format(
                                self.cluster.describe(self.cluster.rank), int(fingerprint)))
        return int(values[2])

    def _all_max(self, values, doing):
        return self.backend.collectives.all_max(values, doing, target=self.backend.session_target())

    def build_vote(self, training):
        """Add the stop vote to the training graph (all workers, before opening the session)."""
        if self.size == 1:
            return
        from unet_perf.backends.base import VOTE
        from unet_perf.compat import v1

        collectives = self.backend.collectives
        with training.graph.as_default(), v1.device(collectives.device):
            wish = v1.placeholder_with_default(v1.constant(0.0), [], name="stop_wish")
            agreed = collectives.all_reduce(wish, merge_op="Max", final_op="Id", purpose=VOTE)
        self._vote = (wish, agreed)

    def agree_to_stop(self, sess, requested):
        """True when any worker asked to stop (every worker calls this once before each training Session.run).

        The votes before and right after this worker's first training run wait for peers still in their first
        run (graph optimisation, op compilation): they get the first-run bound, later votes --collective_timeout.
        """
        if self._vote is None:
            return bool(requested)
        wish, agreed = self._vote
        value = self.backend.collectives.run(sess, agreed, {wish: 1.0 if requested else 0.0},
                                             doing="agreeing whether to stop", first=self._training_runs <= 1)
        return float(value) > 0

    def run(self, sess, fetches):
        """One training Session.run of `fetches`. Several workers: the first is bounded by the first-run bound,
        later ones by --collective_timeout, and a lost peer's error becomes one line naming it."""
        collectives = self.backend.collectives
        if collectives is None:
            values = sess.run(fetches)
        else:
            first = self._training_runs == 0
            if first:
                faults.stagger("first_training_run", self.cluster.rank)
            values = collectives.run(sess, fetches, doing="training", first=first)
        self._training_runs += 1
        return values

    def peer_errors(self, doing):
        """Context turning a lost peer's TensorFlow error into a one-line UserError (no-op for one worker)."""
        if self.backend.collectives is None:
            import contextlib
            return contextlib.suppress()
        return self.backend.collectives.peer_errors(doing)


def config_fingerprint(cfg, train_pairs):
    """A 52-bit integer of the config (without LOCAL_FLAGS) and the training slices' shapes and bytes."""
    settings = dict((key, value) for key, value in config_to_dict(cfg).items() if key not in LOCAL_FLAGS)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8"))
    for array in (train_pairs.images, train_pairs.masks):
        array = np.ascontiguousarray(array)
        digest.update(str(array.shape).encode("utf-8"))
        digest.update(str(zlib.crc32(array.tobytes())).encode("utf-8"))
    return int(digest.hexdigest(), 16) % (2 ** _HASH_BITS)
