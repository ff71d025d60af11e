"""From a Config to arrays: read (or synthesise) the slices, split them, build border weight maps and class
weights."""
import math

import numpy as np

from unet_perf.data import classes, shard_format, shard_reader
from unet_perf.data.sources import Pairs, load_pairs
from unet_perf.data.split import split_indices
from unet_perf.data.synthetic import SYNTHETIC_CLASSES, membranes, organelles
from unet_perf.data.weights import border_weight_maps
from unet_perf.errors import UserError


def load_dataset(cfg):
    """(train Pairs, val Pairs or None, weights float32 [N_train,H,W] or None) for `cfg`; prints nothing.

    Slices must be at least ceil(crop_size / input_scale) px on each side: that is the area the augmentation
    samples to produce one crop_size tile.
    """
    if cfg.weight_map and (cfg.weight_sigma <= 0 or cfg.weight_w0 < 0):
        raise UserError("--weight_map needs --weight_sigma > 0 and --weight_w0 >= 0, got {} and {}".format(
            cfg.weight_sigma, cfg.weight_w0))
    min_size = required_size(cfg.crop_size, cfg.input_scale)
    if shard_format.is_shard_set(cfg.data_path):
        return _load_shard_set(cfg, min_size)
    if not cfg.data_path and cfg.synthetic_size < min_size:
        raise UserError("--synthetic_size {} is smaller than the {} px that --crop_size {} at --input_scale {} "
                        "samples; raise --synthetic_size or lower --crop_size".format(
                            cfg.synthetic_size, min_size, cfg.crop_size, cfg.input_scale))
    pairs = read_slices(cfg, min_size)
    source = cfg.data_path or "the synthetic set (--synthetic_count {})".format(cfg.synthetic_count)
    train_idx, val_idx = split_indices(len(pairs.names), cfg.val_split, cfg.seed)
    if len(train_idx) < cfg.batch_size:
        raise UserError("--batch_size {} is larger than the {} training slices in {}; lower --batch_size or hold "
                        "out fewer slices with --val_split".format(cfg.batch_size, len(train_idx), source))
    train = subset(pairs, train_idx)
    val = subset(pairs, val_idx) if len(val_idx) else None
    weights = None
    if cfg.weight_map:
        weights = border_weight_maps(train.masks, cfg.weight_w0, cfg.weight_sigma, num_classes=cfg.num_classes)
    return train, val, weights


def read_slices(cfg, min_size=0):
    """Every slice `cfg` names, as Pairs: cfg.data_path (read with cfg.rgb, each side at least `min_size` px), or
    the built-in synthetic set (cfg.synthetic_count, cfg.synthetic_size, cfg.seed) when it is empty. Labels are
    decoded for cfg.num_classes (data.classes.label_spec); the synthetic set is the membrane task for C <= 2
    (C = 2: 0 membrane, 1 interior) and synthetic.organelles for C = 3 or 4."""
    if cfg.data_path:
        return load_pairs(cfg.data_path, rgb=cfg.rgb, min_size=min_size, spec=classes.label_spec(cfg))
    if cfg.num_classes <= 2:
        return membranes(cfg.synthetic_count, cfg.synthetic_size, cfg.seed)
    if cfg.num_classes > len(SYNTHETIC_CLASSES):
        raise UserError("the built-in synthetic set has {} classes ({}), not --num_classes {}; pass --num_classes 2-{} "
                        "or your own labels with --data_path".format(len(SYNTHETIC_CLASSES), ", ".join(
                            SYNTHETIC_CLASSES), cfg.num_classes, len(SYNTHETIC_CLASSES)))
    return organelles(cfg.synthetic_count, cfg.synthetic_size, cfg.seed, cfg.num_classes)


def _load_shard_set(cfg, min_size):
    """(ShardSet, None, its weight view or None): the set streams in training (pipeline.make_dataset)."""
    if cfg.val_split:
        raise UserError("--val_split is not supported with the packed shard set {}; pack the held-out slices into "
                        "their own folder and evaluate on it, or train from the unpacked folder".format(cfg.data_path))
    shard_set = shard_reader.open_shard_set(cfg.data_path, verify=cfg.verify_shards, skip_bad=cfg.skip_bad_shards)
    if shard_set.num_classes != cfg.num_classes:
        raise UserError("{} was packed with --num_classes {} but training has --num_classes {}; pass --num_classes {} "
                        "or re-pack with python -m unet_perf.data.pack --num_classes {}".format(
                            cfg.data_path, shard_set.num_classes, cfg.num_classes, shard_set.num_classes,
                            cfg.num_classes))
    height, width = shard_set.min_size
    if min(height, width) < min_size:
        raise UserError("the smallest slice in {} is {}x{} but training samples {}x{} px; use a smaller --crop_size "
                        "or a larger --input_scale".format(cfg.data_path, width, height, min_size, min_size))
    if len(shard_set) < cfg.batch_size:
        raise UserError("--batch_size {} is larger than the {} slices in {}; lower --batch_size".format(
            cfg.batch_size, len(shard_set), cfg.data_path))
    weights = None
    if cfg.weight_map:
        packed = shard_set.manifest.get("weights") or {}
        if not packed:
            raise UserError("{} holds no weight maps; re-pack it with --weight_map true or drop --weight_map".format(
                cfg.data_path))
        if (packed.get("w0"), packed.get("sigma")) != (cfg.weight_w0, cfg.weight_sigma):
            raise UserError("{} was packed with weight maps w0={} sigma={}, not --weight_w0 {} --weight_sigma {}; "
                            "pass those values or re-pack".format(cfg.data_path, packed.get("w0"), packed.get("sigma"),
                                                                  cfg.weight_w0, cfg.weight_sigma))
        weights = shard_set.weights
    return shard_set, None, weights


def required_size(crop_size, input_scale):
    """Smallest slice side (px) from which the augmentation can sample a crop_size tile at input_scale."""
    return int(math.ceil(crop_size / float(input_scale) - 1e-9))


def subset(pairs, indices):
    """The slices of `pairs` at `indices`, in that order."""
    indices = np.asarray(indices, np.int64)
    return Pairs(pairs.images[indices], pairs.masks[indices], [pairs.names[i] for i in indices])


def summarize_slices(pairs, num_classes=1):
    """One line: count, size and membrane share, e.g. '24 slices 512x512, membrane 21.9%' (a shard set: count,
    smallest size, shard count and folder); for num_classes >= 2 the class shares of the labelled pixels instead,
    e.g. '..., classes 0 71.0% 1 20.1% 2 8.9%'."""
    if isinstance(pairs, shard_reader.ShardSet):
        height, width = pairs.min_size
        text = "{} slices >= {}x{} streamed from {} shard{} in {}".format(
            len(pairs), width, height, len(pairs.shards), "" if len(pairs.shards) == 1 else "s", pairs.directory)
        pixels = pairs.manifest.get("class_pixels")
        return text + (", " + _class_shares(pixels) if num_classes >= 2 and pixels else "")
    if pairs is None or len(pairs.names) == 0:
        return "0 slices"
    count, height, width = pairs.masks.shape
    text = "{} slice{} {}x{}".format(count, "" if count == 1 else "s", width, height)
    if num_classes >= 2:
        return text + ", " + _class_shares(classes.class_pixel_counts(pairs.masks, num_classes)[0])
    membrane = 100.0 * (1.0 - float(np.mean(pairs.masks)))
    return text + ", membrane {:.1f}%".format(membrane)


def _class_shares(pixels):
    total = float(max(1, sum(pixels)))
    return "classes " + " ".join("{} {:.1f}%".format(label, 100.0 * count / total)
                                 for label, count in enumerate(pixels))


def class_weights_for(cfg, train):
    """The C cross-entropy class weights of --class_weights (list of floats), or None for all 1: the explicit
    list, or 'auto' = median-frequency balancing over `train` (Pairs: its masks; a ShardSet: its manifest's
    class pixel counts)."""
    values = classes.class_weight_values(cfg.class_weights, cfg.num_classes) if cfg.num_classes >= 2 else None
    if values != "auto":
        return values
    if isinstance(train, shard_reader.ShardSet):
        manifest = train.manifest
        return classes.median_frequency_from_counts(manifest["class_pixels"], manifest["class_image_pixels"],
                                                    source="the labels packed in {}".format(train.directory))
    source = "the training labels of {}".format(cfg.data_path or "the synthetic set")
    return classes.median_frequency_weights(train.masks, cfg.num_classes, source=source)
