"""EM-like synthetic membrane slices: the built-in dataset when --data_path is empty (numpy + OpenCV only).

Each slice is a Voronoi partition of random seeds, bent by a smooth random displacement field so that cell
boundaries curve. Membranes are the cell boundaries, 2-6 px thick with varying darkness; cells get their own
gray level plus dark and bright organelle-like blobs; then blur, uneven illumination (a smooth gain field) and
Gaussian noise. Masks follow the project convention: 1 = cell interior, 0 = membrane (about 20% membrane).
A numpy RandomState drives everything, so the same seed gives the same arrays on every numpy version, and the
first k slices of membranes(n, seed=s) equal membranes(k, seed=s).
"""
import cv2
import numpy as np

from unet_perf.data.sources import Pairs

CELL_AREA = 1300.0  # mean cell area in px^2; with 2-6 px membranes this gives about 20% membrane


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
