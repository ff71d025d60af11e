"""Random-access reading of a packed shard set (format: data.shard_format): open and check the manifest and the
shards (sizes always, CRC-32 now or when a shard is first read), then read any slice, or any window of rows and
columns of it, by the manifest's offsets.

Each read's length is checked; the TFRecord framing's per-record CRCs are not read (the whole-file CRC-32 covers
them). The streaming reader for training (data.shard_stream) reads through ShardSet.read_window.
"""
import json
import os
import threading
import warnings

import numpy as np

from unet_perf.data.shard_format import DTYPES, FORMAT, ITEMSIZE, MANIFEST, VERSION, file_crc32
from unet_perf.errors import UserError

_CACHED_SLICES = 16  # slices read through the views (probes, previews) kept in memory


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
        self.num_classes = manifest.get("num_classes", 1)  # sets packed before --num_classes: the membrane task
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
        width, itemsize, dtype = int(self.widths[index]), ITEMSIZE[field], DTYPES[field]
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
    ends = records[:, 2:] + pixels[:, None] * np.array(ITEMSIZE[:width - 2])
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
