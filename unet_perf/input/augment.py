"""Fused augmentation: one coordinate map per sample, one sampling pass for image, mask and weight map.

The map sends every OUTPUT pixel (i, j) of an [h, w] tile to a source position (x, y):

    (x, y) = crop centre + shift + (1 / input_scale) * Dihedral * Rotation * Shear / zoom * (j - cw, i - ch)
             + elastic displacement(i, j)

The dihedral matrix has entries 0/±1 (flips and 90° turns stay exact); the elastic displacement is the
U-Net paper's recipe (Gaussian offsets on a coarse grid, bicubic interpolation), in source pixels. Only
output pixels are computed and sampled, so cropping and rescaling cost nothing extra.

Why it is fast: everything per pixel is elementwise plus a few gathers of uint8 bytes, so under XLA it fuses
into one loop over the output; intensity (gamma, contrast, brightness) is a per-sample 256-entry table applied
to the gathered bytes, and noise is one Gaussian field per batch, shifted per sample. All random numbers are
drawn with stateless ops outside the compiled part, from a per-batch seed: the plain and XLA graphs see the
same draws, and results never depend on thread scheduling.

Engines (resolve_engine, --augment_engine): "xla" compiles the map and the sampling with XLA; "graph" runs the
same ops without XLA; "opencv" (unet_perf.input.opencv_engine) takes the same draws and per-sample parameters from
TensorFlow and does the per-pixel work with cv2.remap in a tf.numpy_function: the fast path where XLA is off.
"""
import math

import numpy as np
import tensorflow as tf

from unet_perf import compat
from unet_perf.input import sampling

# Columns of the per-sample uniform draws (one stateless call per batch).
(_DIHEDRAL, _ANGLE, _ZOOM, _SHEAR, _SHIFT_X, _SHIFT_Y, _CROP_X, _CROP_Y,
 _BRIGHTNESS, _CONTRAST, _GAMMA, _NOISE, _NOISE_X, _NOISE_Y) = range(14)
_NUM_UNIFORMS = 14
# Independent random streams derived from the batch seed.
_STREAM_UNIFORM, _STREAM_ELASTIC, _STREAM_NOISE = range(3)
_NUM_STREAMS = 4


def batch_seed(base_seed, batch_index):
    """The stateless seed of one batch: [base_seed, batch_index] as int64 [2]."""
    return tf.stack([tf.cast(base_seed, tf.int64), tf.cast(batch_index, tf.int64)])


def _substream(seed, stream):
    """A seed for one random stream of this batch; distinct for every (batch, stream) pair."""
    return tf.stack([seed[0], seed[1] * _NUM_STREAMS + stream])


ENGINES = ("xla", "graph", "opencv")  # what resolve_engine answers; --augment_engine also takes "auto"
_XLA_ALIASES = {"on": "xla", "off": "graph"}  # --xla_augment on|off, kept as aliases of --augment_engine


def resolve_engine(cfg):
    """The augmentation engine cfg selects on this machine: "xla", "graph" (plain TensorFlow ops) or "opencv".

    --augment_engine xla|graph|opencv is taken as given. With auto (the default), --xla_augment on|off keep
    their meaning (on = xla, off = graph); otherwise XLA where this TensorFlow build compiles it, else OpenCV
    (the fast host engine; config.validate rejects contradictory pairs of the two flags).
    """
    engine = getattr(cfg, "augment_engine", "auto")
    if engine != "auto":
        return engine
    if cfg.xla_augment in _XLA_ALIASES:
        return _XLA_ALIASES[cfg.xla_augment]
    return "xla" if compat.xla_jit_available() else "opencv"


def use_xla(cfg):
    """True when resolve_engine(cfg) picks the XLA engine."""
    return resolve_engine(cfg) == "xla"


def _elastic_on(cfg):
    return cfg.augment and cfg.elastic and cfg.elastic_sigma > 0


def _noise_on(cfg):
    return cfg.augment and cfg.noise > 0


def intensity_on(cfg):
    """True when cfg changes intensities (gamma, contrast or brightness): the per-sample table is needed."""
    return cfg.augment and (cfg.gamma > 0 or cfg.contrast > 0 or cfg.brightness > 0)


# ----------------------------------------------------------------------------------------------------------
# Random draws (plain ops, outside any XLA cluster)


def draw(cfg, batch, out_size, seed):
    """All random numbers of one batch: {'uniforms': [B, 14], 'elastic': [B, 2, g, g] px or None,
    'noise': [h, w] standard normal or None}."""
    seed = tf.cast(seed, tf.int64)
    draws = {"uniforms": tf.random.stateless_uniform([batch, _NUM_UNIFORMS], _substream(seed, _STREAM_UNIFORM)),
             "elastic": None, "noise": None}
    if _elastic_on(cfg):
        grid = cfg.elastic_grid
        draws["elastic"] = tf.random.stateless_normal(
            [batch, 2, grid, grid], _substream(seed, _STREAM_ELASTIC), stddev=cfg.elastic_sigma)
    if _noise_on(cfg):
        draws["noise"] = tf.random.stateless_normal(list(out_size), _substream(seed, _STREAM_NOISE))
    return draws


def _uniform(uniforms, column, low, high):
    """Column of the per-sample uniforms scaled to [low, high): [B]."""
    return low + (high - low) * uniforms[:, column]


# ----------------------------------------------------------------------------------------------------------
# Coordinate map


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
        matrix = _compose(matrix, _dihedral_matrix(uniforms[:, _DIHEDRAL]))
    if cfg.rotate_deg > 0:
        angle = _uniform(uniforms, _ANGLE, -cfg.rotate_deg, cfg.rotate_deg) * (math.pi / 180.0)
        cos, sin = tf.cos(angle), tf.sin(angle)
        matrix = _compose(matrix, (cos, -sin, sin, cos))
    if cfg.shear > 0:
        shear = _uniform(uniforms, _SHEAR, -cfg.shear, cfg.shear)
        matrix = _compose(matrix, (1.0, shear, 0.0, 1.0))
    if cfg.scale_range > 0:
        inverse_zoom = 1.0 / _uniform(uniforms, _ZOOM, 1.0 - cfg.scale_range, 1.0 + cfg.scale_range)
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
        centre_x = _crop_centre(uniforms[:, _CROP_X], in_size[1], span_x)
        centre_y = _crop_centre(uniforms[:, _CROP_Y], in_size[0], span_y)
    else:
        centre_x, centre_y = crop_centres[:, 0], crop_centres[:, 1]
    if cfg.augment and cfg.translate > 0:
        centre_x += _uniform(uniforms, _SHIFT_X, -cfg.translate, cfg.translate) * span_x
        centre_y += _uniform(uniforms, _SHIFT_Y, -cfg.translate, cfg.translate) * span_y
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
    if _elastic_on(cfg):
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


# ----------------------------------------------------------------------------------------------------------
# Intensity and noise (per-sample parameters from the draws)


def intensity_table(uniforms, cfg):
    """Per-sample table [B*256] of uint8 value -> image value in [0, 1]: /255, gamma, contrast about mid-grey,
    brightness, clip. Applied to the gathered corner bytes, so intensity costs one small lookup per corner."""
    batch = uniforms.shape[0]
    values = tf.tile(sampling.unit_table()[None, :], [batch, 1])  # [B, 256]
    if cfg.augment:
        per_sample = lambda column, low, high: _uniform(uniforms, column, low, high)[:, None]
        if cfg.gamma > 0:
            values = tf.pow(values, per_sample(_GAMMA, 1.0 - cfg.gamma, 1.0 + cfg.gamma))
        if cfg.contrast > 0:
            values = (values - 0.5) * per_sample(_CONTRAST, 1.0 - cfg.contrast, 1.0 + cfg.contrast) + 0.5
        if cfg.brightness > 0:
            values += per_sample(_BRIGHTNESS, -cfg.brightness, cfg.brightness)
        values = tf.clip_by_value(values, 0.0, 1.0)
    return tf.reshape(values, [-1])


def noise_parameters(uniforms, cfg, out_size):
    """Per-sample noise amplitude and cyclic shift of the batch's [h, w] noise field: (sigma, shift_x, shift_y),
    float32 [B] each; the shifts are whole numbers in [0, w) and [0, h)."""
    sigma = _uniform(uniforms, _NOISE, 0.0, cfg.noise)
    shift_x = tf.floor(uniforms[:, _NOISE_X] * out_size[1])
    shift_y = tf.floor(uniforms[:, _NOISE_Y] * out_size[0])
    return sigma, shift_x, shift_y


def _shifted_noise(noise, shift_x, shift_y):
    """The batch's [h, w] Gaussian field, cyclically shifted by (shift_x, shift_y) [B] per sample: [B, h, w]."""
    height, width = noise.shape.as_list()
    shift_x = tf.cast(shift_x, tf.int32)
    shift_y = tf.cast(shift_y, tf.int32)
    cols = tf.math.floormod(tf.range(width)[None, :] + shift_x[:, None], width)  # [B, w]
    rows = tf.math.floormod(tf.range(height)[None, :] + shift_y[:, None], height)  # [B, h]
    return tf.gather(tf.reshape(noise, [-1]), rows[:, :, None] * width + cols[:, None, :])


# ----------------------------------------------------------------------------------------------------------
# Entry point


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
                                      inputs["fx"], inputs["fy"], inputs["fade"], cfg.mask_interp, inputs["table"])
        if draws["noise"] is not None:
            sigma, shift_x, shift_y = noise_parameters(draws["uniforms"], cfg, draws["noise"].shape.as_list())
            noise = _shifted_noise(draws["noise"], shift_x, shift_y)
            image = tf.clip_by_value(image + sigma[:, None, None] * noise, 0.0, 1.0)
        return {"image": image[..., None], "mask": mask[..., None],
                "weights": weights[..., None] if weights is not None else None}
    return stage


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


def worker_rows(draws, worker_index, batch):
    """The draws of rows [worker_index*batch, (worker_index+1)*batch) of a global batch's draws (the per-batch
    noise field is shared by all rows and kept whole)."""
    start = worker_index * batch
    rows = dict(draws)
    for key in ("uniforms", "elastic"):
        if rows[key] is not None:
            rows[key] = rows[key][start:start + batch]
    return rows


def augment_batch(images, masks, weights, cfg, out_size, seed, xla=None, engine=None, crop_centres=None,
                  worker_index=0, num_workers=1):
    """Augment one batch with one fused coordinate map and one sampling pass.

    images, masks: uint8 [B, H, W] (masks in {0, 1}); weights: float32 [B, H, W] or None; out_size: (h, w);
    seed: int64 [2] (see batch_seed); engine: "xla", "graph" or "opencv" (None = resolve_engine(cfg));
    xla: older switch, used when engine is None: True = "xla", False = "graph"; crop_centres: float32 [B, 2]
    source (x, y) of each crop centre, or None to draw random crops (see tile_centre).
    worker_index, num_workers: with num_workers > 1 the B images are this worker's rows of a global batch of
    B*num_workers: the random numbers are drawn for the global batch and this worker's rows kept, so each sample is
    augmented exactly as one worker with the whole batch would augment it.
    All engines use the same draws and the same map; they differ by interpolation rounding (see augment_cv).
    Returns (images float32 [B, h, w, 1] in [0, 1], masks float32 {0, 1} [B, h, w, 1],
    weights float32 [B, h, w, 1] or None), all with static shapes.
    """
    images = tf.convert_to_tensor(images, tf.uint8)
    masks = tf.convert_to_tensor(masks, tf.uint8)
    if weights is not None:
        weights = tf.convert_to_tensor(weights, tf.float32)
    batch, height, width = images.shape.as_list()
    if height < 2 or width < 2:
        raise ValueError("augment_batch needs images of at least 2x2 pixels, got {}x{}".format(height, width))
    out_size = (int(out_size[0]), int(out_size[1]))
    if engine is None:
        engine = resolve_engine(cfg) if xla is None else ("xla" if xla else "graph")
    if engine not in ENGINES:
        raise ValueError("augment_batch engine must be one of {}, got {!r}".format(ENGINES, engine))
    draws = draw(cfg, batch * num_workers, out_size, tf.convert_to_tensor(seed, tf.int64))
    if num_workers > 1:
        draws = worker_rows(draws, worker_index, batch)
    if crop_centres is not None:
        draws["crop_centres"] = tf.convert_to_tensor(crop_centres, tf.float32)
    if engine == "opencv":
        from unet_perf.input import opencv_engine as augment_cv  # the OpenCV engine (imports augment itself)
        outputs = augment_cv.opencv_stage(cfg, (height, width), out_size)(
            {"images": images, "masks": masks, "weights": weights, "draws": draws})
    else:
        xla = engine == "xla"
        positions = _run_stage(_positions_stage(cfg, (height, width), out_size), draws, xla)
        positions.update(images=images, masks=masks, weights=weights, draws=draws)
        outputs = _run_stage(_sampling_stage(cfg), positions, xla)
    outputs = [outputs["image"], outputs["mask"]] + ([outputs["weights"]] if weights is not None else [])
    for output in outputs:
        output.set_shape([batch, out_size[0], out_size[1], 1])
    return outputs[0], outputs[1], (outputs[2] if weights is not None else None)


def describe_engine(cfg):
    """resolve_engine(cfg) for logs; when auto had to do without XLA it says why, e.g. "opencv (XLA unavailable:
    ...)" (the engines differ several-fold in speed, so a silent fallback would hide a slow run)."""
    engine = resolve_engine(cfg)
    chosen_by_user = getattr(cfg, "augment_engine", "auto") != "auto" or cfg.xla_augment in _XLA_ALIASES
    if engine == "xla" or chosen_by_user:
        return engine
    return "{} (XLA unavailable: {})".format(engine, compat.xla_jit_status()[1])
