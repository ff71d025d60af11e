"""What a class is: the internal label convention of --num_classes C >= 2 and the flags that describe classes.

Inside the library a label map is uint8 [H, W]: class ids 0..C-1, and IGNORE_LABEL for unlabelled pixels (whatever
--ignore_index value the files used). --num_classes 1 keeps the binary convention {0, 1} (1 = cell interior).
"""
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
