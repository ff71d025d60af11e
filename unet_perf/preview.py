"""Write a PNG grid of augmented training pairs, to see what the augmentation does.

    python -m unet_perf.preview [--data_path P] [--out augment_preview.png] [--count 8] [augmentation flags]

Each row is one sample of the first training batch exactly as the pipeline makes it: the image, then the same
image with the mask overlaid in green (--num_classes C >= 2: tinted with the class colours, --class_colors or a
fixed palette; unlabelled pixels untinted).
"""
import dataclasses
import os

import cv2

from unet_perf.config import Config, build_parser
from unet_perf.errors import UserError, run_cli
from unet_perf.inference.panels import augmentation_grid, class_palette

PREVIEW_FIELDS = (
    "data_path", "synthetic_count", "synthetic_size", "rgb", "crop_size", "input_scale", "seed",
    "augment", "flip", "rotate_deg", "scale_range", "shear", "translate", "elastic", "elastic_grid",
    "elastic_sigma", "border", "mask_interp", "brightness", "contrast", "gamma", "noise", "xla_augment",
    "augment_engine", "num_classes", "class_colors", "ignore_index",
)


def build_preview_parser():
    parser = build_parser("Write a PNG grid of augmented image/mask pairs", fields=PREVIEW_FIELDS)
    parser.add_argument("--out", default="augment_preview.png", help="PNG file to write")
    parser.add_argument("--count", type=int, default=8, help="number of augmented pairs (rows)")
    return parser


def augmented_pairs(cfg, count):
    """The first `count` augmented (image [count,h,w] in [0,1], mask [count,h,w]) of the training pipeline."""
    from unet_perf import compat
    from unet_perf.input import pipeline
    from unet_perf.compat import v1
    from unet_perf.data.loading import load_dataset

    compat.enable_graph_mode()
    train, _, _ = load_dataset(dataclasses.replace(cfg, batch_size=1))
    batch_cfg = dataclasses.replace(cfg, batch_size=count, normalize="unit", precision="fp32", data_threads=1)
    with v1.Graph().as_default():
        iterator = pipeline.make_iterator(pipeline.make_dataset(train.images, train.masks, None, batch_cfg))
        batch = iterator.get_next()
        with v1.Session() as sess:
            sess.run(iterator.initializer)
            images, masks = sess.run(batch)
    return images[..., 0], masks[..., 0]


def main(argv=None):
    args = vars(build_preview_parser().parse_args(argv))
    out, count = args.pop("out"), args.pop("count")
    args.pop("verbose")
    if count <= 0:
        raise UserError("--count must be positive, got {}".format(count))
    cfg = dataclasses.replace(Config(), **args)
    cfg.validate()
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise UserError("--out {}: folder {} does not exist; create it or choose another path".format(out, folder))
    images, masks = augmented_pairs(cfg, count)
    palette = class_palette(cfg.num_classes, cfg.class_colors, cfg.ignore_index) if cfg.num_classes > 1 else None
    if not cv2.imwrite(out, augmentation_grid(images, masks, palette)):
        raise UserError("--out {}: could not write the PNG; use a writable path ending in .png".format(out))
    print(out)
    return 0


if __name__ == "__main__":
    run_cli(main)
