"""The fused augmentation's coordinate map: one map per sample sends every OUTPUT pixel (i, j) of an [h, w] tile to
a source position (x, y):

    (x, y) = crop centre + shift + (1 / input_scale) * Dihedral * Rotation * Shear / zoom * (j - cw, i - ch)
             + elastic displacement(i, j)

The dihedral matrix has entries 0/±1 (flips and 90° turns stay exact); the elastic displacement is the
U-Net paper's recipe (Gaussian offsets on a coarse grid, bicubic interpolation), in source pixels. Only
output pixels are computed and sampled, so cropping and rescaling cost nothing extra. The per-sample parts
(linear_part, tile_centre, cubic_weights) are shared by every engine; coordinate_map is the graph engines' map.
"""
import math

import numpy as np
import tensorflow as tf

from unet_perf.input.draws import (ANGLE, CROP_X, CROP_Y, DIHEDRAL, SHEAR, SHIFT_X, SHIFT_Y, ZOOM, elastic_on,
                                   uniform_in)


def _compose(first, second):
    """2x2 matrix product of (a, b, c, d) tuples whose entries are scalars or [B] tensors."""
    a1, b1, c1, d1 = first
    a2, b2, c2, d2 = second
    return (a1 * a2 + b1 * c2, a1 * b2 + b1 * d2, c1 * a2 + d1 * c2, c1 * b2 + d1 * d2)


def _dihedral_matrix(uniform):
    """One of the 8 flips/90° turns per sample, with exact 0/±1 entries."""
    index = tf.floor(uniform * 8.0)
    flip_x = 1.0 - 2.0 * tf.math.floormod(index, 2.0)
    flip_y = 1.0 - 2.0 * tf.math.floormod(tf.floor(index / 2.0), 2.0)
    transpose = tf.floor(index / 4.0)
    keep = 1.0 - transpose
    return (flip_x * keep, flip_y * transpose, flip_x * transpose, flip_y * keep)


def linear_part(uniforms, cfg):
    """Per-sample 2x2 matrix (a, b, c, d) of [B] tensors mapping centred output offsets (dx, dy) to source
    offsets (a*dx + b*dy, c*dx + d*dy)."""
    batch = uniforms.shape[0]
    spacing = tf.fill([batch], 1.0 / float(cfg.input_scale))
    zero = tf.zeros([batch])
    matrix = (spacing, zero, zero, spacing)
    if not cfg.augment:
        return matrix
    if cfg.flip:
        matrix = _compose(matrix, _dihedral_matrix(uniforms[:, DIHEDRAL]))
    if cfg.rotate_deg > 0:
        angle = uniform_in(uniforms, ANGLE, -cfg.rotate_deg, cfg.rotate_deg) * (math.pi / 180.0)
        cos, sin = tf.cos(angle), tf.sin(angle)
        matrix = _compose(matrix, (cos, -sin, sin, cos))
    if cfg.shear > 0:
        shear = uniform_in(uniforms, SHEAR, -cfg.shear, cfg.shear)
        matrix = _compose(matrix, (1.0, shear, 0.0, 1.0))
    if cfg.scale_range > 0:
        inverse_zoom = 1.0 / uniform_in(uniforms, ZOOM, 1.0 - cfg.scale_range, 1.0 + cfg.scale_range)
        matrix = tuple(entry * inverse_zoom for entry in matrix)
    return matrix


def _crop_centre(uniform, source_len, span):
    """Source coordinate of the tile centre: an integer offset inside the image, or centred if it does not fit."""
    room = source_len - span
    if room < 0:
        offset = tf.fill(tf.shape(uniform), room / 2.0)
    else:
        offset = tf.floor(uniform * float(math.floor(room) + 1))
    return offset + (span - 1.0) / 2.0


def tile_centre(uniforms, cfg, in_size, out_size, crop_centres=None):
    """Per-sample source position (x, y), each [B], of the output tile centre: random crop plus random shift.

    crop_centres: float32 [B, 2] (x, y) crop centres chosen by the caller (the shard reader, which cuts a tile
    around the crop it chose), or None to draw the crop here."""
    span_y, span_x = [out_size[axis] / float(cfg.input_scale) for axis in (0, 1)]
    if crop_centres is None:
        centre_x = _crop_centre(uniforms[:, CROP_X], in_size[1], span_x)
        centre_y = _crop_centre(uniforms[:, CROP_Y], in_size[0], span_y)
    else:
        centre_x, centre_y = crop_centres[:, 0], crop_centres[:, 1]
    if cfg.augment and cfg.translate > 0:
        centre_x += uniform_in(uniforms, SHIFT_X, -cfg.translate, cfg.translate) * span_x
        centre_y += uniform_in(uniforms, SHIFT_Y, -cfg.translate, cfg.translate) * span_y
    return centre_x, centre_y


def source_extent(cfg):
    """Side in source pixels of a square that holds every position the map samples for one crop_size tile,
    wherever the tile centre lies: the rotated, sheared and zoomed tile, the random shift, three elastic
    sigmas each way, and one pixel of bilinear reach (a bound, not tight; used to cut tiles from large slices)."""
    span = cfg.crop_size / float(cfg.input_scale)
    if not cfg.augment:
        return int(math.ceil(span)) + 2
    if cfg.scale_range >= 1:
        return 2 ** 31 - 1  # zoom may approach 0: no bound, the whole slice is the tile
    stretch = 1.0 / (1.0 - cfg.scale_range)
    if cfg.rotate_deg > 0:
        angle = math.radians(min(cfg.rotate_deg, 45.0))
        stretch *= math.cos(angle) + math.sin(angle)
    stretch *= 1.0 + cfg.shear
    extent = span * stretch + 2.0 * cfg.translate * span
    if elastic_on(cfg):
        extent += 6.0 * cfg.elastic_sigma
    return int(math.ceil(extent)) + 2


def cubic_weights(out_len, grid):
    """[out_len, grid] matrix interpolating `grid` control points bicubically (Keys kernel, a=-0.5, edge
    control points repeated) onto out_len positions; first and last outputs sit on the first and last points."""
    weights = np.zeros((out_len, grid), np.float64)
    for row in range(out_len):
        t = row * (grid - 1) / float(max(out_len - 1, 1))
        base = int(math.floor(t))
        for tap in range(base - 1, base + 3):
            distance = abs(t - tap)
            if distance <= 1:
                kernel = 1.5 * distance ** 3 - 2.5 * distance ** 2 + 1
            elif distance < 2:
                kernel = -0.5 * distance ** 3 + 2.5 * distance ** 2 - 4 * distance + 2
            else:
                kernel = 0.0
            weights[row, min(max(tap, 0), grid - 1)] += kernel
    return weights.astype(np.float32)


def elastic_field(offsets, out_size):
    """Bicubic interpolation of control-point offsets [B, 2, g, g] to the tile: (dx, dy), each [B, h, w].

    Rows @ offsets @ cols^T, written as g broadcast products so that under XLA it fuses into the per-pixel
    loop instead of materialising full-resolution fields.
    """
    batch, _, grid, _ = offsets.shape.as_list()
    height, width = out_size
    rows = tf.constant(cubic_weights(height, grid))  # [h, g]
    cols = tf.constant(cubic_weights(width, grid).T)  # [g, w]
    # per control row k: offsets[b, c, k, :] interpolated along the width -> [B, 2, g, w] (small)
    along_width = tf.reshape(tf.matmul(tf.reshape(offsets, [batch * 2 * grid, grid]), cols),
                             [batch, 2, grid, width])
    field = 0.0
    for k in range(grid):
        field += rows[None, None, :, k, None] * along_width[:, :, k, None, :]
    return field[:, 0], field[:, 1]


def coordinate_map(cfg, in_size, out_size, draws):
    """Source coordinates (x, y), each float32 [B, h, w], of every output pixel, before border handling."""
    height, width = out_size
    a, b, c, d = linear_part(draws["uniforms"], cfg)
    centre_x, centre_y = tile_centre(draws["uniforms"], cfg, in_size, out_size, draws.get("crop_centres"))
    cols = tf.range(width, dtype=tf.float32) - (width - 1) / 2.0  # [w]
    rows = tf.range(height, dtype=tf.float32) - (height - 1) / 2.0  # [h]
    # separable: a per-column part [B, 1, w] plus a per-row part [B, h, 1]
    x = (centre_x[:, None] + a[:, None] * cols)[:, None, :] + (b[:, None] * rows)[:, :, None]
    y = (centre_y[:, None] + c[:, None] * cols)[:, None, :] + (d[:, None] * rows)[:, :, None]
    if draws["elastic"] is not None:
        dx, dy = elastic_field(draws["elastic"], out_size)
        x += dx
        y += dy
    return x, y
