"""Streaming a packed shard set (data.shard_reader.ShardSet) into training: slice order and the tile reader stage.

Streaming (slice_stream, tile_reader) reads tiles by the manifest's offsets instead of decoding records: per
epoch, this worker's slice indices are put in a seeded order (a full permutation, or with a bounded
--shuffle_buffer: shards in a seeded order, read interleaved, through a shuffle buffer of that many slices), a
crop position is drawn per element as the in-memory pipeline draws it, and only the rows of the square tile
around it are read from the file (pread straight into the batch). Records are not decoded and no tile data waits
in a shuffle buffer, so the reader costs a small fraction of the augmentation. The TFRecord framing keeps the
shards readable by any TFRecord tool; its per-record CRCs are not checked while streaming: every shard's CRC-32
is checked before training (--verify_shards true, the default) or before the stream first reads from it (false),
and every read's length is checked.
The stream is a pure function of (seed, worker): element e is reached by computing epoch e // per_epoch's
order and skipping e % per_epoch indices, so resume re-reads nothing.
"""
import numpy as np
import tensorflow as tf

from unet_perf.compat import v1
from unet_perf.data.shard_format import DTYPES
from unet_perf.errors import UserError

_CYCLE = 4  # shards read at once with a bounded shuffle buffer


def epoch_order(shares, shuffle_buffer, seed, epoch):
    """The slice indices of one epoch of a worker's shares (a list of per-shard int64 arrays), in stream order;
    a pure function of (shares, shuffle_buffer, seed, epoch). A buffer of at least the share's size (or 0)
    gives a uniform permutation; a smaller one keeps reads local: the shards in a seeded order, read
    round-robin _CYCLE at a time (a finished shard's slot goes to the next shard), through a shuffle buffer of
    that many slices."""
    rng = np.random.RandomState([seed % 2 ** 32, epoch % 2 ** 32, 0x5EED])
    shares = [shares[index] for index in rng.permutation(len(shares))]
    total = sum(len(share) for share in shares)
    if shuffle_buffer <= 0 or shuffle_buffer >= total:
        return rng.permutation(np.concatenate(shares)).astype(np.int64)
    return _bounded_shuffle(_round_robin(shares, _CYCLE), shuffle_buffer, rng)


def _round_robin(shares, cycle):
    """Interleave the arrays one element at a time, `cycle` at once, like tf.data interleave(cycle_length)."""
    slots, waiting, out = [[share, 0] for share in shares[:cycle]], list(shares[cycle:]), []
    slot = 0
    while slots:
        share, position = slots[slot]
        out.append(share[position])
        if position + 1 < len(share):
            slots[slot][1] = position + 1
            slot += 1
        elif waiting:
            slots[slot] = [waiting.pop(0), 0]
            slot += 1
        else:
            del slots[slot]
        slot = slot % len(slots) if slots else 0
    return out


def _bounded_shuffle(stream, size, rng):
    """tf.data shuffle(size) in numpy: a buffer of `size`; each next element replaces a random pick."""
    buffer, out = list(stream[:size]), []
    for value, pick in zip(stream[size:], rng.randint(size, size=max(len(stream) - size, 0))):
        out.append(buffer[pick])
        buffer[pick] = value
    rng.shuffle(buffer)
    return np.array(out + buffer, np.int64)


def _place(uniform, length, tile, span):
    """Crop of side `span` at an integer offset uniform over a slice side of `length` (as the in-memory pipeline
    places it), and the [tile] window around it, moved inwards at the borders: (window start int32, crop
    centre in window coordinates float32)."""
    length = tf.cast(length, tf.float32)
    room = tf.maximum(tf.floor(length - span), 0.0)
    centre = tf.floor(uniform * (room + 1.0)) + (span - 1.0) / 2.0
    start = tf.clip_by_value(tf.floor(centre + 0.5 - tile / 2.0), 0.0, length - tile)
    return tf.cast(start, tf.int32), centre - start


def slice_stream(shard_set, seed, shuffle_buffer=0, start_element=0, worker_index=0, num_workers=1):
    """Endless dataset of (slice index, element number) int64 pairs: this worker's share in the order described
    in the module doc string, from element `start_element` on (getting there reads no data).

    shuffle_buffer: 0 = a full permutation per epoch, else a bounded shuffle of that many slices (local reads).
    """
    if not 0 <= worker_index < num_workers:
        raise UserError("worker_index {} must be in [0, {})".format(worker_index, num_workers))
    shares = shard_set.worker_shares(worker_index, num_workers)
    per_epoch = sum(len(share) for share in shares)
    if per_epoch == 0:
        raise UserError("worker {} of {} gets no slices from {}; use fewer workers or more slices".format(
            worker_index, num_workers, shard_set.directory))
    start_epoch, skip = divmod(int(start_element), per_epoch)

    def one_epoch(epoch):
        order = v1.numpy_function(lambda number: epoch_order(shares, shuffle_buffer, seed, int(number)), [epoch],
                                  tf.int64, name="shard_epoch_order")
        return tf.data.Dataset.from_tensor_slices(tf.reshape(order, [per_epoch]))

    indices = tf.data.Dataset.range(start_epoch, 2 ** 62).flat_map(one_epoch).skip(skip)
    return tf.data.Dataset.zip((indices, tf.data.Dataset.range(start_element, 2 ** 62)))


def tile_reader(shard_set, tile, span, seed, with_weights=False):
    """read(indices int64 [B], element numbers int64 [B]) -> (image uint8 [B, tile, tile], mask uint8 [B, tile,
    tile][, weights float32 [B, tile, tile]], crop centre float32 [B, 2]): for each slice, a crop of side `span`
    (source pixels) placed like the in-memory pipeline places it and the square tile around it, read from the
    shards (only its rows); the centre is the crop's (x, y) in tile coordinates. The positions of a batch are
    keyed by (seed, its first element number)."""
    if with_weights and not shard_set.has_weights:
        raise UserError("{} holds no weight maps; re-pack it with --weight_map true".format(shard_set.directory))
    fields = 3 if with_weights else 2
    heights, widths = tf.constant(shard_set.heights), tf.constant(shard_set.widths)

    def read_tiles(indices, tops, lefts):
        outputs = [np.empty((len(indices), tile, tile), DTYPES[field]) for field in range(fields)]
        for row, (index, top, left) in enumerate(zip(indices, tops, lefts)):
            for field, out in enumerate(outputs):
                shard_set.read_window(index, field, int(top), int(left), tile, tile, out=out[row])
        return outputs

    def read(indices, elements):
        batch = indices.shape[0]
        # keyed by the batch's first element number: a run resumed at a batch boundary draws the same
        offsets = tf.random.stateless_uniform([batch, 2], tf.stack([tf.constant(seed + 1, tf.int64), elements[0]]))
        top, centre_y = _place(offsets[:, 0], tf.gather(heights, indices), tile, span)
        left, centre_x = _place(offsets[:, 1], tf.gather(widths, indices), tile, span)
        arrays = v1.numpy_function(read_tiles, [indices, top, left], [tf.uint8, tf.uint8, tf.float32][:fields],
                                   name="shard_tiles")
        for array in arrays:
            array.set_shape([batch, tile, tile])
        return tuple(arrays) + (tf.stack([centre_x, centre_y], axis=1),)
    return read
