"""The random numbers of one augmented batch and their layout: every random number of a batch is drawn here, with
stateless ops, from the batch's seed.

Both kinds of engine (input.graph_engine, input.opencv_engine) compute every per-sample parameter (input.geometry,
input.intensity) from these draws, outside any XLA cluster: the plain and XLA graphs and the OpenCV engine see the
same numbers, and results never depend on thread scheduling.
"""
import tensorflow as tf

# Columns of the per-sample uniform draws (one stateless call per batch).
(DIHEDRAL, ANGLE, ZOOM, SHEAR, SHIFT_X, SHIFT_Y, CROP_X, CROP_Y,
 BRIGHTNESS, CONTRAST, GAMMA, NOISE, NOISE_X, NOISE_Y) = range(14)
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


def elastic_on(cfg):
    return cfg.augment and cfg.elastic and cfg.elastic_sigma > 0


def _noise_on(cfg):
    return cfg.augment and cfg.noise > 0


def draw(cfg, batch, out_size, seed):
    """All random numbers of one batch: {'uniforms': [B, 14], 'elastic': [B, 2, g, g] px or None,
    'noise': [h, w] standard normal or None}."""
    seed = tf.cast(seed, tf.int64)
    draws = {"uniforms": tf.random.stateless_uniform([batch, _NUM_UNIFORMS], _substream(seed, _STREAM_UNIFORM)),
             "elastic": None, "noise": None}
    if elastic_on(cfg):
        grid = cfg.elastic_grid
        draws["elastic"] = tf.random.stateless_normal(
            [batch, 2, grid, grid], _substream(seed, _STREAM_ELASTIC), stddev=cfg.elastic_sigma)
    if _noise_on(cfg):
        draws["noise"] = tf.random.stateless_normal(list(out_size), _substream(seed, _STREAM_NOISE))
    return draws


def uniform_in(uniforms, column, low, high):
    """Column of the per-sample uniforms scaled to [low, high): [B]."""
    return low + (high - low) * uniforms[:, column]


def worker_rows(draws, worker_index, batch):
    """The draws of rows [worker_index*batch, (worker_index+1)*batch) of a global batch's draws (the per-batch
    noise field is shared by all rows and kept whole)."""
    start = worker_index * batch
    rows = dict(draws)
    for key in ("uniforms", "elastic"):
        if rows[key] is not None:
            rows[key] = rows[key][start:start + batch]
    return rows
