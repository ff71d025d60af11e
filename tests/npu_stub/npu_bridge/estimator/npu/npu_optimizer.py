"""Stand-in for npu_bridge.estimator.npu.npu_optimizer: gradient averaging over ranks, as the adapter does it.

allreduce = hccl_ops.allreduce(t, "sum") / NPUBasics("").size() (so JOB_ID must be set); the optimizer wrappers
average every gradient when RANK_SIZE > 1 and leave them alone otherwise (read per call for the class, at wrapping
time for npu_distributed_optimizer_wrapper).
"""
import tensorflow as tf

from npu_bridge.estimator.npu import util
from npu_bridge.estimator.npu.npu_common import NPUBasics
from npu_bridge.hccl import hccl_ops
from npu_bridge.stub_log import record

v1 = tf.compat.v1


def allreduce(tensor, average=True):
    size = NPUBasics("").size()
    summed = hccl_ops.allreduce(tensor, "sum")
    return tf.math.divide(summed, tf.cast(size, tensor.dtype)) if average else summed


def _average(gradients, scope):
    averaged = []
    with tf.name_scope(scope):
        for grad, var in gradients:
            averaged.append((allreduce(grad, True) if grad is not None else None, var))
    return averaged


class NPUDistributedOptimizer(v1.train.Optimizer):

    def __init__(self, optimizer, is_weight_update_sharding=False, name=None):
        record("NPUDistributedOptimizer", optimizer=optimizer, is_weight_update_sharding=is_weight_update_sharding)
        if is_weight_update_sharding:
            raise NotImplementedError("the stand-in does not emulate weight update sharding")
        name = name or "Distributed{}".format(type(optimizer).__name__)
        self._optimizer = optimizer
        super(NPUDistributedOptimizer, self).__init__(name=name, use_locking=False)

    def compute_gradients(self, *args, **kwargs):
        gradients = self._optimizer.compute_gradients(*args, **kwargs)
        rank_size = util.get_ranksize()
        if rank_size is None or int(rank_size) <= 1:
            return gradients
        return _average(gradients, self._name + "_Allreduce")

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        return self._optimizer.apply_gradients(grads_and_vars, global_step, name)

    def get_slot(self, *args, **kwargs):
        return self._optimizer.get_slot(*args, **kwargs)

    def get_slot_names(self, *args, **kwargs):
        return self._optimizer.get_slot_names(*args, **kwargs)

    def variables(self, *args, **kwargs):
        return self._optimizer.variables(*args, **kwargs)


def npu_distributed_optimizer_wrapper(optimizer):
    record("npu_distributed_optimizer_wrapper", optimizer=optimizer)
    rank_size = util.get_ranksize()
    original = optimizer.compute_gradients

    def compute_gradients(*args, **kwargs):
        gradients = original(*args, **kwargs)
        if rank_size is None or int(rank_size) <= 1:
            return gradients
        return _average(gradients, "Npu_Distributed_optimizer_Allreduce")

    optimizer.compute_gradients = compute_gradients
    return optimizer


def npu_allreduce(values, reduction="mean", fusion=1, fusion_id=-1, group="hccl_world_group"):
    single = not isinstance(values, (list, tuple))
    size = int(util.get_ranksize())
    results = []
    for value in ([values] if single else values):
        summed = hccl_ops.allreduce(value, "sum" if reduction == "mean" else reduction, fusion, fusion_id, group)
        results.append(tf.math.divide(summed, tf.cast(size, value.dtype)) if reduction == "mean" else summed)
    return results[0] if single else results
