"""Find, read and validate image/label pairs on disk (numpy + OpenCV only).

Accepted layouts under `data_path` (the first that matches wins):

    <p>/image + <p>/label                       one slice per file, matched by file stem (0.png <-> 0.tif)
    <p>/train/image + <p>/train/label           (../shared/data/isbi2012)
    <p>/data/membrane/train/image + .../label   (zhixuhao/unet and the ModelZoo 2D U-Net)
    <p>/train-volume.tif + <p>/train-labels.tif ISBI multipage volumes (also under train/ and data/membrane/)

Images come back as uint8 [N,H,W]; 16-bit images are scaled to uint8 by the full-range linear map
v * 255 / 65535 (not a per-slice min-max stretch, so one intensity means the same on every slice).
Labels come back as uint8 {0,1} [N,H,W] with 1 = cell interior (ISBI 255) and 0 = membrane; with a LabelSpec of
C >= 2 classes (data.classes) as uint8 class ids 0..C-1 and 255 for unlabelled pixels, decoded from integer maps
(8/16-bit PNG or TIFF), palette PNGs (the palette index is the label, read with Pillow) or colour-coded RGB.
Every problem a user can cause raises UserError with one line naming the file and the fix.
"""
import collections
import os
import re
import struct
import warnings

import cv2
import numpy as np

from unet_perf.data import classes
from unet_perf.errors import UserError

Pairs = collections.namedtuple("Pairs", "images masks names")

EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
FOLDER_ROOTS = ("", "train", os.path.join("data", "membrane", "train"))
VOLUME_ROOTS = ("", "train", os.path.join("data", "membrane"), os.path.join("data", "membrane", "train"))
VOLUME_NAMES = ("train-volume.tif", "train-labels.tif")
LAYOUTS = ("<p>/{image,label}, <p>/train/{image,label}, <p>/data/membrane/train/{image,label} "
           "or <p>/train-volume.tif + <p>/train-labels.tif")


def load_pairs(data_path, rgb="convert", min_size=0, spec=classes.BINARY):
    """Read every image/label pair under `data_path` into a validated `Pairs`.

    rgb: "convert" turns colour files into gray with one warning, "refuse" raises UserError. Files whose colour
    channels are all equal (gray saved as RGB or palette) are gray and pass in both modes.
    min_size: smallest allowed slice side in pixels (the area the training crop samples).
    spec: how the label files encode classes (classes.LabelSpec; the default is the binary membrane task).
    """
    if rgb not in ("convert", "refuse"):
        raise UserError("--rgb must be convert or refuse, got {!r}".format(rgb))
    if not data_path or not os.path.exists(data_path):
        raise UserError("--data_path {} does not exist; pass a folder laid out as {}".format(data_path, LAYOUTS))
    if not os.path.isdir(data_path):
        raise UserError("--data_path {} is a file; pass the folder that holds it ({})".format(data_path, LAYOUTS))
    reader = Reader(rgb, spec)
    found = _find_layout(data_path)
    if found[0] == "folders":
        pairs = _load_folders(found[1], found[2], reader)
    else:
        pairs = _load_volumes(found[1], found[2], reader)
    reader.warn_converted()
    _check_min_size(pairs, min_size, found[1])
    return pairs


def read_image(path, rgb="convert"):
    """All pages of one unlabelled image file (PNG/TIFF/JPEG) as a list of uint8 [H,W] arrays, validated like
    training images (used by prediction)."""
    reader = Reader(rgb)
    pages = reader.pages(path, is_label=False)
    reader.warn_converted()
    return pages


def iter_pairs(data_path, rgb="convert", spec=classes.BINARY):
    """(total slice count, generator of (image uint8 [H, W], mask uint8 [H, W], name)) for any layout
    load_pairs accepts, reading one slice at a time (folders file by file, volumes page by page) so memory stays
    bounded. Slices may differ in size; a label must match its image. Masks are decoded by `spec` as in load_pairs."""
    if not data_path or not os.path.isdir(data_path):
        raise UserError("--data_path {} is not a folder; pass a folder laid out as {}".format(data_path, LAYOUTS))
    reader = Reader(rgb, spec)
    kind, first, second = _find_layout(data_path)
    if kind == "folders":
        images, labels = _list_slices(first), _list_slices(second)
        missing = sorted(set(images) ^ set(labels), key=natural_key)
        if missing:
            raise UserError("{} has no matching image/label pair in {} and {}; add the missing files or remove "
                            "the extras".format(missing[0], first, second))
        stems = sorted(images, key=natural_key)

        def folder_pairs():
            for stem in stems:
                image = reader.single(images[stem], is_label=False)
                mask = reader.single(labels[stem], is_label=True)
                _check_sizes([image], [images[stem]], [mask], [labels[stem]])
                yield image, mask, stem
            reader.warn_converted()
        return len(stems), folder_pairs()
    pages = [_page_count(path) for path in (first, second)]
    if pages[0] != pages[1]:
        raise UserError("{} has {} pages but {} has {}; use the matching label volume".format(
            first, pages[0], second, pages[1]))

    def volume_pairs():
        for index in range(pages[0]):
            image = reader.page(first, index, is_label=False)
            mask = reader.page(second, index, is_label=True)
            _check_sizes([image], ["{}[{}]".format(first, index)], [mask], ["{}[{}]".format(second, index)])
            yield image, mask, "{}[{}]".format(os.path.basename(first), index)
        reader.warn_converted()
    return pages[0], volume_pairs()


def natural_key(text):
    """Sort key that orders embedded numbers by value: 2 < 10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


# --- layout ---------------------------------------------------------------------------------------------------

def _find_layout(data_path):
    for root in FOLDER_ROOTS:
        image_dir, label_dir = (os.path.join(data_path, root, name) for name in ("image", "label"))
        if os.path.isdir(image_dir) and os.path.isdir(label_dir):
            return "folders", image_dir, label_dir
        if os.path.isdir(image_dir) != os.path.isdir(label_dir):
            present, missing = (image_dir, label_dir) if os.path.isdir(image_dir) else (label_dir, image_dir)
            raise UserError("{} exists but {} does not; put the matching slices there".format(present, missing))
    for root in VOLUME_ROOTS:
        volume, labels = (os.path.join(data_path, root, name) for name in VOLUME_NAMES)
        if os.path.isfile(volume) and os.path.isfile(labels):
            return "volumes", volume, labels
        if os.path.isfile(volume) != os.path.isfile(labels):
            present, missing = (volume, labels) if os.path.isfile(volume) else (labels, volume)
            raise UserError("{} exists but {} does not; add the matching volume".format(present, missing))
    raise UserError("no recognised layout in --data_path {}; accepted layouts: {}".format(data_path, LAYOUTS))


def _list_slices(folder):
    """{stem: path} of the readable image files in `folder`, with duplicate stems refused."""
    by_stem = {}
    for name in os.listdir(folder):
        stem, ext = os.path.splitext(name)
        if name.startswith(".") or ext.lower() not in EXTENSIONS:
            continue
        if stem in by_stem:
            raise UserError("{} and {} have the same name; keep one file per slice".format(
                by_stem[stem], os.path.join(folder, name)))
        by_stem[stem] = os.path.join(folder, name)
    if not by_stem:
        raise UserError("{} holds no images ({}); add the slices or fix --data_path".format(
            folder, "/".join(ext[1:] for ext in EXTENSIONS)))
    return by_stem


def _load_folders(image_dir, label_dir, reader):
    images, labels = _list_slices(image_dir), _list_slices(label_dir)
    for have, lack, what in ((images, labels, "label"), (labels, images, "image")):
        orphans = sorted(set(have) - set(lack), key=natural_key)
        if orphans:
            shown = ", ".join(os.path.basename(have[stem]) for stem in orphans[:3])
            more = " and {} more".format(len(orphans) - 3) if len(orphans) > 3 else ""
            raise UserError("{} has no {} for {}{} ({} vs {}); add the missing files or remove the extras".format(
                os.path.dirname(have[orphans[0]]), what, shown, more, image_dir, label_dir))
    stems = sorted(images, key=natural_key)
    image_list = [reader.single(images[stem], is_label=False) for stem in stems]
    mask_list = [reader.single(labels[stem], is_label=True) for stem in stems]
    image_files = [images[stem] for stem in stems]
    _check_sizes(image_list, image_files, mask_list, [labels[stem] for stem in stems])
    return Pairs(np.stack(image_list), np.stack(mask_list), stems)


def _load_volumes(volume_path, labels_path, reader):
    image_pages = reader.pages(volume_path, is_label=False)
    mask_pages = reader.pages(labels_path, is_label=True)
    if len(image_pages) != len(mask_pages):
        raise UserError("{} has {} pages but {} has {}; use the matching label volume".format(
            volume_path, len(image_pages), labels_path, len(mask_pages)))
    base = os.path.basename(volume_path)
    names = ["{}[{}]".format(base, index) for index in range(len(image_pages))]
    _check_sizes(image_pages, ["{}[{}]".format(volume_path, i) for i in range(len(image_pages))],
                 mask_pages, ["{}[{}]".format(labels_path, i) for i in range(len(mask_pages))])
    return Pairs(np.stack(image_pages), np.stack(mask_pages), names)


def _check_sizes(images, image_files, masks, mask_files):
    first = images[0].shape
    for image, image_file, mask, mask_file in zip(images, image_files, masks, mask_files):
        if mask.shape != image.shape:
            raise UserError("{} is {} but its label {} is {}; labels must match their image size".format(
                image_file, _size(image.shape), mask_file, _size(mask.shape)))
        if image.shape != first:
            raise UserError("{} is {} but {} is {}; resize all slices to one size".format(
                image_file, _size(image.shape), image_files[0], _size(first)))


def _check_min_size(pairs, min_size, where):
    height, width = pairs.images.shape[1:]
    if min(height, width) < min_size:
        raise UserError("the slices in {} are {}x{} but training samples {}x{} px; use a smaller --crop_size or a "
                        "larger --input_scale".format(where, width, height, min_size, min_size))


def _size(shape):
    return "{}x{}".format(shape[1], shape[0])


# --- reading one file -----------------------------------------------------------------------------------------

class Reader(object):
    """Reads files into 2-D uint8 arrays, remembering which colour files it converted (one warning per load).
    inference.image_io shares its colour rule (to_gray) for images it reads part by part."""

    def __init__(self, rgb, spec=classes.BINARY):
        self.rgb = rgb
        self.spec = spec
        self.converted = []

    def single(self, path, is_label):
        pages = self.pages(path, is_label)
        if len(pages) != 1:
            raise UserError("{} has {} pages; folder layouts need one slice per file (or use train-volume.tif)"
                            .format(path, len(pages)))
        return pages[0]

    def pages(self, path, is_label):
        if is_label and self.spec.num_classes >= 2 and self.spec.colors is None and _is_palette_png(path):
            return [classes.decode_label(_palette_indices(path), path, self.spec)]
        raw = read_raw(path)
        out = []
        for index, page in enumerate(raw):
            out.append(self.convert(page, path if len(raw) == 1 else "{}[{}]".format(path, index), is_label))
        return out

    def page(self, path, index, is_label):
        """Page `index` of a multipage TIFF alone, so a volume larger than memory can be read page by page."""
        where = "{}[{}]".format(path, index)
        try:
            ok, pages = cv2.imreadmulti(path, index, 1, flags=cv2.IMREAD_UNCHANGED)
        except cv2.error:
            ok, pages = False, []
        if not ok or len(pages) != 1:
            raise UserError("{} cannot be decoded; replace the volume with a valid TIFF".format(where))
        return self.convert(pages[0], where, is_label)

    def convert(self, page, where, is_label):
        """A decoded page as a validated uint8 image or label (self.spec); `where` names it in errors."""
        if is_label and self.spec.num_classes >= 2:
            return classes.decode_label(page, where, self.spec)
        page = self.to_gray(page, where)
        return _to_mask(page, where) if is_label else to_uint8(page, where)

    def to_gray(self, page, where):
        """[H,W] as it is; [H,W,3/4] (OpenCV's BGR(A)) -> gray by the --rgb rule (equal channels are gray)."""
        if page.ndim == 2:
            return page
        if page.ndim != 3 or page.shape[2] not in (3, 4):
            raise UserError("{} has shape {}; save it as a grayscale image".format(where, page.shape))
        colour = page[:, :, :3]
        if (colour == colour[:, :, :1]).all():
            return np.ascontiguousarray(colour[:, :, 0])
        if self.rgb == "refuse":
            raise UserError("{} is a colour image; save it as grayscale or pass --rgb convert".format(where))
        self.converted.append(where)
        return cv2.cvtColor(np.ascontiguousarray(colour), cv2.COLOR_BGR2GRAY)

    def warn_converted(self):
        if self.converted:
            warnings.warn("converted {} colour file(s) to grayscale, first {}; pass --rgb refuse to stop on colour"
                          .format(len(self.converted), self.converted[0]))


def read_raw(path):
    """All pages of `path` as arrays; UserError for empty, truncated or undecodable files."""
    if os.path.getsize(path) == 0:
        raise UserError("{} is empty (0 bytes); replace it with a valid image".format(path))
    ext = os.path.splitext(path)[1].lower()
    refuse_truncated(path, ext)
    try:
        if ext in (".tif", ".tiff"):
            ok, pages = cv2.imreadmulti(path, flags=cv2.IMREAD_UNCHANGED)
            pages = list(pages) if ok else []
        else:
            page = cv2.imread(path, cv2.IMREAD_UNCHANGED)
            pages = [] if page is None else [page]
    except (cv2.error, ValueError, OSError, SystemError) as err:
        raise UserError("{} cannot be decoded ({}); replace it with a valid image".format(
            path, str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__))
    if not pages:
        raise UserError("{} cannot be decoded (corrupt or not an image); replace it with a valid image".format(path))
    return pages


def _is_palette_png(path):
    """True for a PNG of colour type 3 (indexed), whose pixels OpenCV would expand into the palette's colours."""
    with open(path, "rb") as handle:
        header = handle.read(26)
    return header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR" and header[25:26] == b"\x03"


def _palette_indices(path):
    """uint8 [H, W] palette indices of an indexed PNG (Pillow keeps them; OpenCV expands them to colours)."""
    try:
        from PIL import Image
    except ImportError:
        raise UserError("{} is a palette PNG and reading its indices needs Pillow; pip install pillow".format(path))
    try:
        with Image.open(path) as image:
            return np.array(image, np.uint8)
    except (OSError, ValueError, SyntaxError) as err:
        raise UserError("{} cannot be decoded ({}); replace it with a valid image".format(path, err))


def _page_count(path):
    """Number of pages of a multipage TIFF, without decoding them."""
    refuse_truncated(path, os.path.splitext(path)[1].lower())
    try:
        count = cv2.imcount(path)
    except cv2.error:
        count = 0
    if count <= 0:
        raise UserError("{} cannot be decoded (corrupt or not an image); replace it with a valid image".format(path))
    return count


def to_uint8(page, where):
    if page.dtype == np.uint8:
        return page
    if page.dtype == np.uint16:
        # Full-range linear map, rounded: 0 -> 0, 65535 -> 255.
        return ((page.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    raise UserError("{} has {} pixels; save images as 8- or 16-bit grayscale".format(where, page.dtype))


def _to_mask(page, where):
    """{0,255}, {0,1} or {0,65535} (or one value) -> uint8 {0,1}; anything else is refused."""
    if page.dtype not in (np.uint8, np.uint16):
        raise UserError("{} has {} pixels; save labels as 8-bit PNG with values {{0,255}}".format(where, page.dtype))
    values = np.unique(page)
    if len(values) == 1 or set(values.tolist()) in ({0, 1}, {0, 255}, {0, 65535}):
        return (page > 0).astype(np.uint8)
    hint = " (JPEG is lossy: save labels as PNG)" if os.path.splitext(where)[1].lower() in (".jpg", ".jpeg") else ""
    shown = " {}".format(values.tolist()) if len(values) <= 4 else ""
    raise UserError("{} has {} distinct values{}; labels must be binary {{0,255}} or {{0,1}}{}".format(
        where, len(values), shown, hint))


# --- truncation checks (OpenCV silently decodes the readable part of a cut JPEG or TIFF) --------------------

def refuse_truncated(path, ext):
    problem = _truncation(path, ext)
    if problem:
        raise UserError("{} is truncated ({}); copy or download it again".format(path, problem))


def _truncation(path, ext):
    """A short reason when the file is visibly cut off, else None."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        if ext in (".jpg", ".jpeg"):
            handle.seek(max(0, size - 64))
            return None if b"\xff\xd9" in handle.read() else "no JPEG end marker"
        if ext in (".tif", ".tiff"):
            return _tiff_truncation(handle, size)
    return None


_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8, 17: 8, 18: 8}
_TIFF_DATA_TAGS = ((273, 279), (324, 325))  # (strip offsets, strip byte counts), (tile offsets, tile byte counts)


def _tiff_truncation(handle, size):
    """Walk the TIFF directories and report data that lies beyond the end of the file."""
    header = handle.read(16)
    order = {b"II": "<", b"MM": ">"}.get(header[:2])
    if order is None or len(header) < 8:
        return None  # not a TIFF OpenCV knows; let the decoder report it
    version = struct.unpack(order + "H", header[2:4])[0]
    big = version == 43
    if version not in (42, 43) or (big and len(header) < 16):
        return None
    offset = struct.unpack(order + "Q", header[8:16])[0] if big else struct.unpack(order + "I", header[4:8])[0]
    count_fmt, entry_size, offset_fmt = ("Q", 20, "Q") if big else ("H", 12, "I")
    seen = set()
    while offset and offset not in seen:
        seen.add(offset)
        handle.seek(offset)
        raw_count = handle.read(struct.calcsize(count_fmt))
        if len(raw_count) < struct.calcsize(count_fmt):
            return "directory at byte {} is past the end".format(offset)
        count = struct.unpack(order + count_fmt, raw_count)[0]
        entries = handle.read(count * entry_size)
        next_raw = handle.read(struct.calcsize(offset_fmt))
        if len(entries) < count * entry_size or len(next_raw) < struct.calcsize(offset_fmt):
            return "directory at byte {} is cut off".format(offset)
        tags = {}
        for index in range(count):
            entry = entries[index * entry_size:(index + 1) * entry_size]
            tags[struct.unpack(order + "H", entry[:2])[0]] = entry
        for offsets_tag, counts_tag in _TIFF_DATA_TAGS:
            if offsets_tag in tags and counts_tag in tags:
                starts = _tiff_values(handle, order, tags[offsets_tag], big)
                lengths = _tiff_values(handle, order, tags[counts_tag], big)
                if starts is None or lengths is None:
                    return "directory values are past the end"
                if any(start + length > size for start, length in zip(starts, lengths)):
                    return "image data ends past byte {}".format(size)
        offset = struct.unpack(order + offset_fmt, next_raw)[0]
    return None


def _tiff_values(handle, order, entry, big):
    """The integer values of one directory entry (inline or at an offset), None when they are cut off."""
    kind, count = struct.unpack(order + ("HQ" if big else "HI"), entry[2:12 if big else 8])
    codes = {3: "H", 4: "I", 16: "Q"}
    if kind not in codes:
        return []
    nbytes = count * _TIFF_TYPE_SIZES[kind]
    inline = entry[12:20] if big else entry[8:12]
    if nbytes <= len(inline):
        data = inline[:nbytes]
    else:
        handle.seek(struct.unpack(order + ("Q" if big else "I"), inline)[0])
        data = handle.read(nbytes)
        if len(data) < nbytes:
            return None
    return struct.unpack(order + codes[kind] * count, data)
