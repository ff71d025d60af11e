"""EM-like synthetic membrane slices: the built-in dataset when --data_path is empty (numpy + OpenCV only).

Each slice is a Voronoi partition of random seeds, bent by a smooth random displacement field so that cell
boundaries curve. Membranes are the cell boundaries, 2-6 px thick with varying darkness; cells get their own
gray level plus dark and bright organelle-like blobs; then blur, uneven illumination (a smooth gain field) and
Gaussian noise. Masks follow the project convention: 1 = cell interior, 0 = membrane (about 20% membrane).
A numpy RandomState drives everything, so the same seed gives the same arrays on every numpy version, and the
first k slices of membranes(n, seed=s) equal membranes(k, seed=s).

organelles() is the multi-class mode (--num_classes 3 or 4, class ids SYNTHETIC_CLASSES): the same cells and
membranes, with labelled organelles of their own shape and texture: mitochondria are elongated mid-gray ellipses
crossed by bright cristae stripes, vesicles small bright discs with a dark rim. With 3 classes the vesicles are
cytoplasm in the labels (they stay in the image).
"""
import cv2
import numpy as np

from unet_perf.data.sources import Pairs

CELL_AREA = 1300.0  # mean cell area in px^2; with 2-6 px membranes this gives about 20% membrane
SYNTHETIC_CLASSES = ("cytoplasm", "membrane", "mitochondria", "vesicles")  # class ids 0..3 of organelles()
CYTOPLASM, MEMBRANE, MITOCHONDRION, VESICLE = range(len(SYNTHETIC_CLASSES))


def membranes(count, size=512, seed=0):
    """`count` synthetic slices of `size` x `size`: Pairs(images uint8, masks uint8 {0,1}, names)."""
    if count <= 0 or size < 16:
        raise ValueError("membranes needs count > 0 and size >= 16, got count={} size={}".format(count, size))
    rng = np.random.RandomState(seed)
    images = np.empty((count, size, size), np.uint8)
    masks = np.empty((count, size, size), np.uint8)
    for index in range(count):
        images[index], masks[index] = _slice(rng, size)
    return Pairs(images, masks, ["synthetic[{}]".format(index) for index in range(count)])


def organelles(count, size=512, seed=0, num_classes=4):
    """`count` synthetic slices with class-id masks: Pairs(images uint8, masks uint8 0..num_classes-1, names) of
    SYNTHETIC_CLASSES; num_classes 3 labels vesicles as cytoplasm. Seeded like membranes()."""
    if count <= 0 or size < 16 or num_classes not in (3, 4):
        raise ValueError("organelles needs count > 0, size >= 16 and 3 or 4 classes, got count={} size={} "
                         "num_classes={}".format(count, size, num_classes))
    rng = np.random.RandomState(seed)
    images = np.empty((count, size, size), np.uint8)
    masks = np.empty((count, size, size), np.uint8)
    for index in range(count):
        images[index], masks[index] = _organelle_slice(rng, size)
    if num_classes == 3:
        masks[masks == VESICLE] = CYTOPLASM
    return Pairs(images, masks, ["synthetic[{}]".format(index) for index in range(count)])


def _organelle_slice(rng, size):
    cells = _warped_voronoi(rng, size)
    membrane = _membrane(rng, cells, size)
    labels = np.full((size, size), CYTOPLASM, np.uint8)
    texture = np.zeros((size, size), np.float32)  # added to the organelle pixels' gray level
    _draw_mitochondria(rng, labels, texture, size)
    _draw_vesicles(rng, labels, texture, size)
    labels[membrane] = MEMBRANE  # membranes cross organelles that straddle a cell boundary
    ids = cells - cells.min()
    image = rng.uniform(150.0, 200.0, ids.max() + 1).astype(np.float32)[ids]
    image += cv2.GaussianBlur(rng.normal(0.0, 1.0, (size, size)).astype(np.float32), (0, 0), 2.0) * 40.0
    organelle = (labels == MITOCHONDRION) | (labels == VESICLE)
    image = np.where(organelle, texture, image)
    image = np.where(membrane, _smooth_field(rng, size, 6, 40.0, 100.0), image)
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.6, 1.0))
    image *= _smooth_field(rng, size, 3, 0.85, 1.15)
    image += rng.normal(0.0, rng.uniform(5.0, 10.0), (size, size)).astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), labels


def _draw_mitochondria(rng, labels, texture, size):
    """Elongated ellipses (8-18 x 4-7 px half-axes) of level 105-125 with bright cristae stripes across them."""
    for _ in range(int(size * size / 3000.0 * rng.uniform(0.7, 1.3))):
        cx, cy = rng.uniform(0, size, 2)
        long_axis, short_axis = rng.uniform(8.0, 18.0), rng.uniform(4.0, 7.0)
        angle = rng.uniform(0.0, 180.0)
        window, (top, left) = _window(labels, cx, cy, 19)
        shape = np.zeros(window.shape, np.uint8)
        cv2.ellipse(shape, (int(cx) - left, int(cy) - top), (int(long_axis), int(short_axis)), angle, 0.0, 360.0,
                    1, -1)
        rows, cols = np.nonzero(shape)
        along = (cols + left - cx) * np.cos(np.radians(angle)) + (rows + top - cy) * np.sin(np.radians(angle))
        stripes = np.cos(along * (2.0 * np.pi / rng.uniform(4.0, 6.0))) > 0.3
        texture[rows + top, cols + left] = rng.uniform(105.0, 125.0) + np.where(stripes, 45.0, 0.0)
        window[shape > 0] = MITOCHONDRION


def _draw_vesicles(rng, labels, texture, size):
    """Small discs (radius 2-4 px) of level 215-240 inside a 1 px dark rim (the rim is labelled vesicle too)."""
    for _ in range(int(size * size / 1200.0 * rng.uniform(0.7, 1.3))):
        cx, cy = rng.uniform(0, size, 2)
        radius = int(rng.uniform(2.0, 5.0))
        window, (top, left) = _window(labels, cx, cy, 6)
        shape = np.zeros(window.shape, np.uint8)
        cv2.circle(shape, (int(cx) - left, int(cy) - top), radius + 1, 1, -1)
        cv2.circle(shape, (int(cx) - left, int(cy) - top), radius, 2, -1)
        patch = texture[top:top + window.shape[0], left:left + window.shape[1]]
        patch[shape == 1] = 70.0
        patch[shape == 2] = rng.uniform(215.0, 240.0)
        window[shape > 0] = VESICLE


def _window(labels, cx, cy, reach):
    """(view of labels within `reach` px of (cx, cy), clipped to the slice; its (top, left))."""
    top, left = max(0, int(cy) - reach), max(0, int(cx) - reach)
    return labels[top:int(cy) + reach + 1, left:int(cx) + reach + 1], (top, left)


def _slice(rng, size):
    cells = _warped_voronoi(rng, size)
    membrane = _membrane(rng, cells, size)
    image = _render(rng, cells, membrane, size)
    return image, (~membrane).astype(np.uint8)


def _smooth_field(rng, size, grid, low, high):
    """A smooth random field in [low, high]: a coarse uniform grid upsampled bicubically."""
    coarse = rng.uniform(low, high, (grid, grid)).astype(np.float32)
    return np.clip(cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC), low, high)


def _warped_voronoi(rng, size):
    """int32 [size,size] cell ids: nearest-seed labelling, then a smooth warp that curves the boundaries."""
    margin = size // 8  # seeds outside the frame, so border cells are cut like in a real slice
    side = size + 2 * margin
    # Seeds thinned by a smooth density field: crowded regions of small cells next to a few large ones.
    density = _smooth_field(rng, side, 4, 0.2, 1.0)
    wanted = rng.normal(1.0, 0.1) * side * side / CELL_AREA
    candidates = rng.uniform(0, side, (int(wanted / float(density.mean())), 2)).astype(np.int32)
    keep = rng.uniform(size=len(candidates)) < density[candidates[:, 1], candidates[:, 0]]
    seeds = candidates[keep] if keep.sum() >= 2 else candidates[:2]
    frame = np.full((side, side), 255, np.uint8)
    frame[seeds[:, 1], seeds[:, 0]] = 0
    _, labels = cv2.distanceTransformWithLabels(frame, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    labels = labels.astype(np.float32)  # exact for ids < 2^24; remap needs float
    # Two warp scales: a slow bend of the whole slice and a cell-scale wobble that curves each boundary;
    # slopes stay below 1 so the warp never folds.
    grid_y, grid_x = np.mgrid[0:size, 0:size].astype(np.float32) + margin
    maps = []
    for grid in (grid_x, grid_y):
        bend = rng.uniform(6.0, 14.0)
        wobble = rng.uniform(3.0, 5.0)
        maps.append(grid + _smooth_field(rng, size, 4, -bend, bend)
                    + _smooth_field(rng, size, max(4, size // 32), -wobble, wobble))
    warped = cv2.remap(labels, maps[0], maps[1], cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT)
    return warped.astype(np.int32)


def _membrane(rng, cells, size):
    """bool [size,size]: pixels within half a (smoothly varying, 2-6 px) thickness of a cell boundary."""
    edge = np.zeros((size, size), bool)
    edge[:, 1:] |= cells[:, 1:] != cells[:, :-1]
    edge[1:, :] |= cells[1:, :] != cells[:-1, :]
    distance = cv2.distanceTransform(np.where(edge, 0, 255).astype(np.uint8), cv2.DIST_L2, 3)
    thickness = _smooth_field(rng, size, 8, 2.0, 6.0)
    return distance < thickness / 2.0


def _render(rng, cells, membrane, size):
    """uint8 image: per-cell gray levels, organelles, dark membranes, blur, illumination, noise."""
    ids = cells - cells.min()
    cell_level = rng.uniform(150.0, 200.0, ids.max() + 1).astype(np.float32)
    image = cell_level[ids]
    # Fine cytoplasm texture: blurred noise, so interiors are not flat.
    image += cv2.GaussianBlur(rng.normal(0.0, 1.0, (size, size)).astype(np.float32), (0, 0), 2.0) * 40.0
    _draw_organelles(rng, image, size)
    membrane_level = _smooth_field(rng, size, 6, 40.0, 100.0)
    image = np.where(membrane, membrane_level, image)
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.8, 1.5))
    image *= _smooth_field(rng, size, 3, 0.8, 1.2)
    image += rng.normal(0.0, rng.uniform(6.0, 14.0), (size, size)).astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def _draw_organelles(rng, image, size):
    """Dark (mitochondria-like) and bright (vesicle-like) ellipses; they stay 'interior' in the mask."""
    count = int(size * size / 4000.0 * rng.uniform(0.5, 1.5))
    centres = rng.uniform(0, size, (count, 2))
    axes = rng.uniform(2.0, 9.0, (count, 2))
    angles = rng.uniform(0.0, 180.0, count)
    levels = np.where(rng.uniform(size=count) < 0.6, rng.uniform(90.0, 130.0, count), rng.uniform(205.0, 235.0, count))
    for (cx, cy), (ax, ay), angle, level in zip(centres, axes, angles, levels):
        cv2.ellipse(image, (int(cx), int(cy)), (int(ax), int(ay)), float(angle), 0.0, 360.0, float(level), -1)
