"""`python -m unet_perf.predict`: probability maps and binary masks (or class maps) for unlabelled images.

    python -m unet_perf.predict --model_dir runs/unet --input test-volume.tif --output predictions/

For every image (every page of a multipage TIFF) a --num_classes 1 model writes `<name>_prob.png` (P(interior) as
0..255) and `<name>_mask.png` (255 = cell interior, 0 = membrane: the ISBI label convention); a TIFF input also gets
the multipage stacks `prob.tif` and `mask.tif` (`<stem>_prob.tif`/`<stem>_mask.tif` for TIFFs inside a folder).
A C >= 2 model writes `<name>_classes.png` (uint8 class ids, the argmax of the softmax), `<name>_overlay.png` (the
image tinted with the class colours: the model's --class_colors, else a fixed palette; a legend below names each
class id and its r,g,b) and, with --save_probabilities, `<name>_probs.tif` (C pages, P(class k) as 0..255); a TIFF
input also gets the stack `classes.tif` (`<stem>_classes.tif`).
Two inputs that would write the same file (a.png and a.tif) are refused before anything is written. --output is
written as a whole (unet_perf.storage.output_folder): a failed run leaves nothing behind, and an existing
--output holding predictions is replaced only with --overwrite.
"""
import os
import time

import numpy as np

from unet_perf.inference.class_metrics import class_map
from unet_perf.inference.cli_flags import (add_inference_flags, check_inference_flags, model_palette, open_predictor,
                                           write_output_image, write_output_stack)
from unet_perf.inference.panels import class_overlay
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
CLASS_PAGE_OUTPUTS = ("_classes.png", "_overlay.png")
PROBABILITIES_OUTPUT = "_probs.tif"
CLASS_STACK_OUTPUTS = ("classes.tif",)


def outputs_of(num_classes, save_probabilities=False):
    """(suffixes of every page's files, names of a TIFF input's stacks) a model of num_classes writes."""
    if num_classes == 1:
        return PAGE_OUTPUTS, STACK_OUTPUTS
    return CLASS_PAGE_OUTPUTS + ((PROBABILITIES_OUTPUT,) if save_probabilities else ()), CLASS_STACK_OUTPUTS


def is_prediction_output(name):
    """True for a file name predict writes (what --overwrite may replace in --output)."""
    return name.endswith(PAGE_OUTPUTS + STACK_OUTPUTS + CLASS_PAGE_OUTPUTS + (PROBABILITIES_OUTPUT,) +
                         CLASS_STACK_OUTPUTS)


def output_plan(pages_per_file, single_input, num_classes=1, save_probabilities=False):
    """[(path, pages, page names, stack prefix or None)] for the (path, pages) of every input; a UserError, before
    anything is written, when two inputs would write the same file (a.png and a.tif both give a_prob.png).

    Refusing keeps the documented names (`<stem>_prob.png`) a contract: silently renaming one of the clashing
    outputs would leave a file where no script expects it."""
    page_outputs, stack_outputs = outputs_of(num_classes, save_probabilities)
    plan, writer_of = [], {}
    for path, pages in pages_per_file:
        stem = os.path.splitext(os.path.basename(path))[0]
        names = [stem] if len(pages) == 1 else ["{}_{}".format(stem, index) for index in range(len(pages))]
        is_tiff = os.path.splitext(path)[1].lower() in TIFF_EXTENSIONS
        prefix = ("" if single_input else stem + "_") if is_tiff else None
        files = [name + suffix for name in names for suffix in page_outputs]
        files += [prefix + suffix for suffix in stack_outputs] if prefix is not None else []
        for name in files:
            if name in writer_of:
                raise UserError("--input: {} and {} would both write {}; rename one of them (or predict them "
                                "separately)".format(writer_of[name], path, name))
            writer_of[name] = path
        plan.append((path, pages, names, prefix))
    return plan


def write_class_outputs(output, name, image, probs, palette, save_probabilities):
    """The files of one page of a C >= 2 model (see the module doc); returns its uint8 class map."""
    classes = class_map(probs)
    write_output_image(os.path.join(output, name + "_classes.png"), classes)
    write_output_image(os.path.join(output, name + "_overlay.png"), class_overlay(image, classes, palette))
    if save_probabilities:
        write_output_stack(os.path.join(output, name + PROBABILITIES_OUTPUT),
                           [to_png(probs[..., k]) for k in range(probs.shape[-1])])
    return classes


def predict_files(predictor, plan, output, threshold, palette=None, save_probabilities=False):
    """Predict every page of an output_plan, write the outputs to `output`; returns the list of written names.
    palette: the class colours (RGB [C,3]) of a C >= 2 model's overlays."""
    progress = ItemProgress(sum(len(pages) for _, pages, _, _ in plan))
    multi_class = predictor.cfg.num_classes > 1
    written = []
    try:
        for path, pages, names, prefix in plan:
            maps = []
            for page, name in zip(pages, names):
                start = time.time()
                prob = predictor.predict(page)
                if multi_class:
                    maps.append(write_class_outputs(output, name, page, prob, palette, save_probabilities))
                else:
                    write_output_image(os.path.join(output, name + "_prob.png"), to_png(prob))
                    write_output_image(os.path.join(output, name + "_mask.png"), to_mask(prob, threshold))
                    maps.append(prob)
                written.append(name)
                progress.step(name, time.time() - start)
            if prefix is not None:
                stack = os.path.join(output, prefix)
                if multi_class:
                    write_output_stack(stack + "classes.tif", maps)
                else:
                    write_output_stack(stack + "prob.tif", [to_png(p) for p in maps])
                    write_output_stack(stack + "mask.tif", [to_mask(p, threshold) for p in maps])
    finally:
        progress.close()
    return written


def main(argv=None):
    parser = add_inference_flags(build_parser("Predict membrane probability maps and masks with a trained U-Net",
                                              fields=()))
    parser.add_argument("--input", required=True, help="an image, a multipage TIFF, or a folder of images")
    parser.add_argument("--output", required=True, help="new folder for the PNG (and TIFF) outputs")
    parser.add_argument("--save_probabilities", action="store_true",
                        help="models of --num_classes C >= 2: also write <name>_probs.tif, C pages holding "
                             "P(class k) as uint8 0..255 (P x 255, rounded); a C = 1 model always writes "
                             "<name>_prob.png")
    add_overwrite_flag(parser, "replace the predictions in an existing --output (only when it holds nothing else)")
    args = parser.parse_args(argv)
    check_inference_flags(args)
    from unet_perf.inference.model_dir import load_config  # imports TensorFlow: only once the flags are valid

    cfg = load_config(args.model_dir)
    palette = model_palette(cfg)
    files = list_inputs(args.input)
    plan = output_plan([(path, read_image(path, args.rgb)) for path in files], os.path.isfile(args.input),
                       cfg.num_classes, args.save_probabilities)
    with OutputFolder(args.output, args.overwrite, is_prediction_output, command="predict") as staging:
        predictor = open_predictor(args, cfg)
        try:
            print("predicting {} file(s) with {} ({} weights, {}, tile {}, tta {})".format(
                len(files), predictor.checkpoint, predictor.weights, predictor.cfg.precision,
                predictor.cfg.crop_size, args.tta),
                flush=True)
            written = predict_files(predictor, plan, staging, args.threshold, palette, args.save_probabilities)
        finally:
            predictor.close()
    print("wrote {} prediction(s) to {}".format(len(written), args.output))
    return 0


if __name__ == "__main__":
    run_cli(main)
