"""U-Net structure, dtypes, dropout determinism, batch norm and the analytic FLOP/parameter count."""
import numpy as np
import pytest
import tensorflow as tf

from unet_perf.compat import v1
from unet_perf.config import Config
from unet_perf.model.network import unet, unet_flops, upsample_nearest2x


def _images(batch=2, size=32, seed=0):
    return np.random.RandomState(seed).rand(batch, size, size, 1).astype(np.float32)


def _param_count():
    return sum(int(np.prod(v.shape.as_list())) for v in v1.trainable_variables())


def test_zhixuhao_parameter_count_and_flops():
    cfg = Config()  # depth 4, base 64: zhixuhao's model minus its 2-filter conv9 (we go straight to 1 logit)
    counted = unet_flops(cfg, 256, 256)
    # Keras summary of zhixuhao's model is 31,031,685; without conv9 (3*3*64*2+2) and with a 64->1 1x1 logit conv.
    assert counted["params"] == 31031685 - (3 * 3 * 64 * 2 + 2) - 3 + 65
    assert counted["train_step"] == 3 * counted["forward"]
    # First conv alone: 256*256*9*1*64 MACs; the whole forward is ~ 1e11 FLOPs per image.
    assert 0.9e11 < counted["forward"] < 1.1e11
    unet(tf.zeros([1, 256, 256, 1]), cfg, training=False)
    assert _param_count() == counted["params"]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_logits_float32_static_and_variables_float32(precision, tiny_config):
    cfg = tiny_config(precision=precision)
    logits = unet(tf.constant(_images()), cfg, training=True, step=tf.constant(3, tf.int64))
    assert logits.dtype == tf.float32
    assert logits.shape.as_list() == [2, 32, 32, 1]
    variables = v1.trainable_variables()
    assert variables and all(v.dtype.base_dtype == tf.float32 for v in variables)
    assert all(v.name.startswith("unet/") for v in variables)
    grads = v1.gradients(tf.reduce_mean(logits), variables)
    assert all(g is not None for g in grads)
    with v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        value = sess.run(logits)
    assert np.all(np.isfinite(value))


def test_variables_are_reused_across_calls(tiny_config):
    cfg = tiny_config()
    unet(tf.constant(_images()), cfg, training=True)
    count = len(v1.global_variables())
    unet(tf.constant(_images()), cfg, training=False)
    assert len(v1.global_variables()) == count


def test_same_weights_in_every_graph_for_a_seed(tiny_config):
    values = []
    for seed in (7, 7, 8):
        with v1.Graph().as_default():
            unet(tf.constant(_images()), tiny_config(seed=seed), training=False)
            with v1.Session() as sess:
                sess.run(v1.global_variables_initializer())
                values.append(sess.run(v1.trainable_variables()[0]))
    assert np.array_equal(values[0], values[1])
    assert not np.array_equal(values[0], values[2])


def test_dropout_is_a_function_of_seed_and_step(tiny_config):
    cfg = tiny_config(dropout=0.5)
    images = tf.constant(_images())
    step = v1.placeholder(tf.int64, [])
    train_logits = unet(images, cfg, training=True, step=step)
    eval_logits = unet(images, cfg, training=False)
    no_dropout = unet(images, tiny_config(dropout=0.0), training=True, step=step)
    with v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        a1, a2, b = [sess.run(train_logits, {step: s}) for s in (5, 5, 6)]
        plain, undropped = sess.run([eval_logits, no_dropout], {step: 5})
    assert np.array_equal(a1, a2)
    assert not np.allclose(a1, b)
    assert not np.allclose(a1, plain)
    assert np.allclose(plain, undropped, atol=1e-6)


def test_batch_norm_updates_moving_statistics_and_uses_them_at_inference(tiny_config):
    cfg = tiny_config(batch_norm=True, dropout=0.0)
    images = tf.constant(_images() * 4.0 + 1.0)
    train_logits = unet(images, cfg, training=True)
    updates = v1.get_collection(v1.GraphKeys.UPDATE_OPS)
    assert len(updates) == 2 * 12  # moving mean + variance of every batch-normalised conv (all but the logits)
    eval_logits = unet(images, cfg, training=False)
    mean = [v for v in v1.global_variables() if v.name == "unet/down0/conv1/moving_mean:0"][0]
    with v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        before = sess.run(eval_logits)
        sess.run([train_logits] + updates)
        after = sess.run(eval_logits)
        moved = sess.run(mean)
    assert np.any(moved != 0)
    assert not np.allclose(before, after)


def test_upsample_nearest2x_matches_numpy_repeat():
    x = np.arange(2 * 3 * 4 * 2, dtype=np.float32).reshape(2, 3, 4, 2)
    with v1.Session() as sess:
        y = sess.run(upsample_nearest2x(tf.constant(x)))
    assert np.array_equal(y, x.repeat(2, axis=1).repeat(2, axis=2))
