"""Pack a dataset into TFRecord shards for streaming training (format: unet_perf.data.shard_format).

    python -m unet_perf.data.pack --data_path DIR --output SHARDS/ [--shard_mb 256] [--weight_map true]
        [--weight_w0 10 --weight_sigma 5] [--rgb convert|refuse] [--num_classes C] [--class_colors ...]
        [--ignore_index N] [--overwrite] [--verbose]

Reads any layout unet_perf.data.sources accepts, one slice at a time (folders file by file, multipage TIFF page
by page), so sets larger than memory pack in bounded memory; validates every slice like training does and decodes
labels as training does with the same --num_classes/--class_colors/--ignore_index (class-id maps are stored as
they are; the manifest records the classes and their pixel counts). Each shard
is written under a temporary name and renamed when complete; the manifest is written last (also temp + rename),
all inside a staging folder moved into --output only when the set is complete: a failed or interrupted pack leaves
nothing behind, and --overwrite keeps the previous set until the new one replaces it. Then train with
`--data_path SHARDS/`.
"""
import argparse
import dataclasses
import json
import os
import re
import sys
import time

import numpy as np

from unet_perf.config import Config, str2bool
from unet_perf.data import classes, shard_format
from unet_perf.data.sources import iter_pairs
from unet_perf.data.weights import border_weight_map
from unet_perf.errors import UserError, run_cli
from unet_perf.storage.output_folder import OutputFolder, add_overwrite_flag
from unet_perf.progress import BarOrLines
from unet_perf.tf_logging import add_verbose_flag


# A plain progress line every this many slices (and at the end) when no bar is shown.
PROGRESS_EVERY = 100


class ShardWriter(object):
    """Writes records into shards of about `shard_bytes`, each under a temporary name until it is complete."""

    def __init__(self, output, shard_bytes):
        from unet_perf.compat import v1
        self._v1 = v1
        self.output, self.shard_bytes = output, shard_bytes
        self.entries, self._writer, self._size, self._slices, self._min = [], None, 0, 0, None

    def write(self, record, payloads, height, width):
        """Append one serialized slice; `payloads` are its raw field bytes (shard_format.encode_example)."""
        if self._writer is None:
            self._temp = os.path.join(self.output, "." + shard_format.shard_name(len(self.entries)) + ".tmp")
            self._writer = self._v1.io.TFRecordWriter(self._temp)
            self._size, self._slices, self._min, self._records = 0, 0, (height, width), []
        self._writer.write(record)
        data_start = self._size + 12  # TFRecord framing: length (8 bytes), its CRC (4), data, data CRC (4)
        self._records.append([height, width] + [data_start + offset
                                                for offset in shard_format.payload_offsets(record, payloads)])
        self._size += len(record) + 16
        self._slices += 1
        self._min = (min(self._min[0], height), min(self._min[1], width))
        if self._size >= self.shard_bytes:
            self.close_shard()

    def close_shard(self):
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        name = shard_format.shard_name(len(self.entries))
        final = os.path.join(self.output, name)
        os.replace(self._temp, final)
        self.entries.append({"file": name, "slices": self._slices, "bytes": os.path.getsize(final),
                             "crc32": shard_format.file_crc32(final), "min_height": self._min[0],
                             "min_width": self._min[1], "records": self._records})


def pack(data_path, output, shard_mb=256.0, weight_map=False, weight_w0=10.0, weight_sigma=5.0, rgb="convert",
         overwrite=False, progress_stream=sys.stderr, num_classes=1, class_colors="", ignore_index=-1):
    """Pack `data_path` into shards under `output`; returns the manifest dict (also written as manifest.json).
    num_classes, class_colors, ignore_index: how the labels encode classes, checked and decoded as in training.

    The set is written into a staging folder inside `output` and moved into place when complete
    (unet_perf.storage.output_folder): a failed pack leaves nothing behind and, under overwrite, the previous set intact
    (the disk needs room for both sets meanwhile)."""
    if shard_mb <= 0:
        raise UserError("--shard_mb must be positive, got {}".format(shard_mb))
    if weight_map and (weight_sigma <= 0 or weight_w0 < 0):
        raise UserError("--weight_map needs --weight_sigma > 0 and --weight_w0 >= 0, got {} and {}".format(
            weight_sigma, weight_w0))
    # the training flags' own checks (Config.validate), then the same label decoding as training
    spec = classes.label_spec(dataclasses.replace(Config(), num_classes=num_classes, class_colors=class_colors,
                                                  ignore_index=ignore_index).validate())
    total, pairs = iter_pairs(data_path, rgb, spec)
    weights = {"w0": weight_w0, "sigma": weight_sigma} if weight_map else None
    with OutputFolder(output, overwrite, is_pack_output, last=(shard_format.MANIFEST,), command="pack") as staging:
        return write_shard_set(pairs, total, staging, shard_mb, weights, os.path.abspath(data_path),
                               progress_stream, spec)


def is_pack_output(name):
    """A name pack writes: the manifest, shards, and hidden temporary files."""
    return name == shard_format.MANIFEST or name.startswith("shard-") or name.startswith(".")


def write_shard_set(pairs, total, output, shard_mb=256.0, weights=None, source="", progress_stream=sys.stderr,
                    spec=classes.BINARY):
    """Write (image, mask, name) pairs into shards and then the manifest under the existing folder `output`.

    weights: None, or {"w0": .., "sigma": ..} to store border weight maps computed per slice. spec: the label
    encoding the masks were decoded with (classes.LabelSpec); C >= 2 records class pixel counts. Returns the manifest.
    """
    writer = ShardWriter(output, int(shard_mb * 1024 * 1024))
    multi_class = spec.num_classes >= 2
    pixels, image_pixels = np.zeros(spec.num_classes, np.int64), np.zeros(spec.num_classes, np.int64)
    progress = BarOrLines(total, "slice", out=progress_stream, bar_stream=progress_stream)
    started = time.time()
    try:
        for done, (image, mask, name) in enumerate(pairs, 1):
            weight_map = (border_weight_map(mask, weights["w0"], weights["sigma"], num_classes=spec.num_classes)
                          if weights else None)
            if multi_class:
                counts = classes.class_pixel_counts([mask], spec.num_classes)
                pixels += counts[0]
                image_pixels += counts[1]
            record, payloads = shard_format.encode_example(image, mask, weight_map, name)
            writer.write(record, payloads, image.shape[0], image.shape[1])
            due = done % PROGRESS_EVERY == 0 or done == total
            progress.advance(1, None, "packed {}/{} slices".format(done, total) if due else None)
        writer.close_shard()
    finally:
        progress.close()
    manifest = {"format": shard_format.FORMAT, "version": shard_format.VERSION, "source": source,
                "slices": sum(entry["slices"] for entry in writer.entries), "shards": writer.entries,
                "weights": weights, "num_classes": spec.num_classes,
                "class_colors": None if spec.colors is None else spec.colors.tolist(),
                "ignore_index": spec.ignore_index,
                "class_pixels": [int(count) for count in pixels] if multi_class else None,
                "class_image_pixels": [int(count) for count in image_pixels] if multi_class else None,
                "seconds": round(time.time() - started, 1)}
    temp = os.path.join(output, "." + shard_format.MANIFEST + ".tmp")
    with open(temp, "w") as handle:
        handle.write(_manifest_text(manifest))
    os.replace(temp, os.path.join(output, shard_format.MANIFEST))
    return manifest


def _manifest_text(manifest):
    """JSON of the manifest, indented, with each list of numbers (a record row) on one line."""
    def one_line(match):
        return "[" + ", ".join(match.group(0)[1:-1].replace(",", " ").split()) + "]"
    return re.sub(r"\[[-\d,\s]+\]", one_line, json.dumps(manifest, indent=1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--data_path", required=True, help="folder in any layout unet_perf.data.sources reads")
    parser.add_argument("--output", required=True, help="new folder for the shards and manifest.json")
    parser.add_argument("--shard_mb", type=float, default=256.0, help="approximate shard size in MiB")
    parser.add_argument("--weight_map", type=str2bool, default=False, help="also store U-Net border weight maps")
    parser.add_argument("--weight_w0", type=float, default=10.0, help="w0 of the border weight map")
    parser.add_argument("--weight_sigma", type=float, default=5.0, help="sigma of the border weight map (px)")
    parser.add_argument("--rgb", default="convert", choices=("convert", "refuse"), help="colour input handling")
    class_flags = {field.name: field for field in dataclasses.fields(Config)}
    for name, kind in (("num_classes", int), ("class_colors", str), ("ignore_index", int)):  # as in training
        parser.add_argument("--" + name, type=kind, default=class_flags[name].default,
                            help=class_flags[name].metadata["help"])
    add_overwrite_flag(parser, "replace an existing shard set (kept intact until the new one is complete)")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    manifest = pack(args.data_path, args.output, args.shard_mb, args.weight_map, args.weight_w0,
                    args.weight_sigma, args.rgb, args.overwrite, num_classes=args.num_classes,
                    class_colors=args.class_colors, ignore_index=args.ignore_index)
    print("wrote {} slices in {} shard(s) to {}".format(manifest["slices"], len(manifest["shards"]), args.output))
    return 0


if __name__ == "__main__":
    run_cli(main)
