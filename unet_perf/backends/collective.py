"""TensorFlow's own collective ops over its gRPC runtime: the host (CPU/GPU) engine for several workers.

One tf.distribute.Server per process (job "worker", task = rank); the graph lives under
/job:worker/replica:0/task:<rank>; the session opens on the server's target with `collective_group_leader` = task 0
and device filters that keep it to its own task (peers are only reached through the collectives, so creating a
session never waits for them).

Keys: every collective op gets its own instance key from one counter (all workers build the same ops in the same
order, so the keys agree); the kernel also keys instances by while-loop frame and iteration, so the all-reduce
inside the K-step loop is a fresh instance every step. Group keys separate the purposes (start-up agreement,
broadcast, training all-reduces, stop votes): all workers are in every group.

Deadlines: a worker's first runs (graph optimisation, on a device also op compilation, every worker at once; the
peers wait for the slowest) are bounded by `first_run_timeout_sec` (FIRST_RUN_TIMEOUT_SEC, or --collective_timeout
when longer): it is the session's operation_timeout_in_ms, so initialisation, restore, the broadcast of the chief's
variables, savers and validation all get it. Waits once every worker is past its first training run (training runs,
stop votes: distributed.Team) and the start-up handshake pass RunOptions(--collective_timeout) through `run`. When a
wait fails, `peer_failure` turns the error into one line: the worker(s) lost, what happened (connection refused or
closed, or timed out) and how long the wait really took.
"""
import contextlib
import re
import time

import tensorflow as tf

from unet_perf import cluster as cluster_lib
from unet_perf.compat import v1
from unet_perf.errors import UserError

JOB = "worker"
GROUP_STARTUP, GROUP_BROADCAST, GROUP_TRAIN, GROUP_VOTE = 1, 2, 3, 4
# Gradients are packed into buckets of about this many bytes: one all-reduce per bucket instead of one per tensor
# (fewer round trips), several buckets so the reduction of the last layers overlaps the backward pass of the first.
BUCKET_BYTES = 4 * 1024 * 1024
# Errors that mean "a peer is gone or silent" rather than a bug in the graph.
PEER_ERRORS = (v1.errors.DeadlineExceededError, v1.errors.UnavailableError, v1.errors.AbortedError,
               v1.errors.CancelledError, v1.errors.InternalError, v1.errors.UnknownError)
# The deadline of a worker's first runs (see the module doc): compiling the training graph for 8 devices at once can
# take many minutes, far longer than a steady training step or a validation pass.
FIRST_RUN_TIMEOUT_SEC = 3600.0


def gpu_visible():
    """True when TensorFlow sees a GPU in this process (decides the NCCL communication hint)."""
    lister = getattr(tf.config.experimental, "list_physical_devices", None)
    return bool(lister and lister("GPU"))


class BoundedPeerWaits(object):
    """What every collectives engine shares: runs bounded by `timeout_sec` (steady waits) or
    `first_run_timeout_sec` (first runs), and lost peers turned into one-line errors by the engine's
    `peer_failure(err, doing, elapsed, bound)`."""

    timeout_sec = None

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

    def bound_name(self, bound):
        """How messages name the deadline `bound` (seconds)."""
        if bound == self.timeout_sec:
            return "--collective_timeout"
        return "the first-run bound, max({:.0f} s, --collective_timeout)".format(FIRST_RUN_TIMEOUT_SEC)

    def peer_failure(self, err, doing, elapsed, bound):
        raise NotImplementedError


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


def tasks_named(err, own_rank):
    """Ranks other than `own_rank` the error text names as "/job:worker/replica:0/task:N" (sorted)."""
    text = str(getattr(err, "message", None) or err)
    found = set(int(rank) for rank in re.findall(r"/job:{}/replica:\d+/task:(\d+)".format(JOB), text))
    return sorted(found - {own_rank})


class HostCollectives(BoundedPeerWaits):
    """Collective ops for one worker of `cluster` (a cluster.Cluster with size > 1).

    Args:
        cluster: this process's cluster.Cluster.
        timeout_sec: --collective_timeout, the bound of the start-up wait and of every training Session.run and
            stop vote once all workers are past their first run (the first runs get first_run_timeout_sec).
        communication_hint: "ring" on CPU; "nccl" where GPUs exist (coded, not verified here: no GPU); None = pick.
    """

    def __init__(self, cluster, timeout_sec, communication_hint=None):
        if cluster.size < 2:
            raise ValueError("HostCollectives needs at least two workers")
        self.cluster = cluster
        self.timeout_sec = float(timeout_sec)
        self.communication_hint = communication_hint or ("nccl" if gpu_visible() else "ring")
        self._server = None
        self._next_instance = 1

    # --- process-level set-up ---------------------------------------------------------------------------------

    @property
    def device(self):
        """The device scope of this worker's graph (no device type: GPU placement stays automatic)."""
        return "/job:{}/replica:0/task:{}".format(JOB, self.cluster.rank)

    def configure(self, config):
        """Add the collective settings to a ConfigProto (in place) and return it: group leader, device filters,
        and operation_timeout_in_ms (bound_session), the deadline of every run without its own RunOptions."""
        config.experimental.collective_group_leader = "/job:{}/replica:0/task:0".format(JOB)
        self.bound_session(config)
        del config.device_filters[:]
        config.device_filters.append("/job:{}/task:{}".format(JOB, self.cluster.rank))
        return config

    def start(self):
        """Start this process's server once (port checked first), wait (bounded) until every peer's server
        listens; returns the session target."""
        if self._server is None:
            cluster_lib.check_port_free(self.cluster)
            spec = v1.train.ClusterSpec({JOB: self.cluster.addresses})
            try:
                self._server = v1.train.Server(spec, job_name=JOB, task_index=self.cluster.rank,
                                               config=self.configure(v1.ConfigProto()), start=True)
            except (v1.errors.OpError, ValueError) as err:
                raise UserError("cannot start the TensorFlow server of {} ({}); check its TF_CONFIG address".format(
                    self.cluster.describe(self.cluster.rank), str(err).strip().splitlines()[0][:200]))
            cluster_lib.wait_for_peers(self.cluster, self.timeout_sec)
        return self._server.target

    # --- graph building ---------------------------------------------------------------------------------------

    def _instance_key(self):
        key = self._next_instance
        self._next_instance += 1
        return key

    def all_reduce(self, tensor, merge_op="Add", final_op="Div", group_key=GROUP_TRAIN):
        """One CollectiveReduce over all workers: Add+Div = mean, Max+Id = maximum, Add+Id = sum."""
        return tf.raw_ops.CollectiveReduce(
            input=tensor, group_size=self.cluster.size, group_key=group_key, instance_key=self._instance_key(),
            merge_op=merge_op, final_op=final_op, subdiv_offsets=[0], communication_hint=self.communication_hint)

    def mean(self, tensors):
        """Mean over workers of each tensor (None passes through), packed into buckets of BUCKET_BYTES per dtype.

        The buckets are filled from the last tensor backwards: gradients of the last layers are ready first.
        """
        results = list(tensors)
        by_dtype = {}
        for index in reversed(range(len(results))):
            if results[index] is not None:
                by_dtype.setdefault(results[index].dtype, []).append(index)
        for dtype in sorted(by_dtype, key=lambda d: d.name):
            for bucket in _buckets(by_dtype[dtype], results, BUCKET_BYTES):
                flat = [tf.reshape(results[i], [-1]) for i in bucket]
                sizes = [int(results[i].shape.num_elements()) for i in bucket]
                reduced = self.all_reduce(tf.concat(flat, 0) if len(flat) > 1 else flat[0])
                for i, part in zip(bucket, tf.split(reduced, sizes) if len(flat) > 1 else [reduced]):
                    results[i] = tf.reshape(part, results[i].shape)
        return results

    def broadcast_from_chief(self, variables):
        """An op assigning rank 0's value of every variable to every worker's copy (one send or receive each)."""
        assigns = []
        for variable in variables:
            value = variable.read_value() if hasattr(variable, "read_value") else variable
            shape = value.shape.as_list()
            common = dict(group_size=self.cluster.size, group_key=GROUP_BROADCAST, instance_key=self._instance_key(),
                          shape=shape, communication_hint=self.communication_hint)
            if self.cluster.chief:
                received = tf.raw_ops.CollectiveBcastSend(input=value, **common)
            else:
                received = tf.raw_ops.CollectiveBcastRecv(T=value.dtype, **common)
            assigns.append(variable.assign(received))
        return tf.group(*assigns)

    # --- errors -----------------------------------------------------------------------------------------------

    def peer_failure(self, err, doing, elapsed, bound):
        """A one-line UserError for an OpError raised while `doing` (e.g. "training") after `elapsed` seconds of a
        wait bounded by `bound`: the worker(s) lost, what happened and how long it took. Lost = the peers whose
        port refuses a connection now; else the peers the error names; else every peer."""
        happened = what_happened(err)
        when = "{} after {:.1f} s".format(happened, elapsed)
        if happened == "timed out":
            when += " ({})".format(self.bound_name(bound))
        missing = cluster_lib.unreachable_peers(self.cluster)
        if missing:
            state = "no longer {} connections (stopped, killed or never started)"
        else:
            missing = tasks_named(err, self.cluster.rank) or [
                rank for rank in range(self.cluster.size) if rank != self.cluster.rank]
            state = "still {} connections (hung, busy or failed: see the log)"
        one = len(missing) == 1
        return UserError("{} while {}: lost {}: {}; {} {}; the last checkpoint is intact, restart every worker with "
                         "the same command to resume".format(
                             self.cluster.describe(self.cluster.rank), doing,
                             ", ".join(self.cluster.describe(rank) for rank in missing), when,
                             "it" if one else "they", state.format("accepts" if one else "accept")))


def _buckets(indices, tensors, limit):
    buckets, current, size = [], [], 0
    for index in indices:
        nbytes = int(tensors[index].shape.num_elements()) * tensors[index].dtype.size
        if current and size + nbytes > limit:
            buckets.append(current)
            current, size = [], 0
        current.append(index)
        size += nbytes
    if current:
        buckets.append(current)
    return buckets
