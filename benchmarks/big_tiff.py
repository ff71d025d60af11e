"""A large synthetic EM-like grayscale TIFF written strip by strip: the inference benchmark's big inputs.

The image is never held in memory: one 1024^2 synthetic slice (unet_perf.data.synthetic, the training set's
texture) is tiled over the page, every other copy mirrored so the seams look like membranes rather than edges,
and tifffile writes the strips from a generator (uncompressed, BigTIFF above 2 GB).
"""
import numpy as np

TEXTURE_SIZE = 1024
ROWS_PER_STRIP = 256
BIGTIFF_BYTES = 2 ** 31


def texture(seed=0, size=TEXTURE_SIZE):
    """uint8 [2*size, 2*size]: one synthetic slice and its mirror images, a block that tiles without seams."""
    from unet_perf.data.synthetic import membranes

    block = membranes(1, size, seed).images[0]
    top = np.concatenate([block, block[:, ::-1]], axis=1)
    return np.concatenate([top, top[::-1]], axis=0)


def strips(height, width, block, rows_per_strip=ROWS_PER_STRIP):
    """The bytes of every strip of a [height, width] page tiled with `block`, top to bottom."""
    period_h, period_w = block.shape
    reps = -(-width // period_w)
    for top in range(0, height, rows_per_strip):
        rows = np.arange(top, min(top + rows_per_strip, height)) % period_h
        yield np.ascontiguousarray(np.tile(block[rows], (1, reps))[:, :width]).tobytes()


def write_synthetic_tiff(path, height, width=None, seed=0):
    """Write a uint8 [height, width] synthetic EM-like TIFF to `path` in strips; returns its size in bytes."""
    import tifffile

    width = width or height
    block = texture(seed, min(TEXTURE_SIZE, max(16, max(height, width) // 2)))
    tifffile.imwrite(path, data=strips(height, width, block), shape=(height, width), dtype=np.uint8,
                     rowsperstrip=ROWS_PER_STRIP, photometric="minisblack",
                     bigtiff=height * width >= BIGTIFF_BYTES)
    return height * width
