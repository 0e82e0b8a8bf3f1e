"""Turn whatever the user hands us as a start image into an upright (H, W, 3) uint8 RGB array, or refuse it.

This runs before any model loads, so every problem a user can cause (wrong path, a text file named .png, a
truncated download, a 100000x100000 "bomb", a 16-bit scan, a transparent logo) ends in a clear
``InvalidInputError("image", ...)`` or in a normalised image plus a note saying what was changed -- never in a
traceback from deep inside PIL or the VAE ten minutes later.

Safety rule: nothing is fully decoded until its header size has passed our limits. ``Image.open`` only reads
the header, so the size check costs nothing; JPEGs over the limit are decoded downscaled with ``draft()`` when
that is enough. PIL's own decompression-bomb guard is respected (never switched off, ``MAX_IMAGE_PIXELS`` is
never touched) and its error or warning becomes our message.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from framepack_core.errors import InvalidInputError

logger = logging.getLogger(__name__)

# The smallest bucket at the smallest supported resolution is 48 px on a side; below 64 px there is nothing
# left for the model to animate, and such files are almost always icons or thumbnails picked by mistake.
MIN_SIDE = 64
DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_SIDE = 16384

_EXIF_ORIENTATION_TAG = 0x0112
_JPEG_DRAFT_SCALES = (1, 2, 4, 8)  # libjpeg can decode at 1/1, 1/2, 1/4 and 1/8 scale for free
_FIELD = "image"


@dataclass(frozen=True)
class LoadedImage:
    """A start image ready for bucketing.

    ``pixels`` is upright (EXIF applied), RGB, uint8, shape (H, W, 3). ``source_size`` is (height, width) as the
    source declared it (file header or array shape), before rotation or downscaling -- for messages and
    metadata. ``notes`` lists each normalisation applied, in words, so the caller can warn the user that what
    will be animated differs from the file (e.g. transparency flattened on white).
    """

    pixels: np.ndarray
    source_size: tuple[int, int]
    notes: list[str] = field(default_factory=list)


def load_input_image(
    path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int = DEFAULT_MAX_SIDE
) -> LoadedImage:
    """Read, validate and normalise the image file at ``path``.

    Raises ``InvalidInputError`` (field ``"image"``) for a missing, unreadable, empty, non-image or broken file,
    for images under ``MIN_SIDE`` px, and for images over ``max_pixels`` / ``max_side`` that cannot be decoded
    downscaled.
    """
    path = Path(path)
    _check_file(path)
    notes: list[str] = []
    try:
        # PIL warns (rather than raises) for images between MAX_IMAGE_PIXELS and twice that. Record the warning
        # instead of letting it scroll by: it is harmless only if we avoid the full decode (JPEG draft), and
        # otherwise becomes our error. catch_warnings restores the filters on exit. It is not thread-safe before
        # Python 3.14; if two loads race, the worst case is a missed PIL warning, and our own max_pixels /
        # max_side check (which does not depend on warnings) still bounds what gets decoded.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                source_size = (image.height, image.width)
                _check_dimensions(image, path, max_pixels, max_side, notes)
                if _bomb_warned(caught) and not _decode_is_under_pil_limit(image):
                    raise Image.DecompressionBombError(str(caught[-1].message))
                warnings_before_load = len(caught)
                if getattr(image, "is_animated", False):
                    notes.append(f"multi-frame {image.format} image: using its first frame")
                # Image.open is lazy; load() forces the decode so broken data fails here, inside the try.
                image.load()
                if _bomb_warned(caught[warnings_before_load:]):
                    raise Image.DecompressionBombError(str(caught[-1].message))
                pixels = _normalise_pil(image, notes)
        _reemit_other_warnings(caught)
    except InvalidInputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InvalidInputError(
            _FIELD,
            f"'{path}' is too large to decode safely (PIL's decompression-bomb guard: {exc})",
            "Use an image under about 8000x8000 pixels; downscale it in an image editor first.",
        ) from exc
    except PermissionError as exc:
        raise _unreadable(path, exc) from exc
    except UnidentifiedImageError as exc:
        raise InvalidInputError(
            _FIELD,
            f"'{path}' is not an image file PIL can read (format not recognised)",
            "Use a PNG, JPEG, WebP, BMP, TIFF or GIF image; check the file was not renamed from another type.",
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        # PIL reports truncated/corrupt data with a mix of these depending on the format plugin.
        raise InvalidInputError(
            _FIELD,
            f"'{path}' could not be decoded; the file looks truncated or corrupt ({type(exc).__name__}: {exc})",
            "Re-download or re-export the image and try again.",
        ) from exc

    if notes:
        logger.info("normalised %s: %s", path, "; ".join(notes))
    return LoadedImage(pixels=pixels, source_size=source_size, notes=notes)


def load_input_image_from_array(
    array: np.ndarray, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int = DEFAULT_MAX_SIDE
) -> LoadedImage:
    """Validate and normalise an in-memory image (e.g. from the UI): (H, W) or (H, W, C) with C in 1..4.

    Any numeric dtype is accepted and mapped to uint8 by its value range (see ``_to_uint8``); 2 channels are
    gray + alpha, 4 are RGBA; alpha is flattened onto white. Channels-first arrays are refused rather than
    guessed at, because a (3, H, W) array is also a valid, very thin (H=3) image.
    """
    if array is None:
        raise InvalidInputError(_FIELD, "no image was given", "Upload or choose a start image.")
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (2, 3, 4)):
        raise InvalidInputError(
            _FIELD,
            f"image array has shape {array.shape}; expected (height, width) or (height, width, 1-4 channels)",
            "Pass a channels-last gray, gray+alpha, RGB or RGBA array.",
        )
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise InvalidInputError(_FIELD, f"image array has non-numeric dtype {array.dtype}", "Pass a numeric array.")
    height, width = array.shape[:2]
    _check_size_limits(height, width, max_pixels, max_side, source="image array")

    notes: list[str] = []
    pixels8 = _to_uint8(array, notes)
    if pixels8.ndim == 2:
        pixels8 = pixels8[:, :, None]
    channels = pixels8.shape[2]
    if channels in (2, 4):
        color = pixels8[:, :, :-1]
        if channels == 2:
            color = np.repeat(color, 3, axis=2)
        pixels = _flatten_alpha(color, pixels8[:, :, -1], notes)
    else:
        pixels = np.repeat(pixels8, 3, axis=2) if channels == 1 else pixels8
    if channels in (1, 2):
        notes.append("grayscale image converted to RGB")
    return LoadedImage(pixels=np.ascontiguousarray(pixels), source_size=(height, width), notes=notes)


# --- PIL decompression-bomb warnings ------------------------------------------------------------------------


def _bomb_warned(caught: list[warnings.WarningMessage]) -> bool:
    return any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught)


def _decode_is_under_pil_limit(image: Image.Image) -> bool:
    """True when the size that load() will decode (after any draft) is within PIL's own warning threshold."""
    limit = Image.MAX_IMAGE_PIXELS  # read only; never changed here
    return limit is None or image.width * image.height <= limit


def _reemit_other_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Pass on warnings recorded while loading that are not the bomb warning we handled ourselves."""
    for w in caught:
        if not issubclass(w.category, Image.DecompressionBombWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


# --- file checks -------------------------------------------------------------------------------------------


def _unreadable(path: Path, exc: OSError) -> InvalidInputError:
    return InvalidInputError(
        _FIELD,
        f"'{path}' cannot be read ({exc.strerror or exc})",
        "Check the file's permissions, or copy it somewhere your user can read.",
    )


def _check_file(path: Path) -> None:
    """Refuse paths that are not a readable, non-empty regular file, with a message naming which it is."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InvalidInputError(
            _FIELD, f"'{path}' does not exist", "Check the path; relative paths are resolved from the current folder."
        ) from None
    except PermissionError as exc:
        raise _unreadable(path, exc) from exc
    except OSError as exc:  # e.g. a name too long, a broken network mount
        raise _unreadable(path, exc) from exc
    if path.is_dir():
        raise InvalidInputError(_FIELD, f"'{path}' is a directory, not an image file", "Give the path of one image.")
    if st.st_size == 0:
        raise InvalidInputError(_FIELD, f"'{path}' is an empty file (0 bytes)", "Re-download or re-export the image.")
    if not os.access(path, os.R_OK):
        raise _unreadable(path, PermissionError(13, "permission denied"))


def _check_size_limits(height: int, width: int, max_pixels: int, max_side: int, *, source: str) -> None:
    if height < MIN_SIDE or width < MIN_SIDE:
        raise InvalidInputError(
            _FIELD,
            f"{source} is {width}x{height} pixels (width x height); the minimum is {MIN_SIDE} px on each side",
            f"Use an image at least {MIN_SIDE}x{MIN_SIDE}; ideally around 640 px or more on the short side.",
        )
    if width > max_side or height > max_side or width * height > max_pixels:
        raise InvalidInputError(
            _FIELD,
            f"{source} is {width}x{height} pixels (width x height), over the limit of {max_pixels:,} pixels "
            f"or {max_side} px on a side",
            "Downscale the image first; the video is generated at about 640x640 anyway.",
        )


def _check_dimensions(image: Image.Image, path: Path, max_pixels: int, max_side: int, notes: list[str]) -> None:
    """Check the header size against the limits before decoding; shrink JPEGs via draft() when that suffices."""
    width, height = image.size
    source = f"'{path}'"
    over = width > max_side or height > max_side or width * height > max_pixels
    if over and image.format == "JPEG":
        scale = _jpeg_draft_scale(width, height, max_pixels, max_side)
        if scale is not None and scale > 1:
            # Ask for floor(w / scale): draft() derives its scale as w // requested, rounded down to 1/2/4/8,
            # which then comes out as exactly ours.
            image.draft(image.mode, (width // scale, height // scale))
            notes.append(f"very large JPEG ({width}x{height}) decoded at 1/{scale} scale ({image.width}x{image.height})")
            logger.info("decoding %s at 1/%d scale", path, scale)
            width, height = image.size
    _check_size_limits(height, width, max_pixels, max_side, source=source)


def _jpeg_draft_scale(width: int, height: int, max_pixels: int, max_side: int) -> int | None:
    """The smallest libjpeg scale-down that brings the decoded size within the limits, or None if none does.

    A scale that would leave a side under MIN_SIDE (a huge thin strip) does not count: refusing on the header
    size says more than a "too small" message about a size the user never had.
    """
    for scale in _JPEG_DRAFT_SCALES:
        w, h = -(-width // scale), -(-height // scale)  # libjpeg rounds up
        if min(w, h) >= MIN_SIDE and w <= max_side and h <= max_side and w * h <= max_pixels:
            return scale
    return None


# --- mode normalisation ------------------------------------------------------------------------------------


def _normalise_pil(image: Image.Image, notes: list[str]) -> np.ndarray:
    """Upright RGB uint8 pixels from a loaded PIL image of any mode."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception as exc:  # noqa: BLE001 - a mangled EXIF block must not cost the user their image
        logger.warning("ignoring unreadable EXIF data: %s", exc)
        notes.append("EXIF metadata was unreadable and ignored (orientation not applied)")
        orientation = 1
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        image = ImageOps.exif_transpose(image)
        notes.append(f"rotated/flipped upright per EXIF orientation {orientation}")

    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return np.array(image)
    if mode.startswith("I;16") or mode in ("I", "F"):
        # PIL's own convert("L") clips these at 255; map the value range instead (see _to_uint8).
        gray = _to_uint8(np.array(image), notes, sixteen_bit=mode.startswith("I;16"))
        notes.append(f"{_describe_mode(mode)} converted to RGB")
        return np.repeat(gray[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = np.array(image.convert("RGBA"))
        return _flatten_alpha(rgba[:, :, :3], rgba[:, :, 3], notes)
    try:
        rgb = image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise InvalidInputError(
            _FIELD,
            f"colour mode {mode!r} cannot be converted to RGB ({exc})",
            "Re-save the image as an 8-bit RGB PNG or JPEG.",
        ) from exc
    notes.append(f"{_describe_mode(mode)} converted to RGB")
    return np.array(rgb)


def _describe_mode(mode: str) -> str:
    names = {
        "L": "8-bit grayscale image",
        "1": "1-bit black-and-white image",
        "P": "palette image",
        "CMYK": "CMYK image",
        "YCbCr": "YCbCr image",
        "I": "32-bit integer grayscale image",
        "F": "32-bit float grayscale image",
    }
    if mode.startswith("I;16"):
        return "16-bit grayscale image"
    return names.get(mode, f"{mode!r} image")


def _flatten_alpha(rgb: np.ndarray, alpha: np.ndarray, notes: list[str]) -> np.ndarray:
    """Composite straight-alpha RGB onto white, the background users expect transparent areas to show.

    (Black, PIL's implicit choice when dropping alpha, turns logos and cut-outs into dark blobs.)
    """
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb, dtype=np.uint8)
    a = alpha.astype(np.uint32)[:, :, None]
    out = (rgb.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255
    notes.append("transparent areas were placed on a white background")
    return out.astype(np.uint8)


def _to_uint8(array: np.ndarray, notes: list[str], *, sixteen_bit: bool = False) -> np.ndarray:
    """Map any numeric array to uint8 by what its value range most plausibly means.

    * bool -> 0 / 255; uint8 unchanged.
    * uint16 (any byte order), PIL's I;16 modes (``sixteen_bit``), and other integers within 0..65535 that
      exceed 255: 16-bit data, scaled by 255/65535, so 65535 -> 255 and mid-gray stays mid-gray (clipping,
      PIL's default, would turn everything above 255 -- nearly the whole image -- white).
    * integers within 0..255: already 8-bit values.
    * floats within 0..1: the usual normalised convention, times 255; floats within 0..255: 8-bit values.
    * anything else (negative, larger, non-finite): stretched min..max to 0..255, noted.
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.complexfloating):
        raise InvalidInputError(_FIELD, "image array is complex-valued", "Pass a real-valued image array.")

    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        notes.append("non-finite pixel values (NaN/inf) were replaced")
        finite = values[np.isfinite(values)]
        fill_low, fill_high = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
        values = np.nan_to_num(values, nan=fill_low, posinf=fill_high, neginf=fill_low)
    low, high = float(values.min()), float(values.max())
    is_int = np.issubdtype(array.dtype, np.integer)
    sixteen_bit = sixteen_bit or (array.dtype.kind == "u" and array.dtype.itemsize == 2)

    if is_int and low >= 0 and high <= 255 and not sixteen_bit:
        scaled = values
    elif is_int and low >= 0 and high <= 65535:
        scaled = values * (255.0 / 65535.0)
        notes.append("16-bit pixel values scaled to 8-bit")
    elif not is_int and low >= 0 and high <= 1:
        scaled = values * 255.0
    elif not is_int and low >= 0 and high <= 255:
        scaled = values
    else:
        span = high - low
        scaled = (values - low) * (255.0 / span) if span > 0 else np.zeros_like(values)
        notes.append(f"pixel values in [{low:g}, {high:g}] were stretched to 0..255")
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
