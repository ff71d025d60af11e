"""What the predict, evaluate and export CLIs share: the flags naming a trained model and how to run it, their
checks, the predictor they open, and how they write an output file (the --output folder itself:
unet_perf.storage.output_folder). No TensorFlow is imported here until a predictor is opened, so a bad flag fails
fast."""
import sys

import cv2

from unet_perf.config import PRECISIONS, WEIGHT_CHOICES
from unet_perf.errors import UserError
from unet_perf.inference.panels import class_palette

BLEND_CHOICES = ("cosine", "gaussian")


def add_model_flags(parser, precision_default=None,
                    precision_help="compute precision (default: the one the model was trained with)"):
    """--model_dir, --checkpoint, --weights and --precision: which trained model to load and how to compute."""
    parser.add_argument("--model_dir", required=True, help="directory written by python -m unet_perf.train")
    parser.add_argument("--checkpoint", default=None,
                        help="best, latest, a directory or a checkpoint prefix (default: best/ if present, else "
                             "the latest checkpoint)")
    parser.add_argument("--weights", default="ema", choices=WEIGHT_CHOICES,
                        help="ema: the checkpoint's moving average of the weights when it has one (--ema in "
                             "training), else the trained weights; raw: always the trained weights")
    parser.add_argument("--precision", default=precision_default, choices=PRECISIONS, help=precision_help)
    return parser


def add_inference_flags(parser):
    """The model flags plus how predict and evaluate tile, batch and threshold."""
    add_model_flags(parser)
    parser.add_argument("--tile_size", type=int, default=None,
                        help="tile side in pixels at the network's input scale (default: the model's --crop_size); "
                             "the U-Net is fully convolutional, so any positive multiple of 2^depth works and "
                             "bigger tiles waste less overlap")
    parser.add_argument("--overlap", type=int, default=None,
                        help="pixels shared by neighbouring tiles, at the network's input scale (default: a "
                             "quarter of the tile)")
    parser.add_argument("--blend", default="cosine", choices=BLEND_CHOICES,
                        help="how overlapping tiles are weighted: cosine (Hann window) or gaussian (sigma = tile/8, "
                             "as nnU-Net and MONAI)")
    parser.add_argument("--tta", action="store_true", help="average the 8 flips/rotations of every tile")
    parser.add_argument("--batch_size", type=int, default=4, help="tiles per Session.run")
    parser.add_argument("--rgb", default="convert", choices=("convert", "refuse"),
                        help="colour input: convert to gray with a warning, or refuse")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="P(interior) above it is interior in the masks and overlays (V_rand/V_info sweep "
                             "0.0-1.0 themselves; pixel metrics use 0.5); --num_classes >= 2 models take the "
                             "most probable class instead")
    return parser


def check_inference_flags(args):
    """UserError for a flag of add_inference_flags outside its range."""
    if args.batch_size <= 0:
        raise UserError("--batch_size must be positive, got {}".format(args.batch_size))
    if args.tile_size is not None and args.tile_size <= 0:
        raise UserError("--tile_size must be positive, got {}".format(args.tile_size))
    if args.overlap is not None and args.overlap < 0:
        raise UserError("--overlap must not be negative, got {}".format(args.overlap))
    if not 0.0 <= args.threshold <= 1.0:
        raise UserError("--threshold must be in [0, 1], got {}".format(args.threshold))


def open_predictor(args, cfg=None):
    """An inference.Predictor for the model and settings the flags name (close it when done); cfg: the model's
    config when the caller has loaded it already."""
    from unet_perf.inference.predictor import Predictor  # TensorFlow is imported only once the flags are valid

    from unet_perf.inference.model_dir import load_config

    cfg = cfg if cfg is not None else load_config(args.model_dir)
    tile = tile_size(args.tile_size, cfg)
    if args.overlap is not None and args.overlap >= tile:
        raise UserError("--overlap {} must be smaller than the tile ({} px: --tile_size, default the model's "
                        "--crop_size)".format(args.overlap, tile))
    return Predictor.from_model_dir(args.model_dir, checkpoint=args.checkpoint, precision=args.precision,
                                    batch_size=args.batch_size, overlap=args.overlap, tta=args.tta,
                                    weights=args.weights, cfg=cfg, tile_size=tile, blend=args.blend)


def tile_size(requested, cfg):
    """The tile side to predict with: `requested` (--tile_size) if it is a positive multiple of 2^depth (the
    U-Net halves the tile depth times), else a UserError naming the nearest valid sizes; None: cfg.crop_size."""
    if requested is None:
        return cfg.crop_size
    multiple = 2 ** cfg.depth
    if requested > 0 and requested % multiple == 0:
        return requested
    below = requested // multiple * multiple
    nearest = " or ".join(str(size) for size in (below, below + multiple) if size > 0)
    raise UserError("--tile_size {} must be a positive multiple of 2^depth = {} for this model; try {}".format(
        requested, multiple, nearest))


def model_palette(cfg, warn=None):
    """RGB [C,3] class colours of a model of --num_classes C >= 2 for its overlays (None for C = 1): its
    --class_colors, else the fixed palette. Colours that no longer read (a JSON file moved away since training)
    only cost the colours: one warning, then the fixed palette."""
    if cfg.num_classes == 1:
        return None
    try:
        return class_palette(cfg.num_classes, cfg.class_colors, cfg.ignore_index)
    except UserError as err:
        (warn or (lambda message: print(message, file=sys.stderr)))(
            "warning: the model's --class_colors do not read ({}); overlays use the fixed palette".format(err))
        return class_palette(cfg.num_classes)


def write_output_image(path, image):
    """Write one image file into the --output folder."""
    _check_written(cv2.imwrite(path, image), path)


def write_output_stack(path, pages):
    """Write a multipage TIFF into the --output folder."""
    _check_written(cv2.imwritemulti(path, list(pages)), path)


def _check_written(ok, path):
    if not ok:
        raise UserError("cannot write {}; check that --output is writable and has free space".format(path))
