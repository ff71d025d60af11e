"""`python -m unet_perf.predict`: probability maps and binary masks for unlabelled images.

    python -m unet_perf.predict --model_dir runs/unet --input test-volume.tif --output predictions/

For every image (every page of a multipage TIFF) it writes `<name>_prob.png` (P(interior) as 0..255) and
`<name>_mask.png` (255 = cell interior, 0 = membrane: the ISBI label convention); a TIFF input also gets the
multipage stacks `prob.tif` and `mask.tif` (`<stem>_prob.tif`/`<stem>_mask.tif` for TIFFs inside a folder).
"""
import os
import time

import numpy as np

from unet_perf.cli_flags import (add_inference_flags, check_inference_flags, make_output_dir, open_predictor,
                                 write_output_image, write_output_stack)
from unet_perf.config import build_parser
from unet_perf.data.sources import EXTENSIONS, natural_key, read_image
from unet_perf.errors import UserError, run_cli
from unet_perf.progress import ItemProgress

TIFF_EXTENSIONS = (".tif", ".tiff")


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
    """P(interior) as uint8 0..255."""
    return np.round(np.clip(prob, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_mask(prob, threshold):
    """uint8 255 = interior (P(interior) > threshold), 0 = membrane: the ISBI label convention."""
    return np.where(prob > threshold, 255, 0).astype(np.uint8)


def predict_files(predictor, files, output, threshold, single_input, rgb="convert"):
    """Predict every page of `files`, write the outputs to `output`; returns the list of written names."""
    pages_per_file = [(path, read_image(path, rgb)) for path in files]
    progress = ItemProgress(sum(len(pages) for _, pages in pages_per_file))
    written = []
    try:
        for path, pages in pages_per_file:
            stem = os.path.splitext(os.path.basename(path))[0]
            probs = []
            for index, page in enumerate(pages):
                name = stem if len(pages) == 1 else "{}_{}".format(stem, index)
                start = time.time()
                prob = predictor.predict(page)
                write_output_image(os.path.join(output, name + "_prob.png"), to_png(prob))
                write_output_image(os.path.join(output, name + "_mask.png"), to_mask(prob, threshold))
                probs.append(prob)
                written.append(name)
                progress.step(name, time.time() - start)
            if os.path.splitext(path)[1].lower() in TIFF_EXTENSIONS:
                prefix = "" if single_input else stem + "_"
                stack = os.path.join(output, prefix)
                write_output_stack(stack + "prob.tif", [to_png(p) for p in probs])
                write_output_stack(stack + "mask.tif", [to_mask(p, threshold) for p in probs])
    finally:
        progress.close()
    return written


def main(argv=None):
    parser = add_inference_flags(build_parser("Predict membrane probability maps and masks with a trained U-Net",
                                              fields=()))
    parser.add_argument("--input", required=True, help="an image, a multipage TIFF, or a folder of images")
    parser.add_argument("--output", required=True, help="folder for the PNG (and TIFF) outputs")
    args = parser.parse_args(argv)
    check_inference_flags(args)
    files = list_inputs(args.input)
    make_output_dir(args.output)
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
