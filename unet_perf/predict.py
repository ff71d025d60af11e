"""`python -m unet_perf.predict`: probability maps and binary masks for unlabelled images.

    python -m unet_perf.predict --model_dir runs/unet --input test-volume.tif --output predictions/

For every image (every page of a multipage TIFF) it writes `<name>_prob.png` (P(interior) as 0..255) and
`<name>_mask.png` (255 = cell interior, 0 = membrane: the ISBI label convention); a TIFF input also gets the
multipage stacks `prob.tif` and `mask.tif` (`<stem>_prob.tif`/`<stem>_mask.tif` for TIFFs inside a folder).
"""
import os
import sys
import time

import cv2
import numpy as np

from unet_perf.config import PRECISIONS, build_parser
from unet_perf.data.sources import EXTENSIONS, natural_key, read_image
from unet_perf.errors import UserError, run_cli

TIFF_EXTENSIONS = (".tif", ".tiff")


def add_inference_flags(parser):
    """Flags shared by predict and evaluate."""
    parser.add_argument("--model_dir", required=True, help="directory written by python -m unet_perf.train")
    parser.add_argument("--checkpoint", default=None,
                        help="best, latest, a directory or a checkpoint prefix (default: best/ if present, else "
                             "the latest checkpoint)")
    parser.add_argument("--overlap", type=int, default=None,
                        help="pixels shared by neighbouring tiles, at the network's input scale (default: a "
                             "quarter of --crop_size)")
    parser.add_argument("--tta", action="store_true", help="average the 8 flips/rotations of every tile")
    parser.add_argument("--batch_size", type=int, default=4, help="tiles per Session.run")
    parser.add_argument("--precision", default=None, choices=PRECISIONS,
                        help="compute precision (default: the one the model was trained with)")
    parser.add_argument("--rgb", default="convert", choices=("convert", "refuse"),
                        help="colour input: convert to gray with a warning, or refuse")
    parser.add_argument("--weights", default="ema", choices=("ema", "raw"),
                        help="ema: the checkpoint's moving average of the weights when it has one (--ema in "
                             "training), else the trained weights; raw: always the trained weights")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="P(interior) above it is interior in the masks and overlays (V_rand/V_info sweep "
                             "0.0-1.0 themselves; pixel metrics use 0.5)")
    return parser


def check_inference_flags(args):
    if args.batch_size <= 0:
        raise UserError("--batch_size must be positive, got {}".format(args.batch_size))
    if args.overlap is not None and args.overlap < 0:
        raise UserError("--overlap must not be negative, got {}".format(args.overlap))
    if not 0.0 <= args.threshold <= 1.0:
        raise UserError("--threshold must be in [0, 1], got {}".format(args.threshold))


def open_predictor(args):
    from unet_perf.inference import Predictor  # TensorFlow is imported only once the flags are valid

    predictor = Predictor.from_model_dir(args.model_dir, checkpoint=args.checkpoint, precision=args.precision,
                                         batch_size=args.batch_size, overlap=args.overlap, tta=args.tta,
                                         weights=args.weights)
    if args.overlap is not None and args.overlap >= predictor.cfg.crop_size:
        predictor.close()
        raise UserError("--overlap {} must be smaller than the tile (--crop_size {} of the model)".format(
            args.overlap, predictor.cfg.crop_size))
    return predictor


def list_inputs(path):
    """Image files to predict: `path` itself, or the images in the folder `path` (natural order)."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise UserError("--input {} does not exist; pass an image, a multipage TIFF or a folder of images".format(
            path))
    files = sorted((name for name in os.listdir(path) if os.path.splitext(name)[1].lower() in EXTENSIONS),
                   key=natural_key)
    if not files:
        raise UserError("--input {} holds no images ({}); pass a folder of images or a TIFF file".format(
            path, ", ".join(EXTENSIONS)))
    return [os.path.join(path, name) for name in files]


def to_png(prob):
    return np.round(np.clip(prob, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_mask(prob, threshold):
    return np.where(prob > threshold, 255, 0).astype(np.uint8)


def write_image(path, image):
    if not cv2.imwrite(path, image):
        raise UserError("cannot write {}; check that --output is writable and has free space".format(path))


def write_stack(path, pages):
    if not cv2.imwritemulti(path, list(pages)):
        raise UserError("cannot write {}; check that --output is writable and has free space".format(path))


class Reporter(object):
    """A tqdm bar when stderr is a terminal and tqdm is installed, else one line per image on stdout."""

    def __init__(self, total):
        self.total = total
        self.done = 0
        self.bar = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, unit="img", file=sys.stderr)
            except ImportError:
                self.bar = None

    def step(self, name, seconds):
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(name)
            self.bar.update(1)
        else:
            print("[{}/{}] {} ({:.2f} s)".format(self.done, self.total, name, seconds), flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def predict_files(predictor, files, output, threshold, single_input, rgb="convert"):
    """Predict every page of `files`, write the outputs to `output`; returns the list of written names."""
    pages_per_file = [(path, read_image(path, rgb)) for path in files]
    reporter = Reporter(sum(len(pages) for _, pages in pages_per_file))
    written = []
    try:
        for path, pages in pages_per_file:
            stem = os.path.splitext(os.path.basename(path))[0]
            probs = []
            for index, page in enumerate(pages):
                name = stem if len(pages) == 1 else "{}_{}".format(stem, index)
                start = time.time()
                prob = predictor.predict(page)
                write_image(os.path.join(output, name + "_prob.png"), to_png(prob))
                write_image(os.path.join(output, name + "_mask.png"), to_mask(prob, threshold))
                probs.append(prob)
                written.append(name)
                reporter.step(name, time.time() - start)
            if os.path.splitext(path)[1].lower() in TIFF_EXTENSIONS:
                prefix = "" if single_input else stem + "_"
                write_stack(os.path.join(output, prefix + "prob.tif"), [to_png(p) for p in probs])
                write_stack(os.path.join(output, prefix + "mask.tif"), [to_mask(p, threshold) for p in probs])
    finally:
        reporter.close()
    return written


def main(argv=None):
    parser = add_inference_flags(build_parser("Predict membrane probability maps and masks with a trained U-Net",
                                              fields=()))
    parser.add_argument("--input", required=True, help="an image, a multipage TIFF, or a folder of images")
    parser.add_argument("--output", required=True, help="folder for the PNG (and TIFF) outputs")
    args = parser.parse_args(argv)
    check_inference_flags(args)
    files = list_inputs(args.input)
    try:
        os.makedirs(args.output, exist_ok=True)
    except OSError as err:
        raise UserError("cannot create --output {} ({}); choose a writable folder".format(args.output, err))
    predictor = open_predictor(args)
    try:
        print("predicting {} file(s) with {} ({} weights, {}, tile {}, tta {})".format(
            len(files), predictor.checkpoint, predictor.weights, predictor.cfg.precision, predictor.cfg.crop_size,
            args.tta),
            flush=True)
        written = predict_files(predictor, files, args.output, args.threshold, os.path.isfile(args.input),
                                args.rgb)
    finally:
        predictor.close()
    print("wrote {} prediction(s) to {}".format(len(written), args.output))
    return 0


if __name__ == "__main__":
    run_cli(main)
