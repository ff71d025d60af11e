"""Stand-in for npu_bridge.estimator.npu.npu_loss_scale_optimizer.NPULossScaleOptimizer.

Scales the loss, unscales the gradients, and applies them only when all are finite. Like the real one it names
the all-finite flag `overflow_status_reduce_all` (True = no overflow) unless the device is in INF/NaN mode.
"""
import tensorflow as tf

from npu_bridge.estimator.npu import npu_plugin
from npu_bridge.estimator.npu.npu_loss_scale_manager import FixedLossScaleManager
from npu_bridge.stub_log import record

v1 = tf.compat.v1


class NPULossScaleOptimizer(v1.train.Optimizer):

    def __init__(self, opt, loss_scale_manager, is_distributed=False):
        record("NPULossScaleOptimizer", opt=opt, loss_scale_manager=loss_scale_manager,
               is_distributed=is_distributed)
        super(NPULossScaleOptimizer, self).__init__(use_locking=False, name="NPULossScaleOptimizer")
        self._opt = opt
        self._loss_scale_manager = loss_scale_manager

    def compute_gradients(self, loss, var_list=None, gate_gradients=v1.train.Optimizer.GATE_OP,
                          aggregation_method=None, colocate_gradients_with_ops=False, grad_loss=None):
        scale = tf.cast(self._loss_scale_manager.get_loss_scale(), loss.dtype)
        grads_and_vars = self._opt.compute_gradients(
            loss * scale, var_list=var_list, gate_gradients=gate_gradients,
            aggregation_method=aggregation_method, colocate_gradients_with_ops=colocate_gradients_with_ops,
            grad_loss=grad_loss)
        inverse = 1.0 / scale
        return [(None if grad is None else grad * tf.cast(inverse, grad.dtype), var)
                for grad, var in grads_and_vars]

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        grads_and_vars = list(grads_and_vars)
        finite = [tf.reduce_all(tf.math.is_finite(grad)) for grad, _ in grads_and_vars if grad is not None]
        if npu_plugin.is_inf_nan_enabled():
            is_overall_finite = tf.reduce_all(tf.stack(finite))
        elif self._overflow_check_enabled():
            is_overall_finite = tf.reduce_all(tf.stack(finite), name="overflow_status_reduce_all")
        else:
            is_overall_finite = tf.constant(True)

        def apply_fn():
            return self._opt.apply_gradients(grads_and_vars, global_step, name)

        update_variables = v1.cond(is_overall_finite, apply_fn, tf.no_op)
        return tf.group(update_variables, self._loss_scale_manager.update_loss_scale(is_overall_finite))

    def _overflow_check_enabled(self):
        if isinstance(self._loss_scale_manager, FixedLossScaleManager):
            return self._loss_scale_manager.get_enable_overflow_check()
        return True

    def __getattr__(self, attr):
        if attr == "_opt":  # looked up before __init__ set it: no recursion
            raise AttributeError(attr)
        return getattr(self._opt, attr)
