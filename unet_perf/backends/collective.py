"""TensorFlow's own collective ops over its gRPC runtime: the host (CPU/GPU) engine for several workers.

One tf.distribute.Server per process (job "worker", task = rank); the graph lives under
/job:worker/replica:0/task:<rank>; the session opens on the server's target with `collective_group_leader` = task 0
and device filters that keep it to its own task (peers are only reached through the collectives, so creating a
session never waits for them).

Keys: every collective op gets its own instance key from one counter (all workers build the same ops in the same
order, so the keys agree); the kernel also keys instances by while-loop frame and iteration, so the all-reduce
inside the K-step loop is a fresh instance every step. Group keys separate the purposes (start-up agreement,
broadcast, training all-reduces, stop votes): all workers are in every group.

Every Session.run that can wait on a peer gets RunOptions(timeout_in_ms=collective timeout); when it expires (or a
peer's connection breaks) `peer_failure` turns the error into one line naming the worker(s) that no longer answer.
"""
import contextlib

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


def gpu_visible():
    """True when TensorFlow sees a GPU in this process (decides the NCCL communication hint)."""
    lister = getattr(tf.config.experimental, "list_physical_devices", None)
    return bool(lister and lister("GPU"))


class BoundedPeerWaits(object):
    """What every collectives engine shares: runs bounded by `timeout_sec`, and lost peers turned into one-line
    errors by the engine's `peer_failure(err, doing)`."""

    timeout_sec = None

    def run_options(self):
        return v1.RunOptions(timeout_in_ms=int(self.timeout_sec * 1000))

    def bound_session(self, config):
        """Sets the ConfigProto's operation_timeout_in_ms: the deadline of every run without its own RunOptions."""
        config.operation_timeout_in_ms = int(self.timeout_sec * 1000)

    @contextlib.contextmanager
    def peer_errors(self, doing):
        """Inside: an OpError of the kinds a lost peer causes becomes peer_failure(err, doing)."""
        try:
            yield
        except PEER_ERRORS as err:
            raise self.peer_failure(err, doing)

    def peer_failure(self, err, doing):
        raise NotImplementedError


class HostCollectives(BoundedPeerWaits):
    """Collective ops for one worker of `cluster` (a cluster.Cluster with size > 1).

    Args:
        cluster: this process's cluster.Cluster.
        timeout_sec: bound of every wait on a peer (start-up, each training Session.run, votes).
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
        and operation_timeout_in_ms, the deadline of every Session.run of the session (Savers and validators
        included) unless a run passes its own RunOptions."""
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

    def peer_failure(self, err, doing):
        """A one-line UserError for an OpError raised while `doing` (e.g. "training step 40"), naming the
        worker(s) that no longer accept connections (or all peers when every port still answers)."""
        missing = cluster_lib.unreachable_peers(self.cluster)
        if missing:
            who = ", ".join(self.cluster.describe(rank) for rank in missing)
            what = "is unreachable (stopped, killed or never started)" if len(missing) == 1 else \
                "are unreachable (stopped, killed or never started)"
        else:
            who = ", ".join(self.cluster.describe(rank) for rank in range(self.cluster.size)
                            if rank != self.cluster.rank)
            what = "did not complete the collective (hung or failed; see its log)"
        reason = type(err).__name__.replace("Error", "")
        return UserError("{} while {}: {} {} [{} after up to {:.0f} s, --collective_timeout]; the last checkpoint "
                         "is intact, restart every worker with the same command to resume".format(
                             self.cluster.describe(self.cluster.rank), doing, who, what, reason, self.timeout_sec))


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
