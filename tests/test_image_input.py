"""Start-image loading: every refusal names the problem, every odd format comes out as upright RGB uint8.

All inputs are generated on the fly in tmp_path; only the example assets are committed files.
"""

import io
import os
import resource
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from framepack_core.errors import InvalidInputError
from framepack_core.media.image_input import LoadedImage, load_input_image, load_input_image_from_array

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def _save(image: Image.Image, path: Path, **params) -> Path:
    image.save(path, **params)
    return path


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A 1x1 PNG whose IHDR (with a recomputed CRC) claims ``width x height``: a bomb header, a few bytes."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"  # 8-byte signature, then the IHDR chunk's length and type
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))  # CRC covers type + 13 data bytes
    path.write_bytes(bytes(data))
    return path


def _refusal(path, **kwargs) -> str:
    with pytest.raises(InvalidInputError) as info:
        load_input_image(path, **kwargs)
    assert info.value.field == "image" and info.value.hint
    return info.value.message


# --- refusals ----------------------------------------------------------------------------------------------


def test_missing_file_is_refused(tmp_path):
    assert "does not exist" in _refusal(tmp_path / "nope.png")


def test_directory_is_refused(tmp_path):
    assert "is a directory" in _refusal(tmp_path)


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    assert "empty file" in _refusal(path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file_is_refused(tmp_path):
    path = _save(Image.new("RGB", (80, 80)), tmp_path / "locked.png")
    path.chmod(0)
    try:
        assert "cannot be read" in _refusal(path)
    finally:
        path.chmod(0o644)


def test_permission_error_while_opening_is_refused(tmp_path, monkeypatch):
    # Same refusal when the permission problem only shows at open time (and when tests run as root).
    path = _save(Image.new("RGB", (80, 80)), tmp_path / "locked.png")

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", deny)
    assert "cannot be read" in _refusal(path)


def test_text_file_renamed_png_is_refused(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are not pixels\n" * 10)
    assert "not an image" in _refusal(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_refused(tmp_path, fmt):
    full = io.BytesIO()
    Image.fromarray(_noise(256, 256)).save(full, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    assert "truncated or corrupt" in _refusal(path)


def test_corrupted_png_data_is_refused(tmp_path):
    data = bytearray(_save(Image.fromarray(_noise(128, 128)), tmp_path / "x.png").read_bytes())
    idat = data.index(b"IDAT")
    data[idat + 100 : idat + 200] = bytes(100)  # zero out compressed data; the chunk CRC no longer matches
    path = tmp_path / "broken.png"
    path.write_bytes(bytes(data))
    assert "truncated or corrupt" in _refusal(path)


@pytest.mark.parametrize("size", [(63, 200), (200, 63), (10, 10)])
def test_images_under_64_px_are_refused_with_size_and_minimum(tmp_path, size):
    path = _save(Image.new("RGB", size), tmp_path / "small.png")
    message = _refusal(path)
    assert f"{size[0]}x{size[1]}" in message and "minimum is 64" in message


# --- decompression bombs -----------------------------------------------------------------------------------


def test_bomb_header_is_refused_quickly_without_decoding(tmp_path):
    path = _png_claiming_size(tmp_path / "bomb.png", 100_000, 100_000)
    rss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    message = _refusal(path)
    elapsed = time.perf_counter() - start
    rss_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before_kb) / 1024
    assert "too large" in message
    assert elapsed < 1.0
    assert rss_growth_mb < 50  # decoding would need 30 GB


def test_image_over_our_pixel_limit_is_refused_before_decoding(tmp_path):
    # 9000 x 9000 = 81 MP: under PIL's own threshold, over our default 64 MP.
    message = _refusal(_png_claiming_size(tmp_path / "big.png", 9000, 9000))
    assert "9000x9000" in message and "over the limit" in message


def test_image_over_the_side_limit_is_refused(tmp_path):
    message = _refusal(_png_claiming_size(tmp_path / "strip.png", 20_000, 100))
    assert "20000x100" in message and "16384" in message


def test_pil_bomb_warning_becomes_our_error_not_a_warning(tmp_path):
    # 10000 x 10000 = 100 MP passes a raised max_pixels but trips PIL's warning threshold (~89 MP).
    path = _png_claiming_size(tmp_path / "warn.png", 10_000, 10_000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        message = _refusal(path, max_pixels=200_000_000)
    assert "decompression-bomb" in message
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_pil_bomb_error_becomes_our_error(tmp_path):
    path = _png_claiming_size(tmp_path / "huge.png", 20_000, 20_000)
    assert "decompression-bomb" in _refusal(path, max_pixels=10**9, max_side=30_000)


def test_large_jpeg_is_decoded_downscaled_with_draft(tmp_path):
    path = _save(Image.fromarray(_noise(1000, 1024)), tmp_path / "large.jpg", quality=80)
    loaded = load_input_image(path, max_pixels=300_000)
    assert loaded.pixels.shape == (500, 512, 3)
    assert loaded.source_size == (1000, 1024)
    assert any("1/2 scale" in note for note in loaded.notes)


def test_large_png_cannot_be_drafted_so_it_is_refused(tmp_path):
    path = _save(Image.new("RGB", (1024, 1000)), tmp_path / "large.png")
    assert "over the limit" in _refusal(path, max_pixels=300_000)


# --- normalisation -----------------------------------------------------------------------------------------


def test_plain_rgb_loads_unchanged_without_notes(tmp_path):
    pixels = _noise(70, 90)
    loaded = load_input_image(_save(Image.fromarray(pixels), tmp_path / "rgb.png"))
    assert isinstance(loaded, LoadedImage)
    assert loaded.pixels.dtype == np.uint8 and np.array_equal(loaded.pixels, pixels)
    assert loaded.source_size == (70, 90) and loaded.notes == []


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((100, 200, 3), np.uint8)  # 100 high, 200 wide as stored
    stored[:, :40] = (255, 0, 0)  # left edge red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stored left edge becomes the top
    path = _save(Image.fromarray(stored), tmp_path / "rotated.jpg", exif=exif, quality=95)
    loaded = load_input_image(path)
    assert loaded.pixels.shape == (200, 100, 3)
    assert loaded.source_size == (100, 200)
    assert loaded.pixels[:30, :, 0].mean() > 200 and loaded.pixels[-30:, :, 0].mean() < 50
    assert any("EXIF orientation 6" in note for note in loaded.notes)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 0)  # fully transparent -> white
    rgba[0, 1] = (255, 0, 0, 128)  # half red over white
    rgba[0, 2] = (1, 2, 3, 255)  # opaque, unchanged
    loaded = load_input_image(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png"))
    assert loaded.pixels.shape == (64, 64, 3)
    assert loaded.pixels[0, 0].tolist() == [255, 255, 255]
    assert loaded.pixels[0, 1].tolist() == [255, 127, 127]
    assert loaded.pixels[0, 2].tolist() == [1, 2, 3]
    assert any("white background" in note for note in loaded.notes)


def test_gray_alpha_is_composited_on_white(tmp_path):
    la = Image.merge("LA", (Image.new("L", (64, 64), 0), Image.new("L", (64, 64), 0)))
    loaded = load_input_image(_save(la, tmp_path / "la.png"))
    assert (loaded.pixels == 255).all()


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    image = Image.new("P", (64, 64), 1)
    image.putpalette([0, 0, 255] + [0, 255, 0] + [0, 0, 0] * 254)
    image.putpixel((0, 0), 0)
    path = _save(image, tmp_path / "pal.png", transparency=1)  # index 1 (green) is transparent
    loaded = load_input_image(path)
    assert loaded.pixels[0, 0].tolist() == [0, 0, 255]
    assert loaded.pixels[5, 5].tolist() == [255, 255, 255]
    assert any("white background" in note for note in loaded.notes)


def test_palette_without_transparency_keeps_its_colours(tmp_path):
    image = Image.new("P", (64, 64), 1)
    image.putpalette([0, 0, 255] + [0, 255, 0] + [0, 0, 0] * 254)
    loaded = load_input_image(_save(image, tmp_path / "pal.gif"))
    assert loaded.pixels[0, 0].tolist() == [0, 255, 0]


def test_grayscale_is_replicated_to_three_channels(tmp_path):
    loaded = load_input_image(_save(Image.new("L", (64, 80), 77), tmp_path / "gray.png"))
    assert loaded.pixels.shape == (80, 64, 3) and (loaded.pixels == 77).all()


def test_one_bit_image_maps_to_black_and_white(tmp_path):
    image = Image.new("1", (64, 64), 0)
    image.putpixel((3, 3), 1)
    loaded = load_input_image(_save(image, tmp_path / "bw.png"))
    assert loaded.pixels[3, 3].tolist() == [255, 255, 255] and loaded.pixels[0, 0].tolist() == [0, 0, 0]


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    gray16 = np.zeros((64, 64), np.uint16)
    gray16[0, :3] = (65535, 32768, 1000)
    path = _save(Image.fromarray(gray16), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I;16")
    loaded = load_input_image(path)
    assert loaded.pixels[0, :4, 0].tolist() == [255, 128, 4, 0]  # PIL's convert("L") would give 255, 255, 255
    assert (loaded.pixels[..., 0] == loaded.pixels[..., 2]).all()
    assert any("16-bit" in note for note in loaded.notes)


def test_32_bit_integer_grayscale_is_scaled_by_range(tmp_path):
    values = np.zeros((64, 64), np.int32)
    values[0, 0] = 65535
    path = _save(Image.fromarray(values, "I"), tmp_path / "int.tif")
    assert Image.open(path).mode == "I"
    loaded = load_input_image(path)
    assert loaded.pixels[0, 0].tolist() == [255, 255, 255] and loaded.pixels[1, 1].tolist() == [0, 0, 0]


def test_32_bit_float_grayscale_in_unit_range_is_scaled(tmp_path):
    values = np.full((64, 64), 0.5, np.float32)
    path = _save(Image.fromarray(values, "F"), tmp_path / "float.tif")
    loaded = load_input_image(path)
    assert (loaded.pixels == 128).all()


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    path = _save(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=95)
    loaded = load_input_image(path)
    r, g, b = loaded.pixels[32, 32].tolist()
    assert r > 230 and g < 30 and b < 30
    assert any("CMYK" in note for note in loaded.notes)


def test_cmyk_tiff_is_converted_exactly(tmp_path):
    path = _save(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), tmp_path / "cmyk.tif")
    assert load_input_image(path).pixels[0, 0].tolist() == [255, 0, 0]


def _two_frames() -> list[Image.Image]:
    return [Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))]


@pytest.mark.parametrize(
    "suffix",
    [
        "gif",
        "png",  # APNG
        pytest.param("webp", marks=pytest.mark.skipif(not features.check("webp"), reason="no WebP support")),
    ],
)
def test_animated_image_uses_its_first_frame(tmp_path, suffix):
    first, second = _two_frames()
    path = tmp_path / f"anim.{suffix}"
    first.save(path, save_all=True, append_images=[second], duration=100, loop=0, lossless=True)
    assert Image.open(path).is_animated
    loaded = load_input_image(path)
    assert loaded.pixels.shape == (64, 64, 3)
    r, g, b = loaded.pixels[32, 32].tolist()
    assert r > 240 and g < 15 and b < 15
    assert any("first frame" in note for note in loaded.notes)


# --- arrays (UI) -------------------------------------------------------------------------------------------


def test_uint8_rgb_array_passes_through():
    pixels = _noise(64, 70)
    loaded = load_input_image_from_array(pixels)
    assert np.array_equal(loaded.pixels, pixels) and loaded.notes == [] and loaded.source_size == (64, 70)


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.full((64, 64, 3), 1.0, np.float32), 255),
        (np.full((64, 64, 3), 0.5, np.float64), 128),
        (np.full((64, 64), 65535, np.uint16), 255),
        (np.full((64, 64, 1), 200, np.int64), 200),
        (np.ones((64, 64), bool), 255),
    ],
)
def test_arrays_of_any_dtype_map_to_uint8_rgb(array, expected):
    loaded = load_input_image_from_array(array)
    assert loaded.pixels.shape == (64, 64, 3) and loaded.pixels.dtype == np.uint8
    assert (loaded.pixels == expected).all()


def test_rgba_array_is_composited_on_white():
    rgba = np.zeros((64, 64, 4), np.uint8)
    assert (load_input_image_from_array(rgba).pixels == 255).all()


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.zeros((3, 64, 64), np.uint8), "shape"),  # channels-first is refused, not guessed at
        (np.zeros((3, 64, 3), np.uint8), "minimum is 64"),
        (np.zeros((64, 64, 5), np.uint8), "shape"),
        (np.zeros((64,), np.uint8), "shape"),
        (np.zeros((64, 64, 3), object), "dtype"),
    ],
)
def test_unusable_arrays_are_refused(array, words):
    with pytest.raises(InvalidInputError) as info:
        load_input_image_from_array(array)
    assert words in info.value.message


# --- example assets ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["astronaut_portrait.jpg", "chelsea_landscape.jpg", "coffee_landscape.jpg"])
def test_example_assets_load_cleanly(name):
    loaded = load_input_image(ASSETS / name)
    assert loaded.pixels.ndim == 3 and loaded.pixels.shape[2] == 3 and loaded.pixels.dtype == np.uint8
    assert min(loaded.pixels.shape[:2]) >= 64 and max(loaded.pixels.shape[:2]) <= 640
    assert loaded.notes == []


def test_example_assets_cover_portrait_and_landscape():
    shapes = [load_input_image(path).pixels.shape for path in sorted(ASSETS.glob("*.jpg"))]
    assert any(h > w for h, w, _ in shapes) and any(w > h for h, w, _ in shapes)
