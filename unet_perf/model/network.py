"""The zhixuhao / ModelZoo 2D U-Net from raw ops (tf.nn + get_variable), NHWC, no Keras.

Variables are float32 resource variables under the "unet" scope (AUTO_REUSE, so a training graph, an in-loop
body and an inference graph share them); compute runs in cfg.precision by casting weights and inputs inside the
graph. Each convolution is written as Conv2D -> BiasAdd -> Relu, the pattern grappler's remapper fuses into one
oneDNN kernel on the CPU.

Batch norm (cfg.batch_norm) uses FusedBatchNorm; its moving-average updates go to the UPDATE_OPS collection of the
graph being built. Backends collect the UPDATE_OPS that appear while the step is built and group them with the
train op of that same step (`with_new_update_ops`), so they run inside the host while_loop body (an op created in a
loop body cannot be run from outside it).
"""
import zlib

import tensorflow as tf

from unet_perf.compat import v1
from unet_perf.model.precision import compute_dtype

_BN_MOMENTUM = 0.99
_BN_EPSILON = 1e-3


def unet(images, cfg, training, step=None, worker_index=0, num_workers=1):
    """Logits float32 [B, h, w, C] (C = cfg.num_classes) for images [B, h, w, 1] (any float dtype); h, w divisible
    by 2^cfg.depth.

    `step` (int64 scalar tensor, normally the global step) seeds the stateless dropout together with cfg.seed, so
    the same step always draws the same mask (a K-step loop equals K single steps). When it is None the graph's
    global step is used, or 0 when there is none.
    With several workers, images are rows [worker_index*B, (worker_index+1)*B) of the global batch: dropout draws
    the mask of the whole global batch and keeps these rows, so N workers see the masks one worker would.
    """
    dtype = compute_dtype(cfg.precision)
    builder = _Builder(cfg, dtype, training, _dropout_step(step) if training and cfg.dropout > 0 else None,
                       (int(worker_index), int(num_workers)))
    with v1.variable_scope("unet", reuse=v1.AUTO_REUSE):
        x = tf.cast(images, dtype)
        skips = []
        for level in range(cfg.depth):
            filters = cfg.base_filters * 2 ** level
            x = builder.conv_block(x, filters, "down{}".format(level))
            if level == cfg.depth - 1:
                x = builder.dropout(x, "down{}".format(level))  # zhixuhao drop4: feeds both the skip and the pool
            skips.append(x)
            x = tf.nn.max_pool2d(x, [1, 2, 2, 1], [1, 2, 2, 1], "VALID")
        x = builder.conv_block(x, cfg.base_filters * 2 ** cfg.depth, "bottom")
        x = builder.dropout(x, "bottom")
        for level in reversed(range(cfg.depth)):
            filters = cfg.base_filters * 2 ** level
            x = builder.conv(upsample_nearest2x(x), filters, 2, "up{}/upconv".format(level))
            x = tf.concat([skips[level], x], axis=3)
            x = builder.conv_block(x, filters, "up{}".format(level))
        logits = builder.conv(x, cfg.num_classes, 1, "logits", relu=False, batch_norm=False)
    return tf.cast(logits, tf.float32)


def with_new_update_ops(build):
    """(build(), the UPDATE_OPS that build() added to the default graph): a step's batch-norm updates."""
    before = set(v1.get_collection(v1.GraphKeys.UPDATE_OPS))
    result = build()
    return result, [op for op in v1.get_collection(v1.GraphKeys.UPDATE_OPS) if op not in before]


def upsample_nearest2x(x):
    """Nearest-neighbour 2x upsampling by stacking copies: static shapes, any dtype, a cheap gradient."""
    batch, height, width, channels = x.shape.as_list()
    x = tf.reshape(tf.stack([x, x], axis=3), [batch, height, width * 2, channels])
    return tf.reshape(tf.stack([x, x], axis=2), [batch, height * 2, width * 2, channels])


def unet_flops(cfg, height, width):
    """Analytic FLOPs of one image: convolutions only (2 x MACs); a training step counts 3 x forward.

    Returns {"forward": ..., "train_step": ..., "params": ...} (per image; multiply by the batch size).
    """
    macs = 0
    params = 0
    for h, w, kernel, cin, cout in _conv_shapes(cfg, height, width):
        macs += h * w * kernel * kernel * cin * cout
        params += kernel * kernel * cin * cout + cout
    return {"forward": 2 * macs, "train_step": 6 * macs, "params": params}


def _conv_shapes(cfg, height, width):
    """(h, w, kernel, in_channels, out_channels) of every convolution of unet(), in build order."""
    shapes = []
    cin, h, w = 1, height, width
    for level in range(cfg.depth):
        filters = cfg.base_filters * 2 ** level
        shapes += [(h, w, 3, cin, filters), (h, w, 3, filters, filters)]
        cin, h, w = filters, h // 2, w // 2
    filters = cfg.base_filters * 2 ** cfg.depth
    shapes += [(h, w, 3, cin, filters), (h, w, 3, filters, filters)]
    cin = filters
    for level in reversed(range(cfg.depth)):
        filters = cfg.base_filters * 2 ** level
        h, w = h * 2, w * 2
        shapes += [(h, w, 2, cin, filters), (h, w, 3, 2 * filters, filters), (h, w, 3, filters, filters)]
        cin = filters
    shapes.append((h, w, 1, cin, cfg.num_classes))
    return shapes


def _dropout_step(step):
    if step is None:
        step = v1.train.get_global_step()
    if step is None:
        return tf.constant(0, tf.int64)
    return tf.cast(step, tf.int64)


class _Builder(object):
    """Layer helpers sharing the dtype, the training flag and the dropout seed of one U-Net call."""

    def __init__(self, cfg, dtype, training, step, share=(0, 1)):
        self.cfg = cfg
        self.share = share
        self.dtype = dtype
        self.training = training
        self.step = step
        self._dropout_index = 0

    def _initializer(self, name):
        # A per-variable op seed derived from cfg.seed and the variable name: the same weights in every graph.
        seed = (self.cfg.seed * 1000003 + zlib.crc32(name.encode("utf-8"))) % (2 ** 31 - 1)
        return v1.variance_scaling_initializer(2.0, "fan_in", "truncated_normal", seed=seed)

    def _weight(self, name, shape, initializer):
        full_name = v1.get_variable_scope().name + "/" + name
        if initializer is None:
            initializer = self._initializer(full_name)
        var = v1.get_variable(name, shape, tf.float32, initializer, use_resource=True)
        return tf.cast(var, self.dtype) if self.dtype != tf.float32 else var

    def conv(self, x, filters, kernel, name, relu=True, batch_norm=None):
        if batch_norm is None:
            batch_norm = self.cfg.batch_norm
        channels = x.shape.as_list()[3]
        with v1.variable_scope(name):
            kernel_var = self._weight("kernel", [kernel, kernel, channels, filters], None)
            x = tf.nn.conv2d(x, kernel_var, [1, 1, 1, 1], "SAME")
            if batch_norm:
                x = self._batch_norm(x)
            else:
                x = tf.nn.bias_add(x, self._weight("bias", [filters], v1.zeros_initializer()))
        return tf.nn.relu(x) if relu else x

    def conv_block(self, x, filters, name):
        x = self.conv(x, filters, 3, name + "/conv1")
        return self.conv(x, filters, 3, name + "/conv2")

    def _batch_norm(self, x):
        filters = x.shape.as_list()[3]
        gamma = v1.get_variable("gamma", [filters], tf.float32, v1.ones_initializer(), use_resource=True)
        beta = v1.get_variable("beta", [filters], tf.float32, v1.zeros_initializer(), use_resource=True)
        moving_mean = v1.get_variable("moving_mean", [filters], tf.float32, v1.zeros_initializer(),
                                      trainable=False, use_resource=True)
        moving_var = v1.get_variable("moving_variance", [filters], tf.float32, v1.ones_initializer(),
                                     trainable=False, use_resource=True)
        if not self.training:
            y, _, _ = v1.nn.fused_batch_norm(x, gamma, beta, moving_mean, moving_var, epsilon=_BN_EPSILON,
                                             is_training=False)
            return y
        y, mean, variance = v1.nn.fused_batch_norm(x, gamma, beta, epsilon=_BN_EPSILON, is_training=True)
        decay = 1.0 - _BN_MOMENTUM
        v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, moving_mean.assign_sub(decay * (moving_mean - mean)))
        v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, moving_var.assign_sub(decay * (moving_var - variance)))
        return y

    def dropout(self, x, name):
        rate = self.cfg.dropout
        if not self.training or rate <= 0:
            return x
        # Stateless: the mask is a function of (seed, step, layer), never of how many times the op ran.
        index = self._dropout_index
        self._dropout_index += 1
        seed = tf.stack([tf.constant(self.cfg.seed, tf.int64), self.step * 8 + index])
        shape = x.shape.as_list()
        index, count = self.share
        if count > 1:
            rows = shape[0]
            shape[0] = rows * count
        noise = tf.random.stateless_uniform(shape, seed, name=name + "_dropout_noise")
        if count > 1:
            noise = noise[index * rows:(index + 1) * rows]
        keep = tf.cast(noise >= rate, self.dtype) * tf.cast(1.0 / (1.0 - rate), self.dtype)
        return x * keep
