"""The only module that knows TensorFlow versions.

Everything else imports `v1` (the `tf.compat.v1` handle, present in TF 1.15 and 2.x) and the facts below, and
stays inside the API both versions share (checked by tools/check_tf115.py against ../shared/compat).
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep C++ INFO/WARNING noise off user output

import tensorflow as tf  # noqa: E402

v1 = tf.compat.v1

TF_VERSION = tuple(int(part) for part in tf.__version__.split(".")[:2])
IS_TF2 = TF_VERSION[0] >= 2

# tf.data.experimental.AUTOTUNE exists in 1.15 and 2.x (tf.data.AUTOTUNE is 2.x only).
AUTOTUNE = tf.data.experimental.AUTOTUNE


def enable_graph_mode():
    """Graph mode everywhere: a no-op on 1.15, disables eager execution on 2.x. Call before building graphs."""
    if v1.executing_eagerly():
        v1.disable_eager_execution()


def npu_bridge_available():
    """True when CANN's npu_bridge imports (the Ascend stack)."""
    try:
        import npu_bridge  # noqa: F401
    except ImportError:
        return False
    return True


def set_dataset_threading(options, private_threadpool_size, max_intra_op_parallelism):
    """Set tf.data threading options under the attribute each version has.

    1.15 has only `experimental_threading`; 2.x has `threading` (and keeps `experimental_threading` as a
    deprecated alias on older releases).
    """
    threading = getattr(options, "threading", None)  # TF-2-only attribute, probed
    if threading is None:
        threading = options.experimental_threading
    if private_threadpool_size:
        threading.private_threadpool_size = private_threadpool_size
    if max_intra_op_parallelism:
        threading.max_intra_op_parallelism = max_intra_op_parallelism


def set_dataset_deterministic(options, deterministic):
    """`experimental_deterministic` exists in 1.15 and 2.x (2.x also has `deterministic`)."""
    if hasattr(options, "deterministic"):  # TF-2-only attribute, probed
        options.deterministic = deterministic
    else:
        options.experimental_deterministic = deterministic


def describe():
    """A short description of the TensorFlow build, for logs and benchmark JSON."""
    return {"tensorflow": tf.__version__, "npu_bridge": npu_bridge_available()}
