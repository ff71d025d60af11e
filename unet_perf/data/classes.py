"""What a class is: the internal label convention of --num_classes C >= 2 and the flags that describe classes.

Inside the library a label map is uint8 [H, W]: class ids 0..C-1, and IGNORE_LABEL for unlabelled pixels (whatever
--ignore_index value the files used). --num_classes 1 keeps the binary convention {0, 1} (1 = cell interior).
"""
import collections
import json
import os

import numpy as np

from unet_perf.errors import UserError

IGNORE_LABEL = 255  # the stored value of an unlabelled pixel; class ids stay below it
MAX_CLASSES = IGNORE_LABEL  # class ids 0..254 fit a uint8 map beside IGNORE_LABEL


def color_table(text, num_classes, ignore_index=-1):
    """uint8 [n, 3] RGB table of --class_colors (row k = the colour of label value k), or None when text is empty.

    text: 'r,g,b;r,g,b;...' or the path of a JSON file holding [[r, g, b], ...]. It lists C colours, or C + 1
    when the last one (at position C == --ignore_index) marks unlabelled pixels."""
    if not text:
        return None
    where = "--class_colors"
    if os.path.isfile(text):
        where = text
        try:
            with open(text) as handle:
                triples = json.load(handle)
        except (OSError, ValueError) as err:
            raise UserError("{} is not a readable JSON list of [r, g, b] triples ({}); fix the file".format(
                text, err))
    else:
        try:
            triples = [[int(value) for value in part.split(",")] for part in text.split(";") if part.strip()]
        except ValueError:
            raise UserError("--class_colors {!r}: write 'r,g,b;r,g,b;...' (integers 0-255) or name a JSON file"
                            .format(text))
    if not isinstance(triples, list) or not all(
            isinstance(t, list) and len(t) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in t)
            for t in triples):
        raise UserError("{}: every colour must be three integers 0-255 (r,g,b)".format(where))
    allowed = [num_classes] + ([num_classes + 1] if ignore_index == num_classes else [])
    if len(triples) not in allowed:
        raise UserError("{} lists {} colour(s) but --num_classes is {}{}; list one r,g,b per class".format(
            where, len(triples), num_classes,
            " (or {} with the unlabelled colour last, --ignore_index {})".format(num_classes + 1, num_classes)
            if ignore_index == num_classes else ""))
    table = np.array(triples, np.uint8).reshape(-1, 3)
    if len({tuple(row) for row in table.tolist()}) != len(table):
        raise UserError("{} lists a colour twice; every class needs its own colour".format(where))
    return table


def class_weight_values(text, num_classes):
    """--class_weights as None (all 1), "auto", or a list of C positive floats."""
    text = (text or "").strip()
    if not text:
        return None
    if text == "auto":
        return "auto"
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise UserError("--class_weights {!r}: write 'auto' or C comma-separated numbers".format(text))
    if len(values) != num_classes:
        raise UserError("--class_weights lists {} weight(s) for --num_classes {}; give one per class".format(
            len(values), num_classes))
    if not all(value > 0 and np.isfinite(value) for value in values):
        raise UserError("--class_weights must be positive numbers, got {}".format(text))
    return values


# --- label files -> class-id maps (C >= 2) ---------------------------------------------------------------------

LabelSpec = collections.namedtuple("LabelSpec", "num_classes colors ignore_index")
LabelSpec.__doc__ = """How label files encode classes: C, the --class_colors table (uint8 [n, 3] RGB or None) and
the --ignore_index value (-1 = none)."""
BINARY = LabelSpec(1, None, -1)  # --num_classes 1: today's {0, 255} / {0, 1} masks


def label_spec(cfg):
    """The LabelSpec of a validated Config."""
    return LabelSpec(cfg.num_classes, color_table(cfg.class_colors, cfg.num_classes, cfg.ignore_index),
                     cfg.ignore_index)


def decode_label(page, where, spec):
    """uint8 [H, W] class ids (IGNORE_LABEL for unlabelled pixels) of one decoded label page (C >= 2): colours
    through spec.colors (OpenCV's BGR(A) pages), else integer class ids (gray, or colour with equal channels).
    `where` names the file in the one-line UserError of every bad value."""
    if page.ndim == 3 and page.shape[2] in (3, 4):
        colour = page[:, :, 2::-1]  # BGR(A) -> RGB
        if spec.colors is not None:
            return _decode_colours(colour, where, spec)
        if not (colour == colour[:, :, :1]).all():
            y, x = np.argwhere((colour != colour[:, :, :1]).any(axis=2))[0]
            raise UserError("{} is a colour label ({} at pixel ({}, {})); pass --class_colors 'r,g,b;...' (one "
                            "colour per class) or save class ids as a gray or palette PNG".format(
                                where, _rgb_text(colour[y, x]), x, y))
        page = colour[:, :, 0]
    if page.ndim != 2:
        raise UserError("{} has shape {}; save labels as a gray, palette or RGB image".format(where, page.shape))
    if page.dtype not in (np.uint8, np.uint16):
        raise UserError("{} has {} pixels; save class ids as 8- or 16-bit integers".format(where, page.dtype))
    if spec.colors is not None:
        return _decode_colours(np.repeat(page[:, :, None], 3, axis=2), where, spec)
    return _decode_ids(page, where, spec)


def _decode_ids(page, where, spec):
    values = np.unique(page).tolist()
    if spec.num_classes == 2 and spec.ignore_index != 255 and (set(values) <= {0, 255} or set(values) <= {0, 65535}):
        return (page > 0).astype(np.uint8)  # a binary {0, 255} mask: 0 / 1 as with --num_classes 1
    bad = [value for value in values if value >= spec.num_classes and value != spec.ignore_index]
    if bad:
        y, x = np.argwhere(page == bad[0])[0]
        raise UserError("{} has label value {} (first at pixel ({}, {})) but --num_classes {} allows 0..{}{}; {}"
                        .format(where, bad[0], x, y, spec.num_classes, spec.num_classes - 1,
                                _ignore_text(spec), _value_fix(bad[0], bad[-1])))
    labels = page.astype(np.uint8)
    if spec.ignore_index >= 0:
        labels[page == spec.ignore_index] = IGNORE_LABEL
    return labels


def _decode_colours(colour, where, spec):
    keys = _colour_keys(colour)
    table = _colour_keys(spec.colors)
    order = np.argsort(table)
    slot = np.clip(np.searchsorted(table[order], keys), 0, len(table) - 1)
    found = table[order][slot] == keys
    if not found.all():
        y, x = np.argwhere(~found)[0]
        unlabelled = ("" if spec.ignore_index == spec.num_classes else
                      " (or last with --ignore_index {} if it marks unlabelled pixels)".format(spec.num_classes))
        raise UserError("{} has colour {} at pixel ({}, {}), which is not in --class_colors; add it to the table{} "
                        "or fix the label".format(where, _rgb_text(colour[y, x]), x, y, unlabelled))
    labels = order[slot].astype(np.uint8)
    labels[labels >= spec.num_classes] = IGNORE_LABEL  # the extra row at position C is the unlabelled colour
    return labels


def _colour_keys(rgb):
    rgb = np.asarray(rgb).astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _rgb_text(rgb):
    return "({}, {}, {})".format(*[int(value) for value in rgb])


def _ignore_text(spec):
    return " and --ignore_index {}".format(spec.ignore_index) if spec.ignore_index >= 0 else ""


def _value_fix(value, largest):
    """The fix for a label value that is no class: more classes (up to the largest value), or mark it unlabelled."""
    fixes = []
    if largest < MAX_CLASSES:
        fixes.append("pass --num_classes {} if it is a class".format(largest + 1))
    if value <= MAX_CLASSES:
        fixes.append("--ignore_index {} if it marks unlabelled pixels".format(value))
    return " or ".join(fixes) if fixes else "labels hold class ids 0..{}".format(MAX_CLASSES - 1)


# --- class statistics --------------------------------------------------------------------------------------------

def class_pixel_counts(masks, num_classes):
    """(pixels [C] int64, image_pixels [C] int64) of class-id maps [N, H, W] (or a sequence of [H, W]):
    pixels of each class, and the labelled pixels of the images where that class appears (ignored pixels count
    in neither)."""
    pixels = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    for mask in masks:
        counts = np.bincount(np.asarray(mask).ravel(), minlength=IGNORE_LABEL + 1)[:num_classes].astype(np.int64)
        pixels += counts
        image_pixels += np.where(counts > 0, counts.sum(), 0)
    return pixels, image_pixels


def median_frequency_weights(masks, num_classes, source="the training labels"):
    """Median-frequency class weights (Eigen & Fergus 2015) of class-id maps: list of C floats."""
    return median_frequency_from_counts(*class_pixel_counts(masks, num_classes), source=source)


def median_frequency_from_counts(pixels, image_pixels, source="the training labels"):
    """w_c = median(freq) / freq_c with freq_c = pixels of c / labelled pixels of the images where c appears."""
    pixels, image_pixels = np.asarray(pixels, np.float64), np.asarray(image_pixels, np.float64)
    absent = np.flatnonzero(pixels == 0)
    if len(absent):
        raise UserError("class {} appears in none of {}, so --class_weights auto cannot weight it; pass explicit "
                        "--class_weights w0,...,w{}".format(int(absent[0]), source, len(pixels) - 1))
    frequency = pixels / image_pixels
    return [float(value) for value in np.median(frequency) / frequency]
