"""Streaming image input/output for prediction at any size (numpy + tifffile + OpenCV; no TensorFlow here).

Reading: `open_pages(path)` reads only the headers of a file and returns one page source per page (a PNG/JPEG has
one page, a multipage or BigTIFF one per page). `source.read_rows(top, bottom)` gives float32 gray rows in 0..255
units, exactly what unet_perf.data.sources.read_image gives for them (same 16-bit map, same colour rule), while
holding only those rows in memory:
  - uncompressed TIFF pages whose strips follow each other are memory-mapped (np.memmap at the data offset);
  - compressed (deflate, packbits) or tiled TIFF pages decode only the strips/tiles that cover the rows, one at a
    time (tifffile's TiffPage.decode on bytes read from the strip/tile offsets);
  - PNG, JPEG and TIFF layouts tifffile cannot stream (palette, LZW without imagecodecs, JPEG-in-TIFF, planar RGB,
    MinIsWhite, rotated) are decoded whole by OpenCV on the first read (OpenCV cannot decode part of an image)
    and released after the last row has been read.
In --rgb refuse mode a colour page is refused when its first colour rows are read (the page is not scanned twice).

Writing: `RowWriter` writes one TIFF top to bottom in deflate strips; `StackWriter` writes a multipage TIFF page by
page (or a page row block by row block). Both write to `<path>.partial` and rename it to `path` on a complete
close, so a failed run never leaves a half-written file under the final name; the directories are written last,
which lets the file switch to BigTIFF at close when it has grown past ~2 GB.
"""
import os
import struct
import threading
import warnings
import zlib

import numpy as np

from unet_perf.data import sources
from unet_perf.errors import UserError

TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_STREAMED_COMPRESSIONS = (1, 8, 32946, 32773)  # none, deflate (new and old codes), packbits
_MINISBLACK, _RGB = 1, 2


def open_pages(path, rgb="convert"):
    """One page source per page of the image file `path`; reads headers only. UserError (one line) for a missing,
    empty, truncated or undecodable file and for pages that are not 1-channel gray or 3/4-channel colour."""
    if rgb not in ("convert", "refuse"):
        raise UserError("--rgb must be convert or refuse, got {!r}".format(rgb))
    if not os.path.isfile(path):
        raise UserError("{} does not exist; pass an existing image file".format(path))
    if os.path.getsize(path) == 0:
        raise UserError("{} is empty (0 bytes); replace it with a valid image".format(path))
    with open(path, "rb") as handle:
        magic = handle.read(4)
    converter = _GrayConverter(rgb)
    if magic in TIFF_MAGICS:
        return _open_tiff(path, converter)
    return [_WholeFileSource(path, converter)]


class ArraySource(object):
    """An in-memory page ([H,W] or [H,W,3/4] in OpenCV's BGR order, uint8 or uint16) with the page source
    interface (tests, benchmarks)."""

    def __init__(self, array, name="array", rgb="convert"):
        array = np.asarray(array)
        if array.ndim not in (2, 3):
            raise UserError("{} has shape {}; pass a [H, W] grayscale array".format(name, array.shape))
        self.path = name
        self.index = 0
        self.shape = tuple(array.shape[:2])
        self._gray = _GrayConverter(rgb).convert(array, name)

    def read_rows(self, top, bottom):
        _check_rows(self, top, bottom)
        return self._gray[top:bottom].astype(np.float32)

    def read(self):
        return self.read_rows(0, self.shape[0])

    def close(self):
        pass


class _PageSource(object):
    """Shared interface: .path, .index, .shape, read_rows, read, close (releases file handles and caches)."""

    def __init__(self, path, index, shape, where, converter):
        self.path = path
        self.index = index
        self.shape = tuple(int(side) for side in shape)
        self.where = where
        self._converter = converter

    def read_rows(self, top, bottom):
        """float32 [bottom - top, width] gray rows in 0..255 units."""
        _check_rows(self, top, bottom)
        if top == bottom:
            return np.zeros((0, self.shape[1]), np.float32)
        raw = self._raw_rows(top, bottom)
        rows = self._converter.convert(raw, self.where).astype(np.float32)
        if bottom == self.shape[0]:
            self.close()  # the last rows: a top-to-bottom reader is done with this page
        return rows

    def read(self):
        return self.read_rows(0, self.shape[0])

    def __repr__(self):
        return "<{} {} {}x{}>".format(type(self).__name__, self.where, self.shape[1], self.shape[0])


def _check_rows(source, top, bottom):
    if not 0 <= top <= bottom <= source.shape[0]:
        raise ValueError("rows {}:{} outside 0:{} of {}".format(top, bottom, source.shape[0], source.path))


# --- colour and bit depth: the rules of unet_perf.data.sources --------------------------------------------------

class _GrayConverter(object):
    """Raw rows (OpenCV channel order) -> uint8 gray, by sources.Reader's rules; warns once per file on the first
    colour rows it converts."""

    def __init__(self, rgb):
        self.reader = sources.Reader(rgb)
        self._warned = False

    def convert(self, raw, where):
        gray = sources.to_uint8(self.reader.to_gray(raw, where), where)
        if self.reader.converted and not self._warned:
            self._warned = True
            self.reader.warn_converted()
        return gray


# --- TIFF ---------------------------------------------------------------------------------------------------------

def _tifffile():
    try:
        import tifffile
    except ImportError:
        raise UserError("reading TIFF files for prediction needs tifffile; pip install tifffile")
    return tifffile


def _open_tiff(path, converter):
    sources.refuse_truncated(path, ".tif")
    tifffile = _tifffile()
    share = _SharedTiff(path)
    try:
        with tifffile.TiffFile(path) as tif:
            count = len(tif.pages)
            return [_tiff_source(path, tif.pages[index], index, count, share, converter)
                    for index in range(count)]
    except UserError:
        raise
    except Exception as err:  # tifffile raises TiffFileError, ValueError, struct.error, ... for broken files
        raise UserError("{} cannot be decoded ({}); replace it with a valid TIFF".format(path, _reason(err)))


def _reason(err):
    text = str(err).strip()
    return text.splitlines()[-1] if text else type(err).__name__


def _tiff_source(path, page, index, count, share, converter):
    where = path if count == 1 else "{}[{}]".format(path, index)
    shape = (page.imagelength, page.imagewidth)
    samples = page.samplesperpixel
    if samples not in (1, 3, 4):
        raise UserError("{} has {} channels per pixel; save it as grayscale (1 channel) or RGB".format(
            where, samples))
    dtype = np.dtype(page.dtype) if page.dtype is not None else None
    if dtype is None or dtype.kind not in "ub" or dtype.itemsize > 2:  # b: 1-bit pages, which OpenCV reads
        raise UserError("{} has {} pixels; save images as 8- or 16-bit grayscale".format(
            where, dtype or "{}-bit".format(page.bitspersample)))
    if _streamable(page):
        layout = _TiffLayout(page)
        return _TiffPageSource(path, index, shape, where, converter, share, layout)
    return _WholeTiffPageSource(path, index, shape, where, converter)


def _streamable(page):
    """True for the TIFF layouts read here part by part (else OpenCV decodes the page whole)."""
    tifffile = _tifffile()
    photometric = int(page.photometric)
    if page.compression not in _STREAMED_COMPRESSIONS or page.bitspersample not in (8, 16):
        return False
    if page.compression != 1:
        try:
            tifffile.TIFF.DECOMPRESSORS[page.compression]
        except Exception:  # the codec needs imagecodecs
            return False
    if page.samplesperpixel == 1:
        colour_ok = photometric == _MINISBLACK
    else:
        colour_ok = photometric == _RGB and int(page.planarconfig) == 1
    if page.samplesperpixel == 4 and page.bitspersample == 8 and _tag_values(page, 338) == [2]:
        return False  # 8-bit unassociated alpha: OpenCV reads it premultiplied (libtiff's RGBA interface)
    return (colour_ok and int(page.sampleformat) == 1 and page.imagedepth == 1 and
            _tag_values(page, 274) in ([], [1]))  # 274: Orientation; OpenCV and tifffile differ on rotated pages


def _tag_values(page, code):
    """The values of TIFF tag `code` of `page` as a list of ints ([] when absent)."""
    tag = page.tags.get(code)
    if tag is None:
        return []
    value = tag.value
    return [int(item) for item in value] if isinstance(value, (tuple, list)) else [int(value)]


class _TiffLayout(object):
    """What reading part of one TIFF page needs, copied out of tifffile's page so the file can be closed."""

    def __init__(self, page):
        self.byteorder = page.parent.byteorder
        self.dtype = np.dtype(page.dtype).newbyteorder("=")
        self.samples = page.samplesperpixel
        self.height, self.width = page.imagelength, page.imagewidth
        self.tiled = bool(page.is_tiled)
        if self.tiled:
            self.segment_height, self.segment_width = page.tilelength, page.tilewidth
        else:
            self.segment_height, self.segment_width = min(page.rowsperstrip or self.height, self.height), self.width
        self.per_row = -(-self.width // self.segment_width)
        offsets, counts = list(page.dataoffsets), list(page.databytecounts)
        row_bytes = self.width * self.samples * self.dtype.itemsize
        self.memmap_offset = None
        if (page.compression == 1 and not self.tiled and int(page.predictor) == 1 and int(page.fillorder) == 1
                and sum(counts) == row_bytes * self.height and
                all(offsets[i] + counts[i] == offsets[i + 1] for i in range(len(offsets) - 1))):
            self.memmap_offset = offsets[0]


class _SharedTiff(object):
    """The open tifffile handle of one file, shared by its pages: opened on the first read, closed when every page
    that opened it has been read to its last row (or closed). Pages may be read from different threads."""

    def __init__(self, path):
        self.path = path
        self._tif = None
        self._pages = {}
        self._lock = threading.Lock()

    def page(self, index):
        with self._lock:
            if self._tif is None:
                self._tif = _tifffile().TiffFile(self.path)
            if index not in self._pages:
                self._pages[index] = self._tif.pages[index]
            return self._tif, self._pages[index]

    def release(self, index):
        with self._lock:
            self._pages.pop(index, None)
            if not self._pages and self._tif is not None:
                self._tif.close()
                self._tif = None


class _TiffPageSource(_PageSource):
    """A TIFF page read part by part: memory-mapped when uncompressed and contiguous, else strip by strip or tile
    by tile."""

    def __init__(self, path, index, shape, where, converter, share, layout):
        super(_TiffPageSource, self).__init__(path, index, shape, where, converter)
        self._share = share
        self._layout = layout

    def _raw_rows(self, top, bottom):
        try:
            if self._layout.memmap_offset is not None:
                raw = self._mapped_rows(top, bottom)
            else:
                raw = self._decoded_rows(top, bottom)
            return _to_opencv_order(raw, self._layout.samples)
        except UserError:
            raise
        except Exception as err:  # zlib.error, TiffFileError, ValueError from a damaged strip
            self.close()
            raise UserError("{} cannot be decoded ({}); replace it with a valid TIFF".format(
                self.where, _reason(err)))

    def _mapped_rows(self, top, bottom):
        layout = self._layout
        shape = (layout.height, layout.width) + ((layout.samples,) if layout.samples > 1 else ())
        mapped = np.memmap(self.path, np.dtype(layout.byteorder + layout.dtype.char), "r",
                           offset=layout.memmap_offset, shape=shape)
        try:
            return np.array(mapped[top:bottom], layout.dtype)
        finally:
            del mapped

    def _decoded_rows(self, top, bottom):
        layout = self._layout
        tif, page = self._share.page(self.index)
        out = np.zeros((bottom - top, layout.width, layout.samples), layout.dtype)
        handle = tif.filehandle
        offsets, counts = page.dataoffsets, page.databytecounts
        for segment_row in range(top // layout.segment_height, (bottom - 1) // layout.segment_height + 1):
            for column in range(layout.per_row):
                number = segment_row * layout.per_row + column
                data = None
                if offsets[number] and counts[number]:
                    with handle.lock:
                        handle.seek(offsets[number])
                        data = handle.read(counts[number])
                segment, where, _ = page.decode(data, number, jpegtables=page.jpegtables, _fullsize=False)
                if segment is None:
                    continue  # an empty strip/tile: zeros
                segment = segment[0]  # [rows, columns, samples]
                y, x = where[2], where[3]
                first, last = max(top, y), min(bottom, y + segment.shape[0], layout.height)
                right = min(x + segment.shape[1], layout.width)
                out[first - top:last - top, x:right] = segment[first - y:last - y, :right - x]
        return out[:, :, 0] if layout.samples == 1 else out

    def close(self):
        self._share.release(self.index)


def _to_opencv_order(raw, samples):
    """tifffile's RGB(A) samples -> OpenCV's BGR(A), which the sources conversion expects."""
    if samples == 3:
        return raw[..., ::-1]
    if samples == 4:
        return raw[..., [2, 1, 0, 3]]
    return raw


class _WholeTiffPageSource(_PageSource):
    """A TIFF page in a layout only OpenCV reads (palette, LZW, JPEG, planar, ...): decoded whole on first use and
    kept as uint8 gray until its last row has been read."""

    def __init__(self, path, index, shape, where, converter):
        super(_WholeTiffPageSource, self).__init__(path, index, shape, where, converter)
        self._page = None

    def _raw_rows(self, top, bottom):
        if self._page is None:
            self._page = self._converter.reader.page(self.path, self.index, is_label=False)
        return self._page[top:bottom]  # already gray uint8: the conversion in read_rows keeps it as it is

    def close(self):
        self._page = None


class _WholeFileSource(_PageSource):
    """A PNG/JPEG (or any non-TIFF file OpenCV reads): the size comes from the header (Pillow, lazy), the pixels
    are decoded whole on first use (OpenCV cannot decode part of them) and dropped after the last row."""

    def __init__(self, path, converter):
        super(_WholeFileSource, self).__init__(path, 0, _header_size(path), path, converter)
        self._page = None

    def _raw_rows(self, top, bottom):
        if self._page is None:
            page = sources.read_raw(self.path)[0]
            if page.shape[:2] != self.shape:
                raise UserError("{} decodes to {}x{} but its header says {}x{}; replace it with a valid image"
                                .format(self.path, page.shape[1], page.shape[0], self.shape[1], self.shape[0]))
            self._page = self._converter.convert(page, self.path)  # keep gray uint8, not the colour original
        return self._page[top:bottom]

    def close(self):
        self._page = None


def _header_size(path):
    """(height, width) from the image header, without decoding the pixels (a PNG's IHDR, else Pillow's lazy open;
    an image beyond Pillow's decompression-bomb limit is decoded once by OpenCV to learn its size)."""
    sources.refuse_truncated(path, os.path.splitext(path)[1].lower())
    with open(path, "rb") as handle:
        header = handle.read(24)
    if header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR":
        width, height = struct.unpack(">II", header[16:24])
        return height, width
    try:
        from PIL import Image
    except ImportError:
        return sources.read_raw(path)[0].shape[:2]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning: only the header is read here
            with Image.open(path) as image:
                width, height = image.size
        return height, width
    except Image.DecompressionBombError:
        return sources.read_raw(path)[0].shape[:2]
    except Exception:  # Pillow: UnidentifiedImageError (an OSError), SyntaxError, ValueError, ...
        raise UserError("{} cannot be decoded (not a PNG, JPEG or TIFF image); replace it with a valid image"
                        .format(path))


# --- writing ------------------------------------------------------------------------------------------------------

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
        if os.path.exists(self.partial):
            os.remove(self.partial)

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


class RowWriter(object):
    """One TIFF page ([H,W], or [H,W,C] as C samples) written top to bottom with .write_rows(rows [n, W(, C)]);
    .close() raises UserError when rows are missing (and removes the partial file). Deflate strips; BigTIFF past
    ~2 GB (`bigtiff_threshold` bytes). Context manager: an exception inside the block discards the file."""

    def __init__(self, path, height, width, channels=None, dtype=np.uint8, bigtiff_threshold=BIGTIFF_THRESHOLD):
        self._file = _TiffStreamFile(path, bigtiff_threshold)
        self._file.begin_page(height, width, channels, dtype)

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


class StackWriter(object):
    """A multipage TIFF written page by page: .add_page(page [H,W] uint8), or .begin_page(H, W) + .write_rows(rows)
    + .end_page() for pages too large to hold; .close(). BigTIFF past ~2 GB. Context manager (an exception inside
    the block discards the file). Readable by OpenCV (cv2.imreadmulti) and tifffile."""

    def __init__(self, path, bigtiff_threshold=BIGTIFF_THRESHOLD):
        self._file = _TiffStreamFile(path, bigtiff_threshold)

    @property
    def bigtiff(self):
        return self._file.bigtiff

    def add_page(self, page):
        page = np.asarray(page)
        self.begin_page(page.shape[0], page.shape[1], page.shape[2] if page.ndim == 3 else None, page.dtype)
        self.write_rows(page)
        self.end_page()

    def begin_page(self, height, width, channels=None, dtype=np.uint8):
        self._file.begin_page(height, width, channels, dtype)

    def write_rows(self, rows):
        self._file.write_rows(rows)

    def end_page(self):
        self._file.end_page()

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
