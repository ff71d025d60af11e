"""Streaming overlap-tile prediction of one page, band of tile rows by band: memory O(width x tile x C), not O(H x W).

`predict_source(predict_batch_fn, source, cfg, batch_size, sink, ...)` computes what inference.tiling.predict_image
computes for the whole page (rescale by cfg.input_scale, normalise, mirror-extend, tile, blend, resize back, clip),
but reads only the rows the current band of tiles needs (`source.read_rows(top, bottom)`, the page sources of
unet_perf.inference.image_io) and hands the finished output rows to `sink(rows)` top to bottom (float32 [n, W] for
one output channel, [n, W, C] for C >= 2) as soon as no later tile touches them:

    source rows -> RowResampler (cfg.input_scale, bilinear like cv2.resize) -> normalise -> row cache
      -> mirror extension (np.pad "reflect" indices, computed per band) -> tiles, fixed-size batches
      -> predict_batch_fn (main thread)                          [reader thread: everything above]
      -> blend into a band accumulator -> rows no later tile touches / blend weights -> crop
      -> RowResampler back to [H, W] -> clip -> sink                   [blender thread: everything here]

The two helper threads overlap reading/tiling and blending/writing with the model (Session.run releases the GIL);
the queues between them hold at most two batches each. The accumulator is float32 (the whole-image path used
float64; the difference is below 1e-6 in the probabilities) and the blend weights are not accumulated at all: the
blend window is separable, so the weight sum at (i, j) is rowsum(i) x colsum(j), computed from the tile grid.

Normalisation: "unit" and "symmetric" are per pixel. "standard" divides by the mean and std of the WHOLE rescaled
page (as training and the whole-image path do), so it costs one extra streaming pass over the page first: the
rows are rescaled again and summed in float64 (shifted by the first rows' mean, so the variance does not cancel).
"""
import queue
import threading

import numpy as np

from unet_perf.data.normalization import STD_FLOOR
from unet_perf.errors import UserError
from unet_perf.inference.tiling import (DIHEDRAL, tile_starts, blend_line, blend_window, default_overlap, dihedral,
                                        inverse_dihedral, normalize_array)

READ_ROWS = 64  # source rows read at a time (more only when one band of tiles needs more)
QUEUE_BATCHES = 2  # batches waiting between two threads: bounds the memory, keeps all three busy


def _linear_taps(source_length, target_length):
    """(lower index, upper index, float32 weight of the upper) of every target position of a bilinear resize, as
    cv2.resize INTER_LINEAR places them: source = (target + 0.5) * source/target - 0.5, clamped to the edges."""
    position = (np.arange(target_length, dtype=np.float64) + 0.5) * (source_length / float(target_length)) - 0.5
    lower = np.floor(position).astype(np.int64)
    frac = (position - lower).astype(np.float32)
    frac[lower < 0] = 0.0
    lower = np.clip(lower, 0, source_length - 1)
    upper = np.minimum(lower + 1, source_length - 1)
    return lower, upper, frac


class RowResampler(object):
    """Bilinear resize of a stream of rows [source_h, source_w(, C)] to [target_h, target_w(, C)]: `push(rows)`
    takes the next source rows (top to bottom) and returns the target rows they complete (maybe none). Keeps only
    the source rows a later target row still needs (two, or a few for a shrink)."""

    def __init__(self, source_shape, target_shape):
        self.identity = tuple(source_shape) == tuple(target_shape)
        self.rows = _linear_taps(source_shape[0], target_shape[0])
        self.cols = _linear_taps(source_shape[1], target_shape[1])
        self.next_row = 0  # next target row to emit
        self.kept = None  # source rows from self.kept_top on, not yet dropped
        self.kept_top = 0

    def push(self, rows):
        if self.identity:
            return rows
        rows = self._resize_columns(np.asarray(rows, np.float32))
        self.kept = rows if self.kept is None else np.concatenate([self.kept, rows])
        received = self.kept_top + len(self.kept)
        lower, upper, frac = self.rows
        end = self.next_row
        while end < len(upper) and upper[end] < received:
            end += 1
        lo, hi = lower[self.next_row:end] - self.kept_top, upper[self.next_row:end] - self.kept_top
        weight = frac[self.next_row:end].reshape((-1,) + (1,) * (rows.ndim - 1))
        out = self.kept[lo] * (np.float32(1.0) - weight) + self.kept[hi] * weight
        self.next_row = end
        if end < len(lower):  # drop the source rows no later target row reads
            drop = min(int(lower[end]), received) - self.kept_top  # a shrink may skip rows not received yet
            if drop > 0:
                self.kept = self.kept[drop:]
                self.kept_top += drop
        return out

    def _resize_columns(self, rows):
        lower, upper, frac = self.cols
        weight = frac.reshape((-1,) + (1,) * (rows.ndim - 2))
        return rows[:, lower] * (np.float32(1.0) - weight) + rows[:, upper] * weight


def _mirror(index, length, edge):
    """np.pad's "reflect" (or "edge") index map: the source index of every extended index, any distance out."""
    if edge or length == 1:
        return np.clip(index, 0, length - 1)
    period = 2 * (length - 1)
    folded = np.mod(index, period)
    return np.where(folded >= length, period - folded, folded)


def scaled_shape(shape, scale):
    """The page's [h, w] at the network's scale: tiling.rescale's size (each side rounded, at least 1 px)."""
    if scale == 1.0:
        return tuple(shape)
    return tuple(max(1, int(round(side * scale))) for side in shape)


def _source_chunks(source):
    height = source.shape[0]
    for top in range(0, height, READ_ROWS):
        yield np.asarray(source.read_rows(top, min(height, top + READ_ROWS)), np.float32)


def standard_stats(source, scale):
    """(mean, std) of the whole page rescaled by `scale`, in one streaming pass: float64 sums of the rows shifted by
    the first rows' mean (numerically the variance of a bright flat page does not cancel)."""
    resampler = RowResampler(source.shape, scaled_shape(source.shape, scale))
    count, total, squares, shift = 0, 0.0, 0.0, None
    for chunk in _source_chunks(source):
        rows = np.asarray(resampler.push(chunk), np.float64)
        if rows.size == 0:
            continue
        if shift is None:
            shift = float(rows.mean())
        rows = rows - shift
        count += rows.size
        total += float(rows.sum())
        squares += float(np.square(rows).sum())
    mean = total / count
    return shift + mean, float(np.sqrt(max(squares / count - mean * mean, 0.0)))


class ScaledRows(object):
    """The page rescaled and normalised, read on demand: `take(indices)` returns those rows (any order, repeats
    allowed) reading the source only as far as needed; `release_below(row)` forgets the rows above `row`."""

    def __init__(self, source, scale, normalize):
        self.shape = scaled_shape(source.shape, scale)
        self.chunks = _source_chunks(source)
        self.resampler = RowResampler(source.shape, self.shape)
        self.normalize = normalize
        if normalize == "standard":
            mean, std = standard_stats(source, scale)
            self.mean, self.std = np.float32(mean), np.float32(max(std, STD_FLOOR * 255.0))
        self.rows = np.zeros((0, self.shape[1]), np.float32)
        self.top = 0  # scaled row index of self.rows[0]

    def _normalised(self, rows):
        if self.normalize == "standard":
            return (rows - self.mean) / self.std
        return normalize_array(rows, self.normalize)

    def take(self, indices):
        while self.top + len(self.rows) <= indices.max():
            more = self._normalised(self.resampler.push(next(self.chunks)))
            self.rows = np.concatenate([self.rows, more]) if len(more) else self.rows
        return self.rows[indices - self.top]

    def release_below(self, row):
        if row > self.top:
            self.rows = self.rows[row - self.top:]
            self.top = row

    @property
    def buffer_rows(self):
        return len(self.rows)


class TileGrid(object):
    """Where the tiles of a [h, w] page go, as tiling.predict_tiled places them: mirrored margins of overlap // 2,
    tile starts `stride` apart covering the page, and the blend weight sums per row and column."""

    def __init__(self, shape, tile, overlap, window):
        if not 0 <= overlap < tile:
            raise UserError("--overlap {} must be in [0, tile size {})".format(overlap, tile))
        self.shape, self.tile = shape, tile
        stride = tile - overlap
        self.margin = overlap // 2
        height, width = shape
        self.rows, self.covered_h = tile_starts(height + 2 * self.margin, tile, stride)
        self.cols, self.covered_w = tile_starts(width + 2 * self.margin, tile, stride)
        self.edge = min(shape) <= 1  # predict_tiled pads with "edge" then
        self.col_index = _mirror(np.arange(self.covered_w) - self.margin, width, self.edge)
        # after tile row b, rows above keep_from[b + 1] are never read again
        lows = [int(self.row_index(band).min()) for band in range(len(self.rows))] + [height]
        self.keep_from = np.minimum.accumulate(lows[::-1])[::-1].tolist()
        self.window = blend_window(tile, window)[..., None]
        line = blend_line(tile, window)
        self.row_weight = self._sums(line, self.rows, self.covered_h)
        self.col_weight = self._sums(line, self.cols, self.covered_w)

    def row_index(self, band):
        """The page rows (at the network's scale) of the tile row `band`, mirrored at the borders."""
        top = self.rows[band]
        return _mirror(np.arange(top, top + self.tile) - self.margin, self.shape[0], self.edge)

    def _sums(self, line, starts, length):
        total = np.zeros(length, np.float64)
        for start in starts:
            total[start:start + self.tile] += line
        return total


class BandBlender(object):
    """Blends predicted tiles into an accumulator of one band of tile rows ([tile, covered_w, C] float32); once a
    tile row is complete, the rows no later tile touches are divided by the blend weights, cropped to the page,
    resized back to the page size and handed to `sink`, clipped to [0, 1]."""

    def __init__(self, grid, transforms, page_shape, sink):
        self.grid, self.transforms, self.sink = grid, transforms, sink
        self.resampler = RowResampler(grid.shape, page_shape)
        self.accumulator = None  # allocated by the first batch, which tells the channel count
        self.band = 0  # the tile row being blended
        self.rows_out = 0

    def add(self, probs, slots):
        tile = self.grid.tile
        probs = np.asarray(probs, np.float32).reshape((len(probs), tile, tile, -1))
        if self.accumulator is None:
            self.accumulator = np.zeros((tile, self.grid.covered_w, probs.shape[-1]), np.float32)
        for slot, (band, col, k) in enumerate(slots):
            while band > self.band:
                self._finish_band()
            self.accumulator[:, col:col + tile] += inverse_dihedral(probs[slot], k) * self.grid.window

    def _finish_band(self):
        """Tile row self.band is blended: rows up to the next tile row are final; shift the band up to it."""
        top, done = self.grid.rows[self.band], self.grid.rows[self.band + 1] - self.grid.rows[self.band]
        self._emit(top, self.accumulator[:done])
        self.accumulator[:-done] = self.accumulator[done:]
        self.accumulator[-done:] = 0.0
        self.band += 1

    def finish(self):
        while self.band < len(self.grid.rows) - 1:
            self._finish_band()
        top = self.grid.rows[-1]
        self._emit(top, self.accumulator[:self.grid.covered_h - top])
        if self.rows_out != self.resampler.rows[0].size:
            raise RuntimeError("streaming prediction wrote {} of {} rows".format(
                self.rows_out, self.resampler.rows[0].size))

    def _emit(self, top, block):
        grid, margin = self.grid, self.grid.margin
        height, width = grid.shape
        first, last = max(top, margin), min(top + len(block), margin + height)  # rows of the page itself
        if last <= first:
            return
        weight = (self.transforms * grid.row_weight[first:last])[:, None] * grid.col_weight[None, margin:margin + width]
        rows = block[first - top:last - top, margin:margin + width] / weight.astype(np.float32)[..., None]
        rows = np.clip(self.resampler.push(rows), 0.0, 1.0)
        if len(rows):
            self.rows_out += len(rows)
            self.sink(rows[..., 0] if rows.shape[-1] == 1 else rows)


def cut_tiles(grid, scaled, batch_size, transforms, put):
    """Cut the tiles of every band (`scaled` rows, mirror-extended) in the order tiling.predict_tiled does and
    `put((batch float32 [batch_size, tile, tile, 1], slots [(band, col, k)]))` every full batch (the last one
    padded with zeros: the graph has a static batch size)."""
    tile = grid.tile
    batch, slots = np.empty((batch_size, tile, tile, 1), np.float32), []
    for band in range(len(grid.rows)):
        padded = scaled.take(grid.row_index(band))[:, grid.col_index]  # [tile, covered_w]
        scaled.release_below(grid.keep_from[band + 1])
        for col in grid.cols:
            for k in transforms:
                batch[len(slots), :, :, 0] = dihedral(padded[:, col:col + tile], k)
                slots.append((band, col, k))
                if len(slots) == batch_size:
                    put((batch, slots))
                    batch, slots = np.empty_like(batch), []
    if slots:
        batch[len(slots):] = 0.0
        put((batch, slots))


class _Stopped(Exception):
    """Another stage failed: this one stops quietly (the failure is raised by the caller)."""


class Stages(object):
    """Three stages joined by bounded queues: produce(put) on a reader thread, run(item) on the calling thread (the
    model: Session.run releases the GIL), consume(result) then finish() on a writer thread. The first error of any
    stage stops the others and is raised by `run_all`."""

    def __init__(self):
        self.stop = threading.Event()
        self.errors = []

    def _put(self, channel, item):
        while not self.stop.is_set():
            try:
                channel.put(item, timeout=0.05)
                return
            except queue.Full:
                pass
        raise _Stopped()

    def _get(self, channel):
        while not self.stop.is_set():
            try:
                return channel.get(timeout=0.05)
            except queue.Empty:
                pass
        raise _Stopped()

    def _guarded(self, function, *args):
        try:
            function(*args)
        except _Stopped:
            pass
        except BaseException as err:  # handed to the calling thread, which raises it
            self.errors.append(err)
            self.stop.set()

    def run_all(self, produce, run, consume, finish):
        inputs, results = queue.Queue(QUEUE_BATCHES), queue.Queue(QUEUE_BATCHES)
        done = object()

        def reader():
            produce(lambda item: self._put(inputs, item))
            self._put(inputs, done)

        def writer():
            while True:
                item = self._get(results)
                if item is done:
                    return finish()
                consume(item)

        threads = [threading.Thread(target=self._guarded, args=(reader,), name="tile-reader", daemon=True),
                   threading.Thread(target=self._guarded, args=(writer,), name="tile-writer", daemon=True)]
        for thread in threads:
            thread.start()
        self._guarded(self._run_model, inputs, results, run, done)  # an error here stops the threads too
        for thread in threads:
            thread.join()
        if self.errors:
            raise self.errors[0]

    def _run_model(self, inputs, results, run, done):
        while True:
            item = self._get(inputs)
            self._put(results, done if item is done else run(item))
            if item is done:
                return


def predict_source(predict_batch_fn, source, cfg, batch_size, sink, tile=None, overlap=None, tta=False,
                   blend="cosine"):
    """Predict one page source (`.shape` (H, W), `.read_rows(top, bottom)` in 0..255 units) band by band; `sink`
    gets the probability rows top to bottom: float32 [n, W] (P(interior), one output channel) or [n, W, C].
    tile: the tile side (default cfg.crop_size); overlap: pixels neighbours share at the network's scale
    (default tiling.default_overlap); blend: "cosine" or "gaussian" (tiling.blend_window). Returns the engine's
    buffer sizes {"cached_rows": most scaled rows held, "accumulator": accumulator shape}."""
    tile = int(tile or cfg.crop_size)
    overlap = default_overlap(tile) if overlap is None else int(overlap)
    scaled = ScaledRows(source, cfg.input_scale, cfg.normalize)
    grid = TileGrid(scaled.shape, tile, overlap, blend)
    transforms = list(range(DIHEDRAL)) if tta else [0]
    blender = BandBlender(grid, len(transforms), tuple(source.shape[:2]), sink)
    cached = [0]

    def produce(put):
        def tracked(item):
            cached[0] = max(cached[0], scaled.buffer_rows)
            put(item)
        cut_tiles(grid, scaled, batch_size, transforms, tracked)

    def run(item):
        batch, slots = item
        return predict_batch_fn(batch), slots

    Stages().run_all(produce, run, lambda item: blender.add(*item), blender.finish)
    return {"cached_rows": cached[0], "accumulator": blender.accumulator.shape}


class _ArrayRows(object):
    """An in-memory float image (0..255 units) as a page source; image_io.ArraySource would apply the file
    rules (uint8/uint16, colour conversion) that callers of predict_array (evaluate, validation) have applied."""

    def __init__(self, array):
        self.array, self.shape = array, array.shape

    def read_rows(self, top, bottom):
        return self.array[top:bottom]


def predict_array(predict_batch_fn, image, cfg, batch_size, **options):
    """predict_source for an in-memory [H,W] image in 0..255 units: the whole probability map, float32 [H,W] or
    [H,W,C] (what tiling.predict_image returns, within 1e-5)."""
    image = np.asarray(image, np.float32)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise UserError("expected a grayscale image, got an array of shape {}".format(image.shape))
    parts = []
    predict_source(predict_batch_fn, _ArrayRows(image), cfg, batch_size, parts.append, **options)
    return np.concatenate(parts)
