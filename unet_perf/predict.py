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

Memory: pages are opened lazily (inference.image_io.open_pages reads headers only), predicted one at a time band
by band (inference.streaming) and written as they finish; the stacks are written page by page. A page of more
than HUGE_PAGE_PIXELS (2^24, larger than 4096 x 4096) pixels is never held whole: instead of PNGs it gets TIFFs written
row band by row band, `<name>_prob.tif` and `<name>_mask.tif` (C >= 2: `<name>_classes.tif` and, with
--save_probabilities, `<name>_probs.tif` as one C-sample page), and no overlay. A TIFF input holding such a page
gets no stacks (its pages are in the per-page files; a note says so).
The last line before "wrote ..." is the throughput: input megapixels / seconds from the first tile read to the
last output closed (graph build and checkpoint restore excluded).

Several workers (TF_CONFIG, e.g. `python -m unet_perf.launch --nproc 2 --entry unet_perf.predict -- <flags>`):
rank r predicts the pages r::N of the whole input into rank 0's staging folder (inference.workers); rank 0 then
writes the stacks from the per-page files, read back one page at a time in page order, and commits --output: the
same files and bytes as one process writes. Each worker prints its progress and its own throughput line (with
"(worker r of N ...)" after it); rank 0 prints the whole run's line last. A failed worker fails the whole run and
--output stays untouched. Without TF_CONFIG nothing of this applies.
"""
import contextlib
import os
import time

import cv2
import numpy as np

from unet_perf.inference.class_metrics import class_map
from unet_perf.inference.cli_flags import (add_inference_flags, check_inference_flags, model_palette, open_predictor,
                                           write_output_image, write_output_stack)
from unet_perf.inference.image_io import open_pages
from unet_perf.inference.tiff_writer import RowWriter, StackWriter
from unet_perf.inference.panels import class_overlay
from unet_perf import cluster as cluster_lib
from unet_perf.config import build_parser
from unet_perf.data.sources import EXTENSIONS, natural_key
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
HUGE_PAGE_OUTPUTS = ("_prob.tif", "_mask.tif")
CLASS_HUGE_PAGE_OUTPUTS = ("_classes.tif",)
# Above: no PNG (nor one buffer for the page), TIFFs written row band by row band. 2^24 pixels keep the whole-page
# buffers of smaller pages (the map, the PNGs, C >= 2: [H,W,C] float32) to a few hundred MB at most.
HUGE_PAGE_PIXELS = 2 ** 24
# The per-page file each stack page is made of (several workers: rank 0 reads them back into the stacks).
STACK_PAGE_FILES = {"prob.tif": "_prob.png", "mask.tif": "_mask.png", "classes.tif": "_classes.png"}


def is_huge(page, huge_pixels=HUGE_PAGE_PIXELS):
    """True for a page (anything with .shape) of more than huge_pixels pixels: it is streamed into TIFFs."""
    return page.shape[0] * page.shape[1] > huge_pixels


def outputs_of(num_classes, save_probabilities=False, huge=False):
    """(suffixes of every page's files, names of a TIFF input's stacks) a model of num_classes writes; huge: the
    suffixes of a page above HUGE_PAGE_PIXELS instead."""
    probabilities = (PROBABILITIES_OUTPUT,) if save_probabilities and num_classes > 1 else ()
    if huge:
        return (HUGE_PAGE_OUTPUTS if num_classes == 1 else CLASS_HUGE_PAGE_OUTPUTS + probabilities), ()
    if num_classes == 1:
        return PAGE_OUTPUTS, STACK_OUTPUTS
    return CLASS_PAGE_OUTPUTS + probabilities, CLASS_STACK_OUTPUTS


def is_prediction_output(name):
    """True for a file name predict writes (what --overwrite may replace in --output)."""
    return name.endswith(PAGE_OUTPUTS + STACK_OUTPUTS + CLASS_PAGE_OUTPUTS + (PROBABILITIES_OUTPUT,) +
                         CLASS_STACK_OUTPUTS)


def output_plan(pages_per_file, single_input, num_classes=1, save_probabilities=False,
                huge_pixels=HUGE_PAGE_PIXELS):
    """[(path, pages, page names, stack prefix or None)] for the (path, pages) of every input (pages: anything with
    .shape, e.g. image_io page sources); a UserError, before anything is written, when two inputs would write the
    same file (a.png and a.tif both give a_prob.png). A TIFF holding a page above huge_pixels gets no stacks.

    Refusing keeps the documented names (`<stem>_prob.png`) a contract: silently renaming one of the clashing
    outputs would leave a file where no script expects it."""
    _, stack_outputs = outputs_of(num_classes, save_probabilities)
    plan, writer_of = [], {}
    for path, pages in pages_per_file:
        stem = os.path.splitext(os.path.basename(path))[0]
        names = [stem] if len(pages) == 1 else ["{}_{}".format(stem, index) for index in range(len(pages))]
        is_tiff = os.path.splitext(path)[1].lower() in TIFF_EXTENSIONS
        any_huge = any(is_huge(page, huge_pixels) for page in pages)
        prefix = ("" if single_input else stem + "_") if is_tiff and not any_huge else None
        files = [name + suffix for page, name in zip(pages, names)
                 for suffix in outputs_of(num_classes, save_probabilities, is_huge(page, huge_pixels))[0]]
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


def predict_huge_page(predictor, page, output, name, threshold, save_probabilities):
    """Stream a page too large to hold into its TIFFs (module doc), row band by row band as the rows finish."""
    height, width = page.shape
    path = os.path.join(output, name)
    with contextlib.ExitStack() as files:
        if predictor.cfg.num_classes == 1:
            prob = files.enter_context(RowWriter(path + "_prob.tif", height, width))
            mask = files.enter_context(RowWriter(path + "_mask.tif", height, width))

            def sink(rows):
                prob.write_rows(to_png(rows))
                mask.write_rows(to_mask(rows, threshold))
        else:
            classes = files.enter_context(RowWriter(path + "_classes.tif", height, width))
            probs = files.enter_context(RowWriter(path + PROBABILITIES_OUTPUT, height, width,
                                                  predictor.cfg.num_classes)) if save_probabilities else None

            def sink(rows):
                classes.write_rows(class_map(rows))
                if probs is not None:
                    probs.write_rows(to_png(rows))
        predictor.predict_source(page, sink)


def open_stacks(files, output, prefix, multi_class):
    """{stack name: StackWriter} of a TIFF input, registered with the ExitStack `files` (closed, or discarded on
    an error, when it exits)."""
    names = CLASS_STACK_OUTPUTS if multi_class else STACK_OUTPUTS
    return {name: files.enter_context(StackWriter(os.path.join(output, prefix + name))) for name in names}


def predict_files(predictor, plan, output, threshold, palette=None, save_probabilities=False,
                  huge_pixels=HUGE_PAGE_PIXELS):
    """Predict every page of an output_plan, one page at a time, writing the outputs to `output` as they finish
    (stacks page by page); returns the list of written names. palette: the class colours (RGB [C,3]) of a C >= 2
    model's overlays; pages above huge_pixels are streamed into TIFFs (predict_huge_page)."""
    progress = ItemProgress(sum(len(pages) for _, pages, _, _ in plan))
    multi_class = predictor.cfg.num_classes > 1
    written = []
    try:
        for path, pages, names, prefix in plan:
            with contextlib.ExitStack() as files:
                stacks = open_stacks(files, output, prefix, multi_class) if prefix is not None else {}
                if prefix is None and any(is_huge(page, huge_pixels) for page in pages) and len(pages) > 1:
                    print("note: {} holds a page of more than {} pixels: no stacks for it, every page is in its "
                          "per-page files (TIFFs for the large ones)".format(path, huge_pixels), flush=True)
                for page, name in zip(pages, names):
                    start = time.time()
                    try:
                        if is_huge(page, huge_pixels):
                            predict_huge_page(predictor, page, output, name, threshold, save_probabilities)
                        else:
                            write_page(predictor, page, output, name, threshold, palette, save_probabilities,
                                       stacks)
                    finally:
                        page.close()
                    written.append(name)
                    progress.step(name, time.time() - start)
    finally:
        progress.close()
    return written


def write_page(predictor, page, output, name, threshold, palette, save_probabilities, stacks):
    """Predict a page that fits in memory; write its PNGs (module doc) and add it to the open `stacks`."""
    image = page.read()  # read once: the model and the overlay both need it, and it fits (below the huge size)
    prob = predictor.predict(image)
    if predictor.cfg.num_classes > 1:
        classes = write_class_outputs(output, name, image, prob, palette, save_probabilities)
        if stacks:
            stacks["classes.tif"].add_page(classes)
        return
    prob_png, mask = to_png(prob), to_mask(prob, threshold)
    write_output_image(os.path.join(output, name + "_prob.png"), prob_png)
    write_output_image(os.path.join(output, name + "_mask.png"), mask)
    if stacks:
        stacks["prob.tif"].add_page(prob_png)
        stacks["mask.tif"].add_page(mask)


def throughput_line(pages, seconds):
    """The contract's throughput line: input megapixels of all pages over the prediction's wall time."""
    megapixels = sum(page.shape[0] * page.shape[1] for page in pages) / 1e6
    return "throughput: {:.2f} MP in {:.2f} s = {:.3f} MP/s".format(megapixels, seconds,
                                                                 megapixels / max(seconds, 1e-9))


def write_stacks_from_pages(plan, output, multi_class):
    """Several workers, rank 0 once every page is written: the stacks of every TIFF input, from the per-page files
    in `output` read back one page at a time in page order (the pages predict_files adds to them: same bytes)."""
    for _, _, names, prefix in plan:
        if prefix is None:
            continue
        with contextlib.ExitStack() as files:
            stacks = open_stacks(files, output, prefix, multi_class)
            for name in names:
                for stack_name, stack in stacks.items():
                    path = os.path.join(output, name + STACK_PAGE_FILES[stack_name])
                    page = cv2.imread(path, cv2.IMREAD_UNCHANGED)
                    if page is None:
                        raise UserError("cannot read back {} for the stack {}; check that --output is readable and "
                                        "has free space".format(path, prefix + stack_name))
                    stack.add_page(page)


def predicting_line(files, predictor, args):
    return "predicting {} file(s) with {} ({} weights, {}, tile {}, blend {}, tta {})".format(
        len(files), predictor.checkpoint, predictor.weights, predictor.cfg.precision, predictor.tile,
        predictor.blend, args.tta)


def main(argv=None):
    parser = add_inference_flags(build_parser("Predict membrane probability maps and masks with a trained U-Net",
                                              fields=("collective_timeout",)))
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
    plan = output_plan([(path, open_pages(path, args.rgb)) for path in files], os.path.isfile(args.input),
                       cfg.num_classes, args.save_probabilities)
    cluster = cluster_lib.from_environment()
    if cluster.source == "TF_CONFIG" and cluster.distributed:
        return predict_as_worker(args, cfg, palette, files, plan, cluster)
    with OutputFolder(args.output, args.overwrite, is_prediction_output, command="predict") as staging:
        predictor = open_predictor(args, cfg)
        try:
            print(predicting_line(files, predictor, args), flush=True)
            start = time.time()
            written = predict_files(predictor, plan, staging, args.threshold, palette, args.save_probabilities)
            seconds = time.time() - start
        finally:
            predictor.close()
    print(throughput_line([page for _, pages, _, _ in plan for page in pages], seconds))
    print("wrote {} prediction(s) to {}".format(len(written), args.output))
    return 0


def predict_as_worker(args, cfg, palette, files, plan, cluster):
    """One of several workers (module doc; the split and the barriers: inference.workers)."""
    from unet_perf.inference.workers import PredictTeam, new_token, run_fingerprint, share_of, staging_suffix

    team = PredictTeam(cluster, args.collective_timeout)
    share = share_of(plan, cluster.rank, cluster.size)
    every = [page for _, pages, _, _ in plan for page in pages]
    mine = [page for _, pages, _, _ in share for page in pages]
    predictor = open_predictor(args, cfg)
    try:
        print(predicting_line(files, predictor, args), flush=True)
        print("worker {} of {}: pages {}::{} of the input, {} of {}".format(
            cluster.rank, cluster.size, cluster.rank, cluster.size, len(mine), len(every)), flush=True)
        with contextlib.ExitStack() as output:
            token, refused = 0, None
            if cluster.chief:
                try:
                    token = new_token()
                    output.enter_context(OutputFolder(args.output, args.overwrite, is_prediction_output,
                                                      command="predict", staging_suffix=staging_suffix(token)))
                except UserError as err:  # told to the others at the barrier (token 0), then raised here
                    token, refused = 0, err
            try:
                staging = team.start(run_fingerprint(args, plan), token, args.output)
            except UserError:
                if refused is None:
                    raise
            if refused is not None:
                raise refused
            start = time.time()
            try:
                predict_files(predictor, share, staging, args.threshold, palette, args.save_probabilities)
            except Exception:
                team.vote_failed()
                raise
            print("{} (worker {} of {}, {} of {} pages)".format(
                throughput_line(mine, time.time() - start), cluster.rank, cluster.size, len(mine), len(every)),
                flush=True)
            if team.finish(failed=False):
                raise UserError("{}: another worker failed (its error is above); --output {} is unchanged".format(
                    team.describe(), args.output))
            if cluster.chief:
                write_stacks_from_pages(plan, staging, cfg.num_classes > 1)
            seconds = time.time() - start
    finally:
        predictor.close()
    if cluster.chief:
        print(throughput_line(every, seconds))
        print("wrote {} prediction(s) to {}".format(len(every), args.output))
    return 0


if __name__ == "__main__":
    run_cli(main)
