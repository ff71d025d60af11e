"""Packed shard sets: the on-disk format written by unet_perf.data.pack and the streaming reader for training.

A shard set is a folder with `manifest.json` and TFRecord files `shard-00000.tfrecord`, ... Each record is a
tf.train.Example of one slice: "image" (raw uint8 bytes, row-major), "mask" (raw uint8 {0, 1}), optionally
"weights" (raw little-endian float32), "height", "width" (int64) and "name" (bytes). Slices may differ in size.
The manifest is written last, so a folder without it is not a shard set. Per shard it lists the slice count, the
byte size, the CRC-32 (zlib) of the whole file, the smallest slice height and width, and per record its height,
width and the file offsets of its raw image, mask (and weight) bytes.

Streaming (slice_stream, tile_reader) reads tiles by those offsets instead of decoding records: per epoch, this worker's
slice indices are put in a seeded order (a full permutation, or with a bounded --shuffle_buffer: shards in a
seeded order, read interleaved, through a shuffle buffer of that many slices), a crop position is drawn per
element as the in-memory pipeline draws it, and only the rows of the square tile around it are read from the
file (pread straight into the batch). Records are not decoded and no tile data waits in a shuffle buffer, so the
reader costs a small fraction of the augmentation. The TFRecord framing keeps the shards readable by any
TFRecord tool; its per-record CRCs are not checked while streaming: every shard's CRC-32 is checked before
training (--verify_shards true, the default) or before the stream first reads from it (false), and every read's
length is checked.
The stream is a pure function of (seed, worker): element e is reached by computing epoch e // per_epoch's
order and skipping e % per_epoch indices, so resume re-reads nothing.
"""
import json
import os
import threading
import warnings
import zlib

import numpy as np
import tensorflow as tf

from unet_perf.compat import v1
from unet_perf.errors import UserError

MANIFEST = "manifest.json"
FORMAT = "unet_perf-shards"
VERSION = 2  # 2: per-record offsets in the manifest
FIELDS = ("image", "mask", "weights")
_ITEMSIZE = (1, 1, 4)
# weights are stored little-endian and read into float32 as they are: hosts are little-endian (x86, Kunpeng)
_DTYPES = (np.uint8, np.uint8, np.float32)
_CHUNK = 8 * 1024 * 1024
_CYCLE = 4  # shards read at once with a bounded shuffle buffer
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


def encode_example(image, mask, weights, name):
    """(serialized tf.train.Example of one slice (see the module doc string), its raw field payloads (image,
    mask[, weights]) as stored in it)."""
    def as_bytes(values):
        return v1.train.Feature(bytes_list=v1.train.BytesList(value=[values]))

    def as_int(value):
        return v1.train.Feature(int64_list=v1.train.Int64List(value=[int(value)]))

    payloads = [np.ascontiguousarray(image, np.uint8).tobytes(), np.ascontiguousarray(mask, np.uint8).tobytes()]
    if weights is not None:
        payloads.append(np.ascontiguousarray(weights, "<f4").tobytes())
    features = {"height": as_int(image.shape[0]), "width": as_int(image.shape[1]),
                "name": as_bytes(name.encode("utf-8"))}
    features.update((key, as_bytes(payload)) for key, payload in zip(FIELDS, payloads))
    return v1.train.Example(features=v1.train.Features(feature=features)).SerializeToString(), payloads


def payload_offsets(record, payloads):
    """Offsets of the raw payloads (image, mask[, weights] bytes) inside a serialized record, found by walking its
    protobuf wire format (Example.features -> Features.feature map entries -> Feature.bytes_list -> value) and
    checked against the payloads."""
    found = {}
    for _, features_start, features_end in _length_delimited(record, 0, len(record)):
        for _, entry_start, entry_end in _length_delimited(record, features_start, features_end):
            parts = {number: (start, end) for number, start, end in _length_delimited(record, entry_start, entry_end)}
            key = record[slice(*parts[1])].decode("utf-8", "replace") if 1 in parts else None
            if key in FIELDS and 2 in parts:
                for kind, list_start, list_end in _length_delimited(record, *parts[2]):
                    if kind == 1:  # bytes_list
                        found[key] = [start for _, start, _ in _length_delimited(record, list_start, list_end)]
    offsets = [found.get(key, [None])[0] for key in FIELDS[:len(payloads)]]
    for offset, payload in zip(offsets, payloads):
        if offset is None or record[offset:offset + len(payload)] != payload:
            raise ValueError("a payload is not where the record's wire format puts it")
    return offsets


def _length_delimited(data, start, end):
    """(field number, value start, value end) of each length-delimited field of the protobuf message in
    data[start:end]; other wire types are skipped."""
    position = start
    while position < end:
        key, position = _varint(data, position)
        wire_type = key & 7
        if wire_type == 2:
            length, position = _varint(data, position)
            yield key >> 3, position, position + length
            position += length
        elif wire_type == 0:
            _, position = _varint(data, position)
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
        else:
            raise ValueError("unexpected protobuf wire type {}".format(wire_type))


def _varint(data, position):
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, position


def _pread_into(fd, buffer, offset):
    """Read as many bytes as the writable buffer (a numpy array) holds, from `offset`, straight into it; returns
    the count read (short at the end of the file)."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [buffer], offset)
    data = os.pread(fd, memoryview(buffer).nbytes, offset)
    memoryview(buffer).cast("B")[:len(data)] = data
    return len(data)


class ShardSet(object):
    """An opened, checked shard set. Quacks like data.sources.Pairs where the trainer needs it: `images`,
    `masks` and `weights` are lazy views (len, [index] reads one slice) and `names` lists every slice, so
    pipeline.make_dataset recognises the views and streams from the shards instead of embedding arrays.
    Slice i is record i in shard order; reads go by the manifest's offsets (read_window)."""

    def __init__(self, directory, manifest, shards, verified=True):
        self.directory = directory
        self.verified = verified  # False: each shard's CRC-32 is checked when it is first read (_fd)
        self.manifest = manifest
        self.shards = shards  # manifest entries of the usable shards
        self.count = sum(entry["slices"] for entry in shards)
        self.has_weights = bool(manifest.get("weights"))
        self.min_size = (min(entry["min_height"] for entry in shards), min(entry["min_width"] for entry in shards))
        records = np.array([record for entry in shards for record in entry["records"]], np.int64)
        self.heights, self.widths, self.offsets = records[:, 0], records[:, 1], records[:, 2:]
        self.file_of = np.repeat(np.arange(len(shards)), [entry["slices"] for entry in shards])
        self.images, self.masks = SliceView(self, 0), SliceView(self, 1)
        self.weights = SliceView(self, 2) if self.has_weights else None
        self._cache = {}
        self._fds = {}
        self._lock = threading.Lock()

    def __len__(self):
        return self.count

    @property
    def names(self):
        return [self.slice_name(index) for index in range(self.count)]

    def slice_name(self, index):
        """'<shard file>[<record number in it>]'."""
        shard = int(self.file_of[index])
        return "{}[{}]".format(self.shards[shard]["file"], index - int(np.searchsorted(self.file_of, shard)))

    def _fd(self, shard):
        with self._lock:  # reads come from several tf.data threads; one descriptor per shard, kept open
            if shard not in self._fds:
                path = os.path.join(self.directory, self.shards[shard]["file"])
                if not self.verified and file_crc32(path) != self.shards[shard]["crc32"]:
                    raise UserError("shard {} is corrupted (CRC-32 differs from the manifest; found when training "
                                    "first read it); re-run python -m unet_perf.data.pack, or pass --verify_shards "
                                    "true --skip_bad_shards true to leave it out".format(path))
                self._fds[shard] = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            return self._fds[shard]

    def close(self):
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds = {}

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: os may be gone already
            pass

    def read_window(self, index, field, top, left, rows, cols, out=None):
        """Rows [top, top+rows) x columns [left, left+cols) of field `field` (0 image, 1 mask, 2 weights) of slice
        `index`, read from its shard into `out` (a new array if None). Only those rows are read; they land
        straight in `out` when the window spans whole rows."""
        width, itemsize, dtype = int(self.widths[index]), _ITEMSIZE[field], _DTYPES[field]
        if out is None:
            out = np.empty((rows, cols), dtype)
        whole_rows = left == 0 and cols == width
        band = out if whole_rows else np.empty((rows, width), dtype)
        shard = int(self.file_of[index])
        expected = rows * width * itemsize
        got = _pread_into(self._fd(shard), band, int(self.offsets[index, field]) + top * width * itemsize)
        if got != expected:
            raise UserError("shard {} ended {} bytes early while reading slice {}; it changed after it was "
                            "opened: re-run python -m unet_perf.data.pack".format(
                                os.path.join(self.directory, self.shards[shard]["file"]), expected - got, index))
        if not whole_rows:
            out[...] = band[:, left:left + cols]
        return out

    def read(self, index):
        """(image, mask, weights or None, name) of slice `index` (shard order), read from its shard."""
        if index not in self._cache:
            if not 0 <= index < self.count:
                raise IndexError("slice index {} out of range [0, {})".format(index, self.count))
            height, width = int(self.heights[index]), int(self.widths[index])
            fields = [self.read_window(index, field, 0, 0, height, width)
                      for field in range(3 if self.has_weights else 2)]
            if len(self._cache) >= _CACHED_SLICES:
                self._cache.pop(next(iter(self._cache)))
            self._cache[index] = (fields[0], fields[1], fields[2] if self.has_weights else None,
                                  self.slice_name(index))
        return self._cache[index]

    def worker_shares(self, worker_index, num_workers):
        """This data-parallel worker's slice indices, one int64 array per shard it reads: whole shards when there
        are at least as many shards as workers (shards worker_index, worker_index + num_workers, ...), else
        every num_workers-th slice of the set (indices i with i % num_workers == worker_index)."""
        bounds = np.cumsum([0] + [entry["slices"] for entry in self.shards])
        ranges = [np.arange(start, end, dtype=np.int64) for start, end in zip(bounds[:-1], bounds[1:])]
        if len(ranges) >= num_workers:
            return ranges[worker_index::num_workers]
        return [share for share in (r[r % num_workers == worker_index] for r in ranges) if len(share)]


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

    verify: compare each shard's CRC-32 with the manifest now (reads the set once); False: when a shard is first
    read. Sizes are always compared now.
    skip_bad: leave out damaged shards with one warning instead of raising UserError.
    """
    manifest_path = os.path.join(directory, MANIFEST)
    try:
        with open(manifest_path) as handle:
            manifest = json.load(handle)
        entries = manifest["shards"]
        if manifest.get("format") != FORMAT:
            raise ValueError("format is not {}".format(FORMAT))
        if manifest.get("version") == VERSION:
            for entry in entries:
                _check_records(entry, 5 if manifest.get("weights") else 4)
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
    return ShardSet(directory, manifest, good, verified=verify)


def _check_records(entry, width):
    """ValueError unless the entry's record table has one row of `width` ints per slice, each read in the file."""
    records = np.array(entry["records"], np.int64)
    if records.shape != (entry["slices"], width):
        raise ValueError("{} lists {} records of {} for {} slices".format(
            entry["file"], len(records), records.shape[1:], entry["slices"]))
    pixels = records[:, 0] * records[:, 1]
    ends = records[:, 2:] + pixels[:, None] * np.array(_ITEMSIZE[:width - 2])
    if records.size and (records.min() < 0 or ends.max() > entry["bytes"]):
        raise ValueError("{} has record offsets outside the file".format(entry["file"]))


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
        outputs = [np.empty((len(indices), tile, tile), _DTYPES[field]) for field in range(fields)]
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
