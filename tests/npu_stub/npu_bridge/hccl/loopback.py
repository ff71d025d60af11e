"""The stand-in's device interconnect (not part of the real npu_bridge): HCCL emulated with TensorFlow's collective
ops between processes over 127.0.0.1.

On the device, a session whose config registers the `NpuOptimizer` pass runs its graph on the NPU, where the HCCL
ops reach the other ranks. Here the same session is opened on an in-process tf.distribute.Server of job "hccl"
(task = RANK_ID) instead of in-process, with the collective group leader at task 0, so `hccl_ops` built on
CollectiveReduce / CollectiveBcastSend/Recv really exchange data with the other rank processes. Nothing changes for
the caller: it creates `Session("", config=<NpuOptimizer config>)` as on the device.

Test-only environment: NPU_STUB_HCCL_ADDRESSES="127.0.0.1:<port of rank 0>,127.0.0.1:<port of rank 1>,..."; rank
RANK_ID. Without it nothing is redirected and hccl ops fail when run (one process has no peers).
NPU_STUB_HCCL_CONNECT_TIMEOUT (seconds, default 60) bounds the wait for the other ranks' servers, like
HCCL_CONNECT_TIMEOUT bounds HCCL's initialisation.
"""
import os
import socket
import time

import tensorflow as tf

v1 = tf.compat.v1

ADDRESSES_ENV = "NPU_STUB_HCCL_ADDRESSES"
CONNECT_TIMEOUT_ENV = "NPU_STUB_HCCL_CONNECT_TIMEOUT"
JOB = "hccl"
# Separate collective groups per kind of op (TensorFlow resolves a group once, with one kind of member op).
GROUP_ALLREDUCE, GROUP_BROADCAST = 101, 102

_state = {"server": None, "next_instance": 1, "initialized": False, "patched": False}


def enabled():
    return bool(os.environ.get(ADDRESSES_ENV, "").strip())


def addresses():
    return [item.strip() for item in os.environ.get(ADDRESSES_ENV, "").split(",") if item.strip()]


def rank():
    return int(os.environ.get("RANK_ID", "0"))


def size():
    return len(addresses())


def next_instance_key():
    """Every rank creates its hccl ops in the same order, so a per-process counter gives matching keys."""
    key = _state["next_instance"]
    _state["next_instance"] += 1
    return key


def _is_npu_config(config):
    if config is None:
        return False
    return any(op.name == "NpuOptimizer" for op in config.graph_options.rewrite_options.custom_optimizers)


def _start_server():
    if _state["server"] is None:
        spec = v1.train.ClusterSpec({JOB: addresses()})
        _state["server"] = v1.train.Server(spec, job_name=JOB, task_index=rank(), config=_collective_config(None),
                                           start=True)
        _wait_for_peers(float(os.environ.get(CONNECT_TIMEOUT_ENV, "60")))
    return _state["server"].target


def _wait_for_peers(timeout):
    deadline = time.time() + timeout
    for index, address in enumerate(addresses()):
        if index == rank():
            continue
        host, port = address.rsplit(":", 1)
        while True:
            try:
                socket.create_connection((host, int(port)), timeout=1.0).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("HCCL stand-in: rank {} ({}) did not start within {:.0f} s".format(
                        index, address, timeout))
                time.sleep(0.2)


def _collective_config(config):
    result = v1.ConfigProto()
    if config is not None:
        result.CopyFrom(config)
    result.experimental.collective_group_leader = "/job:{}/replica:0/task:0".format(JOB)
    del result.device_filters[:]
    result.device_filters.append("/job:{}/task:{}".format(JOB, rank()))
    return result


def install_session_redirect():
    """Make `Session("", config=<NpuOptimizer config>)` open on this rank's server (once per process)."""
    if _state["patched"] or not enabled():
        return
    session_class = v1.Session
    original_init = session_class.__init__

    def init(self, target="", graph=None, config=None):
        if not target and _is_npu_config(config):
            target = _start_server()
            config = _collective_config(config)
        original_init(self, target, graph, config)

    session_class.__init__ = init
    _state["patched"] = True


def mark_initialized(value):
    _state["initialized"] = bool(value)
    return True


def require_initialized(what):
    if not _state["initialized"]:
        raise RuntimeError("{}: collective communication is not initialised; run npu_ops.initialize_system() in a "
                           "session first".format(what))


def saturate(tensor):
    """What crosses the interconnect in saturation mode (Ascend 910): the device never holds inf/NaN, an overflow
    leaves +-float max, so a rank learns of another rank's overflow only through an all-reduced float status."""
    from npu_bridge.estimator.npu import npu_plugin

    if npu_plugin.is_inf_nan_enabled() or not tensor.dtype.is_floating:
        return tensor
    limit = tensor.dtype.max
    clipped = tf.clip_by_value(tensor, tf.cast(-limit, tensor.dtype), tf.cast(limit, tensor.dtype))
    return tf.where(tf.math.is_nan(tensor), tf.zeros_like(tensor), clipped)
