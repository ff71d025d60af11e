"""TensorFlow's own collective ops over its gRPC runtime: the host (CPU/GPU) engine for several workers.

One tf.distribute.Server per process (job "worker", task = rank); the graph lives under
/job:worker/replica:0/task:<rank>; the session opens on the server's target with `collective_group_leader` = task 0
and device filters that keep it to its own task (peers are only reached through the collectives, so creating a
session never waits for them).

Keys: every collective op gets its own instance key from one counter (all workers build the same ops in the same
order, so the keys agree); the kernel also keys instances by while-loop frame and iteration, so the all-reduce
inside the K-step loop is a fresh instance every step. Group keys separate the purposes (start-up agreement,
broadcast, training all-reduces, stop votes): all workers are in every group.

Deadlines and lost-peer errors follow backends.base.Collectives; `peer_failure` here names the lost workers (the
peers whose port refuses a connection now, else those the error names).
"""
import re

import tensorflow as tf

from unet_perf import cluster as cluster_lib
from unet_perf.backends.base import BROADCAST, STARTUP, TRAIN, VOTE, Collectives, what_happened
from unet_perf.compat import v1
from unet_perf.errors import UserError

JOB = "worker"
# Group keys keep the purposes of the collectives apart (all workers are in every group).
GROUP_KEYS = {STARTUP: 1, BROADCAST: 2, TRAIN: 3, VOTE: 4}
# Gradients are packed into buckets of about this many bytes: one all-reduce per bucket instead of one per tensor
# (fewer round trips), several buckets so the reduction of the last layers overlaps the backward pass of the first.
BUCKET_BYTES = 4 * 1024 * 1024
def gpu_visible():
    """True when TensorFlow sees a GPU in this process (decides the NCCL communication hint)."""
    lister = getattr(tf.config.experimental, "list_physical_devices", None)
    return bool(lister and lister("GPU"))


def tasks_named(err, own_rank):
    """Ranks other than `own_rank` the error text names as "/job:worker/replica:0/task:N" (sorted)."""
    text = str(getattr(err, "message", None) or err)
    found = set(int(rank) for rank in re.findall(r"/job:{}/replica:\d+/task:(\d+)".format(JOB), text))
    return sorted(found - {own_rank})


class HostCollectives(Collectives):
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

    def start(self, config=None):
        """Start this process's server once (port checked first), wait (bounded) until every peer's server
        listens; returns the session target. `config` is not needed here (no process-wide start-up options)."""
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

    def all_reduce(self, tensor, merge_op="Add", final_op="Div", purpose=TRAIN):
        """One CollectiveReduce over all workers: Add+Div = mean, Max+Id = maximum, Add+Id = sum."""
        return tf.raw_ops.CollectiveReduce(
            input=tensor, group_size=self.cluster.size, group_key=GROUP_KEYS[purpose],
            instance_key=self._instance_key(),
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
            common = dict(group_size=self.cluster.size, group_key=GROUP_KEYS[BROADCAST],
                          instance_key=self._instance_key(), shape=shape, communication_hint=self.communication_hint)
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
