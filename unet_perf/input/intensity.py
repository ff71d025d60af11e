"""Intensity and noise of the fused augmentation: per-sample parameters from the draws (input.draws), shared by
every engine. Intensity (gamma, contrast, brightness) is a per-sample 256-entry table applied to the sampled bytes;
noise is one Gaussian field per batch, shifted per sample.
"""
import tensorflow as tf

from unet_perf.input import sampling
from unet_perf.input.draws import BRIGHTNESS, CONTRAST, GAMMA, NOISE, NOISE_X, NOISE_Y, uniform_in


def intensity_on(cfg):
    """True when cfg changes intensities (gamma, contrast or brightness): the per-sample table is needed."""
    return cfg.augment and (cfg.gamma > 0 or cfg.contrast > 0 or cfg.brightness > 0)


def intensity_table(uniforms, cfg):
    """Per-sample table [B*256] of uint8 value -> image value in [0, 1]: /255, gamma, contrast about mid-grey,
    brightness, clip. Applied to the gathered corner bytes, so intensity costs one small lookup per corner."""
    batch = uniforms.shape[0]
    values = tf.tile(sampling.unit_table()[None, :], [batch, 1])  # [B, 256]
    if cfg.augment:
        per_sample = lambda column, low, high: uniform_in(uniforms, column, low, high)[:, None]
        if cfg.gamma > 0:
            values = tf.pow(values, per_sample(GAMMA, 1.0 - cfg.gamma, 1.0 + cfg.gamma))
        if cfg.contrast > 0:
            values = (values - 0.5) * per_sample(CONTRAST, 1.0 - cfg.contrast, 1.0 + cfg.contrast) + 0.5
        if cfg.brightness > 0:
            values += per_sample(BRIGHTNESS, -cfg.brightness, cfg.brightness)
        values = tf.clip_by_value(values, 0.0, 1.0)
    return tf.reshape(values, [-1])


def noise_parameters(uniforms, cfg, out_size):
    """Per-sample noise amplitude and cyclic shift of the batch's [h, w] noise field: (sigma, shift_x, shift_y),
    float32 [B] each; the shifts are whole numbers in [0, w) and [0, h)."""
    sigma = uniform_in(uniforms, NOISE, 0.0, cfg.noise)
    shift_x = tf.floor(uniforms[:, NOISE_X] * out_size[1])
    shift_y = tf.floor(uniforms[:, NOISE_Y] * out_size[0])
    return sigma, shift_x, shift_y
