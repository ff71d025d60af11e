"""Pictures for people: image, ground truth and prediction side by side (numpy + OpenCV, uint8 out).

- `prediction_panels`: the TensorBoard strips of the training probe (image | ground truth | prediction);
- `error_overlay`: evaluate's strip per slice (image | ground truth | prediction | errors coloured);
- `augmentation_grid`: preview's grid of augmented pairs (image | image with the mask tinted green);
- for --num_classes C >= 2 the masks are class maps shown in class colours (`class_palette`): `class_overlay`
  (predict's overlay with a legend) and `class_error_overlay` (evaluate's strip), and the two above take a palette.
"""
import cv2
import numpy as np

GAP = 4  # pixels between the tiles of a strip or grid
GAP_GRAY = 128  # strips on a gray background
GAP_WHITE = 255  # the preview grid on white
FALSE_MEMBRANE = (0, 0, 255)   # BGR red: predicted membrane where the ground truth has cell interior
MISSED_MEMBRANE = (255, 0, 0)  # BGR blue: ground-truth membrane predicted as interior
MASK_TINT = np.array([0, 255, 0], np.float32)  # BGR green
MASK_TINT_ALPHA = 0.35
CLASS_TINT_ALPHA = 0.45
UNLABELLED_GRAY = 128  # pixels with no class (data.classes.IGNORE_LABEL) in the class-colour maps
WRONG_CLASS = (0, 0, 255)  # BGR red: a labelled pixel predicted as another class
# RGB colours of classes 0, 1, ... when the model has no --class_colors: Sasha Trubetskoy's distinct colours after
# black for the background; further classes get golden-angle hues (class_palette).
DEFAULT_PALETTE = (
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128))
LEGEND_ROW = 14  # pixels per legend line
LEGEND_FONT = cv2.FONT_HERSHEY_SIMPLEX
LEGEND_SCALE = 0.35


def stack_tiles(tiles, axis=1, gap=0, fill=GAP_GRAY):
    """Arrays of one height (axis=1: left to right) or one width (axis=0: top to bottom) joined with `gap`
    pixels of value `fill` between neighbours."""
    parts = []
    for index, tile in enumerate(tiles):
        if index and gap:
            shape = list(tile.shape)
            shape[axis] = gap
            parts.append(np.full(shape, fill, tile.dtype))
        parts.append(tile)
    return np.concatenate(parts, axis=axis)


def binary_to_gray(binary):
    """uint8 255 where `binary` is true, else 0."""
    return np.where(binary, 255, 0).astype(np.uint8)


def gray_to_bgr(gray):
    return cv2.cvtColor(np.asarray(gray, np.uint8), cv2.COLOR_GRAY2BGR)


def prediction_panels(raws, masks, prob, palette=None):
    """(shape, PNG bytes) per tile: image | ground truth | prediction side by side.

    raws uint8 [n,h,w], masks [n,h,w], prob [n,h,w,C]. C = 1: masks {0,1}, prob P(interior), uint8 gray tiles.
    C >= 2: masks class ids, prob softmax; truth and argmax in class colours (BGR tiles; palette: class_palette)."""
    prob = np.asarray(prob)
    panels = []
    for raw, mask, p in zip(raws, masks, prob):
        if p.shape[-1] == 1:
            probability = np.clip(p[..., 0] * 255.0 + 0.5, 0, 255).astype(np.uint8)
            row = stack_tiles([raw, binary_to_gray(mask > 0), probability])
        else:
            colours = palette if palette is not None else class_palette(p.shape[-1])
            row = stack_tiles([gray_to_bgr(raw), class_colours(mask, colours),
                               class_colours(np.argmax(p, axis=-1), colours)])
        ok, encoded = cv2.imencode(".png", row)
        if ok:
            panels.append((row.shape, encoded.tobytes()))
    return panels


def error_overlay(image, gt_mask, prob, threshold=0.5):
    """One BGR strip: image | ground truth | prediction (P(interior) > threshold) | image with the errors
    coloured (FALSE_MEMBRANE, MISSED_MEMBRANE)."""
    gray = gray_to_bgr(image)
    predicted = prob > threshold
    truth = np.asarray(gt_mask) > 0
    errors = gray.copy()
    errors[truth & ~predicted] = FALSE_MEMBRANE
    errors[~truth & predicted] = MISSED_MEMBRANE
    tiles = [gray, gray_to_bgr(binary_to_gray(truth)), gray_to_bgr(binary_to_gray(predicted)), errors]
    return stack_tiles(tiles, gap=GAP, fill=GAP_GRAY)


def augmentation_grid(images, masks, palette=None):
    """uint8 BGR grid: one row per sample, image | image with the mask tinted green (palette given: the image
    tinted with the class colours of a class-id mask, --num_classes >= 2).

    images float [n,h,w] in [0,1], masks [n,h,w] (> 0.5 = interior, or class ids with a palette)."""
    rows = []
    for image, mask in zip(images, masks):
        gray = np.repeat(np.clip(image, 0.0, 1.0)[..., None] * 255.0, 3, axis=2)
        if palette is not None:
            tinted = tint_classes(gray, np.rint(mask), palette)
        else:
            tinted = np.where(mask[..., None] > 0.5, gray * (1 - MASK_TINT_ALPHA) + MASK_TINT * MASK_TINT_ALPHA,
                              gray)
        row = [np.round(gray).astype(np.uint8), np.round(tinted).astype(np.uint8)]
        rows.append(stack_tiles(row, gap=GAP, fill=GAP_WHITE))
    return stack_tiles(rows, axis=0, gap=GAP, fill=GAP_WHITE)


# --- class maps (--num_classes >= 2) ---------------------------------------------------------------------------

def class_palette(num_classes, class_colors="", ignore_index=-1):
    """uint8 [C,3] RGB colour of every class: the model's --class_colors when it has them, else DEFAULT_PALETTE
    (then golden-angle hues for classes beyond it)."""
    from unet_perf.data.classes import color_table

    table = color_table(class_colors, num_classes, ignore_index)
    if table is not None:
        return table[:num_classes]
    colours = list(DEFAULT_PALETTE[:num_classes])
    for k in range(len(colours), num_classes):
        hue = int((k * 137.508) % 360) // 2  # OpenCV hues are 0..179
        value = 255 if k % 2 else 170
        hsv = np.array([[[hue, 220, value]]], np.uint8)
        colours.append(tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]))
    return np.array(colours, np.uint8).reshape(-1, 3)


def class_colours(classes, palette):
    """uint8 BGR [H,W,3]: every pixel in its class colour (RGB palette row); pixels with no class gray."""
    classes = np.asarray(classes).astype(np.int64)
    bgr = np.concatenate([np.asarray(palette, np.uint8)[:, ::-1], [[UNLABELLED_GRAY] * 3]]).astype(np.uint8)
    return bgr[np.where((classes >= 0) & (classes < len(palette)), classes, len(palette))]


def tint_classes(gray_bgr, classes, palette, alpha=CLASS_TINT_ALPHA):
    """float BGR [H,W,3]: `gray_bgr` blended with the class colour of each pixel; pixels with no class untinted."""
    classes = np.asarray(classes).astype(np.int64)
    labelled = ((classes >= 0) & (classes < len(palette)))[..., None]
    colours = class_colours(classes, palette).astype(np.float32)
    gray_bgr = np.asarray(gray_bgr, np.float32)
    return np.where(labelled, gray_bgr * (1 - alpha) + colours * alpha, gray_bgr)


def legend(palette, width):
    """uint8 BGR strip on white: one line per class, a swatch of its colour and 'k: r,g,b'; at least `width`."""
    lines = ["{}: {},{},{}".format(k, *[int(v) for v in rgb]) for k, rgb in enumerate(np.asarray(palette))]
    text_width = max(cv2.getTextSize(line, LEGEND_FONT, LEGEND_SCALE, 1)[0][0] for line in lines)
    strip = np.full((LEGEND_ROW * len(lines) + 2, max(width, text_width + LEGEND_ROW + 6), 3), GAP_WHITE, np.uint8)
    for k, line in enumerate(lines):
        top = 1 + k * LEGEND_ROW
        colour = tuple(int(v) for v in np.asarray(palette[k])[::-1])
        cv2.rectangle(strip, (2, top + 2), (LEGEND_ROW - 1, top + LEGEND_ROW - 2), colour, -1)
        cv2.rectangle(strip, (2, top + 2), (LEGEND_ROW - 1, top + LEGEND_ROW - 2), (0, 0, 0), 1)
        cv2.putText(strip, line, (LEGEND_ROW + 4, top + LEGEND_ROW - 3), LEGEND_FONT, LEGEND_SCALE, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return strip


def with_legend(picture, palette):
    """`picture` (BGR) above the legend of `palette`, the narrower of the two padded white on the right."""
    strip = legend(palette, picture.shape[1])
    if picture.shape[1] < strip.shape[1]:
        pad = np.full((picture.shape[0], strip.shape[1] - picture.shape[1], 3), GAP_WHITE, np.uint8)
        picture = np.concatenate([picture, pad], axis=1)
    return stack_tiles([picture, strip], axis=0, gap=GAP, fill=GAP_WHITE)


def class_overlay(image, classes, palette):
    """predict's overlay: the gray image tinted with the class colours of `classes`, with a legend below."""
    tinted = tint_classes(gray_to_bgr(image), classes, palette)
    return with_legend(np.round(tinted).astype(np.uint8), palette)


def class_error_overlay(image, truth, predicted, palette):
    """evaluate's strip for C >= 2: image | ground truth | prediction (class colours) | image with the wrongly
    classified labelled pixels red (WRONG_CLASS); the legend below."""
    gray = gray_to_bgr(image)
    truth = np.asarray(truth)
    errors = gray.copy()
    errors[(truth < len(palette)) & (truth != np.asarray(predicted))] = WRONG_CLASS
    tiles = [gray, class_colours(truth, palette), class_colours(predicted, palette), errors]
    return with_legend(stack_tiles(tiles, gap=GAP, fill=GAP_GRAY), palette)
