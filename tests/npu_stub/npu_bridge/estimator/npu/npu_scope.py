"""Stand-in for npu_bridge.estimator.npu.npu_scope: keep_dtype_scope, as the TF 1.15 adapter writes it
(tf_adapter/python/npu_bridge/estimator/npu/npu_scope.py): every op built inside gets the attribute
`_keep_dtype` = True, which the adapter's graph pass reads to keep the op's dtype under allow_mix_precision."""
import contextlib

import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2

from npu_bridge.stub_log import record


@contextlib.contextmanager
def keep_dtype_scope():
    record("keep_dtype_scope")
    with tf.compat.v1.get_default_graph()._attr_scope({"_keep_dtype": attr_value_pb2.AttrValue(b=True)}):
        yield
