"""Stand-in for npu_bridge.estimator.npu.util: the sink-mode iteration variable and IterationOp."""
import tensorflow as tf

from npu_bridge.stub_log import record

v1 = tf.compat.v1

_NPU_RUNCONFIG = "npu_runconfig"


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
    if existing:
        return existing[0]
    with v1.variable_scope(_NPU_RUNCONFIG, reuse=v1.AUTO_REUSE):
        return v1.get_variable(var_name, shape=[], dtype=tf.int64, initializer=v1.zeros_initializer(),
                               trainable=False, collections=[collection_name, v1.GraphKeys.LOCAL_VARIABLES],
                               use_resource=True)


def set_iteration_per_loop(sess, train_op, iterations_per_loop=1):
    """Records K; for K > 1 loads K-1 into npu_runconfig/iterations_per_loop and returns IterationOp.

    The real device then loops the graph K times per Session.run; this stand-in runs it once.
    """
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
    return tf.group(train_op, name="IterationOp")
