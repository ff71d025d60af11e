"""Packed shard sets: the on-disk format written by unet_perf.data.pack and the streaming reader for training.

A shard set is a folder with `manifest.json` and TFRecord files `shard-00000.tfrecord`, ... Each record is a
tf.train.Example of one slice: "image" (raw uint8 bytes, row-major), "mask" (raw uint8 {0, 1}), optionally
"weights" (raw little-endian float32), "height", "width" (int64) and "name" (bytes). Slices may differ in size.
The manifest is written last, so a folder without it is not a shard set. Per shard it lists the slice count, the
byte size, the CRC-32 (zlib) of the whole file and the smallest slice height and width.

Streaming (tile_stream): per epoch, this worker's shards in a seeded order, read interleaved; each record is
parsed, a crop position is drawn as the in-memory pipeline draws it, and one square tile around it is cut (its
row band is cut from the raw bytes before they are decoded, then its columns); tiles go through a bounded
shuffle buffer. Each epoch has its own file order, crop
positions and shuffle seed, so the stream is a pure function of (seed, worker) and element e of it can be
reached by starting at epoch e // per_epoch and skipping the first e % per_epoch tiles of that epoch (resume
re-reads at most one epoch of this worker's share).
"""
import json
import os
import struct
import warnings
import zlib

import numpy as np
import tensorflow as tf

from unet_perf.compat import AUTOTUNE, v1
from unet_perf.errors import UserError

MANIFEST = "manifest.json"
FORMAT = "unet_perf-shards"
VERSION = 1
_CHUNK = 8 * 1024 * 1024
_DEFAULT_SHUFFLE_TILES = 128  # --shuffle_buffer 0 with shards: tiles, not the whole set (which may not fit)
_CYCLE = 4  # shards read at once
_CACHED_SLICES = 16  # slices read through the views (probes, previews) kept in memory


def shard_name(index):
    return "shard-{:05d}.tfrecord".format(index)


def is_shard_set(path):
    """True when `path` is a folder holding a shard-set manifest."""
    return bool(path) and os.path.isfile(os.path.join(path, MANIFEST))


def file_crc32(path):
    """CRC-32 (zlib) of a whole file, read in chunks."""
    crc = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            crc = zlib.crc32(chunk, crc)
    return crc & 0xFFFFFFFF


def read_records(path):
    """The records of one TFRecord file, in order (framing: uint64 length, uint32 CRC, data, uint32 CRC; the
    CRCs are not checked here: open_shard_set checks the whole file)."""
    with open(path, "rb") as handle:
        while True:
            header = handle.read(12)
            if len(header) < 12:
                return
            length = struct.unpack("<Q", header[:8])[0]
            data = handle.read(length)
            handle.read(4)
            if len(data) < length:
                raise UserError("shard {} is truncated; re-run python -m unet_perf.data.pack".format(path))
            yield data


def encode_example(image, mask, weights, name):
    """The serialized tf.train.Example of one slice (see the module doc string)."""
    def as_bytes(values):
        return v1.train.Feature(bytes_list=v1.train.BytesList(value=[values]))

    def as_int(value):
        return v1.train.Feature(int64_list=v1.train.Int64List(value=[int(value)]))

    features = {"image": as_bytes(np.ascontiguousarray(image, np.uint8).tobytes()),
                "mask": as_bytes(np.ascontiguousarray(mask, np.uint8).tobytes()),
                "height": as_int(image.shape[0]), "width": as_int(image.shape[1]),
                "name": as_bytes(name.encode("utf-8"))}
    if weights is not None:
        features["weights"] = as_bytes(np.ascontiguousarray(weights, "<f4").tobytes())
    return v1.train.Example(features=v1.train.Features(feature=features)).SerializeToString()


def decode_example(serialized):
    """(image uint8 [H, W], mask uint8 [H, W], weights float32 [H, W] or None, name) of one record, in numpy."""
    feature = v1.train.Example.FromString(serialized).features.feature
    height, width = feature["height"].int64_list.value[0], feature["width"].int64_list.value[0]

    def array(key, dtype):
        return np.frombuffer(feature[key].bytes_list.value[0], dtype).reshape(height, width)

    weights = array("weights", "<f4").astype(np.float32) if "weights" in feature else None
    return array("image", np.uint8), array("mask", np.uint8), weights, feature["name"].bytes_list.value[0].decode()


class ShardSet(object):
    """An opened, checked shard set. Quacks like data.sources.Pairs where the trainer needs it: `images`,
    `masks` and `weights` are lazy views (len, [index] reads one slice) and `names` lists every slice, so
    pipeline.make_dataset recognises the views and streams from the shards instead of embedding arrays."""

    def __init__(self, directory, manifest, shards):
        self.directory = directory
        self.manifest = manifest
        self.shards = shards  # manifest entries of the usable shards
        self.count = sum(entry["slices"] for entry in shards)
        self.has_weights = bool(manifest.get("weights"))
        self.min_size = (min(entry["min_height"] for entry in shards), min(entry["min_width"] for entry in shards))
        self.images, self.masks = SliceView(self, 0), SliceView(self, 1)
        self.weights = SliceView(self, 2) if self.has_weights else None
        self._cache = {}

    def __len__(self):
        return self.count

    @property
    def names(self):
        return ["{}[{}]".format(entry["file"], index) for entry in self.shards for index in range(entry["slices"])]

    def paths(self):
        return [os.path.join(self.directory, entry["file"]) for entry in self.shards]

    def read(self, index):
        """(image, mask, weights or None, name) of slice `index` (shard order), read from its shard."""
        if index not in self._cache:
            if not 0 <= index < self.count:
                raise IndexError("slice index {} out of range [0, {})".format(index, self.count))
            local = index
            for entry, path in zip(self.shards, self.paths()):
                if local < entry["slices"]:
                    for position, record in enumerate(read_records(path)):
                        if position == local:
                            if len(self._cache) >= _CACHED_SLICES:
                                self._cache.pop(next(iter(self._cache)))
                            self._cache[index] = decode_example(record)
                            break
                    break
                local -= entry["slices"]
        return self._cache[index]

    def worker_share(self, worker_index, num_workers):
        """(paths, record_level, per_epoch) of one data-parallel worker: whole shards when there are at least as
        many shards as workers (paths[worker_index::num_workers]), else every shard with every num_workers-th
        record (record_level True); per_epoch = the slices this worker sees per epoch."""
        paths, counts = self.paths(), [entry["slices"] for entry in self.shards]
        if len(paths) >= num_workers:
            return paths[worker_index::num_workers], False, sum(counts[worker_index::num_workers])
        return paths, True, len(range(worker_index, self.count, num_workers))


class SliceView(object):
    """One array of a ShardSet seen as a sequence of slices (field 0 images, 1 masks, 2 weights)."""

    def __init__(self, shard_set, field):
        self.shard_set = shard_set
        self.field = field

    def __len__(self):
        return len(self.shard_set)

    def __getitem__(self, index):
        return self.shard_set.read(int(index) % len(self.shard_set))[self.field]


def open_shard_set(directory, verify=True, skip_bad=False):
    """Read and check a shard set; returns a ShardSet.

    verify: compare each shard's CRC-32 with the manifest (reads the set once); sizes are always compared.
    skip_bad: leave out damaged shards with one warning instead of raising UserError.
    """
    manifest_path = os.path.join(directory, MANIFEST)
    try:
        with open(manifest_path) as handle:
            manifest = json.load(handle)
        entries = manifest["shards"]
        if manifest.get("format") != FORMAT:
            raise ValueError("format is not {}".format(FORMAT))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError("{} is not a readable shard manifest ({}); re-run python -m unet_perf.data.pack".format(
            manifest_path, err))
    if manifest.get("version") != VERSION:
        raise UserError("{} has format version {}, this unet_perf reads {}; re-run python -m unet_perf.data.pack"
                        .format(manifest_path, manifest.get("version"), VERSION))
    good, bad = [], []
    for entry in entries:
        problem = _shard_problem(os.path.join(directory, entry["file"]), entry, verify)
        if problem is None:
            good.append(entry)
        elif skip_bad:
            bad.append("{} ({})".format(os.path.join(directory, entry["file"]), problem))
        else:
            raise UserError("shard {} is {}; re-run python -m unet_perf.data.pack or pass --skip_bad_shards true"
                            .format(os.path.join(directory, entry["file"]), problem))
    if bad:
        warnings.warn("skipping {} damaged shard(s) of {}: {}".format(len(bad), directory, "; ".join(bad)))
    if not good:
        raise UserError("no usable shards in {}; re-run python -m unet_perf.data.pack".format(directory))
    return ShardSet(directory, manifest, good)


def _shard_problem(path, entry, verify):
    if not os.path.isfile(path):
        return "missing"
    size = os.path.getsize(path)
    if size != entry["bytes"]:
        return "truncated or altered ({} bytes, the manifest says {})".format(size, entry["bytes"])
    if verify and file_crc32(path) != entry["crc32"]:
        return "corrupted (CRC-32 differs from the manifest)"
    return None


# ----------------------------------------------------------------------------------------------------------
# Streaming


def _parse(record, has_weights):
    """One record -> (image bytes, mask bytes, weight bytes or "", height, width) tensors."""
    features = {"image": v1.io.FixedLenFeature([], tf.string), "mask": v1.io.FixedLenFeature([], tf.string),
                "height": v1.io.FixedLenFeature([], tf.int64), "width": v1.io.FixedLenFeature([], tf.int64)}
    if has_weights:
        features["weights"] = v1.io.FixedLenFeature([], tf.string)
    return v1.io.parse_single_example(record, features)


def _cut_tile(parsed, tile, span, offsets, has_weights):
    """Choose a crop of side `span` like the in-memory pipeline does (integer offset, uniform over the slice) and
    cut the [tile, tile] window around it, moved inwards at the slice borders; the row band is cut from the raw
    bytes (substr) before decoding, then the columns. Returns (arrays..., crop centre (x, y) in the tile)."""
    height, width = tf.cast(parsed["height"], tf.int32), tf.cast(parsed["width"], tf.int32)

    def place(uniform, length):
        room = tf.maximum(tf.floor(tf.cast(length, tf.float32) - span), 0.0)
        centre = tf.floor(uniform * (room + 1.0)) + (span - 1.0) / 2.0
        start = tf.cast(tf.floor(centre + 0.5 - tile / 2.0), tf.int32)
        start = tf.clip_by_value(start, 0, length - tile)
        return start, centre - tf.cast(start, tf.float32)

    top, centre_y = place(offsets[0], height)
    left, centre_x = place(offsets[1], width)

    def window(raw, dtype, itemsize):
        # a tile as tall as the slice takes the bytes as they are (substr would copy them once more)
        band = tf.cond(tile < height, lambda: tf.strings.substr(raw, top * width * itemsize, tile * width * itemsize),
                       lambda: raw)
        rows = tf.reshape(tf.io.decode_raw(band, dtype), [tile, width])
        return tf.reshape(tf.slice(rows, [0, left], [tile, tile]), [tile, tile])

    arrays = [window(parsed["image"], tf.uint8, 1), window(parsed["mask"], tf.uint8, 1)]
    if has_weights:
        arrays.append(window(parsed["weights"], tf.float32, 4))
    return tuple(arrays) + (tf.stack([centre_x, centre_y]),)


def tile_stream(shard_set, tile, span, seed, shuffle_buffer=0, start_element=0, worker_index=0, num_workers=1,
                with_weights=False, parallel=None):
    """Endless dataset of (image uint8 [tile, tile], mask uint8 [tile, tile][, weights float32 [tile, tile]],
    crop centre float32 [2]) of this worker's share, in the order described in the module doc string, starting at
    element `start_element` of the stream. Each tile holds a crop of side `span` (source pixels) placed like the
    in-memory pipeline places it, at the returned (x, y) centre in tile coordinates (see _cut_tile).

    shuffle_buffer: tiles held for shuffling (0 = min(per-epoch slices, 128)); parallel: parse/cut calls at once.
    """
    if not 0 <= worker_index < num_workers:
        raise UserError("worker_index {} must be in [0, {})".format(worker_index, num_workers))
    paths, record_level, per_epoch = shard_set.worker_share(worker_index, num_workers)
    if per_epoch == 0:
        raise UserError("worker {} of {} gets no slices from {}; use fewer workers or more slices".format(
            worker_index, num_workers, shard_set.directory))
    if with_weights and not shard_set.has_weights:
        raise UserError("{} holds no weight maps; re-pack it with --weight_map true".format(shard_set.directory))
    buffer_size = min(shuffle_buffer or _DEFAULT_SHUFFLE_TILES, per_epoch)
    cycle = min(_CYCLE, len(paths))
    parallel = parallel or AUTOTUNE
    seed = tf.constant(seed, tf.int64)
    start_epoch, skip = divmod(int(start_element), per_epoch)

    def epoch_tiles(epoch):
        order = tf.argsort(tf.random.stateless_uniform([len(paths)], tf.stack([seed, -1 - epoch])))
        files = tf.data.Dataset.from_tensor_slices(tf.gather(tf.constant(paths), order))
        records = files.interleave(lambda path: tf.data.TFRecordDataset(path, buffer_size=_CHUNK),
                                   cycle_length=cycle, block_length=1, num_parallel_calls=cycle)
        if record_level:
            records = records.shard(num_workers, worker_index)
        numbered = tf.data.Dataset.zip((records, tf.data.Dataset.range(per_epoch)))

        def cut(record, position):
            # crop position: stateless, keyed by (seed, epoch, position in the epoch's read order)
            offsets = tf.random.stateless_uniform([2], tf.stack([seed + 1, epoch * per_epoch + position]))
            return _cut_tile(_parse(record, with_weights), tile, span, offsets, with_weights)

        tiles = numbered.map(cut, num_parallel_calls=parallel)
        return tiles.shuffle(buffer_size, seed=seed * 1000003 + epoch, reshuffle_each_iteration=False)

    stream = tf.data.Dataset.range(start_epoch, 2 ** 62).flat_map(epoch_tiles)
    return stream.skip(skip) if skip else stream
