"""`python -m unet_perf.predict`: probability maps and binary masks for unlabelled images.

    python -m unet_perf.predict --model_dir runs/unet --input test-volume.tif --output predictions/

For every image (every page of a multipage TIFF) it writes `<name>_prob.png` (P(interior) as 0..255) and
`<name>_mask.png` (255 = cell interior, 0 = membrane: the ISBI label convention); a TIFF input also gets the
multipage stacks `prob.tif` and `mask.tif` (`<stem>_prob.tif`/`<stem>_mask.tif` for TIFFs inside a folder).
Two inputs that would write the same file (a.png and a.tif) are refused before anything is written. --output is
written as a whole (unet_perf.storage.output_folder): a failed run leaves nothing behind, and an existing
--output holding predictions is replaced only with --overwrite.
"""
import os
import time

import numpy as np

from unet_perf.inference.cli_flags import (add_inference_flags, check_inference_flags, open_predictor,
                                           write_output_image, write_output_stack)
from unet_perf.config import build_parser
from unet_perf.data.sources import EXTENSIONS, natural_key, read_image
from unet_perf.errors import UserError, run_cli
from unet_perf.storage.output_folder import OutputFolder, add_overwrite_flag
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


PAGE_OUTPUTS = ("_prob.png", "_mask.png")
STACK_OUTPUTS = ("prob.tif", "mask.tif")


def is_prediction_output(name):
    """True for a file name predict writes (what --overwrite may replace in --output)."""
    return name.endswith(PAGE_OUTPUTS + STACK_OUTPUTS)


def output_plan(pages_per_file, single_input):
    """[(path, pages, page names, stack prefix or None)] for the (path, pages) of every input; a UserError, before
    anything is written, when two inputs would write the same file (a.png and a.tif both give a_prob.png).

    Refusing keeps the documented names (`<stem>_prob.png`) a contract: silently renaming one of the clashing
    outputs would leave a file where no script expects it."""
    plan, writer_of = [], {}
    for path, pages in pages_per_file:
        stem = os.path.splitext(os.path.basename(path))[0]
        names = [stem] if len(pages) == 1 else ["{}_{}".format(stem, index) for index in range(len(pages))]
        is_tiff = os.path.splitext(path)[1].lower() in TIFF_EXTENSIONS
        prefix = ("" if single_input else stem + "_") if is_tiff else None
        files = [name + suffix for name in names for suffix in PAGE_OUTPUTS]
        files += [prefix + suffix for suffix in STACK_OUTPUTS] if prefix is not None else []
        for name in files:
            if name in writer_of:
                raise UserError("--input: {} and {} would both write {}; rename one of them (or predict them "
                                "separately)".format(writer_of[name], path, name))
            writer_of[name] = path
        plan.append((path, pages, names, prefix))
    return plan


def predict_files(predictor, plan, output, threshold):
    """Predict every page of an output_plan, write the outputs to `output`; returns the list of written names."""
    progress = ItemProgress(sum(len(pages) for _, pages, _, _ in plan))
    written = []
    try:
        for path, pages, names, prefix in plan:
            probs = []
            for page, name in zip(pages, names):
                start = time.time()
                prob = predictor.predict(page)
                write_output_image(os.path.join(output, name + "_prob.png"), to_png(prob))
                write_output_image(os.path.join(output, name + "_mask.png"), to_mask(prob, threshold))
                probs.append(prob)
                written.append(name)
                progress.step(name, time.time() - start)
            if prefix is not None:
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
    parser.add_argument("--output", required=True, help="new folder for the PNG (and TIFF) outputs")
    add_overwrite_flag(parser, "replace the predictions in an existing --output (only when it holds nothing else)")
    args = parser.parse_args(argv)
    check_inference_flags(args)
    files = list_inputs(args.input)
    plan = output_plan([(path, read_image(path, args.rgb)) for path in files], os.path.isfile(args.input))
    with OutputFolder(args.output, args.overwrite, is_prediction_output, command="predict") as staging:
        predictor = open_predictor(args)
        try:
            print("predicting {} file(s) with {} ({} weights, {}, tile {}, tta {})".format(
                len(files), predictor.checkpoint, predictor.weights, predictor.cfg.precision,
                predictor.cfg.crop_size, args.tta),
                flush=True)
            written = predict_files(predictor, plan, staging, args.threshold)
        finally:
            predictor.close()
    print("wrote {} prediction(s) to {}".format(len(written), args.output))
    return 0


if __name__ == "__main__":
    run_cli(main)
