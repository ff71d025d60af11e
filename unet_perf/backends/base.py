"""The contract between the trainer and a backend (host CPU/GPU, or Ascend NPU).

A backend turns "a function that builds one training step's loss from one batch" into fetches that run
K = iterations_per_loop steps per Session.run:

    backend = get_backend(cfg)                       # unet_perf.backends.get_backend
    config_proto = backend.session_config(cfg)       # tf.compat.v1.ConfigProto
    fetches = backend.build_train_loop(cfg, next_batch, loss_fn, global_step)
    sess = tf.compat.v1.Session(config=config_proto)
    ... initialise / restore variables, then run iterator.initializer on its own (NPU pitfall) ...
    fetches = backend.prepare_session(sess, fetches)  # NPU: util.set_iteration_per_loop; host: unchanged
    values = sess.run(fetches)                        # K steps; global_step advanced by K
    step = check_loop_steps(step, values, K)          # after EVERY training run: loud when the loop ran != K

Arguments:
    next_batch()            -> the tuple from iterator.get_next(): (image, mask) or (image, mask, weight),
                               static shapes [B, h, w, 1]. Called inside the step (inside the loop body on host).
    loss_fn(batch, step)    -> scalar float32 loss; builds the model under a reusing variable scope.
                               `step` is the int64 global step of this step (seeds stateless dropout so a K-step
                               loop and K single steps see the same randomness).
    global_step             -> the int64 variable from tf.compat.v1.train.get_or_create_global_step().

Fetch keys every backend returns (scalar tensors; values after the K steps of one Session.run):
    FETCH_KEYS below. After `prepare_session` the NPU (K > 1) adds ITERATION_OP_KEY: the IterationOp itself, fetched
    in every run (its value is None) because Grappler removes it when it is reached only through control edges,
    and the device then runs one step per Session.run. graph.open_session hands these fetches to every caller.

Several workers (data parallel): a backend built with `collectives` (an object like
backends.collective.HostCollectives: cluster, device, configure, start, run_options, mean, broadcast_from_chief,
peer_failure) all-reduces the gradients inside every step and reports the loss as the mean over workers.
graph.build places the graph on `device()`; graph.open_session opens the session on `session_target()`, runs
`sync_variables(sess)` right after the restore (so every worker holds the chief's values) and before the iterator
initializer, and wraps the session so every run waits on peers at most the collective timeout.
"""

import abc

from unet_perf.cluster import SINGLE
from unet_perf.compat import v1
from unet_perf.errors import UserError

FETCH_KEYS = (
    "loss",           # float32, loss of the last step of the loop
    "mean_loss",      # float32, mean loss over the K steps of this Session.run
    "global_step",    # int64, after the loop
    "loss_scale",     # float32, current loss scale (1.0 when no loss scaling)
    "overflow",       # bool, the last step had a non-finite gradient (update skipped)
    "skipped_steps",  # int64, total steps skipped for non-finite gradients since training began
    "scale_changes",  # int64, total loss-scale changes (up or down) since training began
)
# The key of the NPU's IterationOp in the fetches of a prepared session (see the module docstring).
ITERATION_OP_KEY = "iteration_op"


def check_loop_steps(previous_step, values, iterations_per_loop):
    """The global step after one training Session.run, once checked that it moved by exactly K.

    `values` is what running graph.open_session's fetches returned; `previous_step` the global step before that run.
    Every backend advances global_step once per executed step, skipped (overflowing) steps included, so a move other
    than K means the loop did not run K iterations (e.g. the NPU device ran the graph once while the host counted K):
    a one-line UserError instead of silently wrong step counts and a K-times too high images/sec.
    """
    step = int(values["global_step"])
    moved = step - int(previous_step)
    if moved != int(iterations_per_loop):
        raise UserError("one training Session.run moved global_step from {} to {} ({} step(s)), but "
                        "--iterations_per_loop is {}: the loop did not run {} iterations (on Ascend: the device did "
                        "not loop on IterationOp; see the hardware checklist in docs/multi_device.md); train with "
                        "--iterations_per_loop 1 until that is fixed".format(
                            previous_step, step, moved, iterations_per_loop, iterations_per_loop))
    return step


class Backend(abc.ABC):
    """What every backend implements; see the module docstring. Each backend owns the meaning of its settings."""

    name = "abstract"
    collectives = None  # None: one worker; else the engine of the all-reduce and broadcast (see the module doc)
    sync_doing = "sharing the chief's variables"  # what a lost peer interrupted, in sync_variables' error
    _sync_op = None  # several workers: the broadcast of the chief's variables

    @property
    def cluster(self):
        """This process's cluster.Cluster (rank, size, chief)."""
        return self.collectives.cluster if self.collectives is not None else SINGLE

    def device(self):
        """Device scope for the whole training graph, or None."""
        return self.collectives.device if self.collectives is not None else None

    def session_target(self):
        """The Session target: "" (in-process) for one worker, this worker's server with several."""
        return self.collectives.start() if self.collectives is not None else ""

    def mean_over_workers(self, tensors):
        """Each tensor averaged over all workers (unchanged for one worker). Only inside the training step."""
        return self.collectives.mean(tensors) if self.collectives is not None else list(tensors)

    def build_variable_sync(self):
        """Several workers: build the broadcast of the chief's variables that sync_variables runs. Call it once
        every variable exists (model, optimizer slots, loss-scale and train state, global step)."""
        if self.collectives is not None:
            self._sync_op = self.collectives.broadcast_from_chief(v1.global_variables())

    def sync_variables(self, sess):
        """Called after init/restore, before the iterator initializer: give every worker the chief's variable
        values (the broadcast built by build_variable_sync; nothing for one worker)."""
        if self._sync_op is not None:
            with self.collectives.peer_errors(self.sync_doing):
                sess.run(self._sync_op)

    @abc.abstractmethod
    def session_config(self, cfg, profiling_options=None):
        """tf.compat.v1.ConfigProto for the training session; `profiling_options` is backend-specific (NPU: the
        dict of backends.npu.profiling_options; the host ignores it and traces with the TF profiler)."""

    @abc.abstractmethod
    def build_train_loop(self, cfg, next_batch, loss_fn, global_step):
        """The FETCH_KEYS dict; running it executes cfg.iterations_per_loop training steps."""

    @abc.abstractmethod
    def loss_scale_kind(self, cfg):
        """('none'|'dynamic'|'fixed', fixed value or None): the loss scaling this backend applies for cfg.

        The trainer asks this (not cfg) whether a non-finite loss is fatal: with loss scaling the overflowing step
        is skipped, without it the weights are broken.
        """

    def prepare_session(self, sess, fetches):
        """Called after variables are initialised or restored and the iterator initialised; returns the fetches
        to run (the NPU adds its IterationOp under ITERATION_OP_KEY here). Default: unchanged."""
        return fetches
