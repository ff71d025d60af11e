"""The training input pipeline: cached uint8 slices -> seeded shuffle -> repeat -> batch -> fused augmentation
per batch -> prefetch, with fully static shapes [B, h, w, 1].

Shuffling, repeating and batching run over slice INDICES; the uint8 arrays are cached once and each batch
gathers its B slices right before the augmentation. That keeps the shuffle buffer tiny and makes resuming
cheap: `start_batch` skips whole batches of indices (exact continuation of the interrupted stream), and batch
k is always augmented with the stateless seed [seed, k].

A packed shard set (unet_perf.data.shard_format, too large to embed) streams instead: make_shard_dataset reads tiles
from the shards and feeds them to the same augmentation; make_dataset dispatches to it for the shard-set views
that data.loading.load_dataset returns.
"""
import numpy as np
import tensorflow as tf

from unet_perf.input import augment, draws, geometry
from unet_perf.compat import AUTOTUNE, set_dataset_deterministic, set_dataset_threading, v1
from unet_perf.config import NORMALIZE_MODES
from unet_perf.data import shard_reader, shard_stream
from unet_perf.data.normalization import STD_FLOOR
from unet_perf.errors import UserError
from unet_perf.model.precision import compute_dtype  # noqa: F401  (re-exported: part of this module's API)

MAX_EMBEDDED_BYTES = 1800 * 1024 * 1024  # the arrays live in the GraphDef, which must stay under 2 GB
_BATCH_COUNTER_END = 2 ** 62  # "infinite" batch numbering


def normalize(images, mode):
    """Images float32 in [0, 1], [B, h, w, C] -> unit (unchanged), symmetric ([-1, 1]) or standard (per image
    zero mean, unit std). The one graph normaliser; unet_perf.inference.predictor.normalize_array is its numpy twin."""
    if mode == "unit":
        return images
    if mode == "symmetric":
        return images * 2.0 - 1.0
    if mode == "standard":
        mean, variance = v1.nn.moments(images, axes=[1, 2, 3], keep_dims=True)
        return (images - mean) / tf.maximum(tf.sqrt(variance), STD_FLOOR)
    raise UserError("--normalize must be one of {}, got {!r}".format("|".join(NORMALIZE_MODES), mode))


def _check_arrays(images, masks, weights):
    images = np.asarray(images)
    masks = np.asarray(masks)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise UserError("training images must be uint8 [N, H, W], got {} {}".format(images.dtype, images.shape))
    if masks.shape != images.shape or masks.dtype != np.uint8:
        raise UserError("training masks must be uint8 {} like the images, got {} {}".format(
            images.shape, masks.dtype, masks.shape))
    if len(images) == 0:
        raise UserError("no training slices: check --data_path or --val_split")
    if weights is not None:
        weights = np.asarray(weights, np.float32)
        if weights.shape != images.shape:
            raise UserError("weight maps must be float32 {} like the images, got {}".format(
                images.shape, weights.shape))
    size = images.nbytes + masks.nbytes + (weights.nbytes if weights is not None else 0)
    if size > MAX_EMBEDDED_BYTES:
        raise UserError("the training slices take {:.2f} GB, more than the {:.1f} GB the graph can hold; use fewer "
                        "or smaller slices (--data_path)".format(size / 2.0 ** 30, MAX_EMBEDDED_BYTES / 2.0 ** 30))
    return images, masks, weights


def _options(cfg):
    options = tf.data.Options()
    set_dataset_threading(options, cfg.data_threads, cfg.data_intra_op)
    set_dataset_deterministic(options, cfg.deterministic)
    return options


def batch_indices(count, cfg, seed, start_batch=0, worker_index=0, num_workers=1):
    """Dataset of (slice indices int64 [B], batch number int64): seeded shuffle of range(count) with buffer
    cfg.shuffle_buffer (0 = count), repeat, batch(drop_remainder=True), then skip `start_batch` batches.

    With num_workers > 1 the indices are batched by the global batch B*num_workers and this worker keeps rows
    [worker_index*B, (worker_index+1)*B): the workers together see exactly one worker's stream of global batches.
    """
    buffer_size = cfg.shuffle_buffer or count
    batch = cfg.batch_size
    indices = (tf.data.Dataset.range(count)
               .shuffle(buffer_size, seed=seed, reshuffle_each_iteration=True)
               .repeat()
               .batch(batch * num_workers, drop_remainder=True))
    if num_workers > 1:
        indices = indices.map(lambda rows: rows[worker_index * batch:(worker_index + 1) * batch])
    numbered = tf.data.Dataset.zip((indices, tf.data.Dataset.range(_BATCH_COUNTER_END)))
    return numbered.skip(start_batch) if start_batch else numbered


def make_dataset(images, masks, weights, cfg, seed=None, start_batch=0, worker_index=0, num_workers=1):
    """The training dataset of augmented batches.

    images, masks: uint8 [N, H, W] (masks {0, 1}, or class ids 0..C-1 and IGNORE_LABEL for C >= 2); weights:
    float32 [N, H, W] or None; seed: None = cfg.seed.
    Yields (image [B, h, w, 1] in the compute dtype of cfg.precision, normalised by cfg.normalize,
    mask [B, h, w, 1] float32 {0, 1} or class ids) plus weight [B, h, w, 1] float32 when weights is not None;
    B = cfg.batch_size, h = w = cfg.crop_size. Batch k (counting from 0 in an uninterrupted run) is the same
    whatever start_batch is; a run resumed at step s passes start_batch=s and continues the stream.
    worker_index, num_workers: this worker's share of each global batch of B*num_workers (see batch_indices);
    its augmentation is the global batch's, restricted to its rows.
    """
    if not 0 <= worker_index < num_workers:
        raise ValueError("worker_index {} is not in [0, {})".format(worker_index, num_workers))
    if isinstance(images, shard_reader.SliceView):  # a packed shard set (data.loading.load_dataset): stream it
        return make_shard_dataset(images.shard_set, cfg, seed, start_batch, worker_index, num_workers,
                                  with_weights=weights is not None)
    images, masks, weights = _check_arrays(images, masks, weights)
    seed = cfg.seed if seed is None else seed
    finish = _batch_finisher(cfg, seed, worker_index, num_workers)
    has_weights = weights is not None
    cached = (images, masks) + ((weights,) if has_weights else ())

    def augment_one_batch(numbered, arrays):
        indices, batch_number = numbered
        return finish([tf.gather(array, indices) for array in arrays], batch_number)

    arrays = tf.data.Dataset.from_tensors(cached).repeat()  # held once in memory, never copied per element
    dataset = tf.data.Dataset.zip((batch_indices(len(images), cfg, seed, start_batch, worker_index, num_workers),
                                   arrays))
    dataset = dataset.map(augment_one_batch, num_parallel_calls=cfg.data_threads or AUTOTUNE)
    dataset = dataset.prefetch(cfg.prefetch)
    return dataset.with_options(_options(cfg))


def _batch_finisher(cfg, seed, worker_index=0, num_workers=1):
    """finish(slices, batch_number): uint8 slices [B, H, W] (+ weights) -> augmented, normalised outputs with
    static shapes (see make_dataset), batch k augmented with the stateless seed [seed, k]; with num_workers > 1
    the slices are this worker's rows of the global batch and get that batch's augmentation rows."""
    out_size = (cfg.crop_size, cfg.crop_size)
    dtype = compute_dtype(cfg.precision)
    if cfg.normalize not in NORMALIZE_MODES:
        raise UserError("--normalize must be one of {}, got {!r}".format("|".join(NORMALIZE_MODES), cfg.normalize))
    engine = augment.resolve_engine(cfg)  # resolved here, outside the dataset function's graph

    def finish(slices, batch_number, crop_centres=None):
        has_weights = len(slices) > 2
        image, mask, weight = augment.augment_batch(
            slices[0], slices[1], slices[2] if has_weights else None, cfg, out_size,
            draws.batch_seed(seed, batch_number), engine=engine, crop_centres=crop_centres,
            worker_index=worker_index, num_workers=num_workers)
        image = tf.cast(normalize(image, cfg.normalize), dtype)
        outputs = (image, mask) + ((weight,) if has_weights else ())
        for output in outputs:
            output.set_shape([cfg.batch_size, out_size[0], out_size[1], 1])
        return outputs
    return finish


def make_shard_dataset(shard_set, cfg, seed=None, start_batch=0, worker_index=0, num_workers=1, with_weights=False):
    """The training dataset streamed from a packed shard set (data.shard_reader.ShardSet); yields what make_dataset
    yields.

    Crops are placed on each slice as make_dataset places them, and a tile of side min(geometry.source_extent(cfg),
    smallest slice side) is read around each (see data.shard_stream.tile_reader); the fused augmentation then samples
    the crop_size output from the tile with the crop centre passed in, so the output equals what it would sample
    from the whole slice, except where the map reaches beyond the tile (elastic tails beyond three sigmas, or
    tiles cut smaller than the bound because some slices are small). Worker w of n reads its own share of the shards
    and augments its k-th batch with the seed [seed, k * n + w]. Resume: start_batch = s continues the stream
    exactly, i.e. batch s is the batch an uninterrupted run would have produced at step s (same tiles, same
    order, same augmentation), for the same usable shards (--skip_bad_shards leaving out a different set changes
    the stream), seed, batch size, crop settings and worker count; getting there reads no data (the stream
    is an order of slice indices). The order is deterministic whatever cfg.deterministic says (it is part of
    the stream that resume continues).
    """
    seed = cfg.seed if seed is None else seed
    tile = min(geometry.source_extent(cfg), min(shard_set.min_size))
    finish = _batch_finisher(cfg, seed)
    threads = cfg.data_threads or AUTOTUNE
    span = cfg.crop_size / float(cfg.input_scale)
    read = shard_stream.tile_reader(shard_set, tile, span, seed, with_weights)
    slices = shard_stream.slice_stream(shard_set, seed, cfg.shuffle_buffer, start_batch * cfg.batch_size,
                                       worker_index, num_workers).batch(cfg.batch_size, drop_remainder=True)
    # k * num_workers + worker_index for k = start_batch, start_batch + 1, ...
    numbers = tf.data.Dataset.range(start_batch * num_workers + worker_index, _BATCH_COUNTER_END, num_workers)

    def read_and_augment(indices_and_elements, number):
        arrays = read(*indices_and_elements)  # inside the one parallel map, like the in-memory gather
        return finish(list(arrays[:-1]), number, crop_centres=arrays[-1])

    dataset = tf.data.Dataset.zip((slices, numbers)).map(read_and_augment, num_parallel_calls=threads)
    dataset = dataset.prefetch(cfg.prefetch)
    options = _options(cfg)
    set_dataset_deterministic(options, True)
    return dataset.with_options(options)


def make_iterator(dataset):
    """An initializable iterator (the NPU's GetNext offload needs MakeIterator; a one-shot iterator is not sunk)."""
    return v1.data.make_initializable_iterator(dataset)
