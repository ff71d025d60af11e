"""The only module that knows TensorFlow versions.

Everything else imports `v1` (the `tf.compat.v1` handle, present in TF 1.15 and 2.x) and the facts below, and
stays inside the API both versions share (checked by tools/check_tf115.py against ../shared/compat).
"""
import os

from unet_perf.tf_logging import import_tensorflow

import_tensorflow()  # loads TensorFlow quietly unless --verbose: see unet_perf.tf_logging
import tensorflow as tf  # noqa: E402  (already loaded: this plain binding is what tools/check_tf115.py follows)

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


def versions():
    """A short description of the TensorFlow build, for logs and benchmark JSON."""
    return {"tensorflow": tf.__version__, "npu_bridge": npu_bridge_available()}


_XLA_JIT_STATUS = []  # memo of the probe below: (available, reason), plain Python values, not TensorFlow state


def xla_jit_available():
    """True when this build runs a tiny xla_function (below) correctly in graph mode on the CPU.

    The Ascend TF 1.15 build may lack XLA kernels, and npu_bridge turns XLA off anyway: no XLA there.
    The probe runs once in its own graph and session; the answer is memoised. `xla_jit_status` says why.
    """
    return xla_jit_status()[0]


def xla_jit_status():
    """(available, reason): whether XLA JIT works here, and a short reason when it does not ("" when it does)."""
    if not _XLA_JIT_STATUS:
        _XLA_JIT_STATUS.append(_probe_xla_jit())
    return _XLA_JIT_STATUS[0]


def _probe_xla_jit():
    if npu_bridge_available():
        return False, "npu_bridge is loaded (the Ascend adapter runs no XLA)"
    try:
        with v1.Graph().as_default():
            square_sum = xla_function(lambda x: [v1.reduce_sum(x * x) + 1.0])(v1.range(4.0))[0]
            with v1.Session() as sess:
                value = float(sess.run(square_sum))
    except Exception as err:  # noqa: BLE001 -- any failure to build or compile means "no XLA here"; say which
        first_line = (str(err).strip().splitlines() or [""])[0]
        return False, "{}: {}".format(type(err).__name__, first_line[:200])
    if value != 15.0:
        return False, "the XLA probe computed {} instead of 15".format(value)
    return True, ""


def xla_function(fn):
    """`fn` (tensors in, list of tensors out) as one XLA-compiled function, callable in graph mode.

    2.x calls the flag `jit_compile`; 1.15 (and 2.x before 2.5) `experimental_compile`.
    """
    if TF_VERSION >= (2, 5):  # TF-2-only: jit_compile replaced experimental_compile in 2.5
        return tf.function(fn, autograph=False, jit_compile=True)
    return tf.function(fn, autograph=False, experimental_compile=True)


def start_profiler_trace(logdir):
    """Start TensorFlow 2.x's profiler (an xplane trace for TensorBoard's profile plugin) writing under logdir.

    Returns False where it does not exist (TF 1.15 has no tf.profiler.experimental; there, the RunMetadata written
    with FileWriter.add_run_metadata is what TensorBoard shows). Cannot run while a FULL_TRACE run is active.
    """
    experimental = getattr(tf.profiler, "experimental", None)  # TF-2-only module, probed
    if experimental is None:
        return False
    experimental.start(logdir)
    return True


def stop_profiler_trace():
    """Stop the trace started by start_profiler_trace (call only after it returned True)."""
    tf.profiler.experimental.stop()  # TF-2-only: reached only after start_profiler_trace returned True


def enable_op_determinism():
    """Ask TensorFlow for deterministic kernels (same seed = same numbers), for --deterministic.

    TF_DETERMINISTIC_OPS=1 is what 1.15 (GPU cuDNN/bias-add kernels) and 2.x before 2.9 read;
    tf.config.experimental.enable_op_determinism exists from 2.9 on (probed) and also makes unsupported
    non-deterministic ops raise instead of silently differing.
    """
    os.environ["TF_DETERMINISTIC_OPS"] = "1"
    enable = getattr(tf.config.experimental, "enable_op_determinism", None)  # TF 2.9+ only, probed
    if enable is not None:
        enable()
