"""Streaming image input for prediction at any size (numpy + tifffile + OpenCV; no TensorFlow here).

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

Writing: unet_perf.inference.tiff_writer (RowWriter, StackWriter).
"""
import os
import struct
import threading
import warnings

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
