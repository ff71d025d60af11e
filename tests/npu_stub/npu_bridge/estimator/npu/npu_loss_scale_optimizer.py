"""Stand-in for npu_bridge.estimator.npu.npu_loss_scale_optimizer.NPULossScaleOptimizer.

Scales the loss, unscales the gradients, and applies them only when the step did not overflow. Overflow detection
is at least as strict as the real optimizer's:
- saturation mode (Ascend 910): the real one reads the device's float status after the gradients, which records
  every overflow of every op of the step, also one whose result saturated to a finite value. The stand-in checks
  that every floating-point tensor the gradients were computed from (forward, backward, unscaling) is finite, after
  all gradients, and every one the scaled loss was computed from (the device also counts ops no gradient flows
  through); on a CPU an overflow gives inf, so an overflow anywhere in the step is caught as on the device.
  The result is named `overflow_status_reduce_all` (True = no overflow) like the real tensor, unless
  NAMES_OVERFLOW_STATUS is False (adapters before early 2021 did not name it).
- INF/NaN mode: like the real fallback (tf.contrib's LossScaleOptimizer), is_finite over every gradient, failing
  on a None gradient.
- is_distributed=True (saturation mode): like the real one, the local status is summed over the ranks with
  hccl_ops.allreduce before the decision, so every rank skips a step any rank overflowed in. The stand-in's
  interconnect saturates what it carries (hccl/loopback.py), so without this a rank does not see another rank's
  overflow; REDUCES_STATUS = False makes the stand-in ignore is_distributed (tests use it as a negative control).
"""
import tensorflow as tf

from npu_bridge.estimator.npu import npu_plugin
from npu_bridge.stub_log import record

v1 = tf.compat.v1

# False = an adapter from before early 2021 that leaves the float-status result unnamed. Tests flip it.
NAMES_OVERFLOW_STATUS = True

# False = ignore is_distributed (a negative control for tests; no real adapter does this).
REDUCES_STATUS = True

# Ops whose outputs live in another control-flow frame (or may be dead): the status walk stops there.
_CONTROL_FLOW_OPS = {"Enter", "Exit", "Merge", "Switch", "NextIteration", "LoopCond", "RefEnter", "RefExit",
                     "RefMerge", "RefSwitch", "RefNextIteration"}


class NPULossScaleOptimizer(v1.train.Optimizer):

    def __init__(self, opt, loss_scale_manager, is_distributed=False):
        record("NPULossScaleOptimizer", opt=opt, loss_scale_manager=loss_scale_manager,
               is_distributed=is_distributed)
        super(NPULossScaleOptimizer, self).__init__(use_locking=False, name="NPULossScaleOptimizer")
        self._opt = opt
        self._loss_scale_manager = loss_scale_manager
        self._is_distributed = is_distributed
        self._scaled_loss = None  # of the last compute_gradients: its inputs are part of the step, too

    def compute_gradients(self, loss, var_list=None, gate_gradients=v1.train.Optimizer.GATE_OP,
                          aggregation_method=None, colocate_gradients_with_ops=False, grad_loss=None):
        scale = tf.cast(self._loss_scale_manager.get_loss_scale(), loss.dtype)
        self._scaled_loss = loss * scale
        grads_and_vars = self._opt.compute_gradients(
            self._scaled_loss, var_list=var_list, gate_gradients=gate_gradients,
            aggregation_method=aggregation_method, colocate_gradients_with_ops=colocate_gradients_with_ops,
            grad_loss=grad_loss)
        inverse = 1.0 / scale
        return [(None if grad is None else grad * tf.cast(inverse, grad.dtype), var)
                for grad, var in grads_and_vars]

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        grads_and_vars = list(grads_and_vars)
        if npu_plugin.is_inf_nan_enabled():
            is_overall_finite = _all_gradients_finite(grads_and_vars)
        elif self._overflow_check_enabled():
            is_overall_finite = _float_status_ok(
                [grad for grad, _ in grads_and_vars if grad is not None], self._scaled_loss,
                "overflow_status_reduce_all" if NAMES_OVERFLOW_STATUS else None,
                self._is_distributed and REDUCES_STATUS)
        else:
            is_overall_finite = tf.constant(True)

        def apply_fn():
            return self._opt.apply_gradients(grads_and_vars, global_step, name)

        update_variables = v1.cond(is_overall_finite, apply_fn, tf.no_op)
        return tf.group(update_variables, self._loss_scale_manager.update_loss_scale(is_overall_finite))

    def _overflow_check_enabled(self):
        check = getattr(self._loss_scale_manager, "get_enable_overflow_check", None)
        return True if check is None else check()  # older adapters always check

    def __getattr__(self, attr):
        if attr == "_opt":  # looked up before __init__ set it: no recursion
            raise AttributeError(attr)
        return getattr(self._opt, attr)


def _all_gradients_finite(grads_and_vars):
    finite = []
    for grad, var in grads_and_vars:
        if grad is None:
            raise ValueError("None gradient for {}: the INF/NaN-mode overflow check (tf.contrib's "
                             "LossScaleOptimizer) cannot test it".format(var.name))
        finite.append(tf.reduce_all(tf.math.is_finite(grad)))
    return tf.reduce_all(tf.stack(finite))


def _step_float_tensors(roots):
    """The float tensors `roots` and every floating-point tensor they depend on, within their control-flow frame."""
    seen, tensors, pending = set(), list(roots), [root.op for root in roots]
    while pending:
        op = pending.pop()
        if op.name in seen or op.type in _CONTROL_FLOW_OPS:
            continue
        seen.add(op.name)
        for tensor in op.inputs:
            if tensor.op.type in _CONTROL_FLOW_OPS:
                continue
            if tensor.dtype.is_floating:
                tensors.append(tensor)
            pending.append(tensor.op)
    unique = {}
    for tensor in tensors:
        unique[tensor.name] = tensor
    return [unique[key] for key in sorted(unique)]


def _float_status_ok(grads, scaled_loss, name, distributed=False):
    """True when no tensor of the step overflowed (on any rank when `distributed`); evaluated after every gradient,
    like the float status."""
    roots = grads + ([scaled_loss] if scaled_loss is not None else [])
    with tf.control_dependencies(grads):
        finite = [tf.reduce_all(tf.math.is_finite(tensor)) for tensor in _step_float_tensors(roots)]
    if not distributed:
        return tf.reduce_all(tf.stack(finite), name=name)
    from npu_bridge.hccl import hccl_ops
    local_status = tf.reduce_sum(tf.cast(tf.logical_not(tf.stack(finite)), tf.float32))  # overflowing tensors
    aggregated = hccl_ops.allreduce([local_status], "sum", fusion=0)
    return tf.reduce_all(tf.equal(aggregated, 0.0), name=name)
