"""Stand-in for npu_bridge.estimator.npu.util: the sink-mode iteration variable and IterationOp.

The device runs a Session.run K times when the graph it receives contains a node named exactly `IterationOp` (the
adapter's GEOP checks the node name); any other name, e.g. `IterationOp_1` from a second call, runs it once. What
it receives is what Grappler left: the dependency optimizer removes the IterationOp NoOp when it is reached only
through control edges, and keeps it when it is a fetch (tests/test_npu_backend.py shows both with TensorFlow's
own Grappler). So the stand-in loops only when the op named `IterationOp` is itself among the fetches of a run of
the session passed to `set_iteration_per_loop`: such a run executes the whole graph K times (the same fetches and
feeds, each run pulling the next batch and applying the next update) and returns the values of the last execution;
any other run executes once, as on the device when the op was optimised away.
"""
import tensorflow as tf

from npu_bridge.stub_log import record

v1 = tf.compat.v1

_NPU_RUNCONFIG = "npu_runconfig"
_ITERATION_OP_NAME = "IterationOp"


def check_positive_integer(value, name):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("{} must be int, got {}".format(name, type(value)))
    if value <= 0:
        raise ValueError("{} must be positive, got {}".format(name, value))


def create_or_get_var(var_name):
    """An int64 local resource variable `npu_runconfig/<var_name>`, one per graph (found through its collection)."""
    graph = v1.get_default_graph()
    collection_name = "{}_{}".format(_NPU_RUNCONFIG, var_name)
    existing = graph.get_collection(collection_name)
    if len(existing) > 1:
        raise RuntimeError("Multiple var in collection.")
    if existing:
        return existing[0]
    with v1.variable_scope(_NPU_RUNCONFIG, reuse=v1.AUTO_REUSE):
        return v1.get_variable(var_name, shape=[], dtype=tf.int64, initializer=v1.zeros_initializer(),
                               trainable=False, collections=[collection_name, v1.GraphKeys.LOCAL_VARIABLES],
                               use_resource=True)


def set_iteration_per_loop(sess, train_op, iterations_per_loop=1):
    """Records K; for K > 1 loads K-1 into npu_runconfig/iterations_per_loop and returns `tf.group(train_op,
    name="IterationOp")` (named `IterationOp_1` etc. when the name is taken or inside a name scope)."""
    record("set_iteration_per_loop", sess=sess, train_op=train_op, iterations_per_loop=iterations_per_loop)
    if not isinstance(train_op, tf.Operation):
        raise ValueError("The incoming 'train_op' type is '{}', and the need type is 'Operation'".format(
            type(train_op).__name__))
    check_positive_integer(iterations_per_loop, "iterations_per_loop")
    if iterations_per_loop == 1:
        return train_op
    create_or_get_var("iterations_per_loop").load(iterations_per_loop - 1, session=sess)
    create_or_get_var("loop_cond").load(0, session=sess)
    create_or_get_var("zero").load(0, session=sess)
    create_or_get_var("one").load(1, session=sess)
    _DeviceLoop.of(sess).iterations = iterations_per_loop
    return tf.group(train_op, name=_ITERATION_OP_NAME)


class _DeviceLoop(object):
    """Replaces `sess.run` of one session: K executions for fetches that include the op named `IterationOp`."""

    def __init__(self, sess):
        self.iterations = 1
        self._graph = sess.graph
        self._run_once = sess.run
        sess.run = self.run
        sess._npu_stub_device_loop = self

    @classmethod
    def of(cls, sess):
        existing = getattr(sess, "_npu_stub_device_loop", None)
        return existing if existing is not None else cls(sess)

    def run(self, fetches, feed_dict=None, options=None, run_metadata=None):
        times = self.iterations if self._fetches_iteration_op(fetches) else 1
        for _ in range(times - 1):
            self._run_once(fetches, feed_dict, options, run_metadata)
        return self._run_once(fetches, feed_dict, options, run_metadata)

    def _fetches_iteration_op(self, fetches):
        ops = [self._op_of(element) for element in tf.nest.flatten(fetches)]
        return any(op is not None and op.name == _ITERATION_OP_NAME for op in ops)

    def _op_of(self, element):
        if isinstance(element, str):
            element = self._graph.as_graph_element(element)
        if isinstance(element, tf.Operation):
            return element
        return getattr(element, "op", None)


def get_ranksize():
    """RANK_SIZE (or CM_WORKER_SIZE) as a string, "1" when neither is set, like the adapter."""
    import os
    if os.getenv("CM_WORKER_SIZE") is not None and os.getenv("RANK_SIZE") is not None:
        raise ValueError("RANK_SIZE and CM_WORK_SIZE cannot be configured at the same time")
    return os.getenv("RANK_SIZE") if os.getenv("RANK_SIZE") is not None else os.getenv("CM_WORKER_SIZE", "1")
