"""The PNG encoder (t2i_core/api/images/png.py): every file decodes (Pillow's own decoder) to exactly the pixels
given, is a well-formed minimal PNG, and is no larger than Pillow's ``compress_level=1`` file."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from t2i_core.api.images import png
from t2i_core.api.images.codecs import encode_image


def noise(width: int, height: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, width * height * 3, dtype=np.uint8).tobytes()


def photo_like(width: int, height: int, seed: int = 0) -> bytes:
    """Smooth shapes and gradients with a little grain, as generated images have."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for c in range(3):
        fx, fy, phase = rng.uniform(0.005, 0.05, 2).tolist() + [rng.uniform(0, 6.28)]
        wave = 110 + 70 * np.sin(x * fx + phase) * np.cos(y * fy) + 40 * (x / width) - 30 * (y / height)
        channels.append(wave + rng.normal(0, 3, wave.shape))
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8).tobytes()


def decoded(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data), formats=["PNG"])
    img.load()
    return img


def pillow_png(pixels: bytes, width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("RGB", (width, height), pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


@pytest.mark.parametrize("size", [(1, 1), (1, 9), (7, 1), (3, 5), (17, 2), (64, 64), (200, 8), (96, 160)])
@pytest.mark.parametrize("make", [noise, photo_like])
def test_decodes_to_exactly_the_pixels(size: tuple[int, int], make) -> None:
    width, height = size
    pixels = make(width, height)
    img = decoded(png.encode_png(pixels, width, height))
    assert (img.mode, img.size) == ("RGB", size)
    assert img.tobytes() == pixels


def test_edges_of_the_paeth_predictor() -> None:
    """Every tie-break of the predictor (left, up, up-left), with values that wrap modulo 256."""
    values = np.array([0, 1, 2, 127, 128, 254, 255], np.uint8)
    grid = np.array(np.meshgrid(values, values, values, indexing="ij")).reshape(3, -1).T  # every triple
    pixels = np.repeat(grid, 2, axis=0).reshape(-1).astype(np.uint8)
    width = 21
    height = len(pixels) // (width * 3)
    pixels = pixels[: width * height * 3].tobytes()
    assert decoded(png.encode_png(pixels, width, height)).tobytes() == pixels


def test_is_a_minimal_well_formed_png() -> None:
    data = png.encode_png(noise(10, 4), 10, 4)
    assert data.startswith(png.SIGNATURE)
    chunks, offset = [], len(png.SIGNATURE)
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        tag, body = data[offset + 4:offset + 8], data[offset + 8:offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length:offset + 12 + length])
        assert crc == zlib.crc32(tag + body), tag
        chunks.append((tag, body))
        offset += 12 + length
    assert [tag for tag, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    assert chunks[0][1] == struct.pack(">IIBBBBB", 10, 4, 8, 2, 0, 0, 0)
    rows = zlib.decompress(chunks[1][1])
    assert len(rows) == 4 * (1 + 10 * 3) and all(rows[r * 31] == png.PAETH for r in range(4))


@pytest.mark.parametrize("make,size", [(photo_like, (512, 512)), (photo_like, (64, 64)), (noise, (64, 64))])
def test_no_larger_than_pillows_fast_png(make, size: tuple[int, int]) -> None:
    pixels = make(*size)
    ours, pillows = png.encode_png(pixels, *size), pillow_png(pixels, *size)
    assert len(ours) <= len(pillows) * 1.01, (len(ours), len(pillows))


def test_zlib_deflates_when_isal_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(png, "_isal", None)
    assert png.deflater() is zlib
    pixels = photo_like(48, 40)
    assert decoded(png.encode_png(pixels, 48, 40)).tobytes() == pixels


def test_isal_is_installed() -> None:
    """requirements.txt pins isal; without it PNGs still encode, through zlib, slower."""
    assert png.deflater() is not zlib


@pytest.mark.parametrize("width,height,length", [(4, 4, 47), (4, 4, 49), (0, 4, 0), (4, 0, 0)])
def test_refuses_wrong_sizes(width: int, height: int, length: int) -> None:
    with pytest.raises(ValueError, match="got"):
        png.encode_png(b"\0" * length, width, height)


def test_encode_image_png_uses_it() -> None:
    pixels = photo_like(32, 24)
    assert encode_image(pixels, 32, 24, "png") == png.encode_png(pixels, 32, 24)


@pytest.mark.parametrize("chunk_rows", [1, 3, 64])
def test_rows_filtered_in_chunks_predict_across_chunk_edges(monkeypatch: pytest.MonkeyPatch, chunk_rows: int) -> None:
    monkeypatch.setattr(png, "CHUNK_ROWS", chunk_rows)
    for make, (width, height) in [(photo_like, (40, 130)), (noise, (24, 67))]:
        pixels = make(width, height)
        data = png.encode_png(pixels, width, height)
        assert decoded(data).tobytes() == pixels
        monkeypatch.setattr(png, "CHUNK_ROWS", 10_000)
        assert png.encode_png(pixels, width, height) == data  # the same file as filtered whole
        monkeypatch.setattr(png, "CHUNK_ROWS", chunk_rows)
