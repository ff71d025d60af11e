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
    and the device then runs one step per Session.run. assembly.open_session hands these fetches to every
    caller.

Several workers (data parallel): a backend built with `collectives` (a Collectives, below) all-reduces the
gradients inside every step and reports the loss as the mean over workers. assembly.build places the graph on
`device()`; assembly.open_session opens the session on `session_target()`, runs
`sync_variables(sess)` right after the restore (so every worker holds the chief's values) and before the iterator
initializer, and wraps the session so every run waits on peers at most the collective timeout.
"""

import abc
import contextlib
import re
import time

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

# What a collective is for (Collectives.all_reduce's `purpose`): an engine that keys its instances by group keeps them
# apart (TensorFlow's collectives); HCCL has one world group and needs no such key.
STARTUP, BROADCAST, TRAIN, VOTE = "startup", "broadcast", "train", "vote"
# Errors that mean "a peer is gone or silent" rather than a bug in the graph.
PEER_ERRORS = (v1.errors.DeadlineExceededError, v1.errors.UnavailableError, v1.errors.AbortedError,
               v1.errors.CancelledError, v1.errors.InternalError, v1.errors.UnknownError)
# The deadline of a worker's first runs (see the module doc): compiling the training graph for 8 devices at once can
# take many minutes, far longer than a steady training step or a validation pass.
FIRST_RUN_TIMEOUT_SEC = 3600.0



class Collectives(abc.ABC):
    """The contract of a collectives engine: how the workers of one job reduce and share tensors, and how every
    wait on a peer stays bounded. Backends build their all-reduces and the broadcast through it; training.team
    speaks only this. Engines: backends.collective.HostCollectives (TensorFlow's collective ops over gRPC),
    backends.hccl.NpuCollectives (HCCL through npu_bridge).

    Deadlines: a worker's first runs (graph optimisation, on a device also op compilation, every worker at once)
    get `first_run_timeout_sec`, the session's operation_timeout_in_ms (`bound_session`); waits once every worker is
    past its first training run, and the start-up handshake, pass RunOptions(--collective_timeout) through `run`.
    A failed wait becomes the engine's one-line `peer_failure`: who was lost, what happened, how long it took.

    Attributes every engine sets: `cluster` (this process's cluster.Cluster, size > 1), `timeout_sec`
    (--collective_timeout), `device` (the device scope of the worker's graph, or None).
    """

    cluster = None
    timeout_sec = None
    device = None

    @abc.abstractmethod
    def configure(self, config):
        """Add the engine's settings to a ConfigProto in place (bound_session included) and return it."""

    @abc.abstractmethod
    def start(self, config=None):
        """Set up this process's side of the engine once; returns the session target. `config`: the training
        session config, for engines whose first session fixes process-wide options (HCCL)."""

    @abc.abstractmethod
    def all_reduce(self, tensor, merge_op="Add", final_op="Div", purpose=TRAIN):
        """One all-reduce over all workers: Add+Div = mean, Add+Id = sum, Max+Id = maximum (Min+Id where the
        engine has it). `purpose`: STARTUP, BROADCAST, TRAIN or VOTE."""

    @abc.abstractmethod
    def mean(self, tensors):
        """Each tensor averaged over all workers (None passes through); inside the training step."""

    @abc.abstractmethod
    def broadcast_from_chief(self, variables):
        """An op giving every worker rank 0's value of each variable."""

    @abc.abstractmethod
    def peer_failure(self, err, doing, elapsed, bound):
        """The one-line UserError for a peer error raised while `doing`, after `elapsed` seconds of a wait
        bounded by `bound` seconds."""

    @property
    def first_run_timeout_sec(self):
        return max(self.timeout_sec, FIRST_RUN_TIMEOUT_SEC)

    def run_options(self, first=False):
        """RunOptions bounding one Session.run: --collective_timeout, or the first-run bound when `first`."""
        bound = self.first_run_timeout_sec if first else self.timeout_sec
        return v1.RunOptions(timeout_in_ms=int(bound * 1000))

    def bound_session(self, config):
        """Sets the ConfigProto's operation_timeout_in_ms, the deadline of every run without its own RunOptions:
        the first-run bound (those runs are initialisation, restore, the broadcast, savers and validation)."""
        config.operation_timeout_in_ms = int(self.first_run_timeout_sec * 1000)

    def run(self, sess, fetches, feed_dict=None, doing="training", first=False):
        """sess.run(fetches, feed_dict) bounded by --collective_timeout (the first-run bound when `first`); an
        OpError of the kinds a lost peer causes becomes peer_failure with the measured duration of this run."""
        bound = self.first_run_timeout_sec if first else self.timeout_sec
        started = time.time()
        try:
            return sess.run(fetches, feed_dict, options=self.run_options(first))
        except PEER_ERRORS as err:
            raise self.peer_failure(err, doing, time.time() - started, bound)

    @contextlib.contextmanager
    def peer_errors(self, doing):
        """Inside: an OpError of the kinds a lost peer causes becomes peer_failure(err, doing, ...), timed from the
        start of the block (meant for one run)."""
        started = time.time()
        try:
            yield
        except PEER_ERRORS as err:
            elapsed = time.time() - started
            # A run inside ended sooner than the session's deadline (the first-run bound): its own RunOptions did.
            bound = self.timeout_sec if elapsed < self.first_run_timeout_sec else self.first_run_timeout_sec
            raise self.peer_failure(err, doing, elapsed, bound)

    def all_max(self, values, doing, target=None, first=False):
        """The element-wise maximum over all workers of the float64 list `values`, in a small graph and session of
        its own: the workers' agreements outside a training graph (start-up handshake, barriers). Bounded by
        --collective_timeout (the first-run bound when `first`); target: the session target (default start())."""
        graph = v1.Graph()
        with graph.as_default(), v1.device(self.device):
            reduced = self.all_reduce(v1.constant(values, v1.float64), merge_op="Max", final_op="Id",
                                      purpose=STARTUP)
        config = self.configure(v1.ConfigProto())
        with v1.Session(self.start() if target is None else target, graph=graph, config=config) as sess:
            return self.run(sess, reduced, doing=doing, first=first).tolist()

    def bound_name(self, bound):
        """How messages name the deadline `bound` (seconds)."""
        if bound == self.timeout_sec:
            return "--collective_timeout"
        return "the first-run bound, max({:.0f} s, --collective_timeout)".format(FIRST_RUN_TIMEOUT_SEC)


def what_happened(err):
    """What a peer error says happened, in the words of the one-line errors: "timed out", "connection refused",
    "connection closed", or "failed (<Kind>: <first line of the message>)"."""
    text = str(getattr(err, "message", None) or err)
    lowered = text.lower()
    if isinstance(err, v1.errors.DeadlineExceededError) or "deadline exceeded" in lowered:
        return "timed out"
    if "connection refused" in lowered or "failed to connect" in lowered:
        return "connection refused"
    if any(word in lowered for word in ("connection reset", "socket closed", "broken pipe", "connection closed",
                                         "end of file", "stream removed")):
        return "connection closed"
    if re.search(r"\btime[sd]? ?out\b|\btimeout\b", lowered):  # also HCCL's "... times out" (EI0002)
        return "timed out"
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    return "failed ({}: {})".format(type(err).__name__.replace("Error", ""), first_line[:160])


def check_loop_steps(previous_step, values, iterations_per_loop):
    """The global step after one training Session.run, once checked that it moved by exactly K.

    `values` is what running assembly.open_session's fetches returned; `previous_step` the global step before that run.
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

    def keep_fp32_scope(self):
        """A context manager for the graph from the float32 logits to the loss (assembly.make_loss_fn, C >= 2): ops
        built inside stay float32 under the backend's mixed precision. Default (host): nothing to do, the network
        casts its logits to float32 and the softmax and loss run in float32."""
        return contextlib.nullcontext()

    def prepare_session(self, sess, fetches):
        """Called after variables are initialised or restored and the iterator initialised; returns the fetches
        to run (the NPU adds its IterationOp under ITERATION_OP_KEY here). Default: unchanged."""
        return fetches
