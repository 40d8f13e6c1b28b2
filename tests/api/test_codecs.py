"""Decoding refuses what is not PNG/JPEG/WebP and oversized images before decoding their pixels."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from t2i_core.common.errors import InvalidRequest
from t2i_core.api.images.codecs import decode_base64, decode_image, encode_image, output_size


def _image_bytes(fmt: str, size=(40, 24), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (10, 200, 30) if mode == "RGB" else (10, 200, 30, 128)).save(buf, format=fmt)
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb's header)."""
    data = bytearray(_image_bytes("PNG", (8, 8)))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_decodes_allowed_formats(fmt):
    img = decode_image(_image_bytes(fmt), max_pixels=10_000)
    assert img.size == (40, 24) and img.mode == "RGB"


def test_alpha_is_flattened_onto_white():
    img = decode_image(_image_bytes("PNG", mode="RGBA"), max_pixels=10_000)
    assert img.mode == "RGB"


@pytest.mark.parametrize("data", [_image_bytes("GIF"), _image_bytes("BMP"), b"hello", b""])
def test_refuses_other_formats(data):
    with pytest.raises(InvalidRequest, match="PNG, JPEG or WebP"):
        decode_image(data, max_pixels=10_000)


def test_pixel_cap_is_checked_from_the_header():
    bomb = _png_claiming(50_000, 50_000)
    assert len(bomb) < 200
    with pytest.raises(InvalidRequest) as info:
        decode_image(bomb, max_pixels=16_000_000)
    assert "50000x50000" in info.value.message and "16000000" in info.value.message


def test_truncated_image_is_a_client_error():
    data = _image_bytes("PNG", (64, 64))
    with pytest.raises(InvalidRequest, match="image"):
        decode_image(data[: len(data) // 2], max_pixels=10_000)


def test_base64_with_data_uri_and_invalid_base64():
    raw = _image_bytes("PNG")
    text = "data:image/png;base64," + base64.b64encode(raw).decode()
    assert decode_base64(text) == raw
    with pytest.raises(InvalidRequest, match="not valid base64"):
        decode_base64("!!not base64!!")


@pytest.mark.parametrize("fmt, magic", [("png", b"\x89PNG"), ("jpeg", b"\xff\xd8\xff"), ("webp", b"RIFF")])
def test_encode_formats(fmt, magic):
    pixels = bytes(range(256)) * (16 * 16 * 3 // 256)
    data = encode_image(pixels, 16, 16, fmt)
    assert data.startswith(magic)
    assert Image.open(io.BytesIO(data)).size == (16, 16)


def test_output_size_snaps_and_caps():
    assert output_size(64, 64) == (64, 64)
    assert output_size(100, 61) == (104, 64)
    assert output_size(8000, 4000) == (2048, 1024)
    assert output_size(10, 10) == (64, 64)
