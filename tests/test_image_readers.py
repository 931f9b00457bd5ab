# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The image and mask readers (``diffews.utils.image``) over whatever a folder may hold (issue 29):
random bytes, truncated files, odd modes (1, P, LA, I;16, I, F, CMYK, LAB), EXIF rotations,
extreme aspect ratios and headers that claim more pixels than Pillow's decompression-bomb guard
allows. Each case either decodes to what Pillow itself decodes, under the conversion the readers
document, or raises ``ImageReadError`` with one line that starts with the file's path (the web
demo's readers: ``DemoInputError`` naming the upload); no other exception escapes.

The expected values are Pillow's own decoding with the documented rules written out here:
images are ``convert("RGB")`` (``read_grey``: ``convert("L")``) of the stored pixels (no EXIF
orientation applied: the reference code reads ``Image.open(path).convert('RGB')``,
aim-uofa/DiffewS evaluation_util/data/coco.py l.91); labels are the stored values (grey levels,
palette indices, 16-bit or float values), the first band of a grey or palette image with alpha,
any non-zero colour channel of an RGB(A) image, and other colour modes (CMYK, YCbCr, LAB)
converted to RGB first; masks are labels != 0.
"""

import io
import os
import struct
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from diffews.utils.image import (ImageReadError, as_mask, as_rgb, check_image_file, read_grey,
                                 read_image, read_label, read_mask)
from diffews.web_demo.inputs import DemoInputError, InputLimits, read_binary_mask, read_rgb

SETTINGS = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# (mode, format) pairs Pillow writes; some read back in another mode (I as PNG reads as I;16)
WRITABLE = [("1", "PNG"), ("L", "PNG"), ("P", "PNG"), ("LA", "PNG"), ("I;16", "PNG"),
            ("RGB", "PNG"), ("RGBA", "PNG"), ("P", "GIF"), ("1", "GIF"), ("L", "JPEG"),
            ("RGB", "JPEG"), ("CMYK", "JPEG"), ("CMYK", "TIFF"), ("F", "TIFF"), ("I;16", "TIFF"),
            ("I", "TIFF"), ("LA", "TIFF"), ("LAB", "TIFF"), ("1", "TIFF"), ("RGBA", "TIFF"),
            ("RGB", "BMP"), ("P", "BMP"), ("1", "BMP"), ("RGB", "WEBP"), ("RGBA", "WEBP"),
            ("L", "PPM"), ("I;16", "PPM"), ("RGB", "TGA")]
EXIF_FORMATS = ("PNG", "JPEG", "TIFF", "WEBP")
MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00",
         b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBP", b"P5\n", b"P6\n"]
GREY_LIKE = ("1", "L", "P", "I", "F")  # one band, stored values kept


# ---- what Pillow decodes, with the documented conversions --------------------------------------
def _pillow(path: str, kind: str):
    """Pillow's own result for ``path``; an exception instance when Pillow cannot decode it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return _documented(img, kind)
    except Exception as e:  # noqa: BLE001 (any failure of Pillow is a bad file for the readers)
        return e


def _documented(img: Image.Image, kind: str):
    if kind == "rgb":
        return np.asarray(img.convert("RGB"))
    if kind == "grey":
        return np.asarray(img.convert("L"))
    if img.mode in GREY_LIKE or img.mode.startswith("I;16"):
        label = np.asarray(img)
    elif img.mode in ("LA", "La", "PA"):
        label = np.asarray(img)[..., 0]  # the value or palette index; alpha is not a label
    else:
        rgb = img if img.mode in ("RGB", "RGBA", "RGBX", "RGBa") else img.convert("RGB")
        label = np.asarray(rgb)[..., :3].max(axis=2)
    return label if kind == "label" else label != 0


def _check_refusal(error: ImageReadError, path: str):
    text = str(error)
    assert text.startswith(f"{path}: ") and "\n" not in text and len(text) < 400, text


def _check_readers(path: str):
    """Every reader of ``path`` against Pillow's result."""
    readers = {"rgb": [read_image, as_rgb], "grey": [read_grey], "label": [read_label],
               "mask": [read_mask, as_mask]}
    for kind, fns in readers.items():
        expected = _pillow(path, kind)
        event(f"{kind}: " + (f"refused ({type(expected).__name__})"
                             if isinstance(expected, Exception) else "decoded"))
        for fn in fns:
            if isinstance(expected, Exception):
                with pytest.raises(ImageReadError) as e:
                    fn(path)
                _check_refusal(e.value, path)
            else:
                got = fn(path)
                assert got.dtype == expected.dtype and got.shape == expected.shape, fn.__name__
                assert np.array_equal(got, expected, equal_nan=got.dtype.kind == "f"), \
                    (fn.__name__, path)
    _check_pil_readers(path)
    _check_web_demo_readers(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.open(path).close()
        header_ok = True
    except Exception:  # noqa: BLE001
        header_ok = False
    if header_ok:
        check_image_file(path)  # the header alone is checked: no error
    else:
        with pytest.raises(ImageReadError) as e:
            check_image_file(path)
        _check_refusal(e.value, path)


def _check_pil_readers(path: str):
    """``as_rgb`` and ``as_mask`` of a PIL image opened (not loaded) from ``path``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.open(path).close()
    except Exception:  # noqa: BLE001 (not an image: nothing to hand over)
        return
    for kind, fn in (("rgb", as_rgb), ("mask", as_mask)):
        expected = _pillow(path, kind)
        with Image.open(path) as img:
            if isinstance(expected, Exception):
                with pytest.raises(ImageReadError) as e:
                    fn(img, "the upload")
                text = str(e.value)
                assert text.startswith("the upload: ") and "\n" not in text, text
            else:
                assert np.array_equal(fn(img, "the upload"), expected,
                                      equal_nan=expected.dtype.kind == "f")


def _check_web_demo_readers(path: str):
    """The web demo's readers (within its default limits) follow the same rules."""
    for kind, fn in (("rgb", read_rgb), ("mask", read_binary_mask)):
        expected = _pillow(path, kind)
        if isinstance(expected, Exception):
            with pytest.raises(DemoInputError) as e:
                fn(path, "query x.png", InputLimits())
            text = str(e.value)
            assert text.startswith("query x.png: ") and "\n" not in text, text
        else:
            assert np.array_equal(fn(path, "query x.png", InputLimits()), expected)


# ---- the files ---------------------------------------------------------------------------------
@st.composite
def image_files(draw, mode: str, fmt: str):
    """The bytes of a ``mode`` image saved as ``fmt``: small, or one pixel wide or high; random
    or sparse content; an EXIF orientation where the format holds one; sometimes cut short."""
    shape = draw(st.one_of(
        st.tuples(st.integers(1, 24), st.integers(1, 24)),
        st.tuples(st.just(1), st.integers(200, 6000)),  # extreme aspect ratios, both ways
        st.tuples(st.integers(200, 6000), st.just(1))))
    width, height = shape
    nbytes = len(Image.new(mode, (width, height)).tobytes())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    data = rng.integers(0, 256, nbytes, dtype=np.uint8)
    if mode == "F":  # finite floats, some of them zero
        data = rng.normal(0, 100, width * height).astype(np.float32)
        data[rng.random(data.shape) < 0.3] = 0
    elif draw(st.booleans()):  # sparse content: masks are mostly zero
        data = data * (rng.random(nbytes) < 0.1)
    img = Image.frombytes(mode, (width, height), data.tobytes())
    if mode == "P":
        img.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
    options = {}
    if fmt in EXIF_FORMATS and draw(st.booleans()):
        exif = Image.Exif()
        exif[0x0112] = draw(st.integers(1, 8))  # Orientation
        options["exif"] = exif.tobytes()
        event("EXIF orientation")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        img.save(buf, format=fmt, **options)
    out = buf.getvalue()
    if draw(st.booleans()):
        event("cut short")
        out = out[:int(len(out) * draw(st.floats(0.0, 0.999)))]
    return out


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG header of width x height grey pixels and a few bytes of (wrong) pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0,
                                                               0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("readers")


def _write(folder, data: bytes) -> str:
    path = os.path.join(folder, "case.img")
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.mark.parametrize("mode,fmt", WRITABLE, ids=[f"{m}-{f}" for m, f in WRITABLE])
def test_image_files_decode_as_pillow_or_name_the_file(folder, mode, fmt):
    @settings(SETTINGS, max_examples=8)
    @given(data=image_files(mode, fmt))
    def check(data):
        _check_readers(_write(folder, data))
    check()


@SETTINGS
@given(data=st.tuples(st.sampled_from(MAGIC), st.binary(max_size=600)).map(lambda x: x[0] + x[1]))
def test_random_bytes_are_refused_naming_the_file(folder, data):
    _check_readers(_write(folder, data))


@settings(SETTINGS, max_examples=20)
@given(size=st.tuples(st.integers(1, 60_000), st.integers(1, 60_000)).filter(
    lambda s: s[0] * s[1] > 2 * Image.MAX_IMAGE_PIXELS or max(s) > 20_000))
def test_headers_claiming_huge_images(folder, size):
    """More pixels than Pillow's guard, or one enormous side (400,000,000 x 1 and the like)."""
    _check_readers(_write(folder, _bomb_png(*size)))


# ---- the cases the search found, kept as plain tests ---------------------------------------------
def test_decompression_bomb_is_a_bad_image_naming_the_file(tmp_path):
    """Issue 29 item 8: a PNG of a few hundred bytes whose header claims 200 megapixels."""
    path = str(tmp_path / "bomb.png")
    with open(path, "wb") as f:
        f.write(_bomb_png(20_000, 10_000))
    assert os.path.getsize(path) < 300
    for fn in (read_image, read_grey, read_label, read_mask, check_image_file, as_rgb, as_mask):
        with pytest.raises(ImageReadError) as e:
            fn(path)
        _check_refusal(e.value, path)
        assert "decompression-bomb" in str(e.value)
    # between Pillow's warning (89 Mpx) and its error: a warning that a filter makes an error
    warned = str(tmp_path / "warned.png")
    with open(warned, "wb") as f:
        f.write(_bomb_png(10_000, 10_000))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for fn in (read_image, check_image_file):
            with pytest.raises(ImageReadError) as e:
                fn(warned)
            _check_refusal(e.value, warned)


def test_grey_with_alpha_mask_is_its_grey_value(tmp_path):
    """An LA mask: black but opaque is background (alpha is not a colour channel)."""
    pixels = np.zeros((4, 5, 2), np.uint8)
    pixels[..., 1] = 255  # opaque everywhere
    pixels[1:3, 2:4, 0] = 200  # the object
    path = str(tmp_path / "la.png")
    Image.fromarray(pixels, "LA").save(path)
    expected = np.zeros((4, 5), bool)
    expected[1:3, 2:4] = True
    assert np.array_equal(read_mask(path), expected)
    assert np.array_equal(as_mask(Image.open(path)), expected)
    assert read_label(path).tolist() == (expected * 200).tolist()


def test_truncated_pil_image_is_refused_naming_it(tmp_path):
    """A PIL image opened lazily from a truncated file fails in ``convert``: our error."""
    path = tmp_path / "cut.png"
    noise = np.random.default_rng(0).integers(0, 256, (50, 60), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[:1000])
    for fn in (as_rgb, as_mask):
        with Image.open(path) as img, pytest.raises(ImageReadError) as e:
            fn(img, "query 3")
        assert str(e.value).startswith("query 3: not a readable image (")
