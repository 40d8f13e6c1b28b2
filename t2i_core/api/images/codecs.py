"""Decode input images safely and encode output images.

Decoding accepts PNG, JPEG and WebP only (recognised by their magic bytes, not by what the client
claims), and refuses an image whose header claims more pixels than the cap *before* its pixels are
decoded, so a decompression bomb costs nothing. Encoding turns raw RGB pixels into png/jpeg/webp.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import time

from PIL import Image, ImageOps

from t2i_core.common.errors import InvalidRequest
from t2i_core.common.fields import MAX_SIDE, MIN_SIDE, SIDE_MULTIPLE
from t2i_core.api.images.parameters import exif_user_comment, png_text_chunk
from t2i_core.api.images.png import encode_png
from t2i_core.common.pixels import from_rgb_pixels

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
JPEG_QUALITY = 90
WEBP_QUALITY = 90
# decode_image checks its own (configurable) pixel cap from the header before decoding; PIL's global
# check would otherwise refuse first with its own limit and message.
Image.MAX_IMAGE_PIXELS = None
_DATA_URI = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)


def sniff_format(data: bytes) -> str | None:
    """png, jpeg or webp from the file's magic bytes; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def decode_base64(text: str, *, field: str = "image") -> bytes:
    """Bytes from base64 text (a ``data:image/...;base64,`` prefix and whitespace are allowed)."""
    if not isinstance(text, str):
        raise InvalidRequest(f"{field} must be a base64 string; got {type(text).__name__}", param=field)
    body = re.sub(r"\s+", "", _DATA_URI.sub("", text.strip(), count=1))
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(
            f"{field} is not valid base64 ({len(text)} characters starting {text[:24]!r})", param=field
        ) from None


def open_image(data: bytes, *, max_pixels: int, field: str = "image") -> Image.Image:
    """A decoded PNG/JPEG/WebP image in its own mode, upright (EXIF orientation applied); InvalidRequest
    (naming ``field``) for anything else or too many pixels."""
    fmt = sniff_format(data)
    if fmt is None:
        raise InvalidRequest(
            f"{field} must be a PNG, JPEG or WebP image; got {len(data)} bytes starting {data[:12]!r}",
            param=field,
        )
    try:
        img = Image.open(io.BytesIO(data), formats=[PIL_FORMATS[fmt]])
        width, height = img.size  # from the header; no pixel is decoded yet
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds on corrupt headers
        raise InvalidRequest(f"{field} is not a readable {fmt} image: {exc}", param=field) from None
    if width * height > max_pixels:
        raise InvalidRequest(
            f"{field} has {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
            param=field,
        )
    try:
        img.load()
        # as the user's viewer shows it: a phone's JPEG is stored sideways with an EXIF orientation
        return ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt data
        raise InvalidRequest(f"{field} is a damaged {fmt} image: {exc}", param=field) from None


def has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def decode_image(data: bytes, *, max_pixels: int, field: str = "image") -> Image.Image:
    """An RGB image from PNG/JPEG/WebP bytes (transparency flattened over white)."""
    img = open_image(data, max_pixels=max_pixels, field=field)
    if has_alpha(img):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def output_size(width: int, height: int, multiple: int = SIDE_MULTIPLE) -> tuple[int, int]:
    """The generation size for an input image: aspect kept, sides multiples of ``multiple`` (8; 16 for
    the DiT families) within limits."""
    scale = min(1.0, MAX_SIDE / max(width, height))
    def snap(side: float) -> int:
        side = int(side * scale / multiple + 0.5) * multiple
        return max(MIN_SIDE, min(MAX_SIDE, side))
    return snap(width), snap(height)


def encode_image(pixels: bytes, width: int, height: int, fmt: str, parameters: str = "", quality: int = 0) -> bytes:
    """Encode raw RGB pixels as png (``t2i_core/api/images/png.py``: 2.5-4x faster than Pillow's), jpeg or
    webp, with the generation ``parameters`` in the file when given (``parameters.py``). ``quality``:
    JPEG/WebP quality 1-100 (0: the defaults, 90)."""
    if fmt == "png":
        return encode_png(pixels, width, height, text=png_text_chunk(parameters) if parameters else None)
    img = from_rgb_pixels(pixels, width, height)
    buf = io.BytesIO()
    extra = {"exif": exif_user_comment(parameters)} if parameters else {}
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=quality or JPEG_QUALITY, **extra)
    elif fmt == "webp":
        img.save(buf, format="WEBP", quality=quality or WEBP_QUALITY, **extra)
    else:
        raise InvalidRequest(f"format must be one of png, jpeg, webp; got {fmt!r}", param="format")
    return buf.getvalue()


def timed_encode(
    pixels: bytes, width: int, height: int, fmt: str, parameters: str = "", quality: int = 0
) -> tuple[bytes, float]:
    """``encode_image`` and the seconds it took (the ``image_encoding`` stage)."""
    started = time.perf_counter()
    data = encode_image(pixels, width, height, fmt, parameters, quality)
    return data, time.perf_counter() - started
