"""TIFF files written while prediction runs, for images of any size (numpy only; no TensorFlow here).

`RowWriter` writes one TIFF top to bottom in deflate strips; `StackWriter` writes a multipage TIFF page by page
(or a page row block by row block). Both write to `<path>.partial` and rename it to `path` on a complete close, so
a failed run never leaves a half-written file under the final name; the directories are written last, which lets
the file switch to BigTIFF at close when it has grown past ~2 GB (tifffile's writer must choose before the first
byte, and pulls its data from an iterator where prediction pushes rows). Files read back by OpenCV and tifffile.
"""
import os
import struct
import zlib

import numpy as np

from unet_perf.errors import UserError
from unet_perf.storage.atomic import remove_quietly

_MINISBLACK, _RGB = 1, 2  # TIFF PhotometricInterpretation

BIGTIFF_THRESHOLD = 2 ** 31 - 2 ** 24  # switch to BigTIFF past ~2 GB (some readers use signed 32-bit offsets)
STRIP_BYTES = 2 ** 18  # uncompressed bytes per strip: small enough to stream, large enough to compress well
DEFLATE_LEVEL = 1  # fast: prediction output is written at the speed of inference

_SAMPLE_FORMATS = {"u": 1, "i": 2, "f": 3}


class _TiffStreamFile(object):
    """A TIFF written strip by strip: pixel data first (after a 16-byte header slot), every directory at the end,
    so the format (classic or BigTIFF) is chosen at close when the final size is known."""

    def __init__(self, path, bigtiff_threshold=BIGTIFF_THRESHOLD):
        self.path = path
        self.partial = path + ".partial"
        self.bigtiff_threshold = bigtiff_threshold
        self._handle = open(self.partial, "wb")
        self._handle.write(b"\0" * 16)
        self._position = 16
        self._pages = []  # per finished page: (tags dict, strip offsets, strip byte counts)
        self._page = None  # the page being written
        self.bigtiff = None

    # pages
    def begin_page(self, height, width, channels=None, dtype=np.uint8):
        if self._page is not None:
            raise RuntimeError("{}: begin_page before the previous page ended".format(self.path))
        dtype = np.dtype(dtype)
        if dtype.kind not in _SAMPLE_FORMATS:
            raise ValueError("cannot write {} pixels to TIFF".format(dtype))
        if height < 1 or width < 1 or (channels is not None and channels < 1):
            raise ValueError("{}: cannot write an empty page ({}x{})".format(self.path, width, height))
        samples = channels or 1
        row_bytes = width * samples * dtype.itemsize
        self._page = {"height": int(height), "width": int(width), "channels": channels, "dtype": dtype,
                      "rows_per_strip": max(1, min(int(height), STRIP_BYTES // max(1, row_bytes))),
                      "written": 0, "pending": [], "pending_rows": 0, "offsets": [], "counts": []}

    def write_rows(self, rows):
        page = self._page
        if page is None:
            raise RuntimeError("{}: write_rows outside a page".format(self.path))
        rows = np.asarray(rows)
        expected = (page["width"],) + ((page["channels"],) if page["channels"] else ())
        if rows.ndim != len(expected) + 1 or rows.shape[1:] != expected:
            raise ValueError("{}: rows of shape {} do not fit a page of width {}{}".format(
                self.path, rows.shape, page["width"], ", {} channels".format(page["channels"])
                if page["channels"] else ""))
        if page["written"] + page["pending_rows"] + len(rows) > page["height"]:
            raise ValueError("{}: more than {} rows written".format(self.path, page["height"]))
        if not np.can_cast(rows.dtype, page["dtype"], "same_kind"):  # e.g. probabilities into a uint8 file
            raise ValueError("{}: {} rows would be truncated to {}; convert them first".format(
                self.path, rows.dtype, page["dtype"]))
        rows = np.ascontiguousarray(rows, page["dtype"].newbyteorder("<"))
        start = 0
        while start < len(rows):
            take = min(len(rows) - start, page["rows_per_strip"] - page["pending_rows"])
            page["pending"].append(rows[start:start + take].tobytes())
            page["pending_rows"] += take
            start += take
            if page["pending_rows"] == page["rows_per_strip"]:
                self._flush_strip()

    def _flush_strip(self):
        page = self._page
        data = zlib.compress(b"".join(page["pending"]), DEFLATE_LEVEL)
        self._handle.write(data)
        page["offsets"].append(self._position)
        page["counts"].append(len(data))
        self._position += len(data)
        page["written"] += page["pending_rows"]
        page["pending"], page["pending_rows"] = [], 0

    def end_page(self):
        page = self._page
        if page["pending_rows"]:
            self._flush_strip()
        if page["written"] != page["height"]:
            raise UserError("{}: only {} of {} rows were written; the output is incomplete".format(
                self.path, page["written"], page["height"]))
        self._pages.append(_page_tags(page))
        self._page = None

    # the file
    def close(self):
        """Write the directories and move the file to its name; a page left open is an error (file removed)."""
        try:
            if self._page is not None:
                self.end_page()
            if not self._pages:
                raise UserError("{}: no page was written".format(self.path))
            self._write_directories()
            self._handle.close()
            os.replace(self.partial, self.path)
        except BaseException:
            self.discard()
            raise

    def discard(self):
        """Drop the partial file (after an error)."""
        if not self._handle.closed:
            self._handle.close()
        remove_quietly(self.partial)

    def _write_directories(self):
        if self._position % 2:  # directories start on a word boundary
            self._handle.write(b"\0")
            self._position += 1
        blob, first = _directories(self._pages, self._position, big=False)
        self.bigtiff = self._position + len(blob) > min(self.bigtiff_threshold, 2 ** 32 - 1)
        if self.bigtiff:
            blob, first = _directories(self._pages, self._position, big=True)
        self._handle.write(blob)
        self._handle.seek(0)
        if self.bigtiff:
            self._handle.write(b"II" + struct.pack("<HHHQ", 43, 8, 0, first))
        else:
            self._handle.write(b"II" + struct.pack("<HI", 42, first))


def _page_tags(page):
    """{tag: (type, values)} of one finished page (baseline tags; strip offsets/counts as LONG8 or LONG later)."""
    channels = page["channels"] or 1
    dtype = page["dtype"]
    photometric = _RGB if channels in (3, 4) else _MINISBLACK
    tags = {256: [page["width"]], 257: [page["height"]], 258: [dtype.itemsize * 8] * channels, 259: [8],
            262: [photometric], 277: [channels], 278: [page["rows_per_strip"]], 284: [1],
            339: [_SAMPLE_FORMATS[dtype.kind]] * channels}
    extra = channels - (3 if photometric == _RGB else 1)
    if extra:
        tags[338] = [0] * extra  # unspecified extra samples (probability channels, not alpha)
    return tags, page["offsets"], page["counts"]


_SHORT, _LONG, _LONG8 = 3, 4, 16
_TYPE_FORMATS = {_SHORT: "H", _LONG: "I", _LONG8: "Q"}


def _directories(pages, start, big):
    """(bytes of every page's directory and its out-of-line values laid out from file offset `start`, file offset
    of the first directory)."""
    blob = bytearray()
    first = None
    value_slot = 8 if big else 4
    previous_next = None  # where the previous directory's next-offset field sits in blob
    for tags, offsets, counts in pages:
        strip_type = _LONG8 if big else _LONG
        entries = [(tag, _SHORT if max(values) < 2 ** 16 else _LONG, values) for tag, values in tags.items()]
        entries += [(273, strip_type, offsets), (279, strip_type, counts)]
        entries.sort()
        resolved = []
        for tag, kind, values in entries:
            data = struct.pack("<{}{}".format(len(values), _TYPE_FORMATS[kind]), *values)
            if len(data) <= value_slot:
                resolved.append((tag, kind, len(values), data.ljust(value_slot, b"\0")))
            else:
                if len(blob) % 2:
                    blob.append(0)  # values start on a word boundary
                where = start + len(blob)
                blob += data
                resolved.append((tag, kind, len(values), struct.pack("<Q" if big else "<I", where)))
        if len(blob) % 2:
            blob.append(0)
        directory = start + len(blob)
        first = directory if first is None else first
        if previous_next is not None:
            struct.pack_into("<Q" if big else "<I", blob, previous_next, directory)
        blob += struct.pack("<Q" if big else "<H", len(resolved))
        for tag, kind, count, value in resolved:
            blob += struct.pack("<HHQ" if big else "<HHI", tag, kind, count) + value
        previous_next = len(blob)
        blob += b"\0" * (8 if big else 4)
    return bytes(blob), first


class _StreamWriter(object):
    """What both writers share: a _TiffStreamFile, rows written in order, close or (on an exception inside the
    `with` block) discard."""

    def __init__(self, path, bigtiff_threshold=BIGTIFF_THRESHOLD):
        self._file = _TiffStreamFile(path, bigtiff_threshold)

    @property
    def bigtiff(self):
        return self._file.bigtiff

    def write_rows(self, rows):
        self._file.write_rows(rows)

    def close(self):
        self._file.close()

    def discard(self):
        self._file.discard()

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        if kind is None:
            self.close()
        else:
            self.discard()
        return False


class RowWriter(_StreamWriter):
    """One TIFF page ([H,W], or [H,W,C] as C samples) written top to bottom with .write_rows(rows [n, W(, C)]);
    .close() raises UserError when rows are missing (and removes the partial file). Deflate strips; BigTIFF past
    ~2 GB (`bigtiff_threshold` bytes). Context manager: an exception inside the block discards the file."""

    def __init__(self, path, height, width, channels=None, dtype=np.uint8, bigtiff_threshold=BIGTIFF_THRESHOLD):
        super(RowWriter, self).__init__(path, bigtiff_threshold)
        self._file.begin_page(height, width, channels, dtype)


class StackWriter(_StreamWriter):
    """A multipage TIFF written page by page: .add_page(page [H,W] uint8), or .begin_page(H, W) + .write_rows(rows)
    + .end_page() for pages too large to hold; .close(). BigTIFF past ~2 GB. Context manager (an exception inside
    the block discards the file). Readable by OpenCV (cv2.imreadmulti) and tifffile."""

    def add_page(self, page):
        page = np.asarray(page)
        self.begin_page(page.shape[0], page.shape[1], page.shape[2] if page.ndim == 3 else None, page.dtype)
        self.write_rows(page)
        self.end_page()

    def begin_page(self, height, width, channels=None, dtype=np.uint8):
        self._file.begin_page(height, width, channels, dtype)

    def end_page(self):
        self._file.end_page()
