"""The OpenCV augmentation engine: the fused coordinate map of unet_perf.input.geometry, sampled with cv2.remap.

Used where XLA is off (the Ascend host path). The random draws and the per-sample parameters (2x2 matrix, tile
centre, elastic offsets, intensity table, noise sigma and shift) are computed in TensorFlow by
unet_perf.input.geometry and unet_perf.input.intensity exactly as for the XLA and plain-ops engines; only the
per-pixel work runs here, in numpy and OpenCV, through one tf.numpy_function per batch (PyFunc stays on the host
under the Ascend adapter).

Per sample: the coordinate map is one small matrix product, x = U @ K @ V^T, where U = [bicubic rows | row
offsets | 1] ([h, g+2]), V likewise for the columns and K holds the elastic offsets, the affine matrix and the
tile centre; then cv2.remap samples the image (bilinear, uint8), the mask (nearest, which keeps class ids and
IGNORE_LABEL, or bilinear on {0, 1} which rounds at 0.5) and the weight map (bilinear, float32), and cv2.LUT
applies the intensity table. Float32 maps are passed to cv2.remap directly: with this OpenCV they sample faster
than maps converted to fixed point (OpenCV still interpolates with 1/32-pixel fractions). OpenCV and numpy
release the GIL in these calls, so parallel tf.data map calls scale across cores; OpenCV's own threading, and the
threads of the OpenBLAS bundled with the opencv-python wheel (cv2.gemm), are turned off so that each map call uses
one core.
"""
import ctypes
import functools
import glob
import os

import cv2
import numpy as np
import tensorflow as tf

from unet_perf.input import geometry, intensity, sampling
from unet_perf.compat import v1
from unet_perf.data.classes import IGNORE_LABEL

_BORDERS = {"reflect": cv2.BORDER_REFLECT_101, "nearest": cv2.BORDER_REPLICATE, "constant": cv2.BORDER_CONSTANT}
_THREADS_SET = []  # memo: OpenCV made single-threaded in this process


def _one_thread_per_call():
    """One core per map call: parallelism comes from tf.data's parallel map calls, not from inside OpenCV."""
    if not _THREADS_SET:
        cv2.setNumThreads(1)
        _limit_bundled_openblas()
        _THREADS_SET.append(True)


def bundled_openblas():
    """The OpenBLAS shipped inside the opencv-python wheel (a ctypes.CDLL), or None when this OpenCV has none.

    cv2.gemm runs on it, and cv2.setNumThreads does not reach it: left alone, every small product of
    coordinate_maps wakes a thread per core whose spin-waiting doubled the CPU time of a one-thread pipeline.
    Only this copy is touched, not numpy's BLAS."""
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(cv2.__file__)))
    for path in sorted(glob.glob(os.path.join(package_dir, "opencv*.libs", "libopenblas*"))):
        try:
            library = ctypes.CDLL(path)  # already loaded by cv2: this returns the same copy
        except OSError:
            continue
        if hasattr(library, "openblas_set_num_threads") and hasattr(library, "openblas_get_num_threads"):
            return library
    return None


def _limit_bundled_openblas():
    library = bundled_openblas()
    if library is not None:
        library.openblas_set_num_threads(1)


@functools.lru_cache(maxsize=16)
def basis(length, grid):
    """[length, grid + 2] float32 rows [bicubic weights of the `grid` control points | centred offset | 1]."""
    columns = [geometry.cubic_weights(length, grid)] if grid else []
    centred = np.arange(length, dtype=np.float32) - (length - 1) / 2.0
    columns += [centred[:, None], np.ones((length, 1), np.float32)]
    return np.ascontiguousarray(np.concatenate(columns, axis=1), np.float32)


@functools.lru_cache(maxsize=16)
def basis_t(length, grid):
    """basis(length, grid) transposed, contiguous: [grid + 2, length]."""
    return np.ascontiguousarray(basis(length, grid).T)


def coordinate_maps(affine, offsets, out_size):
    """Source coordinates of every output pixel of one sample: (x, y), float32 [h, w] each.

    affine: [6] = (a, b, c, d, centre_x, centre_y) (see geometry.linear_part and geometry.tile_centre);
    offsets: elastic control-point offsets [2, g, g] in source pixels, or None.
    """
    grid = 0 if offsets is None else offsets.shape[-1]
    rows, cols_t = basis(out_size[0], grid), basis_t(out_size[1], grid)
    a, b, c, d, centre_x, centre_y = [float(value) for value in affine]
    maps = []
    for axis, (along_cols, along_rows, centre) in enumerate(((a, b, centre_x), (c, d, centre_y))):
        # x[i, j] = rows[i] @ K @ cols[j]: the elastic offsets, the linear part and the centre in one matrix
        kernel = np.zeros((grid + 2, grid + 2), np.float32)
        if grid:
            kernel[:grid, :grid] = offsets[axis]
        kernel[grid, grid + 1] = along_rows
        kernel[grid + 1, grid] = along_cols
        kernel[grid + 1, grid + 1] = centre
        # cv2.gemm on the OpenBLAS that _one_thread_per_call limits; np.dot would use numpy's, threaded
        maps.append(cv2.gemm(cv2.gemm(rows, kernel, 1.0, None, 0.0), cols_t, 1.0, None, 0.0))
    return maps[0], maps[1]


def sample_batch(images, masks, weights, affine, offsets, tables, noise, noise_params, out_size, border,
                 mask_interp, mask_outside=0):
    """Augment one batch in numpy/OpenCV.

    images, masks: uint8 [B, H, W]; weights: float32 [B, H, W] or None; affine: float32 [B, 6]; offsets:
    float32 [B, 2, g, g] or None; tables: float32 [B, 256] or None (plain /255); noise: float32 [h, w] or None;
    noise_params: float32 [B, 3] = (sigma, shift_x, shift_y) or None; out_size: (h, w); border:
    reflect|nearest|constant; mask_interp: nearest|bilinear; mask_outside: the mask value outside the image under
    the constant border (0, or IGNORE_LABEL for class maps of C >= 2).
    Returns (image float32 [B, h, w] in [0, 1], mask uint8 [B, h, w] (the sampled mask values), weights float32
    [B, h, w] or None).
    """
    _one_thread_per_call()
    batch = images.shape[0]
    height, width = out_size
    border_mode = _BORDERS[border]
    # weights are sampled with clamped coordinates under the constant border, like the graph engines
    weight_border = cv2.BORDER_REPLICATE if border == "constant" else border_mode
    mask_mode = cv2.INTER_NEAREST if mask_interp == "nearest" else cv2.INTER_LINEAR
    out_images = np.empty((batch, height, width), np.float32)
    out_masks = np.empty((batch, height, width), np.uint8)
    out_weights = None if weights is None else np.empty((batch, height, width), np.float32)
    sampled = np.empty((height, width), np.uint8)
    if noise is not None:
        # 2x2 copies of the field: every cyclic shift is a view into it, no copy per sample
        tiled_noise = np.tile(noise, (2, 2))
    for index in range(batch):
        map_x, map_y = coordinate_maps(affine[index], None if offsets is None else offsets[index], out_size)
        cv2.remap(images[index], map_x, map_y, cv2.INTER_LINEAR, dst=sampled, borderMode=border_mode)
        table = sampling.UNIT_TABLE if tables is None else tables[index]
        cv2.LUT(sampled, table, dst=out_images[index])
        cv2.remap(masks[index], map_x, map_y, mask_mode, dst=out_masks[index], borderMode=border_mode,
                  borderValue=mask_outside)
        if weights is not None:
            cv2.remap(weights[index], map_x, map_y, cv2.INTER_LINEAR, dst=out_weights[index],
                      borderMode=weight_border)
        if noise is not None:
            sigma, shift_x, shift_y = noise_params[index]
            shift_x, shift_y = int(shift_x), int(shift_y)  # in [0, w) and [0, h)
            shifted = tiled_noise[shift_y:shift_y + height, shift_x:shift_x + width]
            cv2.scaleAdd(shifted, float(sigma), out_images[index], dst=out_images[index])
    if noise is not None:
        np.clip(out_images, 0.0, 1.0, out=out_images)
    return out_images, out_masks, out_weights


def opencv_stage(cfg, in_size, out_size):
    """inputs (images, masks, weights, draws) -> outputs like graph_engine.graph_stage, sampled with OpenCV in one
    tf.numpy_function; the per-sample parameters come from the same TensorFlow code as the graph map."""
    def stage(inputs):
        draws = inputs["draws"]
        uniforms = draws["uniforms"]
        batch = uniforms.shape[0]
        a, b, c, d = geometry.linear_part(uniforms, cfg)
        centre_x, centre_y = geometry.tile_centre(uniforms, cfg, in_size, out_size, draws.get("crop_centres"))
        has_weights = inputs["weights"] is not None
        mask_outside = IGNORE_LABEL if cfg.num_classes > 1 else 0  # constant border: unlabelled, not class 0
        noise_params = None
        if draws["noise"] is not None:
            noise_params = tf.stack(intensity.noise_parameters(uniforms, cfg, out_size), axis=1)
        table = None
        if intensity.intensity_on(cfg):
            table = tf.reshape(intensity.intensity_table(uniforms, cfg), [batch, 256])
        affine = tf.stack([a, b, c, d, centre_x, centre_y], axis=1)
        arguments = [inputs["images"], inputs["masks"], inputs["weights"], affine, draws["elastic"], table,
                     draws["noise"], noise_params]
        present = [argument is not None for argument in arguments]

        def run(*arrays):
            arrays = iter(arrays)
            values = [next(arrays) if there else None for there in present]
            image, mask, weights = sample_batch(*values, out_size=out_size, border=cfg.border,
                                                mask_interp=cfg.mask_interp, mask_outside=mask_outside)
            return [image, mask] + ([weights] if has_weights else [])

        outputs = v1.numpy_function(run, [argument for argument in arguments if argument is not None],
                                    [tf.float32, tf.uint8] + ([tf.float32] if has_weights else []),
                                    name="augment_opencv")
        for output in outputs:
            output.set_shape([batch, out_size[0], out_size[1]])
        return {"image": outputs[0][..., None], "mask": tf.cast(outputs[1], tf.float32)[..., None],
                "weights": outputs[2][..., None] if has_weights else None}
    return stage
