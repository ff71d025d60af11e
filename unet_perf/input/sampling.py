"""Sampling for the graph engines (unet_perf.input.graph_engine): border handling and one gather pass of uint8 bytes.

Everything here is elementwise plus a few gathers, so under XLA it fuses into one loop over the output pixels.
"""
import numpy as np
import tensorflow as tf

from unet_perf.data.classes import IGNORE_LABEL


def fold_border(coord, length, border):
    """Bring coordinates into [0, length-1]. Returns (coord, fade): fade is None except for the constant border,
    where it fades the image to zero exactly like bilinear sampling of a zero-padded image."""
    last = float(length - 1)
    if border == "reflect":
        # mirror about the edge pixels (no repeated edge); exact for coordinates within one tile of the image,
        # clamped beyond (abs instead of floormod: half the cost)
        return tf.clip_by_value(last - tf.abs(last - tf.abs(coord)), 0.0, last), None
    clipped = tf.clip_by_value(coord, 0.0, last)
    if border == "nearest":
        return clipped, None
    return clipped, tf.clip_by_value(1.0 - tf.abs(coord - clipped), 0.0, 1.0)


def split_corner(coord, length):
    """Integer corner (<= length-2, so its +1 neighbour exists) as int32, and the fraction in [0, 1]."""
    corner = tf.minimum(tf.floor(coord), float(length - 2))
    return tf.cast(corner, tf.int32), coord - corner


def lerp(low, high, fraction):
    # this form is exact at fraction 0 and 1 (identity maps stay bit-exact, also on the last row/column)
    return low * (1.0 - fraction) + high * fraction


def bilinear(corners, fx, fy):
    top_left, top_right, bottom_left, bottom_right = corners
    return lerp(lerp(top_left, top_right, fx), lerp(bottom_left, bottom_right, fx), fy)


# [256] float32 table of k / 255, divided in numpy: XLA would turn a division into a multiplication by the
# reciprocal, which is off by one ulp for half the values and would break the bit-exact identity.
UNIT_TABLE = np.arange(256, dtype=np.float32) / np.float32(255.0)


def unit_table():
    """UNIT_TABLE as a tf.constant."""
    return tf.constant(UNIT_TABLE)



def sampling_positions(x, y, in_size, border):
    """Border handling and bilinear set-up: (index, fx, fy, fade) of [B, h, w] tensors.

    index (int32) is the flat position of each output pixel's top-left source neighbour in the [B*H*W] batch,
    fx/fy the fractions towards its right/bottom neighbours; fade is None except for the constant border.
    """
    height, width = in_size
    batch = x.shape[0]
    x, fade_x = fold_border(x, width, border)
    y, fade_y = fold_border(y, height, border)
    x0, fx = split_corner(x, width)
    y0, fy = split_corner(y, height)
    index = tf.reshape(tf.range(batch) * (height * width), [batch, 1, 1]) + y0 * width + x0
    fade = fade_x * fade_y if fade_x is not None else None
    return index, fx, fy, fade


def sample(images, masks, weights, index, fx, fy, fade, mask_interp="nearest", table=None, ignore_outside=False):
    """Sample image (bilinear), mask (nearest, or bilinear then >= 0.5) and optional weights (bilinear).

    images, masks: uint8 [B, H, W] (masks {0, 1}, or class ids and IGNORE_LABEL for C >= 2); weights: float32
    [B, H, W] or None; index, fx, fy, fade: from sampling_positions; table: [B*256] intensity table (see
    intensity_table) or None for plain /255; ignore_outside: under the constant border, mask pixels outside the
    image become IGNORE_LABEL (C >= 2: unlabelled, not class 0) instead of 0.
    Returns image float32 in [0, 1], mask float32 (the sampled mask values), weights float32 or None, all [B, h, w].
    """
    batch, _, width = images.shape.as_list()
    shifts = (0, 1, width, width + 1)
    flat_images = tf.reshape(images, [-1])
    corner_bytes = [tf.cast(tf.gather(flat_images, index + shift), tf.int32) for shift in shifts]
    if table is None:
        corners = [tf.gather(unit_table(), value) for value in corner_bytes]
    else:
        table_offset = tf.reshape(tf.range(batch) * 256, [batch, 1, 1])
        corners = [tf.gather(table, table_offset + value) for value in corner_bytes]
    image = bilinear(corners, fx, fy)
    flat_masks = tf.reshape(masks, [-1])
    if mask_interp == "nearest":
        nearest = index + tf.cast(fy >= 0.5, tf.int32) * width + tf.cast(fx >= 0.5, tf.int32)
        mask = tf.cast(tf.gather(flat_masks, nearest), tf.float32)
    else:
        mask_corners = [tf.cast(tf.gather(flat_masks, index + shift), tf.float32) for shift in shifts]
        mask = tf.cast(bilinear(mask_corners, fx, fy) >= 0.5, tf.float32)
    if fade is not None:
        image *= fade
        if ignore_outside:
            mask = tf.where(fade >= 0.5, mask, tf.fill(tf.shape(mask), float(IGNORE_LABEL)))
        else:
            mask *= tf.cast(fade >= 0.5, tf.float32)
    if weights is not None:
        flat_weights = tf.reshape(weights, [-1])
        weights = bilinear([tf.gather(flat_weights, index + shift) for shift in shifts], fx, fy)
    return image, mask, weights
