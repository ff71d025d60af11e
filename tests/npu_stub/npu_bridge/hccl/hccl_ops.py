"""Stand-in for npu_bridge.hccl.hccl_ops: allreduce and broadcast between rank processes (see loopback.py).

Signatures as listed; `fusion`/`fusion_id` only steer the device's operator fusion and are recorded, not emulated.
"""
import tensorflow as tf

from npu_bridge.hccl import loopback
from npu_bridge.stub_log import record

_MERGE_OPS = {"sum": "Add", "max": "Max", "min": "Min", "prod": "Mul"}
# HcomAllReduce's type list in adapters before 2026 (Ascend/tensorflow tf_adapter/ops/hccl_ops.cc): no 64-bit types.
ALLREDUCE_DTYPES = (tf.int8, tf.int16, tf.int32, tf.float16, tf.float32)

loopback.install_session_redirect()


def _world_size():
    if not loopback.enabled():
        raise RuntimeError("HCCL stand-in: no interconnect (set NPU_STUB_HCCL_ADDRESSES for a multi-rank test)")
    return loopback.size()


def allreduce(tensor, reduction, fusion=1, fusion_id=-1, group="hccl_world_group"):
    """The `reduction` ("sum", "max", "min", "prod") of `tensor` over all ranks."""
    record("hccl_ops.allreduce", tensor=tensor, reduction=reduction, fusion=fusion, fusion_id=fusion_id, group=group)
    if reduction not in _MERGE_OPS:
        raise ValueError("reduction must be one of {}, got {!r}".format(sorted(_MERGE_OPS), reduction))
    value = tf.convert_to_tensor(tensor)
    if value.dtype not in ALLREDUCE_DTYPES:  # the op registration's check, at graph construction like TensorFlow's
        raise TypeError("Value passed to parameter 'input' has DataType {} not in list of allowed values: {}".format(
            value.dtype.name, ", ".join(dtype.name for dtype in ALLREDUCE_DTYPES)))
    value = loopback.saturate(value)
    return tf.raw_ops.CollectiveReduce(
        input=value, group_size=_world_size(), group_key=loopback.GROUP_ALLREDUCE,
        instance_key=loopback.next_instance_key(), merge_op=_MERGE_OPS[reduction], final_op="Id",
        subdiv_offsets=[0], communication_hint="ring")


def broadcast(tensor, root_rank, fusion=2, fusion_id=0, group="hccl_world_group"):
    """`tensor` is a list; returns the list of root_rank's values of its entries."""
    record("hccl_ops.broadcast", tensor=tensor, root_rank=root_rank, fusion=fusion, fusion_id=fusion_id, group=group)
    outputs = []
    for item in tensor:
        value = tf.convert_to_tensor(item)
        common = dict(group_size=_world_size(), group_key=loopback.GROUP_BROADCAST,
                      instance_key=loopback.next_instance_key(), shape=value.shape.as_list(),
                      communication_hint="ring")
        if loopback.rank() == root_rank:
            outputs.append(tf.raw_ops.CollectiveBcastSend(input=value, **common))
        else:
            outputs.append(tf.raw_ops.CollectiveBcastRecv(T=value.dtype, **common))
    return outputs
