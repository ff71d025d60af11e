"""inference.image_io: page sources read any rows exactly as data.sources.read_image does, in memory proportional
to the rows; RowWriter/StackWriter write complete TIFFs (or nothing); bad inputs are one-line UserErrors."""
import os
import tracemalloc
import warnings

import cv2
import numpy as np
import pytest
import tifffile

from unet_perf.data.sources import read_image
from unet_perf.errors import UserError, run_cli
from unet_perf.inference.image_io import ArraySource, open_pages
from unet_perf.inference.tiff_writer import RowWriter, StackWriter

HEIGHT, WIDTH = 75, 61  # odd sizes: partial last strips and tiles
RNG = np.random.RandomState(22)


def _gray8(pages=None):
    shape = (HEIGHT, WIDTH) if pages is None else (pages, HEIGHT, WIDTH)
    return RNG.randint(0, 256, shape).astype(np.uint8)


# name -> (array, tifffile.imwrite arguments)
TIFF_CASES = {
    "uncompressed": (_gray8(), dict(photometric="minisblack")),
    "uncompressed_strips": (_gray8(), dict(photometric="minisblack", rowsperstrip=10)),
    "deflate_strips": (_gray8(), dict(photometric="minisblack", compression="zlib", rowsperstrip=16)),
    "deflate_tiles": (_gray8(), dict(photometric="minisblack", compression="zlib", tile=(32, 16))),
    "bigtiff": (_gray8(), dict(photometric="minisblack", compression="zlib", rowsperstrip=7, bigtiff=True)),
    "multipage": (_gray8(3), dict(photometric="minisblack", compression="zlib", rowsperstrip=16)),
    "multipage_uncompressed": (_gray8(2), dict(photometric="minisblack")),
    "uint16_big_endian": (RNG.randint(0, 65536, (HEIGHT, WIDTH)).astype(np.uint16),
                          dict(photometric="minisblack", compression="zlib", rowsperstrip=16, byteorder=">")),
    "uint16_uncompressed": (RNG.randint(0, 65536, (2, HEIGHT, WIDTH)).astype(np.uint16),
                            dict(photometric="minisblack")),
    "rgb_strips": (RNG.randint(0, 256, (HEIGHT, WIDTH, 3)).astype(np.uint8),
                   dict(photometric="rgb", compression="zlib", rowsperstrip=16)),
    "rgb_uncompressed": (RNG.randint(0, 256, (HEIGHT, WIDTH, 3)).astype(np.uint8), dict(photometric="rgb")),
    "rgb16_tiles": (RNG.randint(0, 65536, (HEIGHT, WIDTH, 3)).astype(np.uint16),
                    dict(photometric="rgb", compression="zlib", tile=(16, 32))),
    "rgba_unassociated": (RNG.randint(0, 256, (HEIGHT, WIDTH, 4)).astype(np.uint8),
                          dict(photometric="rgb", extrasamples=[2])),  # OpenCV premultiplies: read whole
}
ROW_RANGES = ((0, HEIGHT), (15, 17), (5, 40), (31, 33), (HEIGHT - 3, HEIGHT), (40, 41), (0, 0))


def _read_image_quietly(path, rgb="convert"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_image(path, rgb)


def _assert_rows_match(path, pages):
    expected = _read_image_quietly(path)
    assert len(pages) == len(expected)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for index, (source, page) in enumerate(zip(pages, expected)):
            assert (source.index, source.shape) == (index, page.shape)
            for top, bottom in ROW_RANGES:
                rows = source.read_rows(top, bottom)
                assert rows.dtype == np.float32 and rows.shape == (bottom - top, page.shape[1])
                assert np.array_equal(rows, page[top:bottom]), (top, bottom)
            assert np.array_equal(source.read(), page)


@pytest.mark.parametrize("case", sorted(TIFF_CASES))
def test_read_rows_equals_read_image(tmp_path, case):
    array, options = TIFF_CASES[case]
    path = str(tmp_path / "{}.tif".format(case))
    tifffile.imwrite(path, array, **options)
    _assert_rows_match(path, open_pages(path))


@pytest.mark.parametrize("name,array", [("gray.png", _gray8()), ("gray16.png", TIFF_CASES["uint16_uncompressed"][0][0]),
                                        ("colour.png", TIFF_CASES["rgb_strips"][0]), ("lzw.tif", _gray8())])
def test_opencv_formats_equal_read_image(tmp_path, name, array):
    """PNG and TIFF layouts tifffile cannot stream here (OpenCV writes LZW) are decoded whole, still exactly."""
    path = str(tmp_path / name)
    cv2.imwrite(path, array)
    _assert_rows_match(path, open_pages(path))


def test_colour_pages_warn_once_and_refuse_mode_stops(tmp_path):
    colour, gray_as_rgb = str(tmp_path / "colour.tif"), str(tmp_path / "gray_rgb.tif")
    tifffile.imwrite(colour, TIFF_CASES["rgb_strips"][0], photometric="rgb")
    tifffile.imwrite(gray_as_rgb, np.repeat(_gray8()[:, :, None], 3, axis=2), photometric="rgb")
    with pytest.warns(UserWarning, match="converted 1 colour file"):
        open_pages(colour)[0].read()
    with pytest.raises(UserError, match="colour image; save it as grayscale or pass --rgb convert"):
        open_pages(colour, rgb="refuse")[0].read_rows(0, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gray saved as RGB is gray: no warning, no refusal
        assert np.array_equal(open_pages(gray_as_rgb, rgb="refuse")[0].read(), _read_image_quietly(gray_as_rgb)[0])


def test_array_source_matches_the_file_reader(tmp_path):
    array = TIFF_CASES["uint16_uncompressed"][0][1]
    path = str(tmp_path / "page.tif")
    tifffile.imwrite(path, array, photometric="minisblack")
    source = ArraySource(array, name="page")
    assert source.shape == (HEIGHT, WIDTH)
    assert np.array_equal(source.read_rows(3, 9), open_pages(path)[0].read_rows(3, 9))


@pytest.mark.parametrize("options", [dict(compression="zlib", rowsperstrip=64), dict(compression="zlib",
                                     tile=(256, 256)), dict()], ids=["deflate_strips", "deflate_tiles", "uncompressed"])
def test_read_rows_memory_is_proportional_to_the_rows(tmp_path, options):
    """64 rows of a 4096x4096 page (16 MB of uint8, 64 MB as float32) peak far below the page size."""
    side = 4096
    page = np.broadcast_to((np.arange(side) % 251).astype(np.uint8), (side, side))
    path = str(tmp_path / "large.tif")
    tifffile.imwrite(path, page, photometric="minisblack", **options)
    source = open_pages(path)[0]
    tracemalloc.start()
    try:
        rows = source.read_rows(1000, 1064)  # crosses strip and tile boundaries
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(rows, page[1000:1064])
    assert peak < 4 * 2 ** 20, "read_rows peaked at {:.1f} MB".format(peak / 2 ** 20)


# --- writers --------------------------------------------------------------------------------------------------

def test_row_writer_round_trip_in_uneven_blocks(tmp_path):
    path = str(tmp_path / "prob.tif")
    image = RNG.randint(0, 256, (1100, 300)).astype(np.uint8)  # > one 256 KB strip, last strip partial
    with RowWriter(path, 1100, 300) as writer:
        for top in range(0, 1100, 97):
            writer.write_rows(image[top:top + 97])
    assert np.array_equal(tifffile.imread(path), image)
    assert np.array_equal(cv2.imread(path, cv2.IMREAD_UNCHANGED), image)
    with tifffile.TiffFile(path) as tif:
        assert not tif.is_bigtiff and tif.pages[0].compression == 8 and len(tif.pages[0].dataoffsets) > 1
    assert os.listdir(str(tmp_path)) == ["prob.tif"]
    assert np.array_equal(open_pages(path)[0].read_rows(870, 880), image[870:880])


def test_row_writer_channels_dtype_and_forced_bigtiff(tmp_path):
    path = str(tmp_path / "probs.tif")
    probs = RNG.rand(40, 30, 3).astype(np.float32)
    writer = RowWriter(path, 40, 30, channels=3, dtype=np.float32, bigtiff_threshold=1000)
    writer.write_rows(probs[:25])
    writer.write_rows(probs[25:])
    writer.close()
    assert writer.bigtiff
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff
        assert np.array_equal(tif.asarray(), probs)


def test_row_writer_with_missing_rows_fails_and_leaves_no_file(tmp_path):
    path = str(tmp_path / "mask.tif")
    writer = RowWriter(path, 10, 8)
    writer.write_rows(np.zeros((9, 8), np.uint8))
    with pytest.raises(UserError, match="only 9 of 10 rows"):
        writer.close()
    with pytest.raises(RuntimeError):
        with RowWriter(path, 10, 8) as failing:
            failing.write_rows(np.zeros((10, 8), np.uint8))
            raise RuntimeError("inference failed")
    with RowWriter(path, 10, 8) as writer:
        with pytest.raises(ValueError):
            writer.write_rows(np.zeros((3, 9), np.uint8))  # wrong width
        with pytest.raises(ValueError):
            writer.write_rows(np.zeros((11, 8), np.uint8))  # too many rows
        with pytest.raises(ValueError):
            writer.write_rows(np.full((1, 8), 0.7, np.float32))  # probabilities would become 0 in uint8
        writer.write_rows(np.zeros((10, 8), np.uint8))
    assert os.listdir(str(tmp_path)) == ["mask.tif"]


@pytest.mark.parametrize("threshold", [None, 1000], ids=["classic", "bigtiff"])
def test_stack_writer_round_trip(tmp_path, threshold):
    path = str(tmp_path / "mask.tif")
    pages = [_gray8() for _ in range(3)]
    small = _gray8()[:20, :9]
    options = {} if threshold is None else {"bigtiff_threshold": threshold}
    with StackWriter(path, **options) as stack:
        for page in pages:
            stack.add_page(page)
        stack.begin_page(20, 9)
        for top in range(0, 20, 6):
            stack.write_rows(small[top:top + 6])
        stack.end_page()
    assert stack.bigtiff == (threshold is not None)
    ok, decoded = cv2.imreadmulti(path, flags=cv2.IMREAD_UNCHANGED)
    assert ok and len(decoded) == 4
    for written, read in zip(pages + [small], decoded):
        assert np.array_equal(read, written)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff == (threshold is not None)
        assert [page.shape for page in tif.pages] == [(HEIGHT, WIDTH)] * 3 + [(20, 9)]
    assert [source.shape for source in open_pages(path)] == [(HEIGHT, WIDTH)] * 3 + [(20, 9)]


# --- user errors ----------------------------------------------------------------------------------------------

def _broken_files(folder):
    good = str(folder / "good.tif")
    tifffile.imwrite(good, _gray8(), photometric="minisblack", compression="zlib", rowsperstrip=8)
    data = open(good, "rb").read()
    files = {"truncated.tif": data[:len(data) // 2], "notes.tif": b"slice 3 looked blurry\n", "empty.tif": b""}
    with tifffile.TiffFile(good) as tif:
        start, length = tif.pages[0].dataoffsets[2], tif.pages[0].databytecounts[2]
    files["damaged.tif"] = data[:start] + b"x" * length + data[start + length:]
    for name, content in files.items():
        with open(str(folder / name), "wb") as handle:
            handle.write(content)
    tifffile.imwrite(str(folder / "two_channels.tif"), np.zeros((8, 8, 2), np.uint8), photometric="minisblack",
                     planarconfig="contig")
    tifffile.imwrite(str(folder / "float.tif"), np.zeros((8, 8), np.float32))


@pytest.mark.parametrize("name,message", [
    ("truncated.tif", "is truncated"), ("notes.tif", "cannot be decoded"), ("empty.tif", "is empty"),
    ("damaged.tif", "cannot be decoded"), ("two_channels.tif", "has 2 channels per pixel"),
    ("float.tif", "has float32 pixels"), ("missing.tif", "does not exist")])
def test_bad_inputs_are_one_line_cli_errors(tmp_path, capsys, name, message):
    _broken_files(tmp_path)
    path = str(tmp_path / name)

    def read_all(argv):
        for source in open_pages(path):
            source.read()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(read_all, [])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: {} ".format(path)) and message in error
