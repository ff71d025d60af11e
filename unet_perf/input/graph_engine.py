"""The "xla" and "graph" augmentation engines: the coordinate map (input.geometry) and one sampling pass
(input.sampling) in TensorFlow ops, compiled with XLA or not.

Why it is fast under XLA: everything per pixel is elementwise plus a few gathers of uint8 bytes, so it fuses into
one loop over the output. Two stages (positions, then sampling) each run as one XLA function, so the coordinates
are materialised once instead of being recomputed in every gather that consumes them.
"""
import tensorflow as tf

from unet_perf import compat
from unet_perf.input import sampling
from unet_perf.input.geometry import coordinate_map
from unet_perf.input.intensity import intensity_on, intensity_table, noise_parameters


def graph_stage(cfg, in_size, out_size, xla):
    """inputs (images, masks, weights, draws) -> {"image", "mask", "weights"} [B, h, w, 1] (weights None when the
    inputs have none), with XLA (the "xla" engine) or without (the "graph" engine)."""
    def stage(inputs):
        positions = _run_stage(_positions_stage(cfg, in_size, out_size), inputs["draws"], xla)
        positions.update(inputs)
        return _run_stage(_sampling_stage(cfg), positions, xla)
    return stage


def _positions_stage(cfg, in_size, out_size):
    def stage(draws):
        x, y = coordinate_map(cfg, in_size, out_size, draws)
        index, fx, fy, fade = sampling.sampling_positions(x, y, in_size, cfg.border)
        # the intensity table is built here so that it is materialised once, not recomputed per lookup
        table = intensity_table(draws["uniforms"], cfg) if intensity_on(cfg) else None
        return {"index": index, "fx": fx, "fy": fy, "fade": fade, "table": table}
    return stage


def _sampling_stage(cfg):
    def stage(inputs):
        draws = inputs["draws"]
        image, mask, weights = sampling.sample(inputs["images"], inputs["masks"], inputs["weights"], inputs["index"],
                                      inputs["fx"], inputs["fy"], inputs["fade"], cfg.mask_interp, inputs["table"],
                                      ignore_outside=cfg.num_classes > 1)
        if draws["noise"] is not None:
            sigma, shift_x, shift_y = noise_parameters(draws["uniforms"], cfg, draws["noise"].shape.as_list())
            noise = _shifted_noise(draws["noise"], shift_x, shift_y)
            image = tf.clip_by_value(image + sigma[:, None, None] * noise, 0.0, 1.0)
        return {"image": image[..., None], "mask": mask[..., None],
                "weights": weights[..., None] if weights is not None else None}
    return stage


def _shifted_noise(noise, shift_x, shift_y):
    """The batch's [h, w] Gaussian field, cyclically shifted by (shift_x, shift_y) [B] per sample: [B, h, w]."""
    height, width = noise.shape.as_list()
    shift_x = tf.cast(shift_x, tf.int32)
    shift_y = tf.cast(shift_y, tf.int32)
    cols = tf.math.floormod(tf.range(width)[None, :] + shift_x[:, None], width)  # [B, w]
    rows = tf.math.floormod(tf.range(height)[None, :] + shift_y[:, None], height)  # [B, h]
    return tf.gather(tf.reshape(noise, [-1]), rows[:, :, None] * width + cols[:, None, :])


def _run_stage(stage, inputs, xla):
    """stage(dict) -> dict, optionally as one XLA function. Dict values may be None or nested dicts.

    Under XLA every stage boundary materialises its outputs: XLA would otherwise fuse the coordinate
    computation into each of the 5+ gathers that consume it and recompute it per gather.
    """
    if not xla:
        return stage(inputs)
    flat_in, rebuild_in = _flatten(inputs)
    structure = []

    def compiled(*tensors):
        outputs = stage(rebuild_in(list(tensors)))
        flat_out, rebuild_out = _flatten(outputs)
        structure.append(rebuild_out)
        return flat_out

    flat_out = compat.xla_function(compiled)(*flat_in)
    return structure[-1](list(flat_out))


def _flatten(tree):
    """Non-None tensors of a (nested) dict in key order, and a function rebuilding the dict from such a list."""
    keys = sorted(tree)
    flat, rebuilders = [], []
    for key in keys:
        value = tree[key]
        if isinstance(value, dict):
            sub_flat, sub_rebuild = _flatten(value)
            rebuilders.append((key, len(sub_flat), sub_rebuild))
            flat += sub_flat
        elif value is None:
            rebuilders.append((key, 0, lambda tensors: None))
        else:
            rebuilders.append((key, 1, lambda tensors: tensors[0]))
            flat.append(value)

    def rebuild(tensors):
        tree_out, position = {}, 0
        for key, count, build in rebuilders:
            tree_out[key] = build(tensors[position:position + count])
            position += count
        return tree_out
    return flat, rebuild
