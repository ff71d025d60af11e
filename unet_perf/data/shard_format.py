"""The on-disk format of packed shard sets, written by unet_perf.data.pack and read by data.shard_reader.

A shard set is a folder with `manifest.json` and TFRecord files `shard-00000.tfrecord`, ... Each record is a
tf.train.Example of one slice: "image" (raw uint8 bytes, row-major), "mask" (raw uint8 {0, 1}, or class ids
0..C-1 and 255 = unlabelled when the manifest's num_classes C >= 2), optionally
"weights" (raw little-endian float32), "height", "width" (int64) and "name" (bytes). Slices may differ in size.
The manifest is written last, so a folder without it is not a shard set. Per shard it lists the slice count, the
byte size, the CRC-32 (zlib) of the whole file, the smallest slice height and width, and per record its height,
width and the file offsets of its raw image, mask (and weight) bytes (payload_offsets finds them by walking the
record's protobuf wire format, so readers can pread tiles without decoding records). It also records num_classes
(absent in older sets: 1), class_colors (the RGB table the labels were decoded with, or null), ignore_index, and for
C >= 2 class_pixels (pixels per class) and class_image_pixels (labelled pixels of the slices holding each class),
from which --class_weights auto is computed without reading the shards.
"""
import os
import zlib

import numpy as np

from unet_perf.compat import v1

MANIFEST = "manifest.json"
FORMAT = "unet_perf-shards"
VERSION = 2  # 2: per-record offsets in the manifest
FIELDS = ("image", "mask", "weights")
ITEMSIZE = (1, 1, 4)  # bytes per value of each field
# weights are stored little-endian and read into float32 as they are: hosts are little-endian (x86, Kunpeng)
DTYPES = (np.uint8, np.uint8, np.float32)
_CHUNK = 8 * 1024 * 1024


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
