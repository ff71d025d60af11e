"""Stand-in for npu_bridge.estimator.npu_ops: initialize_system / shutdown_system (collective communication)."""
import tensorflow as tf

from npu_bridge.hccl import loopback
from npu_bridge.stub_log import record

loopback.install_session_redirect()


def _marker(value, name):
    def mark():
        return loopback.mark_initialized(value)
    return tf.compat.v1.py_func(mark, [], tf.bool, stateful=True, name=name)


def initialize_system(name=None):
    """An op that initialises collective communication (rank queries work after it has run)."""
    record("npu_ops.initialize_system", op_name=name)
    return _marker(True, name or "NPUInit").op


def shutdown_system(name=None):
    record("npu_ops.shutdown_system", op_name=name)
    return _marker(False, name or "NPUShutdown").op
